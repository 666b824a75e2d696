//===- AssignPrecision.cpp - -mtc-assign-precision --------------------------===//
//
// Writes mtc.storage on every op with floating-point tensor results (see
// Passes.td): bf16, except attention's log-sum-exp, the loss and the
// collectives of fp32 values, which stay fp32. Ops are visited in program
// order, so a collective reads its operand's decision.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Lowering.h"
#include "mtc/Transforms/Passes.h"

#include "mlir/Dialect/Shard/IR/ShardOps.h"

namespace mtc {
#define GEN_PASS_DEF_MTCASSIGNPRECISION
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;

namespace {

bool isFloatTensor(Type t) {
  auto r = dyn_cast<RankedTensorType>(t);
  return r && isa<FloatType>(r.getElementType());
}

bool keptF32(Value v) {
  Operation *def = v.getDefiningOp();
  if (auto a = dyn_cast<mtc::AttentionOp>(def))
    return v == a.getLse();
  if (isa<shard::AllReduceOp, shard::AllGatherOp, shard::AllSliceOp,
          shard::ReduceScatterOp>(def))
    return mtc::lowering::storedF32(def->getOperand(0));
  return isa<mtc::CrossEntropyOp>(def);
}

struct AssignPrecision
    : mtc::impl::MtcAssignPrecisionBase<AssignPrecision> {
  void runOnOperation() override {
    getOperation().walk([](Operation *op) {
      if (!llvm::any_of(op->getResultTypes(), isFloatTensor))
        return;
      for (Value r : op->getResults())
        mtc::lowering::setResultString(
            r, mtc::lowering::kStorage,
            !isFloatTensor(r.getType()) ? "" : keptF32(r) ? "f32" : "bf16");
    });
  }
};

} // namespace
