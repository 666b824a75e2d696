//===- AssignLanes.cpp - -mtc-assign-lanes ----------------------------------===//
//
// The CUDA program's half-batch lanes (mtc.lane, mtc.lane_run; see
// Passes.td). With tensor parallelism the forward pass waits for two
// all-reduces per layer with nothing to run beside them; every op of a GPT
// layer works on tokens or whole sequences, so the microbatch splits into
// two halves of its sequences that need nothing from each other until the
// loss, and one lane computes while the other's all-reduce flies. After
// mtc-place-collectives, whose decisions it reads. Per function (tp > 1, an
// even (B, S) token batch, no sequence parallelism), in program order up to
// the first cross-entropy (and past it with mtc.tp_backward_lanes):
//  1. an op whose values lead with the batch dimension and that the lanes
//     can halve (matmuls over rows, the fused matmul + GELU, layer norms,
//     attention without a mask and head size 64 or 128, adds of two
//     activations or of a parameter whose size divides a half; backward:
//     GELU and attention gradients) is "split", and so is an early
//     all-reduce of a split producer;
//  2. in the backward pass, weight-gradient work between split ops (a
//     weight-gradient matmul, a bias sum or an accumulation into a
//     gradient sink) runs "whole" inside the run;
//  3. parameters, index arithmetic and fused ops are transparent; any
//     other op ends the run;
//  4. a run with an all-reduce is kept (mtc.lane_run = "forward" on two
//     streams, "backward" on the compute stream, on its first op;
//     mtc.lane_run_end on its last); a run without one has nothing to
//     overlap and its ops stay whole.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Grid.h"
#include "mtc/Transforms/Lowering.h"
#include "mtc/Transforms/Pipeline.h"
#include "mtc/Transforms/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/TypeSwitch.h"

namespace mtc {
#define GEN_PASS_DEF_MTCASSIGNLANES
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;
namespace lw = mtc::lowering;
using lw::sinks;

namespace {

int64_t numel(Value v) {
  return cast<RankedTensorType>(v.getType()).getNumElements();
}
bool batchLeading(Value v, int64_t batch) {
  auto t = dyn_cast<RankedTensorType>(v.getType());
  return t && t.getRank() >= 2 && t.getDimSize(0) == batch;
}
bool isIndexArithmetic(Operation *op) {
  if (auto c = dyn_cast<arith::ConstantOp>(op))
    return isa<IntegerAttr>(c.getValue());
  return isa<arith::MulIOp, shard::ProcessMultiIndexOp>(op);
}

/// Step 1: the op can run as two halves of the batch.
bool splittable(Operation *op, int64_t batch) {
  return llvm::TypeSwitch<Operation *, bool>(op)
      .Case([&](mtc::MatmulOp m) {
        return !m.getTransposeA() && !sinks(m.getResult()) &&
               batchLeading(m.getLhs(), batch) &&
               batchLeading(m.getResult(), batch);
      })
      .Case([&](mtc::GeluOp g) {
        if (lw::fusionOf(g) != lw::kMatmulGelu)
          return false;
        auto m = g.getInput().getDefiningOp<mtc::MatmulOp>();
        return !m.getTransposeA() && batchLeading(m.getLhs(), batch) &&
               batchLeading(g.getResult(), batch);
      })
      .Case([&](mtc::LayerNormOp n) {
        return batchLeading(n.getInput(), batch);
      })
      .Case([&](mtc::AttentionOp a) {
        return !a.getMask() && batchLeading(a.getQkv(), batch) &&
               (a.getHeadDim() == 64 || a.getHeadDim() == 128);
      })
      .Case([&](mtc::AddOp a) {
        if (sinks(a.getResult()) || !lw::fusionOf(a).empty() ||
            !batchLeading(a.getResult(), batch) ||
            numel(a.getLhs()) != numel(a.getResult()))
          return false;
        int64_t n = numel(a.getResult()), nb = numel(a.getRhs());
        return nb == n || (nb < n && (n / 2) % nb == 0 &&
                           a.getRhs().getDefiningOp<mtc::ParamOp>());
      })
      .Case([&](mtc::GeluGradOp g) {
        return batchLeading(g.getInput(), batch) &&
               batchLeading(g.getDout(), batch) &&
               batchLeading(g.getResult(), batch);
      })
      .Case([&](mtc::AttentionGradOp a) {
        auto s = cast<RankedTensorType>(a.getQkv().getType()).getShape();
        int64_t dh = s[2] / (a.getHeads() + 2 * a.getKvHeads());
        return !a.getMask() && batchLeading(a.getQkv(), batch) &&
               (dh == 64 || dh == 128);
      })
      .Default([](Operation *) { return false; });
}

/// Step 2: weight-gradient work, whose results are gradient sinks only (no
/// lane op of the run reads them).
bool wholeInRun(Operation *op) {
  if (auto m = dyn_cast<mtc::MatmulOp>(op))
    return sinks(m.getResult());
  if (auto r = dyn_cast<mtc::ReduceLeadingOp>(op))
    return sinks(r.getResult());
  return isa<mtc::AccumulateGradOp>(op);
}

void assignLanes(func::FuncOp fn, int64_t tp, bool backwardLanes) {
  if (tp <= 1 || fn.getNumArguments() < 1)
    return;
  auto tt = dyn_cast<RankedTensorType>(fn.getArgument(0).getType());
  if (!tt || tt.getRank() != 2 || tt.getDimSize(0) % 2 != 0)
    return;
  const int64_t batch = tt.getDimSize(0);
  Block &body = fn.getBody().front();
  if (!body.getOps<shard::ReduceScatterOp>().empty())
    return; // sequence parallelism: its collectives are not per half
  Builder b(fn.getContext());
  llvm::DenseSet<Operation *> split;
  SmallVector<std::pair<Operation *, StringRef>> run; // op, "split"|"whole"
  bool backward = false, runReduces = false;
  // Step 4.
  auto closeRun = [&] {
    if (runReduces) {
      for (auto [op, lane] : run)
        op->setAttr(lw::kLane, b.getStringAttr(lane));
      run.front().first->setAttr(
          lw::kLaneRun, b.getStringAttr(backward ? lw::kLaneRunBackward
                                                 : lw::kLaneRunForward));
      run.back().first->setAttr(lw::kLaneRunEnd, b.getUnitAttr());
    } else {
      for (auto [op, lane] : run)
        split.erase(op);
    }
    run.clear();
    runReduces = false;
  };
  for (Operation &op : body) {
    if (isa<mtc::CrossEntropyOp>(op)) {
      if (!backwardLanes)
        break;
      closeRun();
      backward = true;
      continue;
    }
    bool fused = !lw::fusedOf(&op).empty();
    bool lane = false;
    if (auto ar = dyn_cast<shard::AllReduceOp>(op)) {
      Operation *producer = ar.getInput().getDefiningOp();
      lane = op.hasAttr(lw::kEarlyStart) && producer && split.count(producer);
    } else if (!fused) {
      lane = splittable(&op, batch);
      if (!lane && backward && !run.empty() && wholeInRun(&op)) {
        run.push_back({&op, lw::kLaneWhole});
        continue;
      }
    }
    if (lane) {
      split.insert(&op);
      run.push_back({&op, lw::kLaneSplit});
      runReduces |= isa<shard::AllReduceOp>(op);
      continue;
    }
    if (!fused && !isa<mtc::ParamOp>(op) && !isIndexArithmetic(&op))
      closeRun();
  }
  closeRun();
}

struct AssignLanes : mtc::impl::MtcAssignLanesBase<AssignLanes> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    // Pipeline pieces run whole: their microbatch's all-reduces have the
    // other pieces' work and the transfers beside them (lanes inside pieces
    // are a later step).
    if (mtc::isPipelineModule(module))
      return;
    int64_t tp = mtc::getGridShape(module).tp;
    bool backwardLanes = module->hasAttr(mtc::kTpBackwardLanesAttr);
    for (auto fn : module.getOps<func::FuncOp>())
      if (!fn.isExternal())
        assignLanes(fn, tp, backwardLanes);
  }
};

} // namespace
