//===- MtcExpertParallel.cpp - the expert-parallel exchange ops' verifiers
//-===//
//
// mtc.moe_exchange_counts, mtc.moe_dispatch and mtc.moe_combine (MtcOps.td,
// "Expert parallelism"): the all-to-all of permuted rows between the ranks of
// an `ep` axis. mtc-shard-expert-parallel inserts them after autodiff
// (compiler/lib/Transforms/ShardExpertParallel.cpp); the host code generator
// calls mtc::rt::grid::moe_* (runtime/include/mtc/rt/grid_ops.h) for them.
//
//===----------------------------------------------------------------------===//
#include "mtc/Dialect/MtcDialect.h"

using namespace mlir;
using namespace mtc;

namespace {
ArrayRef<int64_t> shapeOf(Value v) {
  return cast<RankedTensorType>(v.getType()).getShape();
}

/// One grid axis; counts (E) and received (ep, L) with ep * L == E.
LogicalResult verifyExchange(Operation *op, ArrayRef<int16_t> axes,
                             Value counts, Value received) {
  if (axes.size() != 1 || axes[0] < 0)
    return op->emitOpError("exchanges over exactly one grid axis (the "
                           "expert-parallel one), got ")
           << axes.size() << " axes";
  auto c = shapeOf(counts), r = shapeOf(received);
  if (c.size() != 1 || c[0] < 1)
    return op->emitOpError("counts must be (num_experts)");
  if (r.size() != 2 || r[0] < 1 || r[0] * r[1] != c[0])
    return op->emitOpError("received must be (ep, num_experts / ep) = (ep, ")
           << "L) with ep * L = " << c[0] << " experts";
  return success();
}

/// rows (N, D) on the token side, (ep * N, D) on the expert side.
LogicalResult verifyRows(Operation *op, Value tokenSide, Value expertSide,
                         int64_t ep) {
  auto t = shapeOf(tokenSide), e = shapeOf(expertSide);
  if (t.size() != 2 || e.size() != 2 || t[1] != e[1] || e[0] != ep * t[0])
    return op->emitOpError("the rows must be (N, D) on the sending side and "
                           "(ep * N, D) = (")
           << ep << " * N, D) on the experts' side";
  if (getElementTypeOrSelf(tokenSide) != getElementTypeOrSelf(expertSide))
    return op->emitOpError("input and result must have one element type");
  return success();
}
} // namespace

// Checks: verifyExchange; local_counts (L).
LogicalResult MoeExchangeCountsOp::verify() {
  if (failed(verifyExchange(*this, getGridAxes(), getCounts(), getReceived())))
    return failure();
  auto l = shapeOf(getLocalCounts());
  if (l.size() != 1 || l[0] != shapeOf(getReceived())[1])
    return emitOpError("local_counts must be (num_experts / ep)");
  return success();
}

// Checks: verifyExchange; input (N, D), result (ep * N, D).
LogicalResult MoeDispatchOp::verify() {
  if (failed(verifyExchange(*this, getGridAxes(), getCounts(), getReceived())))
    return failure();
  return verifyRows(*this, getInput(), getResult(), shapeOf(getReceived())[0]);
}

// Checks: verifyExchange; input (ep * N, D), result (N, D).
LogicalResult MoeCombineOp::verify() {
  if (failed(verifyExchange(*this, getGridAxes(), getCounts(), getReceived())))
    return failure();
  return verifyRows(*this, getResult(), getInput(), shapeOf(getReceived())[0]);
}
