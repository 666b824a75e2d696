//===- ShardDataParallel.cpp - -mtc-shard-data-parallel --------------------===//
//
// Data parallelism in the program: the micro-batch is already per rank
// (Megatron's convention; the runtime gives each dp rank its slice of the
// global batch), so the only change is that gradients are averaged over the
// dp group before the optimizer reads them: one `mtc.reduce_gradients` at
// the start of @optimizer_step.
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
    shard::GridOp grid = mtc::getOrCreateGrid(module);
    OpBuilder b = OpBuilder::atBlockBegin(&opt.getBody().front());
    mtc::ReduceGradientsOp::create(
        b, NameLoc::get(b.getStringAttr("data_parallel")),
        FlatSymbolRefAttr::get(b.getContext(), grid.getSymName()),
        b.getDenseI16ArrayAttr({mtc::kAxisDP}));
  }
};
} // namespace
