//===- SinkGradients.cpp - -mtc-sink-gradients -----------------------------===//
//
// Marks the parameter gradients whose producers accumulate them into the
// fp32 gradient buffer (mtc.sink). The steps are listed in Passes.td; per
// function:
//  1. Candidates, backwards from each accumulate_grad: its gradient if used
//     once, through single-use adds, and through one collective that sums
//     over tp (or gathers along dimension 0).
//  2. Forward: a candidate sinks if its producer can accumulate (a matmul
//     with transpose_a and no bias, a norm gradient's gamma/beta result,
//     embedding_grad, reduce_leading, an MoE layer's grouped weight and
//     bias gradients), if it is an add of two sinking
//     values, or if it is such a collective of a sinking value.
//  3. Backward: the operands of an add that does not sink are stored.
//  4. A collective that sinks runs on the parameter's accumulated buffer,
//     so it must be the parameter's only contribution; otherwise it and
//     its operand are stored.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Lowering.h"
#include "mtc/Transforms/Passes.h"

#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "llvm/ADT/StringMap.h"

namespace mtc {
#define GEN_PASS_DEF_MTCSINKGRADIENTS
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;

namespace {

/// A single-axis sum over tp whose input feeds nothing else (or a gather
/// along dimension 0): a gradient collective that can run on the
/// accumulated buffer instead.
bool isGradCollective(Operation *op) {
  if (auto ar = dyn_cast_or_null<shard::AllReduceOp>(op))
    return ar.getGridAxes().size() == 1 &&
           ar.getReduction() == shard::ReductionKind::Sum &&
           ar.getInput().hasOneUse();
  if (auto ag = dyn_cast_or_null<shard::AllGatherOp>(op))
    return ag.getGridAxes().size() == 1 &&
           ag.getGatherAxis().getSExtValue() == 0 &&
           ag.getInput().hasOneUse();
  return false;
}

/// The producer of `v` can accumulate it into an fp32 buffer.
bool canAccumulate(Value v) {
  Operation *def = v.getDefiningOp();
  if (!def)
    return false;
  if (auto mm = dyn_cast<mtc::MatmulOp>(def))
    return mm.getTransposeA() && !mm.getBias();
  if (auto ln = dyn_cast<mtc::LayerNormGradOp>(def))
    return v != ln.getDinput();
  if (auto rn = dyn_cast<mtc::RmsNormGradOp>(def))
    return v != rn.getDinput();
  return isa<mtc::EmbeddingGradOp, mtc::ReduceLeadingOp,
             mtc::GroupedMatmulWgradOp, mtc::GroupedBiasGradOp>(def);
}

void sinkGradients(Block &block) {
  // 1. Candidates.
  llvm::DenseMap<Value, std::string> tentative;
  for (Operation &op : llvm::reverse(block)) {
    if (auto acc = dyn_cast<mtc::AccumulateGradOp>(op)) {
      Value g = acc.getGrad();
      if (!g.hasOneUse())
        continue;
      tentative[g] = acc.getParam().str();
      if (isGradCollective(g.getDefiningOp()))
        tentative[g.getDefiningOp()->getOperand(0)] = acc.getParam().str();
    } else if (auto add = dyn_cast<mtc::AddOp>(op)) {
      auto it = tentative.find(add.getResult());
      if (it == tentative.end() || add.getLhs() == add.getRhs())
        continue;
      for (Value v : {add.getLhs(), add.getRhs()})
        if (v.hasOneUse() && v.getType() == add.getType())
          tentative[v] = it->second;
    }
  }
  // 2. Forward.
  llvm::DenseMap<Value, std::string> sink;
  for (Operation &op : block)
    for (Value r : op.getResults()) {
      auto it = tentative.find(r);
      if (it == tentative.end())
        continue;
      auto add = dyn_cast<mtc::AddOp>(op);
      if (canAccumulate(r) ||
          (add && sink.count(add.getLhs()) && sink.count(add.getRhs())) ||
          (isGradCollective(&op) && sink.count(op.getOperand(0))))
        sink[r] = it->second;
    }
  // 3. Backward.
  for (Operation &op : llvm::reverse(block))
    if (auto add = dyn_cast<mtc::AddOp>(op))
      if (!sink.count(add.getResult()))
        for (Value v : {add.getLhs(), add.getRhs()})
          if (v.getDefiningOp<mtc::AddOp>() || !canAccumulate(v))
            sink.erase(v);
  // 4. A collective must be its parameter's only contribution.
  struct ParamUse {
    bool plain = false; // some contribution is not a collective
    SmallVector<Operation *> collectives;
  };
  llvm::StringMap<ParamUse> uses;
  for (auto acc : block.getOps<mtc::AccumulateGradOp>()) {
    ParamUse &u = uses[acc.getParam()];
    Operation *def = acc.getGrad().getDefiningOp();
    if (sink.count(acc.getGrad()) && isGradCollective(def))
      u.collectives.push_back(def);
    else
      u.plain = true;
  }
  for (auto &it : uses)
    if (it.second.plain || it.second.collectives.size() > 1)
      for (Operation *c : it.second.collectives) {
        sink.erase(c->getResult(0));
        sink.erase(c->getOperand(0));
      }
  // Written in program order, so the IR does not depend on hash order. A
  // sinking value is not stored ("none" replaces mtc-assign-precision's
  // choice).
  for (Operation &op : block)
    for (Value r : op.getResults())
      if (auto it = sink.find(r); it != sink.end()) {
        mtc::lowering::setResultString(r, mtc::lowering::kSink, it->second);
        if (!mtc::lowering::resultString(r, mtc::lowering::kStorage).empty())
          mtc::lowering::setResultString(r, mtc::lowering::kStorage, "none");
      }
}

struct SinkGradients : mtc::impl::MtcSinkGradientsBase<SinkGradients> {
  void runOnOperation() override {
    for (auto fn : getOperation().getOps<func::FuncOp>())
      if (!fn.isExternal())
        sinkGradients(fn.getBody().front());
  }
};

} // namespace
