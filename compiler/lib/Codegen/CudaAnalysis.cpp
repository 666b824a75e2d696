//===- CudaAnalysis.cpp - what the CUDA emitter derives before emitting ---===//
//
// Per function, before the CUDA emitter (CudaEmitter.cpp) prints a line
// (see CudaEmitter.h):
//  - it reads the lowering passes' decisions (mtc/Transforms/Lowering.h):
//    the gradient sinks (mtc-sink-gradients) and where each sinking
//    collective then runs, the fused groups and in-place values
//    (mtc-fuse-kernels), as ExecutionHints for the buffer plan;
//  - it still decides, here (not yet passes): which tensor-parallel
//    all-reduces start early and which of those add the residual stream
//    or run a norm's backward in their sum (collective placement), and the
//    data-parallel gradient buckets and where each is complete.
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

// Data parallelism: the gradient buffer cut into contiguous buckets of at
// least kBucketElements (40 MB of fp32, as Megatron's default), walking the
// parameters backwards through the layout (the order the backward pass
// finishes them). A bucket is launched after the last accumulate_grad of
// any of its parameters (and after those parameters' gradient collectives).
void CudaEmitter::planBuckets(func::FuncOp fn) {
  constexpr int64_t kBucketElements = 10 * 1000 * 1000;
  buckets.clear();
  bucketsAfter.clear();
  Block &block = fn.getBody().front();
  llvm::DenseMap<Operation *, int64_t> position;
  llvm::StringMap<Operation *> lastAcc;
  int64_t i = 0;
  for (Operation &op : block) {
    position[&op] = i++;
    if (auto acc = dyn_cast<mtc::AccumulateGradOp>(op))
      lastAcc[acc.getParam()] = &op;
  }
  int64_t end = layout.totalElements;
  Operation *ready = nullptr;
  for (int64_t p = int64_t(layout.order.size()) - 1; p >= 0; --p) {
    const std::string &name = layout.order[p];
    if (Operation *acc = lastAcc.lookup(name))
      if (!ready || position[acc] > position[ready])
        ready = acc;
    int64_t begin = layout.offset(name);
    if (end - begin < kBucketElements && p > 0)
      continue;
    if (p == 0)
      begin = 0;
    Operation *at = ready ? ready : &block.front();
    bucketsAfter[at].push_back(int(buckets.size()));
    buckets.push_back({begin, end - begin});
    end = begin;
    ready = nullptr;
  }
}

// A tp all-reduce (tp = 2, no dp) whose sum is only the input gradient of
// a norm's backward that adds its dx into the residual stream's gradient
// (normIntoResidual): each rank runs the norm's backward on its half of
// the rows inside the all-reduce, between its sum and its copy to the peer
// (tp_all_reduce_then), which then carries the new residual gradient
// instead of the sum. The norm is a no-op where it stands; its dx goes out
// of place into the add's result (taken from the producer on: the tp
// stream writes it while the compute stream may still read the old
// residual gradient, e.g. fc2's weight-gradient GEMM); its dgamma/dbeta,
// partial over half the rows, are accumulated in pc.tp_partial and summed
// over tp once per step (the train function's end), with the row-parallel
// bias gradient that sums the new residual gradient's rows.
bool CudaEmitter::fuseNormReduce(Operation *arOp, Operation *producer) {
  auto ar = cast<shard::AllReduceOp>(arOp); // bf16, over tp
  if (grid.tp != 2 || grid.dp != 1 || grid.pp != 1 ||
      !ar.getResult().hasOneUse())
    return false;
  Operation *norm = *ar.getResult().getUsers().begin();
  Value dout;
  if (auto ln = dyn_cast<mtc::LayerNormGradOp>(norm))
    dout = ln.getDout();
  else if (auto rn = dyn_cast<mtc::RmsNormGradOp>(norm))
    dout = rn.getDout();
  if (dout != ar.getResult() || !normIntoResidual.count(norm))
    return false;
  Value dx = norm->getResult(0);
  auto add = dyn_cast<mtc::AddOp>(*dx.getUsers().begin());
  Value dgamma = norm->getResult(1);
  Value dbeta = isa<mtc::LayerNormGradOp>(norm) ? norm->getResult(2) : Value();
  if (!add || !sink.count(dgamma) || (dbeta && !dbeta.use_empty() && !sink.count(dbeta)) ||
      rows(dx) % (backwardLanes ? 4 : 2) != 0) // halves (of each lane's)
    return false;
  Value residual = otherOperand(add, dx);
  int64_t d = shapeOf(dx).back();
  if (tpPartialWidth != 0 && tpPartialWidth != d)
    return false; // pc.tp_partial's rows have one width
  // Each row goes to its own gradient (k::accumulate_rows adds them all in
  // one launch): a norm whose weights already have a row stays whole.
  auto hasRow = [&](Value g) { return llvm::is_contained(tpPartialRows, sink.lookup(g)); };
  if (hasRow(dgamma) || (dbeta && !dbeta.use_empty() && hasRow(dbeta)))
    return false;
  NormReduce nr{norm, residual, add.getResult(), -1, -1, nullptr, -1};
  nr.gammaSlot = tpPartialRows.size() * d;
  tpPartialRows.push_back(sink.lookup(dgamma));
  if (dbeta && !dbeta.use_empty()) {
    nr.betaSlot = tpPartialRows.size() * d;
    tpPartialRows.push_back(sink.lookup(dbeta));
  }
  // The bias gradient of the row-parallel linear whose output gradient is
  // the new residual gradient (the column sums of out): summed over the
  // half too, after the norm, instead of over all rows on every rank.
  for (Operation *u : add.getResult().getUsers())
    if (auto r = dyn_cast<mtc::ReduceLeadingOp>(u))
      if (sink.count(r.getResult()) && numel(r.getResult()) == d &&
          !halfBias.count(r) && nr.biasSlot < 0 && !hasRow(r.getResult())) {
        nr.bias = r;
        nr.biasSlot = tpPartialRows.size() * d;
        tpPartialRows.push_back(sink.lookup(r.getResult()));
        halfBias.insert(r);
        noOps.insert(r); // summed inside the all-reduce
      }
  tpPartialElements = std::max<int64_t>(tpPartialElements, tpPartialRows.size() * d);
  tpPartialWidth = d;
  normReduce[arOp] = nr;
  usesTpContext = true;
  noOps.insert(norm);
  hints.inPlaceOf[dx] = add.getResult();
  hints.inPlaceOf.erase(add.getResult());
  hints.liveFrom[add.getResult()] = producer;
  return true;
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
  halfBias.clear();
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
  // In-place tensor-parallel all-reduces start right after their input is
  // computed, on the tp stream, and are waited for where the all_reduce
  // stands (the backward pass puts the weight-gradient GEMMs in between).
  // The storage is live from the input's definition to the result's last
  // use, so nothing in between touches it.
  for (Operation &op : fn.getBody().front()) {
    auto ar = dyn_cast<shard::AllReduceOp>(op);
    if (!ar || !inPlaceReduce.count(&op) || ar.getGridAxes().size() != 1)
      continue;
    Operation *producer = ar.getInput().getDefiningOp();
    if (!producer || noOps.count(producer) || fusedPartner.count(producer))
      continue;
    reduceSlot[&op] = int(reduceSlot.size());
    earlyReduces[producer].push_back(&op);
    // A bf16 tp all-reduce: the copy engines' (tp_all_reduce*).
    if (ar.getGridAxes()[0] != 2 || storedF32(ar.getResult()))
      continue;
    peerMaxElements = std::max(peerMaxElements, numel(ar.getResult()));
    if (fuseNormReduce(&op, producer))
      continue;
    // The sum's one use (through the row-parallel bias add on rank 0, in
    // place) is a residual add: the all-reduce adds the residual in its
    // own sum pass and writes the add's result, which is then taken from
    // the producer on; the add is gone.
    Value sum = ar.getResult();
    if (sum.hasOneUse())
      if (auto bias = dyn_cast<mtc::AddOp>(*sum.getUsers().begin()))
        if (noOps.count(bias) && hints.inPlaceOf.lookup(bias.getResult()) == sum)
          sum = bias.getResult();
    if (!sum.hasOneUse())
      continue;
    auto add = dyn_cast<mtc::AddOp>(*sum.getUsers().begin());
    if (!add || noOps.count(add) || fusedPartner.count(add) ||
        sink.count(add.getResult()) || hints.inPlaceOf.count(add.getResult()) ||
        add.getLhs() == add.getRhs() || add.getType() != sum.getType())
      continue;
    Value residual = otherOperand(add, sum);
    if (residual.getType() != add.getType() || !residual.getDefiningOp() ||
        residual.getDefiningOp<mtc::ParamOp>() || unmaterialized.count(residual) ||
        sink.count(residual))
      continue;
    residualReduce[&op] = ResidualReduce{residual, add.getResult()};
    noOps.insert(add);
    hints.liveFrom[add.getResult()] = producer;
  }
  numReduceSlots = std::max<int64_t>(numReduceSlots, reduceSlot.size());
}

} // namespace mtc::codegen
