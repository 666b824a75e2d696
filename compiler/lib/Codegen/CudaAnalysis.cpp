//===- CudaAnalysis.cpp - what the CUDA emitter derives before emitting ---===//
//
// Per function, before the CUDA emitter (CudaEmitter.cpp) prints a line
// (see CudaEmitter.h):
//  - it reads the lowering passes' decisions (mtc/Transforms/Lowering.h)
//    into ExecutionHints for the buffer plan and the printer's tables: the
//    gradient sinks (mtc-sink-gradients) and where each sinking collective
//    then runs; the fused groups and in-place values (mtc-fuse-kernels);
//    the collectives started early and the work inside them
//    (mtc-place-collectives); the lanes are read in CudaLanes.cpp;
//    and the data-parallel gradient buckets (mtc-plan-buckets).
//
//===----------------------------------------------------------------------===//
#include "CudaEmitter.h"

#include "mtc/Transforms/Lowering.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"

using namespace mlir;

namespace mtc::codegen {

namespace {
/// The operand of `add` that is not `v`.
Value otherOperand(mtc::AddOp add, Value v) {
  return add.getLhs() == v ? add.getRhs() : add.getLhs();
}
} // namespace

// The gradient sinks mtc-sink-gradients chose (mtc.sink), and where each
// sinking collective runs: on its parameter's accumulated buffer, on the
// step's last microbatch, after the parameter's last accumulate_grad.
void CudaEmitter::analyzeGradientSinks(func::FuncOp fn) {
  sink.clear();
  gradCollectivesAfter.clear();
  gatheredChunk.clear();
  Block &block = fn.getBody().front();
  llvm::StringMap<Operation *> lastAcc;
  for (Operation &op : block) {
    for (Value r : op.getResults())
      if (StringRef p = lowering::sinkOf(r); !p.empty())
        sink[r] = p.str();
    if (auto acc = dyn_cast<mtc::AccumulateGradOp>(op))
      lastAcc[acc.getParam()] = &op;
  }
  for (auto acc : block.getOps<mtc::AccumulateGradOp>()) {
    Operation *c = acc.getGrad().getDefiningOp();
    if (!c || !sink.count(acc.getGrad()) ||
        !isa<shard::AllReduceOp, shard::AllGatherOp>(c))
      continue;
    GradCollective g;
    g.param = acc.getParam().str();
    g.gather = isa<shard::AllGatherOp>(c);
    g.axis = g.gather ? cast<shard::AllGatherOp>(c).getGridAxes()[0]
                      : cast<shard::AllReduceOp>(c).getGridAxes()[0];
    g.chunk = numel(c->getOperand(0));
    if (g.gather)
      gatheredChunk[g.param] = g.chunk;
    gradCollectivesAfter[lastAcc.lookup(g.param)].push_back(g);
  }
}

// The data-parallel gradient buckets mtc-plan-buckets planned: each
// bucket's range of the gradient buffer, launched after the op that
// carries it.
void CudaEmitter::readBuckets(func::FuncOp fn) {
  for (Operation &op : fn.getBody().front()) {
    auto triples = op.getAttrOfType<DenseI64ArrayAttr>(lowering::kDpBuckets);
    if (!triples)
      continue;
    ArrayRef<int64_t> t = triples.asArrayRef();
    for (size_t i = 0; i + 2 < t.size(); i += 3) {
      if (int64_t(buckets.size()) <= t[i])
        buckets.resize(t[i] + 1);
      buckets[t[i]] = {t[i + 1], t[i + 2]};
      bucketsAfter[&op].push_back(int(t[i]));
    }
  }
}

// An all-reduce that runs a norm's backward on its half of the rows
// (reduce_norm_backward, between its sum and its copy to the peer:
// tp_all_reduce_then), which then carries the new residual gradient. The
// norm's dx goes out of place into the residual add's result (taken from
// the producer on: the tp stream writes it while the compute stream may
// still read the old residual gradient); its dgamma/dbeta and the bias
// gradient go to pc.tp_partial's rows (mtc.partial_rows), summed over tp
// once per step.
void CudaEmitter::readNormReduce(Operation *ar, Operation *producer) {
  Operation *norm = *ar->getResult(0).getUsers().begin();
  Value dx = norm->getResult(0);
  auto add = cast<mtc::AddOp>(*dx.getUsers().begin());
  int64_t d = shapeOf(dx).back();
  ArrayRef<int64_t> rowsOf =
      ar->getAttrOfType<DenseI64ArrayAttr>(lowering::kPartialRows).asArrayRef();
  NormReduce nr{norm, otherOperand(add, dx), add.getResult(), -1, -1, nullptr, -1};
  // Row r holds the gradient of the parameter its value sinks into.
  auto row = [&](int64_t r, Value g, int64_t &slot) {
    if (r < 0)
      return;
    slot = r * d;
    if (int64_t(tpPartialRows.size()) <= r)
      tpPartialRows.resize(r + 1);
    tpPartialRows[r] = lowering::sinkOf(g).str();
  };
  row(rowsOf[0], norm->getResult(1), nr.gammaSlot);
  if (isa<mtc::LayerNormGradOp>(norm))
    row(rowsOf[1], norm->getResult(2), nr.betaSlot);
  for (Operation *u : add.getResult().getUsers())
    if (lowering::fusedOf(u) == lowering::kReduceNormBackward) {
      nr.bias = u;
      row(rowsOf[2], u->getResult(0), nr.biasSlot);
    }
  tpPartialElements =
      std::max<int64_t>(tpPartialElements, tpPartialRows.size() * d);
  tpPartialWidth = d;
  normReduce[ar] = nr;
  usesTpContext = true;
  hints.inPlaceOf[dx] = add.getResult();
  hints.inPlaceOf.erase(add.getResult());
  hints.liveFrom[add.getResult()] = producer;
}

void CudaEmitter::analyzeFusions(func::FuncOp fn) {
  hints = mtc::ExecutionHints();
  noOps.clear();
  unmaterialized.clear();
  fusedPartner.clear();
  inPlaceReduce.clear();
  normIntoResidual.clear();
  earlyReduces.clear();
  rankZeroBias.clear();
  reduceSlot.clear();
  residualReduce.clear();
  normReduce.clear();
  tpPartialRows.clear();
  // The groups and in-place values mtc-fuse-kernels chose.
  for (Operation &op : fn.getBody().front()) {
    if (!lowering::fusedOf(&op).empty())
      noOps.insert(&op);
    for (Value r : op.getResults())
      if (std::optional<unsigned> i = lowering::inPlaceOperand(r)) {
        hints.inPlaceOf[r] = op.getOperand(*i);
        if (isa<shard::AllReduceOp>(op))
          inPlaceReduce.insert(&op);
      }
    StringRef kind = lowering::fusionOf(&op);
    if (kind == lowering::kMatmulGelu) {
      Operation *mm = op.getOperand(0).getDefiningOp();
      hints.fusedInto[mm] = &op;
      fusedPartner[&op] = mm;
    } else if (kind == lowering::kEmbeddingPosition) {
      Operation *emb = op.getOperand(0).getDefiningOp();
      hints.fusedInto[emb] = &op;
      fusedPartner[&op] = emb;
      unmaterialized.insert(emb->getResult(0));
    } else if (kind == lowering::kCrossEntropyGrad) {
      for (Operation *u : op.getOperand(0).getUsers())
        if (lowering::fusedOf(u) == lowering::kCrossEntropyGrad)
          fusedPartner[&op] = u;
    } else if (kind == lowering::kNormIntoResidual) {
      // dx is added into the add's in-place operand (the residual
      // stream's gradient).
      auto add = cast<mtc::AddOp>(*op.getResult(0).getUsers().begin());
      hints.inPlaceOf[op.getResult(0)] =
          add->getOperand(*lowering::inPlaceOperand(add.getResult()));
      normIntoResidual.insert(&op);
    } else if (kind == lowering::kRankZeroBias) {
      auto ar = cast<shard::AllReduceOp>(*op.getResult(0).getUsers().begin());
      auto add = cast<mtc::AddOp>(*ar.getResult().getUsers().begin());
      rankZeroBias[&op] = {add.getRhs(), int(ar.getGridAxes()[0])};
    }
  }
  // The collectives mtc-place-collectives starts early (on the axis's
  // stream right after their input's producer, waited for where they
  // stand; their storage is live from the producer on), and the work it
  // put inside them.
  for (Operation &op : fn.getBody().front()) {
    auto ar = dyn_cast<shard::AllReduceOp>(op);
    if (!ar || !op.hasAttr(lowering::kEarlyStart))
      continue;
    Operation *producer = ar.getInput().getDefiningOp();
    reduceSlot[&op] = int(reduceSlot.size());
    earlyReduces[producer].push_back(&op);
    // A bf16 tp all-reduce: the copy engines' (tp_all_reduce*).
    if (ar.getGridAxes()[0] == mtc::kAxisTP && !storedF32(ar.getResult()))
      peerMaxElements = std::max(peerMaxElements, numel(ar.getResult()));
    auto then = op.getAttrOfType<StringAttr>(lowering::kReduceThen);
    if (then && then.getValue() == lowering::kReduceNormBackward)
      readNormReduce(&op, producer);
    if (then && then.getValue() == lowering::kReduceResidualAdd) {
      // The sum's one use (through the rank-zero bias add, in place) is
      // the residual add: the all-reduce writes its result, taken from the
      // producer on.
      Value sum = ar.getResult();
      auto add = cast<mtc::AddOp>(*sum.getUsers().begin());
      if (lowering::fusedOf(add) == lowering::kRankZeroBias) {
        sum = add.getResult();
        add = cast<mtc::AddOp>(*sum.getUsers().begin());
      }
      residualReduce[&op] = ResidualReduce{otherOperand(add, sum), add.getResult()};
      hints.liveFrom[add.getResult()] = producer;
    }
  }
  numReduceSlots = std::max<int64_t>(numReduceSlots, reduceSlot.size());
}

} // namespace mtc::codegen
