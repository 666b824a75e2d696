//===- CudaLanes.cpp - the forward pass in two half-batch lanes -----------===//
//
// With tensor parallelism the forward pass waits for two all-reduces per
// layer (after the attention output and the second MLP linear) with
// nothing to run beside them. Every op of a GPT layer's forward pass works
// on rows (tokens) or on whole sequences, so the microbatch splits into two
// halves of its sequences that need nothing from each other until the
// loss: lane 0 runs its half on the compute stream, lane 1 on a second
// stream (a second k::Context). The ops are emitted staggered at the
// all-reduce waits (emitLaneRun): lane 0's ops up to its wait, lane 1's,
// lane 0's next piece, ... The all-reduces of both lanes go, in that
// order, to the tp axis's stream; while one lane waits for its all-reduce
// the other computes.
//
// Which ops run in lanes, and the runs, are mtc-assign-lanes's decisions
// (compiler/lib/Transforms/AssignLanes.cpp: what splits, what runs whole,
// which runs are kept); this file reads them and prints the lanes. The
// buffer plan keeps every value a forward run touches alive until the
// run's last op (ExecutionHints::concurrentRuns), since the lanes run out
// of step and a value freed by one lane may still be read by the other.
//
// `mtc compile --tp-lanes=one-stream` runs both lanes on the compute
// stream in that staggered order: each all-reduce still has the other
// lane's piece beside it, but the lanes' kernels do not run concurrently.
//
//===----------------------------------------------------------------------===//
#include "CudaEmitter.h"

#include "mtc/Transforms/Lowering.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;

namespace mtc::codegen {

// The lanes mtc-assign-lanes chose: the ops of each run, split in halves
// or whole, and the runs. A forward run's values stay live until its end
// (the lanes run out of step on two streams); a backward run is on one
// stream, where a value need only outlive the piece (see emitLaneRun) it
// is last used in: lane 1 runs that piece after lane 0.
void CudaEmitter::analyzeLanes(func::FuncOp fn) {
  laneOps.clear();
  laneWholeOps.clear();
  laneRuns.clear();
  hints.concurrentRuns.clear();
  SmallVector<Operation *> run;
  bool backward = false;
  for (Operation &op : fn.getBody().front()) {
    if (auto kind = op.getAttrOfType<StringAttr>(lowering::kLaneRun)) {
      run.clear();
      backward = kind.getValue() == lowering::kLaneRunBackward;
    }
    auto lane = op.getAttrOfType<StringAttr>(lowering::kLane);
    if (!lane)
      continue;
    (lane.getValue() == lowering::kLaneWhole ? laneWholeOps : laneOps)
        .insert(&op);
    run.push_back(&op);
    if (!op.hasAttr(lowering::kLaneRunEnd))
      continue;
    laneRuns.push_back({run.front(), run.back(), backward});
    if (!backward) {
      hints.concurrentRuns.push_back({run.front(), run.back()});
    } else {
      size_t begin = 0;
      for (size_t end = 1; end <= run.size(); ++end)
        if (end == run.size() || isa<shard::AllReduceOp>(run[end])) {
          hints.concurrentRuns.push_back({run[begin], run[end - 1]});
          begin = end;
        }
    }
  }
  usesLanes |= !laneOps.empty();
}

// Value v's half h: its storage from element h * numel / 2 (values that
// lead with the batch dimension hold half the sequences in each half).
std::string CudaEmitter::half(Value v, int h) {
  if (h == 0)
    return buf(v);
  return llvm::formatv("({0} + {1})", buf(v), numel(v) / 2).str();
}

// A kernel-table op's call (KernelOpInterface) for lane h: every value
// but the parameters at its half h, and the batch-proportional count
// halved.
std::string CudaEmitter::halfCall(Operation *op, int h) {
  auto call = kernelCall(op, [&](Value v) {
    return v.getDefiningOp<mtc::ParamOp>() ? buf(v) : half(v, h);
  });
  call->args[call->countArg] = std::to_string(call->count / 2);
  return formatCall(*call, h == 0 ? "ctx" : lane1Ctx);
}

// The call of lane h (0 or 1, on context ctx or lane1Ctx) of a lane op.
std::string CudaEmitter::laneCall(Operation *op, int h) {
  const char *c = h == 0 ? "ctx" : lane1Ctx;
  return llvm::TypeSwitch<Operation *, std::string>(op)
      .Case([&](mtc::MatmulOp m) -> std::string {
        return llvm::formatv(
            "k::matmul({0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, false, {8});", c,
            half(m.getLhs(), h), buf(m.getRhs()), matmulBias(m),
            half(m.getResult(), h), m.getM() / 2, m.getN(), m.getK(),
            m.getTransposeB());
      })
      .Case([&](mtc::GeluOp g) -> std::string {
        auto m = cast<mtc::MatmulOp>(fusedPartner.lookup(op));
        return llvm::formatv(
            "k::matmul_gelu({0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, false, "
            "{9});",
            c, half(m.getLhs(), h), buf(m.getRhs()), matmulBias(m),
            half(g.getResult(), h), half(m.getResult(), h), m.getM() / 2,
            m.getN(), m.getK(), m.getTransposeB());
      })
      .Case([&](mtc::AddOp a) -> std::string {
        int64_t n = numel(a.getResult()), nb = numel(a.getRhs());
        std::string rhs = nb == n ? half(a.getRhs(), h) : buf(a.getRhs());
        return llvm::formatv("k::add({0}, {1}, {2}, {3}, {4}, {5});", c,
                             half(a.getLhs(), h), rhs, half(a.getResult(), h),
                             n / 2, nb == n ? n / 2 : nb);
      })
      // The kernel table's ops (norms, attention, GELU backward): each
      // value at its half and the batch-proportional count halved.
      .Default([&](Operation *) { return halfCall(op, h); });
}

// A run of lane ops, staggered: the run is cut before each all-reduce (a
// lane's wait for its half), and the pieces go lane 0, lane 1, lane 0, ...
// So each lane's all-reduce has the other lane's piece to run beside it
// (in the GPT forward pass: lane 0's attention-output all-reduce beside
// lane 1's attention, lane 1's beside lane 0's MLP) even when both lanes
// share one stream (--tp-lanes=one-stream), where the ops of a piece run one
// after the other without competing for SMs. On two streams the order only
// sets when the host enqueues each piece; the tp stream gets the
// all-reduces in the same order either way.
//
// A backward run (oneStream) puts both lanes on the compute stream, and its
// weight-gradient work (laneWholeOps) runs whole where lane 1 passes it,
// once both lanes have computed what it reads.
LogicalResult CudaEmitter::emitLaneRun(ArrayRef<Operation *> run,
                                       bool oneStream, bool eval) {
  lane1Ctx = oneStream ? "ctx" : "ctx1";
  if (!oneStream)
    line("lane_fork(pc);");
  size_t begin = 0;
  for (size_t end = 1; end <= run.size(); ++end) {
    if (end < run.size() && !isa<shard::AllReduceOp>(run[end]))
      continue;
    for (int h = 0; h < 2; ++h)
      for (Operation *op : run.slice(begin, end - begin)) {
        if (laneWholeOps.count(op)) {
          if (h == 1) {
            if (failed(emitOp(op, eval)))
              return failure();
            emitAfterGradient(op, eval);
          }
          continue;
        }
        line(opLabel(op));
        if (auto ar = dyn_cast<shard::AllReduceOp>(op)) {
          line(llvm::formatv("axis_wait(pc, {0}, {1}, {2}.stream);",
                             ar.getGridAxes()[0],
                             2 * reduceSlot.lookup(op) + h,
                             h == 0 ? "ctx" : lane1Ctx));
          continue;
        }
        line(laneCall(op, h));
        emitReduceStarts(op, h);
      }
    begin = end;
  }
  if (!oneStream)
    line("lane_join(pc);");
  lane1Ctx = "ctx1";
  return success();
}

} // namespace mtc::codegen
