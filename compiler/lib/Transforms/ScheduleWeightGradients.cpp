//===- ScheduleWeightGradients.cpp - -mtc-schedule-weight-gradients -------===//
//
// In the backward pass of a tensor-parallel layer, the input gradient of a
// column-parallel linear is all-reduced over tp before the layer norm below
// it can run. Autodiff emits, per linear, the input-gradient GEMM, then the
// weight-gradient GEMM and bias sum, then the all-reduce; the code
// generators start the all-reduce right after its input's producer and wait
// where it stands, so only that one linear's weight-gradient work runs
// beside it (Megatron's overlap), which at tp = 2 on the 1.3B GPT hides
// about half of the communication.
//
// This pass moves more work into that window: every weight-gradient op
// that stands before the producer (and after the previous window closed)
// moves to just after the producer, e.g. the second MLP linear's weight
// gradient joins the first one's beside the all-reduce. "Weight-gradient
// op": an op whose results reach nothing but gradient buffers
// (accumulate_grad), of the kinds autodiff emits for that (matmul with
// transpose_a, reduce_leading, add, accumulate_grad, and collectives of
// gradients such as sequence parallelism's norm-weight sums). Such ops only read
// values defined before them, and nothing but other such ops reads theirs,
// so moving them later in their block changes no value; they keep their
// relative order, so no gradient's accumulation order changes either.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Passes.h"

#include "mlir/Dialect/Shard/IR/ShardOps.h"

namespace mtc {
#define GEN_PASS_DEF_MTCSCHEDULEWEIGHTGRADIENTS
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;

namespace {

bool isCollective(Operation *op) {
  return isa<shard::AllReduceOp, shard::AllGatherOp, shard::ReduceScatterOp>(
      op);
}

bool isWeightGradientKind(Operation *op) {
  if (auto mm = dyn_cast<mtc::MatmulOp>(op))
    return mm.getTransposeA();
  return isa<mtc::AccumulateGradOp, mtc::ReduceLeadingOp, mtc::AddOp>(op) ||
         isCollective(op);
}

void schedule(Block &block) {
  // Weight-gradient ops, found from the block's end: every user is one.
  llvm::DenseSet<Operation *> weightGrad;
  for (Operation &op : llvm::reverse(block)) {
    if (!isWeightGradientKind(&op))
      continue;
    bool onlyGradients = llvm::all_of(op.getUsers(), [&](Operation *u) {
      return weightGrad.count(u) != 0;
    });
    if (onlyGradients)
      weightGrad.insert(&op);
  }
  // Activation collectives (those not of gradients, e.g. not sequence
  // parallelism's sums of norm-weight gradients) whose input is produced in
  // the block: each opens a window at its producer and closes it where it
  // stands.
  llvm::DenseMap<Operation *, int> opens;
  llvm::DenseSet<Operation *> closes;
  for (Operation &op : block) {
    if (!isCollective(&op) || weightGrad.count(&op))
      continue;
    Operation *def = op.getOperand(0).getDefiningOp();
    if (def && def->getBlock() == &block) {
      ++opens[def];
      closes.insert(&op);
    }
  }

  SmallVector<Operation *> pending;
  int openWindows = 0;
  for (Operation &op : llvm::make_early_inc_range(block)) {
    if (weightGrad.count(&op) && openWindows == 0) {
      pending.push_back(&op);
      continue;
    }
    if (int n = opens.lookup(&op)) {
      Operation *at = &op;
      for (Operation *p : pending) {
        p->moveAfter(at);
        at = p;
      }
      pending.clear();
      openWindows += n;
    }
    if (closes.count(&op))
      --openWindows;
  }
}

struct ScheduleWeightGradientsPass
    : public mtc::impl::MtcScheduleWeightGradientsBase<
          ScheduleWeightGradientsPass> {
  void runOnOperation() override {
    for (auto fn : getOperation().getOps<func::FuncOp>())
      if (!fn.getBody().empty())
        schedule(fn.getBody().front());
  }
};

} // namespace
