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
// An MoE layer's experts (grouped GEMMs of stacked (E, out, in) weights,
// docs/moe.md) are linears too, as in Megatron with expert tp = tp: the
// ones feeding the activation column-parallel (weight split on dimension 1,
// bias (E, out) on 1), the one after it row-parallel (weight on 2, bias
// whole). The router stays whole: every rank routes the same tokens alike.
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

using mtc::paramOf;

/// A linear layer: an activation times a parameter stored (out, in)
/// (mtc.matmul with transpose_b), or stacked per expert (E, out, in)
/// (mtc.grouped_matmul with transpose_b). Null members when `op` is not one.
struct Linear {
  Operation *op = nullptr;
  Value input, weight, bias;
  explicit operator bool() const { return op; }
};

Linear asLinear(Operation *op) {
  if (auto mm = dyn_cast_or_null<mtc::MatmulOp>(op))
    if (!mm.getTransposeA() && mm.getTransposeB() && paramOf(mm.getRhs()))
      return {op, mm.getLhs(), mm.getRhs(), mm.getBias()};
  if (auto g = dyn_cast_or_null<mtc::GroupedMatmulOp>(op))
    if (g.getTransposeB() && paramOf(g.getRhs()))
      return {op, g.getLhs(), g.getRhs(), g.getBias()};
  return {};
}

/// The linear layer producing `v`, looking through rope and dropout.
Linear producingLinear(Value v) {
  while (Operation *def = v.getDefiningOp()) {
    if (isa<mtc::RopeOp, mtc::DropoutOp>(def)) {
      v = def->getOperand(0);
      continue;
    }
    return asLinear(def);
  }
  return {};
}

/// The linear layers consuming `v` as their input, looking through dropout.
void consumingLinears(Value v, SmallVectorImpl<Linear> &out) {
  for (Operation *user : v.getUsers()) {
    if (auto d = dyn_cast<mtc::DropoutOp>(user)) {
      consumingLinears(d.getResult(), out);
      continue;
    }
    if (Linear l = asLinear(user); l && l.input == v)
      out.push_back(l);
  }
}

int64_t rankOf(Value v) { return cast<RankedTensorType>(v.getType()).getRank(); }

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
    // The output dimension is the weight's second to last (0 of (out, in),
    // 1 of (E, out, in)) and the bias's last; the input dimension the
    // weight's last.
    auto column = [&](Linear l) {
      if (!l)
        return;
      split(paramOf(l.weight), rankOf(l.weight) - 2);
      if (l.bias)
        if (mtc::ParamOp b = paramOf(l.bias))
          split(b, rankOf(l.bias) - 1);
    };
    auto row = [&](Value activation) {
      SmallVector<Linear> consumers;
      consumingLinears(activation, consumers);
      for (Linear l : consumers)
        split(paramOf(l.weight), rankOf(l.weight) - 1);
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
