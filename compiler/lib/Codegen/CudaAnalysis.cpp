//===- CudaAnalysis.cpp - what the CUDA emitter decides before emitting ---===//
//
// The analyses of one function that the CUDA emitter (CudaEmitter.cpp) runs
// before it emits a line (see CudaEmitter.h):
//  - gradient sinks: which parameter gradients are never materialized
//    because their producer accumulates them into the fp32 buffer, and
//    which tensor-parallel collectives of gradients run once per step on
//    that buffer instead;
//  - fusions and in-place collectives, as ExecutionHints for the buffer
//    plan, which tensor-parallel all-reduces start early, and which of
//    those add the residual stream in their sum;
//  - the data-parallel gradient buckets and where each is complete.
//
//===----------------------------------------------------------------------===//
#include "CudaEmitter.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"

using namespace mlir;

namespace mtc::codegen {

namespace {
/// The operand of `add` that is not `v`.
Value otherOperand(mtc::AddOp add, Value v) {
  return add.getLhs() == v ? add.getRhs() : add.getLhs();
}

/// A single-axis sum over tp whose input feeds nothing else: a gradient
/// collective that can run on the accumulated buffer instead.
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
} // namespace

void CudaEmitter::analyzeGradientSinks(func::FuncOp fn) {
  sink.clear();
  gradCollectivesAfter.clear();
  gatheredChunk.clear();
  Block &block = fn.getBody().front();
  // Tentative: follow single-use chains of adds (and one gradient
  // collective) back from accumulate_grad.
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
  auto capable = [](Value v) {
    Operation *def = v.getDefiningOp();
    if (!def)
      return false;
    if (auto mm = dyn_cast<mtc::MatmulOp>(def))
      return mm.getTransposeA() && !mm.getBias();
    if (auto ln = dyn_cast<mtc::LayerNormGradOp>(def))
      return v != ln.getDinput();
    if (auto rn = dyn_cast<mtc::RmsNormGradOp>(def))
      return v != rn.getDinput();
    return isa<mtc::EmbeddingGradOp, mtc::ReduceLeadingOp>(def);
  };
  // Forward: a value sinks if its producer can accumulate, it is an add of
  // two sinking values, or a gradient collective of a sinking value.
  for (Operation &op : block)
    for (Value r : op.getResults()) {
      auto it = tentative.find(r);
      if (it == tentative.end())
        continue;
      auto add = dyn_cast<mtc::AddOp>(op);
      if (capable(r) ||
          (add && sink.count(add.getLhs()) && sink.count(add.getRhs())) ||
          (isGradCollective(&op) && sink.count(op.getOperand(0))))
        sink[r] = it->second;
    }
  // Backward: an add that does not sink needs its operands materialized.
  for (Operation &op : llvm::reverse(block))
    if (auto add = dyn_cast<mtc::AddOp>(op))
      if (!sink.count(add.getResult()))
        for (Value v : {add.getLhs(), add.getRhs()})
          if (v.getDefiningOp<mtc::AddOp>() || !capable(v))
            sink.erase(v);

  // A parameter's gradient collective runs on its accumulated buffer, so
  // it must be the parameter's only contribution; otherwise it is
  // materialized.
  struct ParamUse {
    bool plain = false; // some contribution is not a collective
    Operation *lastAcc = nullptr;
    SmallVector<Operation *> collectives;
  };
  llvm::StringMap<ParamUse> uses;
  for (Operation &op : block) {
    auto acc = dyn_cast<mtc::AccumulateGradOp>(op);
    if (!acc)
      continue;
    ParamUse &u = uses[acc.getParam()];
    u.lastAcc = &op;
    Operation *def = acc.getGrad().getDefiningOp();
    if (sink.count(acc.getGrad()) && isGradCollective(def))
      u.collectives.push_back(def);
    else
      u.plain = true;
  }
  for (auto &it : uses) {
    ParamUse &u = it.second;
    if (u.collectives.empty())
      continue;
    if (u.plain || u.collectives.size() != 1) {
      for (Operation *c : u.collectives) {
        sink.erase(c->getResult(0));
        sink.erase(c->getOperand(0));
      }
      continue;
    }
    Operation *c = u.collectives.front();
    GradCollective g;
    g.param = it.first().str();
    g.gather = isa<shard::AllGatherOp>(c);
    g.axis = g.gather ? cast<shard::AllGatherOp>(c).getGridAxes()[0]
                      : cast<shard::AllReduceOp>(c).getGridAxes()[0];
    g.chunk = numel(c->getOperand(0));
    if (g.gather)
      gatheredChunk[g.param] = g.chunk;
    gradCollectivesAfter[u.lastAcc].push_back(g);
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
  for (Operation &op : fn.getBody().front()) {
    // A tensor-parallel all-reduce whose input dies with it: in place.
    if (auto ar = dyn_cast<shard::AllReduceOp>(op)) {
      Value in = ar.getInput();
      if (!sink.count(ar.getResult()) && in.hasOneUse() && in.getDefiningOp() &&
          !in.getDefiningOp<mtc::ParamOp>() && in.getType() == ar.getType() &&
          !unmaterialized.count(in) && !sink.count(in)) {
        hints.inPlaceOf[ar.getResult()] = in;
        inPlaceReduce.insert(&op);
      }
    }
    // A row-parallel linear's bias, added after the sum over tp of the
    // partial products: the GEMM of the axis's rank 0 adds it in its
    // epilogue instead, and the add becomes the all-reduce's storage.
    if (auto add = dyn_cast<mtc::AddOp>(op)) {
      auto ar = add.getLhs().getDefiningOp<shard::AllReduceOp>();
      auto bias = add.getRhs().getDefiningOp<mtc::ParamOp>();
      auto mm = ar ? ar.getInput().getDefiningOp<mtc::MatmulOp>() : nullptr;
      if (ar && bias && mm && inPlaceReduce.count(ar) &&
          ar.getGridAxes().size() == 1 &&
          ar.getReduction() == shard::ReductionKind::Sum &&
          ar.getResult().hasOneUse() && !mm.getBias() && !mm.getTransposeA() &&
          !sink.count(mm.getResult()) && !storedF32(ar.getResult()) &&
          bias.getType().getRank() == 1 &&
          bias.getType().getNumElements() == mm.getN() &&
          add.getType() == ar.getType()) {
        rankZeroBias[mm] = {bias.getResult(), int(ar.getGridAxes()[0])};
        hints.inPlaceOf[add.getResult()] = ar.getResult();
        noOps.insert(add);
      }
    }
    // embedding + position table.
    if (auto add = dyn_cast<mtc::AddOp>(op)) {
      auto emb = add.getLhs().getDefiningOp<mtc::EmbeddingOp>();
      auto pos = add.getRhs().getDefiningOp<mtc::ParamOp>();
      if (emb && !emb.getVocabStart() && pos && emb.getResult().hasOneUse() &&
          pos.getType().getRank() == 2 &&
          pos.getType().getDimSize(0) == shapeOf(emb)[1]) {
        hints.fusedInto[emb] = add;
        fusedPartner[add] = emb;
        noOps.insert(emb);
        unmaterialized.insert(emb.getResult());
      }
    }
    // matmul + tanh GELU (the pre-activation stays for gelu_grad).
    if (auto gelu = dyn_cast<mtc::GeluOp>(op)) {
      auto mm = gelu.getInput().getDefiningOp<mtc::MatmulOp>();
      if (mm && !mm.getTransposeA() &&
          gelu.getApproximate() == mtc::GeluApprox::tanh &&
          mm->getBlock() == gelu->getBlock()) {
        hints.fusedInto[mm] = gelu;
        fusedPartner[gelu] = mm;
        noOps.insert(mm);
      }
    }
    // A norm's input gradient added to the residual stream's gradient (the
    // other operand, at its last use): the norm's backward kernel adds
    // its dx into that operand's storage, and the add is gone.
    if (auto add = dyn_cast<mtc::AddOp>(op)) {
      for (auto [mine, other] : {std::pair(add.getRhs(), add.getLhs()),
                                 std::pair(add.getLhs(), add.getRhs())}) {
        Operation *norm = mine.getDefiningOp();
        if (!norm || !isa<mtc::LayerNormGradOp, mtc::RmsNormGradOp>(norm) ||
            mine != norm->getResult(0) || !mine.hasOneUse() ||
            mine == other || mine.getType() != add.getType() ||
            other.getType() != add.getType() || !other.getDefiningOp() ||
            other.getDefiningOp<mtc::ParamOp>() || unmaterialized.count(other) ||
            sink.count(other) || sink.count(add.getResult()) ||
            !llvm::all_of(other.getUsers(), [&](Operation *u) {
              return u == add || u->isBeforeInBlock(norm);
            }))
          continue;
        hints.inPlaceOf[mine] = other;
        hints.inPlaceOf[add.getResult()] = other;
        normIntoResidual.insert(norm);
        noOps.insert(add);
        break;
      }
    }
    // cross_entropy + its gradient, in place over the logits.
    if (auto ceg = dyn_cast<mtc::CrossEntropyGradOp>(op)) {
      auto cst = ceg.getDloss().getDefiningOp<arith::ConstantOp>();
      mtc::CrossEntropyOp ce;
      for (Operation *u : ceg.getLogits().getUsers())
        if (auto c = dyn_cast<mtc::CrossEntropyOp>(u))
          if (c.getTargets() == ceg.getTargets())
            ce = c;
      if (ce && cst && cst->hasOneUse() && ce->isBeforeInBlock(ceg)) {
        hints.inPlaceOf[ceg.getResult()] = ceg.getLogits();
        fusedPartner[ce] = ceg;
        noOps.insert(ceg);
        noOps.insert(cst);
      }
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
