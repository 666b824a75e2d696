//===- ShardDataParallel.cpp - -mtc-shard-data-parallel --------------------===//
//
// Data parallelism in the program: the micro-batch is already per rank
// (Megatron's convention; the runtime gives each dp rank its slice of the
// global batch), so the only change is that gradients are averaged over the
// dp group before the optimizer reads them: one `mtc.reduce_gradients` at
// the start of @optimizer_step.
//
// MoE expert biases (docs/moe.md): each dp rank (ep ranks are dp ranks)
// routed different tokens, so the loads their `mtc.moe_update_expert_bias`
// read are first summed over dp, `mtc.reduce_gradients {divisor = 1,
// params = [the biases]}` at the very start, and the gradients' reduction
// goes after the updates (which zero the loads' slots), so every rank
// moves its biases by the whole step's loads, as the one-process run does.
// Under tp every tp rank routed the same whole tokens: no sum over tp.
//
// With the spec's `parallel.distributed_optimizer` (Megatron's
// --use-distributed-optimizer, ZeRO stage 1) the reduction shards the
// optimizer state: `mtc.reduce_gradients ... shard_optimizer_state`
// reduce-scatters the flat gradient buffer over dp, the norm and AdamW that
// follow work on this rank's shard, and `mtc.all_gather_params` before the
// return hands every rank the updated parameters. Same math; each rank
// keeps AdamW moments for 1/dp of the parameters.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Grid.h"
#include "mtc/Transforms/Passes.h"

#include "mlir/IR/Builders.h"

namespace mtc {
#define GEN_PASS_DEF_MTCSHARDDATAPARALLEL
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;

namespace {
struct ShardDataParallelPass
    : public mtc::impl::MtcShardDataParallelBase<ShardDataParallelPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (mtc::getGridShape(module).dp <= 1)
      return;
    auto opt = module.lookupSymbol<func::FuncOp>("optimizer_step");
    if (!opt) {
      module.emitError("mtc-shard-data-parallel needs @optimizer_step (run "
                       "mtc-autodiff first)");
      return signalPassFailure();
    }
    if (!opt.getOps<mtc::ReduceGradientsOp>().empty())
      return;
    auto plan = module->getAttrOfType<DictionaryAttr>("mtc.parallel");
    auto distributed =
        plan ? plan.getAs<BoolAttr>("distributed_optimizer") : BoolAttr();
    bool shardState = distributed && distributed.getValue();
    shard::GridOp grid = mtc::getOrCreateGrid(module);
    Block &body = opt.getBody().front();
    OpBuilder b = OpBuilder::atBlockBegin(&body);
    auto gridRef = FlatSymbolRefAttr::get(b.getContext(), grid.getSymName());
    auto axes = b.getDenseI16ArrayAttr({mtc::kAxisDP});
    SmallVector<Attribute> biases;
    mtc::MoeUpdateExpertBiasOp lastUpdate;
    for (auto u : body.getOps<mtc::MoeUpdateExpertBiasOp>()) {
      biases.push_back(u.getParamAttr());
      lastUpdate = u;
    }
    if (lastUpdate) {
      mtc::ReduceGradientsOp::create(
          b, NameLoc::get(b.getStringAttr("expert_loads"), module.getLoc()),
          gridRef, axes, UnitAttr(), b.getArrayAttr(biases),
          b.getI64IntegerAttr(1));
      b.setInsertionPointAfter(lastUpdate);
    }
    auto reduce = mtc::ReduceGradientsOp::create(
        b, NameLoc::get(b.getStringAttr("data_parallel"), module.getLoc()),
        gridRef, axes, UnitAttr(), ArrayAttr(), IntegerAttr());
    if (!shardState)
      return;
    reduce.setShardOptimizerState(true);
    b.setInsertionPoint(body.getTerminator());
    mtc::AllGatherParamsOp::create(
        b,
        NameLoc::get(b.getStringAttr("distributed_optimizer"), module.getLoc()),
        gridRef, axes);
  }
};
} // namespace
