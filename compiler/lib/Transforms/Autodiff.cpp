//===- Autodiff.cpp - -mtc-autodiff: forward program -> training step ------===//
//
// Algorithm:
//  1. Find @forward(tokens, targets, ...) -> tensor<f32>; clone it as
//     @train_step. Training statistics (mtc.moe_accumulate_load) stay in
//     @train_step only: @forward is also the evaluation program, which
//     counts nothing.
//  2. Seed d(loss)/d(loss) = 1 and walk @train_step's ops in reverse. For an
//     op with a gradient for at least one result, call its
//     GradientOpInterface rule (inserting before the return) and add each
//     operand gradient into the running gradient of that operand (mtc.add
//     when a value already has one: fan-out sums gradients).
//  3. When the walk reaches an mtc.param, all its users have been handled:
//     emit `mtc.accumulate_grad` of its full gradient into its buffer
//     (a `not_trained` one gets none: it is not trained).
//  4. Build @optimizer_step(lr, step) -> grad_norm: first one
//     mtc.moe_update_expert_bias per mtc.moe_accumulate_load of the step
//     (each zeroes its loads' slot, so the norm sees no gradient there),
//     then mtc.grad_norm, then one mtc.adamw per weight-decay group (rank
//     >= 2 parameters decay; norms and biases do not, as in Megatron and
//     GPT-2; an MoE layer's stacked expert biases (E, out) are biases too,
//     named ".bias"). `not_trained` parameters are in no group.
//
// Autodiff runs on the global (unsharded) program, before any sharding pass;
// see docs/architecture.md for why.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Passes.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/StringSet.h"

namespace mtc {
#define GEN_PASS_DEF_MTCAUTODIFF
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;

namespace {

// A key of `mtc.training` (the module verifier checked its type), or the
// default when absent.
double getF64(DictionaryAttr dict, StringRef key, double dflt) {
  if (auto f = dict ? dict.getAs<FloatAttr>(key) : FloatAttr())
    return f.getValueAsDouble();
  if (auto i = dict ? dict.getAs<IntegerAttr>(key) : IntegerAttr())
    return double(i.getInt());
  return dflt;
}

struct AutodiffPass : public mtc::impl::MtcAutodiffBase<AutodiffPass> {
  void runOnOperation() override;

  LogicalResult buildBackward(func::FuncOp train);
  void buildOptimizerStep(ModuleOp module, func::FuncOp train,
                          DictionaryAttr cfg);
};

LogicalResult AutodiffPass::buildBackward(func::FuncOp train) {
  Block &body = train.getBody().front();
  auto ret = cast<func::ReturnOp>(body.getTerminator());
  Value loss = ret.getOperand(0);
  OpBuilder b(ret);

  llvm::DenseMap<Value, Value> grads;
  auto addGrad = [&](Value v, Value g) {
    auto [it, inserted] = grads.try_emplace(v, g);
    if (!inserted)
      it->second = mtc::AddOp::create(b, g.getLoc(), g.getType(), it->second, g);
  };

  auto one = arith::ConstantOp::create(
      b, loss.getLoc(),
      DenseElementsAttr::get(cast<ShapedType>(loss.getType()), 1.0f));
  addGrad(loss, one);

  SmallVector<Operation *> forwardOps;
  for (Operation &op : body.without_terminator())
    if (&op != one.getOperation())
      forwardOps.push_back(&op);

  for (Operation *op : llvm::reverse(forwardOps)) {
    if (auto param = dyn_cast<mtc::ParamOp>(op)) {
      if (param.getNotTrained())
        continue;
      if (Value g = grads.lookup(param.getResult()))
        mtc::AccumulateGradOp::create(b, param.getLoc(), g,
                                      param.getNameAttr());
      continue;
    }
    SmallVector<Value> resultGrads;
    bool any = false;
    for (Value r : op->getResults()) {
      resultGrads.push_back(grads.lookup(r));
      any |= bool(resultGrads.back());
    }
    if (!any)
      continue;
    auto rule = dyn_cast<mtc::GradientOpInterface>(op);
    if (!rule)
      return op->emitOpError("has no gradient rule, but the loss depends on "
                             "it (mtc-autodiff)");
    SmallVector<Value> operandGrads;
    if (failed(rule.buildGradient(b, resultGrads, operandGrads)))
      return failure();
    if (operandGrads.size() != op->getNumOperands())
      return op->emitOpError("gradient rule returned ")
             << operandGrads.size() << " gradients for "
             << op->getNumOperands() << " operands";
    for (auto [operand, g] : llvm::zip(op->getOperands(), operandGrads))
      if (g)
        addGrad(operand, g);
  }
  return success();
}

void AutodiffPass::buildOptimizerStep(ModuleOp module, func::FuncOp train,
                                      DictionaryAttr cfg) {
  MLIRContext *ctx = module.getContext();
  // Parameters in program order, each once (tied parameters share a name).
  SmallVector<mtc::ParamOp> params;
  llvm::StringSet<> seen;
  train.walk([&](mtc::ParamOp p) {
    if (seen.insert(p.getName()).second)
      params.push_back(p);
  });
  SmallVector<Attribute> decay, noDecay;
  for (mtc::ParamOp p : params)
    if (!p.getNotTrained())
      (p.getType().getRank() >= 2 && !p.getName().ends_with(".bias") ? decay
                                                                    : noDecay)
        .push_back(p.getNameAttr());

  OpBuilder b = OpBuilder::atBlockEnd(module.getBody());
  // Named, inside the module's location (the spec file), so diagnostics
  // about the optimizer point at a file.
  Location loc = NameLoc::get(StringAttr::get(ctx, "optimizer"), module.getLoc());
  Type f32 = Float32Type::get(ctx), i64 = IntegerType::get(ctx, 64);
  auto fn = func::FuncOp::create(b, loc, "optimizer_step",
                                 b.getFunctionType({f32, i64}, {f32}));
  Block *entry = fn.addEntryBlock();
  b.setInsertionPointToStart(entry);

  // Aux-loss-free balancing: each expert bias moves after the step by the
  // loads its mtc.moe_accumulate_load gathered (docs/moe.md).
  train.walk([&](mtc::MoeAccumulateLoadOp acc) {
    mtc::MoeUpdateExpertBiasOp::create(b, acc.getLoc(), acc.getParamAttr(),
                                       acc.getUpdateRateAttr());
  });

  double microbatches = getF64(cfg, "num_microbatches", 1);
  double gradScale = 1.0 / microbatches;
  auto norm = mtc::GradNormOp::create(b, loc, f32, b.getF64FloatAttr(gradScale));
  auto group = [&](ArrayRef<Attribute> names, double wd) {
    if (names.empty())
      return;
    mtc::AdamWOp::create(
        b, loc, entry->getArgument(0), entry->getArgument(1), norm,
        b.getArrayAttr(names), b.getF64FloatAttr(wd),
        b.getF64FloatAttr(getF64(cfg, "beta1", 0.9)),
        b.getF64FloatAttr(getF64(cfg, "beta2", 0.95)),
        b.getF64FloatAttr(getF64(cfg, "eps", 1e-8)),
        b.getF64FloatAttr(getF64(cfg, "grad_clip", 1.0)),
        b.getF64FloatAttr(gradScale));
  };
  group(decay, getF64(cfg, "weight_decay", 0.1));
  group(noDecay, 0.0);
  func::ReturnOp::create(b, loc, ValueRange{norm});
}

void AutodiffPass::runOnOperation() {
  ModuleOp module = getOperation();
  auto forward = module.lookupSymbol<func::FuncOp>("forward");
  if (!forward) {
    module.emitError("mtc-autodiff needs a function @forward returning the "
                     "loss (the importer's output)");
    return signalPassFailure();
  }
  auto results = forward.getFunctionType().getResults();
  auto lossType = results.size() == 1
                      ? dyn_cast<RankedTensorType>(results[0])
                      : RankedTensorType();
  if (!lossType || lossType.getRank() != 0 ||
      !lossType.getElementType().isF32()) {
    forward.emitError("@forward must return exactly one tensor<f32> loss");
    return signalPassFailure();
  }
  if (module.lookupSymbol("train_step") ||
      module.lookupSymbol("optimizer_step")) {
    module.emitError("module already has @train_step or @optimizer_step: "
                     "mtc-autodiff runs once");
    return signalPassFailure();
  }

  auto train = cast<func::FuncOp>(forward->clone());
  train.setSymName("train_step");
  module.getBody()->push_back(train);
  for (auto acc :
       llvm::make_early_inc_range(forward.getOps<mtc::MoeAccumulateLoadOp>()))
    acc.erase();
  if (failed(buildBackward(train)))
    return signalPassFailure();
  buildOptimizerStep(module, train,
                     module->getAttrOfType<DictionaryAttr>("mtc.training"));
}

} // namespace
