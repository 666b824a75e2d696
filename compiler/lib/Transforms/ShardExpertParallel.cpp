//===- ShardExpertParallel.cpp - -mtc-shard-expert-parallel
//----------------===//
//
// Expert parallelism (Megatron's --expert-model-parallel-size; docs/moe.md):
// the experts of every MoE layer are split over the `ep` axis of
// @mtc_expert_grid (pp x dp/ep x ep x tp over the same devices; Grid.h), and
// each rank's permuted rows travel to the rank holding their expert and back.
// The ep ranks are data-parallel ranks: each has its own tokens, so this is
// a routing of rows between ranks, not a distribution of one value, and it
// has its own pass instead of rules in mtc-partition. It runs on the joint
// training program after autodiff and mtc-partition, so the forward and
// backward grouped GEMMs are rewritten alike. With tensor parallelism the
// partitioner has already split each expert's hidden dimension over tp and
// made the routing whole on every tp rank: each tp rank exchanges its
// (identical) rows with the ep ranks of its own tp index, and the experts'
// parameters are split twice (ep on dimension 0, then tp), as Megatron's
// expert tensor parallelism (= tp) does.
//
// Per function, in program order:
//  1. The stacked expert parameters (the weights and biases the grouped GEMMs
//     read, (E, ...)) become this rank's slice (E/ep, ...) of dimension 0:
//     ep rank j holds experts j*E/ep .. (j+1)*E/ep - 1. `mtc.shard` records
//     the split (grid @mtc_expert_grid, axis ep) and the global shape.
//  2. After each mtc.moe_permute, mtc.moe_exchange_counts tells every rank
//     how many rows it receives per local expert.
//  3. A grouped op (grouped_matmul, grouped_matmul_wgrad, grouped_bias_grad)
//     reads its rows on the experts' side: a row operand computed on the
//     token side goes through mtc.moe_dispatch (once per value), and its
//     counts become the local counts. A grouped_matmul's result is on the
//     experts' side ((ep * N, .) rows); the weight-gradient ops' results are
//     the local experts' gradients.
//  4. Elementwise ops (the activation and its gradient) and adds whose
//     operands include an experts'-side value run on the experts' side.
//  5. Any other use of an experts'-side value gets it back through
//     mtc.moe_combine (once per value): the unpermute and its gradient.
//  6. @optimizer_step: the experts' gradients are summed over the
//     expert-data-parallel axis (the ranks holding the same experts) and
//     divided by the whole dp size, like every other gradient; the dense
//     gradients keep mtc-shard-data-parallel's reduction over dp.
//     mtc.grad_norm sums the experts' squared norms over ep
//     (`ep_split_params`). With the distributed optimizer (a dp reduction
//     with shard_optimizer_state) the experts' reduction shards their
//     optimizer state over the expert-data-parallel axis, and an
//     mtc.all_gather_params over that axis gathers their updated shares;
//     the norm then needs no `ep_split_params`: every dp rank holds a
//     distinct share of the experts (its ep slice, its edp shard), so the
//     sum over dp counts each expert element once.
// Collectives are never recomputed (mtc-plan-recompute keeps their
// results), and every rank of an ep group runs the same exchanges in the
// same order.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Grid.h"
#include "mtc/Transforms/Passes.h"

#include "mlir/IR/Builders.h"
#include "llvm/ADT/StringSet.h"

namespace mtc {
#define GEN_PASS_DEF_MTCSHARDEXPERTPARALLEL
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;

namespace {

RankedTensorType withDim(Type t, int64_t dim, int64_t size) {
  auto r = cast<RankedTensorType>(t);
  SmallVector<int64_t> shape(r.getShape());
  shape[dim] = size;
  return r.clone(shape);
}

using mtc::paramOf;

class FunctionRewriter {
public:
  FunctionRewriter(func::FuncOp fn, shard::GridOp grid, int64_t ep,
                   const llvm::StringSet<> &experts)
      : fn(fn), ep(ep), experts(experts), b(fn.getContext()),
        gridRef(FlatSymbolRefAttr::get(grid.getSymNameAttr())),
        axes(b.getDenseI16ArrayAttr({mtc::kExpertAxisEP})) {}

  LogicalResult run() {
    SmallVector<Operation *> ops;
    for (Operation &op : fn.getBody().front())
      ops.push_back(&op);
    for (Operation *op : ops)
      if (failed(rewrite(op)))
        return failure();
    return success();
  }

private:
  struct Routing {
    Value received, local;
  };

  LogicalResult rewrite(Operation *op) {
    if (auto p = dyn_cast<mtc::ParamOp>(op)) {
      if (!experts.contains(p.getName()))
        return success();
      auto t = p.getType();
      if (t.getDimSize(0) % ep != 0)
        return p.emitOpError("has ")
               << t.getDimSize(0) << " experts, not divisible by ep = " << ep;
      // A tensor-parallel split (mtc-partition's `mtc.shard`) stays, as
      // the split of the ep slice (`then`); the global shape is its.
      SmallVector<NamedAttribute> shard = {
          b.getNamedAttr("dim", b.getI64IntegerAttr(0)),
          b.getNamedAttr("axis", b.getI64IntegerAttr(mtc::kExpertAxisEP)),
          b.getNamedAttr("grid", gridRef),
          b.getNamedAttr("global_shape", b.getDenseI64ArrayAttr(t.getShape()))};
      if (auto tp = p->getAttrOfType<DictionaryAttr>("mtc.shard")) {
        shard[3] = b.getNamedAttr("global_shape", tp.get("global_shape"));
        shard.push_back(b.getNamedAttr(
            "then",
            b.getDictionaryAttr({b.getNamedAttr("dim", tp.get("dim")),
                                 b.getNamedAttr("axis", tp.get("axis"))})));
      }
      p->setAttr("mtc.shard", b.getDictionaryAttr(shard));
      p.getResult().setType(withDim(t, 0, t.getDimSize(0) / ep));
      return success();
    }
    if (auto perm = dyn_cast<mtc::MoePermuteOp>(op)) {
      b.setInsertionPointAfter(perm);
      Value counts = perm.getCounts();
      int64_t e = cast<RankedTensorType>(counts.getType()).getDimSize(0);
      auto i32 = b.getI32Type();
      auto ex = mtc::MoeExchangeCountsOp::create(
          b, perm.getLoc(), RankedTensorType::get({ep, e / ep}, i32),
          RankedTensorType::get({e / ep}, i32), counts, gridRef, axes);
      routing[counts] = {ex.getReceived(), ex.getLocalCounts()};
      return success();
    }
    if (isa<mtc::GroupedMatmulOp, mtc::GroupedMatmulWgradOp,
            mtc::GroupedBiasGradOp>(op))
      return rewriteGrouped(op);
    bool touches = llvm::any_of(op->getOperands(),
                                [&](Value v) { return countsOf.count(v); });
    if (!touches)
      return success();
    bool rowwise =
        (op->hasTrait<OpTrait::Elementwise>() || isa<mtc::AddOp>(op)) &&
        op->getNumResults() >= 1 &&
        llvm::all_of(op->getOperands(), [&](Value v) {
          return v.getType() == op->getOperand(0).getType();
        });
    if (rowwise) {
      // Run on the experts' side: every operand there, rows times ep.
      Value counts;
      for (Value v : op->getOperands())
        if (auto it = countsOf.find(v); it != countsOf.end())
          counts = it->second;
      b.setInsertionPoint(op);
      for (OpOperand &o : op->getOpOperands())
        o.set(toExperts(o.get(), counts, op->getLoc()));
      for (Value r : op->getResults()) {
        int64_t rows = cast<RankedTensorType>(r.getType()).getDimSize(0);
        r.setType(withDim(r.getType(), 0, rows * ep));
        countsOf[r] = counts;
      }
      return success();
    }
    b.setInsertionPoint(op);
    for (OpOperand &o : op->getOpOperands())
      if (countsOf.count(o.get()))
        o.set(toTokens(o.get(), op->getLoc()));
    return success();
  }

  LogicalResult rewriteGrouped(Operation *op) {
    // Operands: rows..., [weight], counts, [bias]; the counts operand is the
    // permute's.
    OpOperand *countsOperand = nullptr;
    for (OpOperand &o : op->getOpOperands())
      if (routing.count(o.get()))
        countsOperand = &o;
    if (!countsOperand)
      return op->emitOpError("expert parallelism: its counts do not come from "
                             "an mtc.moe_permute of this function");
    Value counts = countsOperand->get();
    b.setInsertionPoint(op);
    for (OpOperand &o : op->getOpOperands()) {
      if (&o == countsOperand || paramOf(o.get()) ||
          !isa<RankedTensorType>(o.get().getType()))
        continue; // the counts, the experts' parameters, a bias rank index
      o.set(toExperts(o.get(), counts, op->getLoc()));
    }
    countsOperand->set(routing[counts].local);
    Value r = op->getResult(0);
    auto t = cast<RankedTensorType>(r.getType());
    if (isa<mtc::GroupedMatmulOp>(op)) {
      r.setType(withDim(t, 0, t.getDimSize(0) * ep));
      countsOf[r] = counts;
    } else {
      r.setType(withDim(t, 0, t.getDimSize(0) / ep)); // local experts' grads
    }
    return success();
  }

  Value toExperts(Value v, Value counts, Location loc) {
    if (countsOf.count(v))
      return v;
    if (auto it = dispatched.find(v); it != dispatched.end())
      return it->second;
    auto t = cast<RankedTensorType>(v.getType());
    Value d = mtc::MoeDispatchOp::create(
        b, loc, withDim(t, 0, t.getDimSize(0) * ep), v, counts,
        routing[counts].received, gridRef, axes);
    dispatched[v] = d;
    return d;
  }

  Value toTokens(Value v, Location loc) {
    if (auto it = combined.find(v); it != combined.end())
      return it->second;
    Value counts = countsOf[v];
    auto t = cast<RankedTensorType>(v.getType());
    Value c = mtc::MoeCombineOp::create(
        b, loc, withDim(t, 0, t.getDimSize(0) / ep), v, counts,
        routing[counts].received, gridRef, axes);
    combined[v] = c;
    return c;
  }

  func::FuncOp fn;
  int64_t ep;
  const llvm::StringSet<> &experts;
  OpBuilder b;
  FlatSymbolRefAttr gridRef;
  DenseI16ArrayAttr axes;
  llvm::DenseMap<Value, Routing> routing;  // a permute's counts
  llvm::DenseMap<Value, Value> countsOf;   // experts'-side value -> counts
  llvm::DenseMap<Value, Value> dispatched; // token side -> experts' side
  llvm::DenseMap<Value, Value> combined;   // experts' side -> token side
};

struct ShardExpertParallelPass
    : public mtc::impl::MtcShardExpertParallelBase<ShardExpertParallelPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    mtc::GridShape g = mtc::getGridShape(module);
    if (g.ep <= 1)
      return;
    if (g.pp > 1) {
      module.emitError("mtc-shard-expert-parallel: expert parallelism runs "
                       "with pp = 1 so far, got pp = ")
          << g.pp;
      return signalPassFailure();
    }
    if (g.dp % g.ep != 0) {
      module.emitError("mtc-shard-expert-parallel: ep = ")
          << g.ep << " must divide dp = " << g.dp;
      return signalPassFailure();
    }
    shard::GridOp grid = mtc::getOrCreateExpertGrid(module);

    // The experts' parameters: what the grouped GEMMs read as weights and
    // biases.
    llvm::StringSet<> experts;
    module.walk([&](Operation *op) {
      if (auto gm = dyn_cast<mtc::GroupedMatmulOp>(op)) {
        for (Value v : {gm.getRhs(), gm.getBias()})
          if (mtc::ParamOp p = paramOf(v))
            experts.insert(p.getName());
      }
    });
    if (experts.empty())
      return; // no MoE layer: nothing to split (the spec refuses this plan)

    for (auto fn : module.getOps<func::FuncOp>())
      if (failed(FunctionRewriter(fn, grid, g.ep, experts).run()))
        return signalPassFailure();

    auto opt = module.lookupSymbol<func::FuncOp>("optimizer_step");
    if (!opt)
      return;
    SmallVector<StringRef> names;
    for (auto &e : experts)
      names.push_back(e.getKey());
    llvm::sort(names);
    OpBuilder b(module.getContext());
    SmallVector<Attribute> nameAttrs;
    for (StringRef n : names)
      nameAttrs.push_back(b.getStringAttr(n));
    ArrayAttr list = b.getArrayAttr(nameAttrs);
    auto gridRef = FlatSymbolRefAttr::get(grid.getSymNameAttr());
    bool sharded = false;
    for (auto r :
         llvm::make_early_inc_range(opt.getOps<mtc::ReduceGradientsOp>())) {
      if (r.getParams())
        continue;
      // The experts' gradients: summed over the ranks holding the same
      // experts, divided by all dp ranks (each ep rank's sum already covers
      // the tokens of its ep group). With the distributed optimizer the
      // experts' optimizer state is sharded over those ranks likewise, and
      // gathered over them after the update.
      sharded = r.getShardOptimizerState();
      b.setInsertionPointAfter(r);
      auto edp = b.getDenseI16ArrayAttr({mtc::kExpertAxisEDP});
      mtc::ReduceGradientsOp::create(
          b, NameLoc::get(b.getStringAttr("expert_data_parallel"), r.getLoc()),
          gridRef, edp, sharded ? b.getUnitAttr() : UnitAttr(), list,
          b.getI64IntegerAttr(g.dp));
      if (sharded) {
        b.setInsertionPoint(opt.getBody().front().getTerminator());
        mtc::AllGatherParamsOp::create(
            b,
            NameLoc::get(b.getStringAttr("expert_distributed_optimizer"),
                         r.getLoc()),
            gridRef, edp);
      }
    }
    // Sharded over edp, a rank's share of the experts is distinct from
    // every other dp rank's: the norm's sum over dp counts each once.
    if (!sharded)
      opt.walk(
          [&](mtc::GradNormOp n) { n->setAttr("ep_split_params", list); });
  }
};

} // namespace
