//===- PlaceCollectives.cpp - -mtc-place-collectives -----------------------===//
//
// Where the CUDA program's tensor-parallel all-reduces run, and what runs
// inside them (mtc.early_start, mtc.reduce_then, mtc.partial_rows; see
// Passes.td). After mtc-fuse-kernels, whose decisions it reads. One walk in
// program order over the all-reduces that run in place on one grid axis and
// whose input's producer is executed by itself (not fused into another op,
// not the op that runs a fused group):
//  1. it starts early: right after its producer, on the axis's stream;
//  2. a bf16 sum over tp at tp = 2 without dp or pp, whose one use is the
//     input gradient of a norm's backward that adds into the residual
//     stream's gradient (norm_into_residual), runs that backward on each
//     rank's half of the rows between the sum and the exchange
//     ("norm_backward"): the norm is fused into it; its gamma/beta
//     gradients, partial over the half, and the row-parallel bias gradient
//     summed from the new residual gradient's rows, get rows of one fp32
//     buffer summed over tp once per step (mtc.partial_rows; one width for
//     all rows, each row a distinct parameter);
//  3. else a bf16 sum over tp whose one use (through a rank-zero bias add)
//     is a residual add adds the residual in its own sum ("residual_add"):
//     the add is fused into it.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Grid.h"
#include "mtc/Transforms/Lowering.h"
#include "mtc/Transforms/Passes.h"

#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/IR/Builders.h"

namespace mtc {
#define GEN_PASS_DEF_MTCPLACECOLLECTIVES
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;
namespace lw = mtc::lowering;
using lw::fusedAway;
using lw::sinks;

namespace {

int64_t numel(Value v) {
  return cast<RankedTensorType>(v.getType()).getNumElements();
}
int64_t lastDim(Value v) {
  return cast<RankedTensorType>(v.getType()).getShape().back();
}
Value otherOperand(mtc::AddOp add, Value v) {
  return add.getLhs() == v ? add.getRhs() : add.getLhs();
}

class Placer {
public:
  Placer(mtc::GridShape grid, bool backwardLanes)
      : grid(grid), backwardLanes(backwardLanes) {}
  void place(Block &block);

private:
  bool normBackwardInside(shard::AllReduceOp ar);
  bool residualAddInside(shard::AllReduceOp ar);

  mtc::GridShape grid;
  bool backwardLanes;
  // The partial-gradient buffer's rows (their parameters) and width.
  SmallVector<std::string> partialRows;
  int64_t partialWidth = 0;
};

void Placer::place(Block &block) {
  partialRows.clear(); // per function; the width is the program's
  Builder b(block.getParentOp()->getContext());
  for (Operation &op : block) {
    auto ar = dyn_cast<shard::AllReduceOp>(op);
    if (!ar || !lw::inPlaceOperand(ar.getResult()) ||
        ar.getGridAxes().size() != 1)
      continue;
    Operation *producer = ar.getInput().getDefiningOp();
    StringRef hostKind = producer ? lw::fusionOf(producer) : "";
    if (!producer || !lw::fusedOf(producer).empty() ||
        hostKind == lw::kMatmulGelu || hostKind == lw::kEmbeddingPosition ||
        hostKind == lw::kCrossEntropyGrad)
      continue;
    ar->setAttr(lw::kEarlyStart, b.getUnitAttr());
    if (ar.getGridAxes()[0] != mtc::kAxisTP || lw::storedF32(ar.getResult()))
      continue;
    if (!normBackwardInside(ar))
      residualAddInside(ar);
  }
}

bool Placer::normBackwardInside(shard::AllReduceOp ar) {
  if (grid.tp != 2 || grid.dp != 1 || grid.pp != 1 ||
      !ar.getResult().hasOneUse())
    return false;
  Operation *norm = *ar.getResult().getUsers().begin();
  Value dout;
  if (auto ln = dyn_cast<mtc::LayerNormGradOp>(norm))
    dout = ln.getDout();
  else if (auto rn = dyn_cast<mtc::RmsNormGradOp>(norm))
    dout = rn.getDout();
  if (dout != ar.getResult() || lw::fusionOf(norm) != lw::kNormIntoResidual)
    return false;
  Value dx = norm->getResult(0);
  auto add = dyn_cast<mtc::AddOp>(*dx.getUsers().begin());
  Value dgamma = norm->getResult(1);
  Value dbeta = isa<mtc::LayerNormGradOp>(norm) ? norm->getResult(2) : Value();
  bool withBeta = dbeta && !dbeta.use_empty();
  int64_t rows = numel(dx) / lastDim(dx);
  if (!add || !sinks(dgamma) || (withBeta && !sinks(dbeta)) ||
      rows % (backwardLanes ? 4 : 2) != 0) // halves (of each lane's)
    return false;
  int64_t d = lastDim(dx);
  if (partialWidth != 0 && partialWidth != d)
    return false; // the buffer's rows have one width
  // Each row goes to its own gradient (one launch adds them all): a norm
  // whose weights already have a row stays whole.
  auto hasRow = [&](Value g) {
    return llvm::is_contained(partialRows, lw::sinkOf(g).str());
  };
  if (hasRow(dgamma) || (withBeta && hasRow(dbeta)))
    return false;
  SmallVector<int64_t> slots = {int64_t(partialRows.size()), -1, -1};
  partialRows.push_back(lw::sinkOf(dgamma).str());
  if (withBeta) {
    slots[1] = partialRows.size();
    partialRows.push_back(lw::sinkOf(dbeta).str());
  }
  // The bias gradient of the row-parallel linear whose output gradient is
  // the new residual gradient (the column sums of the add's result).
  Builder b(ar.getContext());
  for (Operation *u : add.getResult().getUsers())
    if (auto r = dyn_cast<mtc::ReduceLeadingOp>(u))
      if (sinks(r.getResult()) && numel(r.getResult()) == d &&
          lw::fusedOf(r).empty() && slots[2] < 0 && !hasRow(r.getResult())) {
        slots[2] = partialRows.size();
        partialRows.push_back(lw::sinkOf(r.getResult()).str());
        r->setAttr(lw::kFused, b.getStringAttr(lw::kReduceNormBackward));
      }
  partialWidth = d;
  ar->setAttr(lw::kReduceThen, b.getStringAttr(lw::kReduceNormBackward));
  ar->setAttr(lw::kPartialRows, b.getDenseI64ArrayAttr(slots));
  norm->setAttr(lw::kFused, b.getStringAttr(lw::kReduceNormBackward));
  return true;
}

bool Placer::residualAddInside(shard::AllReduceOp ar) {
  // The sum's one use, through the row-parallel bias add on rank 0 (in
  // place), is a residual add.
  Value sum = ar.getResult();
  if (sum.hasOneUse())
    if (auto bias = dyn_cast<mtc::AddOp>(*sum.getUsers().begin()))
      if (lw::fusedOf(bias) == lw::kRankZeroBias)
        sum = bias.getResult();
  if (!sum.hasOneUse())
    return false;
  auto add = dyn_cast<mtc::AddOp>(*sum.getUsers().begin());
  if (!add || !lw::fusedOf(add).empty() || !lw::fusionOf(add).empty() ||
      sinks(add.getResult()) || lw::inPlaceOperand(add.getResult()) ||
      add.getLhs() == add.getRhs() || add.getType() != sum.getType())
    return false;
  Value residual = otherOperand(add, sum);
  if (residual.getType() != add.getType() || !residual.getDefiningOp() ||
      residual.getDefiningOp<mtc::ParamOp>() || fusedAway(residual) ||
      sinks(residual))
    return false;
  Builder b(ar.getContext());
  ar->setAttr(lw::kReduceThen, b.getStringAttr(lw::kReduceResidualAdd));
  add->setAttr(lw::kFused, b.getStringAttr(lw::kReduceResidualAdd));
  return true;
}

struct PlaceCollectives
    : mtc::impl::MtcPlaceCollectivesBase<PlaceCollectives> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    Placer placer(mtc::getGridShape(module),
                  module->hasAttr(mtc::kTpBackwardLanesAttr));
    for (auto fn : module.getOps<func::FuncOp>())
      if (!fn.isExternal())
        placer.place(fn.getBody().front());
  }
};

} // namespace
