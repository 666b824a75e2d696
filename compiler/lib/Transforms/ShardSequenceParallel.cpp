//===- ShardSequenceParallel.cpp - -mtc-shard-sequence-parallel ------------===//
//
// Sequence parallelism is a policy about activations, not parameters: it
// marks the functions `mtc.sequence_parallel`; mtc-partition then keeps
// (B, S, D) activations outside the tensor-parallel regions split along S
// (see Partition.cpp). It needs tensor parallelism (the spec validator
// refuses sp without tp > 1) and sequences that split evenly over tp.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Grid.h"
#include "mtc/Transforms/Passes.h"

namespace mtc {
#define GEN_PASS_DEF_MTCSHARDSEQUENCEPARALLEL
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;

namespace {
struct ShardSequenceParallelPass
    : public mtc::impl::MtcShardSequenceParallelBase<ShardSequenceParallelPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto plan = module->getAttrOfType<DictionaryAttr>("mtc.parallel");
    auto sp = plan ? plan.getAs<BoolAttr>("sp") : BoolAttr();
    // The module verifier refuses sp without tp > 1.
    if (!sp || !sp.getValue())
      return;
    for (auto fn : module.getOps<func::FuncOp>())
      fn->setAttr("mtc.sequence_parallel", UnitAttr::get(module.getContext()));
  }
};
} // namespace
