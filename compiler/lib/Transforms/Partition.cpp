//===- Partition.cpp - -mtc-partition: annotations -> per-rank program -----===//
//
// The mechanism behind every sharding pass: rewrites the global program into
// the program one rank runs, with local shapes and explicit collectives
// (upstream `shard` ops), from the split annotations the sharding passes
// wrote on parameters.
//
// Along the tensor-parallel axis every value is, on each rank, either whole
// (R), a slice of one dimension (S(d)), or a partial sum (P) whose sum over
// the ranks is the global value. Steps, per function, in program order:
//  1. Parameters take their annotated split (R without one) and a local type;
//     the annotation ops are dropped and the global shape is recorded on the
//     parameter (`mtc.shard`), since checkpoints keep global tensors.
//  2. Each op states which distributions of its operands it can run on and
//     what its results then are (the rules below); operands in another
//     distribution are converted first:
//       P -> R  shard.all_reduce        S(d) -> R  shard.all_gather
//       R -> S(d)  shard.all_slice (local, no communication)
//  3. The op is rebuilt with local result types (and local attributes: head
//     counts, the vocabulary offset of a vocabulary-parallel embedding).
//  4. Parameter gradients are brought to their parameter's distribution
//     before mtc.accumulate_grad; the loss is returned whole.
//  5. In @optimizer_step, mtc.grad_norm learns which parameters are split
//     (their squared norms are summed over the tp group, replicated ones are
//     not).
//
// With sequence parallelism (functions marked `mtc.sequence_parallel` by
// mtc-shard-sequence-parallel), values outside the tensor-parallel regions
// are held split on the sequence dimension instead of whole: partial sums
// become slices with one shard.reduce_scatter, and an op that needs its
// input whole gathers it with shard.all_gather, Megatron-SP's pairs.
//
// The rules are the ops' own (PartitionOpInterface, dialects/mtc/lib/
// MtcPartition.cpp, which lists them); this file is the mechanism every
// rule uses (mtc::Partitioner, MtcPartition.h): distributions, conversions,
// local types. Ops without a rule: the Elementwise trait's (any one
// distribution all operands share, not P), else everything whole.
//
// Why not upstream `shard-partition`: the training program needs partial
// sums that flow through backward ops, a rank-dependent vocabulary offset,
// head-split attention and norms that must stay whole, and resharding
// patterns (partial -> slice) that upstream does not handle yet (DESIGN.md);
// the collectives and annotations are upstream's ops all the same.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Grid.h"
#include "mtc/Transforms/Passes.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"

namespace mtc {
#define GEN_PASS_DEF_MTCPARTITION
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;

namespace {

using mtc::Dist;

int64_t distKey(const Dist &d) { return int64_t(d.kind) * 64 + d.dim + 1; }

RankedTensorType localType(Type global, Dist d, int64_t tp) {
  auto t = cast<RankedTensorType>(global);
  if (d.kind != Dist::S)
    return t;
  SmallVector<int64_t> shape(t.getShape());
  shape[d.dim] /= tp;
  return t.clone(shape);
}

class FunctionPartitioner final : public mtc::Partitioner {
public:
  FunctionPartitioner(func::FuncOp fn, shard::GridOp grid, int64_t tp,
                      const llvm::StringMap<Dist> &paramDists)
      : fn(fn), grid(grid), tpSize(tp), paramDists(paramDists),
        sequenceParallel(fn->hasAttr("mtc.sequence_parallel")),
        b(fn.getContext()) {}
  LogicalResult run();

  // mtc::Partitioner (MtcPartition.h).
  int64_t tp() const override { return tpSize; }
  int16_t tpAxis() const override { return mtc::kAxisTP; }
  OpBuilder &builder() override { return b; }
  Dist distOf(Value old) override { return dists.lookup(old); }
  Value get(Value old, Dist want) override;
  bool gathered(Value old) override {
    return converted.count({old, distKey(Dist::r())}) > 0;
  }
  Value convert(Value v, Dist from, Dist to, Location loc) override;
  void set(Value old, Value local, Dist d) override {
    mapping.map(old, local);
    dists[old] = d;
  }
  Type localType(Value old, Dist d) override {
    return ::localType(old.getType(), d, tpSize);
  }
  Dist whole(Value v) override {
    auto t = cast<RankedTensorType>(v.getType());
    if (sequenceParallel && t.getRank() == 3 && t.getDimSize(1) % tpSize == 0)
      return Dist::s(1);
    return Dist::r();
  }
  Value tpRank(Location loc) override;
  Value vocabStart(Location loc, int64_t localRows) override;
  std::optional<Dist> gradientTarget(Value v) override;
  Dist paramDist(StringRef name) override { return paramDists.lookup(name); }
  SmallVector<StringRef> splitParams() override;
  LogicalResult rebuild(Operation *op, ArrayRef<Dist> want,
                        ArrayRef<Dist> out,
                        function_ref<void(Operation *)> adjust = nullptr) override;

private:
  LogicalResult partitionOp(Operation *op);

  func::FuncOp fn;
  shard::GridOp grid;
  int64_t tpSize;
  const llvm::StringMap<Dist> &paramDists;
  bool sequenceParallel;
  OpBuilder b;
  IRMapping mapping;
  llvm::DenseMap<Value, Dist> dists;
  llvm::DenseMap<std::pair<Value, int64_t>, Value> converted;
};

Value FunctionPartitioner::convert(Value v, Dist from, Dist to,
                                   Location loc) {
  if (from == to)
    return v;
  SmallVector<shard::GridAxis> axes = {mtc::kAxisTP};
  auto gridRef = grid.getSymName();
  auto gridSym = FlatSymbolRefAttr::get(b.getContext(), gridRef);
  if (from.kind == Dist::P && to.kind == Dist::S) {
    // Partial sums -> slices in one collective (sequence parallelism's
    // replacement of the all_reduce).
    auto t = cast<RankedTensorType>(v.getType());
    SmallVector<int64_t> shape(t.getShape());
    shape[to.dim] /= tpSize;
    return shard::ReduceScatterOp::create(
        b, loc, t.clone(shape), gridSym, b.getDenseI16ArrayAttr(axes), v,
        shard::ReductionKindAttr::get(b.getContext(),
                                      shard::ReductionKind::Sum),
        b.getIndexAttr(to.dim));
  }
  if (from.kind == Dist::P) {
    v = shard::AllReduceOp::create(b, loc, v.getType(), gridRef,
                                   ArrayRef<int16_t>(axes), v,
                                   shard::ReductionKind::Sum);
    from = Dist::r();
  } else if (from.kind == Dist::S) {
    auto t = cast<RankedTensorType>(v.getType());
    SmallVector<int64_t> shape(t.getShape());
    shape[from.dim] *= tpSize;
    v = shard::AllGatherOp::create(b, loc, t.clone(shape), gridSym,
                                   b.getDenseI16ArrayAttr(axes), v,
                                   b.getIndexAttr(from.dim));
    from = Dist::r();
  }
  if (to.kind == Dist::S) {
    auto t = cast<RankedTensorType>(v.getType());
    SmallVector<int64_t> shape(t.getShape());
    shape[to.dim] /= tpSize;
    v = shard::AllSliceOp::create(b, loc, t.clone(shape), gridSym,
                                  b.getDenseI16ArrayAttr(axes), v,
                                  b.getIndexAttr(to.dim));
  }
  return v;
}

Value FunctionPartitioner::get(Value old, Dist want) {
  Value v = mapping.lookup(old);
  Dist have = distOf(old);
  if (have == want || !isa<RankedTensorType>(old.getType()))
    return v;
  // One conversion per value and distribution, however many users need it.
  auto key = std::make_pair(old, distKey(want));
  auto it = converted.find(key);
  if (it != converted.end())
    return it->second;
  Value c = convert(v, have, want, old.getLoc());
  converted[key] = c;
  return c;
}

Value FunctionPartitioner::tpRank(Location loc) {
  auto idx = shard::ProcessMultiIndexOp::create(
      b, loc, TypeRange{b.getIndexType()}, grid.getSymName(),
      ArrayRef<int16_t>{mtc::kAxisTP});
  return idx->getResult(0);
}

Value FunctionPartitioner::vocabStart(Location loc, int64_t localRows) {
  Value idx = tpRank(loc);
  Value rows = arith::ConstantIndexOp::create(b, loc, localRows);
  return arith::MulIOp::create(b, loc, idx, rows);
}

std::optional<Dist> FunctionPartitioner::gradientTarget(Value v) {
  for (Operation *user : v.getUsers()) {
    if (auto acc = dyn_cast<mtc::AccumulateGradOp>(user)) {
      auto it = paramDists.find(acc.getParam());
      if (it != paramDists.end())
        return it->second;
    }
    if (auto add = dyn_cast<mtc::AddOp>(user))
      if (auto d = gradientTarget(add.getResult()))
        return d;
  }
  return std::nullopt;
}

SmallVector<StringRef> FunctionPartitioner::splitParams() {
  SmallVector<StringRef> split;
  for (auto &it : paramDists)
    if (it.second.kind == Dist::S)
      split.push_back(it.first());
  llvm::sort(split);
  return split;
}

LogicalResult FunctionPartitioner::rebuild(
    Operation *op, ArrayRef<Dist> want, ArrayRef<Dist> out,
    function_ref<void(Operation *)> adjust) {
  SmallVector<Value> operands;
  for (auto [v, d] : llvm::zip(op->getOperands(), want))
    operands.push_back(get(v, d));
  Operation *clone = b.clone(*op);
  clone->setOperands(operands);
  for (auto [r, d] : llvm::zip(clone->getResults(), out))
    r.setType(localType(r, d));
  if (adjust)
    adjust(clone);
  for (auto [r, nr, d] : llvm::zip(op->getResults(), clone->getResults(), out))
    set(r, nr, d);
  return success();
}

LogicalResult FunctionPartitioner::partitionOp(Operation *op) {
  // The annotations: a sharding op is dropped, an annotated value is its
  // source in its parameter's distribution.
  if (isa<shard::ShardingOp>(op))
    return success();
  if (auto s = dyn_cast<shard::ShardOp>(op)) {
    mapping.map(s.getResult(), mapping.lookup(s.getSrc()));
    dists[s.getResult()] = distOf(s.getSrc());
    return success();
  }
  // The op's own rule.
  if (auto rule = dyn_cast<mtc::PartitionOpInterface>(op))
    return rule.partition(*this);
  // Elementwise ops (the trait: activations and their gradients) run on any
  // one distribution all their operands share, except partial sums (they
  // are not linear).
  if (op->hasTrait<OpTrait::Elementwise>() && op->getNumOperands() > 0) {
    Dist d = distOf(op->getOperand(0));
    bool same = llvm::all_of(op->getOperands(),
                             [&](Value v) { return distOf(v) == d; });
    if (!same || d.kind == Dist::P)
      d = Dist::r();
    return rebuild(op, SmallVector<Dist>(op->getNumOperands(), d),
                   SmallVector<Dist>(op->getNumResults(), d));
  }
  // Constants, the optimizer, the return (the loss is returned whole):
  // everything whole.
  return rebuild(op, SmallVector<Dist>(op->getNumOperands(), Dist::r()),
                 SmallVector<Dist>(op->getNumResults(), Dist::r()));
}

LogicalResult FunctionPartitioner::run() {
  Block &body = fn.getBody().front();
  for (BlockArgument arg : body.getArguments()) {
    mapping.map(arg, arg);
    dists[arg] = Dist::r();
  }
  SmallVector<Operation *> ops;
  for (Operation &op : body)
    ops.push_back(&op);
  b.setInsertionPointToEnd(&body);
  for (Operation *op : ops)
    if (failed(partitionOp(op)))
      return failure();
  // The rebuilt program follows the old one in the block; drop the old ops
  // (users first).
  for (Operation *op : llvm::reverse(ops)) {
    op->dropAllUses();
    op->erase();
  }
  return success();
}

struct PartitionPass : public mtc::impl::MtcPartitionBase<PartitionPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    mtc::GridShape shape = mtc::getGridShape(module);
    if (shape.tp == 1)
      return; // nothing is split; data parallelism needs no rewrite
    shard::GridOp grid = mtc::getOrCreateGrid(module);

    // Parameter distributions by name; every function agrees.
    llvm::StringMap<Dist> paramDists;
    WalkResult res = module.walk([&](mtc::ParamOp p) {
      std::optional<mtc::Split> s = mtc::getAnnotatedSplit(p.getResult());
      Dist d = Dist::r();
      if (s) {
        if (s->axis != mtc::kAxisTP) {
          p.emitOpError("parameters can only be split over the tensor-"
                        "parallel grid axis (2), not axis ")
              << s->axis;
          return WalkResult::interrupt();
        }
        if (p.getType().getDimSize(s->dim) % shape.tp != 0) {
          p.emitOpError("dimension ")
              << s->dim << " of size " << p.getType().getDimSize(s->dim)
              << " does not split evenly over tp = " << shape.tp;
          return WalkResult::interrupt();
        }
        d = Dist::s(s->dim);
      }
      auto [it, inserted] = paramDists.try_emplace(p.getName(), d);
      if (!inserted && it->second != d) {
        p.emitOpError("is annotated differently in two functions");
        return WalkResult::interrupt();
      }
      return WalkResult::advance();
    });
    if (res.wasInterrupted())
      return signalPassFailure();
    // Heads must split evenly (the spec validator checks it for imported
    // models; hand-written IR is checked here).
    res = module.walk([&](mtc::AttentionOp a) {
      if (a.getHeads() % shape.tp || a.getKvHeads() % shape.tp) {
        a.emitOpError("heads (")
            << a.getHeads() << ") and kv_heads (" << a.getKvHeads()
            << ") must be divisible by tp = " << shape.tp;
        return WalkResult::interrupt();
      }
      return WalkResult::advance();
    });
    if (res.wasInterrupted())
      return signalPassFailure();

    for (auto fn : module.getOps<func::FuncOp>())
      if (failed(FunctionPartitioner(fn, grid, shape.tp, paramDists).run()))
        return signalPassFailure();

  }
};

} // namespace
