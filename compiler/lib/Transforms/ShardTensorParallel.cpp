//===- ShardTensorParallel.cpp - -mtc-shard-tensor-parallel ----------------===//
//
// Megatron's tensor-parallel plan, as annotations only (policy): which
// parameters are split over the grid's tp axis, and how. The partitioner
// (mtc-partition) derives every local shape and collective from them.
//
// Steps, over the forward ops of every function:
//  1. Column-parallel (weight and bias split on their output dimension 0):
//     the matmul producing attention's fused QKV (through rope), the matmuls
//     feeding GELU / SwiGLU, and the LM head feeding cross-entropy.
//  2. Row-parallel (weight split on its input dimension 1; the bias stays
//     whole and is added once, after the reduction): the matmuls consuming
//     attention's output or the activation (through dropout).
//  3. Vocabulary-parallel: embedding tables split on dimension 0 (a tied LM
//     head is the same parameter, hence also vocabulary-parallel).
// Backward ops use the same parameter values, so they need no annotation.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Grid.h"
#include "mtc/Transforms/Passes.h"

namespace mtc {
#define GEN_PASS_DEF_MTCSHARDTENSORPARALLEL
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;

namespace {

/// The parameter behind `v`, looking through an existing annotation.
mtc::ParamOp paramOf(Value v) {
  if (auto s = v.getDefiningOp<shard::ShardOp>())
    v = s.getSrc();
  return v.getDefiningOp<mtc::ParamOp>();
}

/// The linear layer (matmul of an activation with an (out, in) parameter)
/// producing `v`, looking through rope and dropout.
mtc::MatmulOp producingLinear(Value v) {
  while (Operation *def = v.getDefiningOp()) {
    if (isa<mtc::RopeOp, mtc::DropoutOp>(def)) {
      v = def->getOperand(0);
      continue;
    }
    auto mm = dyn_cast<mtc::MatmulOp>(def);
    if (mm && !mm.getTransposeA() && mm.getTransposeB() && paramOf(mm.getRhs()))
      return mm;
    return nullptr;
  }
  return nullptr;
}

/// The linear layers consuming `v` as their input, looking through dropout.
void consumingLinears(Value v, SmallVectorImpl<mtc::MatmulOp> &out) {
  for (Operation *user : v.getUsers()) {
    if (auto d = dyn_cast<mtc::DropoutOp>(user)) {
      consumingLinears(d.getResult(), out);
      continue;
    }
    auto mm = dyn_cast<mtc::MatmulOp>(user);
    if (mm && mm.getLhs() == v && !mm.getTransposeA() && mm.getTransposeB() &&
        paramOf(mm.getRhs()))
      out.push_back(mm);
  }
}

struct ShardTensorParallelPass
    : public mtc::impl::MtcShardTensorParallelBase<ShardTensorParallelPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (mtc::getGridShape(module).tp <= 1)
      return;
    mtc::getOrCreateGrid(module);
    bool ok = true;
    auto split = [&](Value param, int64_t dim) {
      ok &= succeeded(mtc::annotateSplit(param, {dim, mtc::kAxisTP}));
    };
    auto column = [&](mtc::MatmulOp mm) {
      if (!mm)
        return;
      split(paramOf(mm.getRhs()), 0);
      if (mm.getBias())
        if (mtc::ParamOp b = paramOf(mm.getBias()))
          split(b, 0);
    };
    auto row = [&](Value activation) {
      SmallVector<mtc::MatmulOp> consumers;
      consumingLinears(activation, consumers);
      for (mtc::MatmulOp mm : consumers)
        split(paramOf(mm.getRhs()), 1);
    };

    module.walk([&](Operation *op) {
      if (auto att = dyn_cast<mtc::AttentionOp>(op)) {
        column(producingLinear(att.getQkv()));
        row(att.getResult());
      } else if (op->hasTrait<mtc::OpTrait::MlpActivation>()) {
        // gelu, swiglu (gate and up), squared_relu.
        for (Value in : op->getOperands())
          column(producingLinear(in));
        row(op->getResult(0));
      } else if (auto emb = dyn_cast<mtc::EmbeddingOp>(op)) {
        if (mtc::ParamOp table = paramOf(emb.getTable()))
          split(table, 0);
      } else if (auto ce = dyn_cast<mtc::CrossEntropyOp>(op)) {
        if (auto mm = dyn_cast_or_null<mtc::MatmulOp>(
                ce.getLogits().getDefiningOp()))
          if (!mm.getTransposeA() && mm.getTransposeB() && paramOf(mm.getRhs()))
            split(paramOf(mm.getRhs()), 0);
      }
    });
    if (!ok)
      signalPassFailure();
  }
};

} // namespace
