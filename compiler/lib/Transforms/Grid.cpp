//===- Grid.cpp - the device grid and sharding annotations -----------------===//
#include "mtc/Transforms/Grid.h"

#include "mlir/IR/Builders.h"

using namespace mlir;

mtc::GridShape mtc::getGridShape(ModuleOp module) {
  GridShape g;
  auto plan = module->getAttrOfType<DictionaryAttr>("mtc.parallel");
  if (!plan)
    return g;
  auto get = [&](StringRef k) -> int64_t {
    auto a = plan.getAs<IntegerAttr>(k);
    return a ? a.getInt() : 1;
  };
  g.pp = get("pp");
  g.dp = get("dp");
  g.tp = get("tp");
  g.ep = get("ep");
  return g;
}

shard::GridOp mtc::getOrCreateGrid(ModuleOp module) {
  if (auto grid = module.lookupSymbol<shard::GridOp>(kGridName))
    return grid;
  GridShape g = getGridShape(module);
  OpBuilder b = OpBuilder::atBlockBegin(module.getBody());
  return shard::GridOp::create(
      b, NameLoc::get(b.getStringAttr("grid"), module.getLoc()), kGridName,
      b.getDenseI64ArrayAttr({g.pp, g.dp, g.tp}));
}

shard::GridOp mtc::getOrCreateExpertGrid(ModuleOp module) {
  if (auto grid = module.lookupSymbol<shard::GridOp>(kExpertGridName))
    return grid;
  shard::GridOp main = getOrCreateGrid(module);
  GridShape g = getGridShape(module);
  OpBuilder b(module.getContext());
  b.setInsertionPointAfter(main);
  return shard::GridOp::create(
      b, NameLoc::get(b.getStringAttr("expert_grid"), module.getLoc()),
      kExpertGridName, b.getDenseI64ArrayAttr({g.pp, g.dp / g.ep, g.ep, g.tp}));
}

namespace {
/// The shard.shard op that annotates `value`, if any.
shard::ShardOp annotationOf(Value value) {
  for (Operation *user : value.getUsers())
    if (auto s = dyn_cast<shard::ShardOp>(user))
      if (s.getSrc() == value)
        return s;
  return nullptr;
}

std::optional<mtc::Split> splitOf(shard::ShardOp op) {
  auto sharding = op.getSharding().getDefiningOp<shard::ShardingOp>();
  if (!sharding)
    return std::nullopt;
  auto axes = sharding.getSplitAxes().getAxes();
  for (auto [dim, ax] : llvm::enumerate(axes))
    if (!ax.empty())
      return mtc::Split{int64_t(dim), ax.asArrayRef().front()};
  return std::nullopt;
}
} // namespace

mtc::ParamOp mtc::paramOf(Value v) {
  if (!v)
    return nullptr;
  if (auto s = v.getDefiningOp<shard::ShardOp>())
    v = s.getSrc();
  return v.getDefiningOp<ParamOp>();
}

std::optional<mtc::Split> mtc::getAnnotatedSplit(Value value) {
  // The annotated value itself, or the value an annotation applies to.
  if (auto s = value.getDefiningOp<shard::ShardOp>())
    return splitOf(s);
  if (auto s = annotationOf(value))
    return splitOf(s);
  return std::nullopt;
}

LogicalResult mtc::annotateSplit(Value value, Split split) {
  if (auto existing = annotationOf(value)) {
    auto old = splitOf(existing);
    if (old && old->dim == split.dim && old->axis == split.axis)
      return success();
    return emitError(value.getLoc())
           << "conflicting sharding annotations: already split on dimension "
           << (old ? old->dim : -1) << ", now asked to split dimension "
           << split.dim;
  }
  auto type = cast<RankedTensorType>(value.getType());
  MLIRContext *ctx = value.getContext();
  OpBuilder b(ctx);
  b.setInsertionPointAfterValue(value);
  SmallVector<shard::GridAxesAttr> axes(type.getRank(),
                                        shard::GridAxesAttr::get(ctx, {}));
  axes[split.dim] = shard::GridAxesAttr::get(ctx, {split.axis});
  auto sharding = shard::ShardingOp::create(
      b, value.getLoc(), FlatSymbolRefAttr::get(ctx, kGridName), axes,
      ArrayRef<int64_t>{}, ArrayRef<int64_t>{});
  auto annotated = shard::ShardOp::create(b, value.getLoc(), value, sharding,
                                          /*annotate_for_users=*/false);
  value.replaceAllUsesExcept(annotated, annotated);
  return success();
}
