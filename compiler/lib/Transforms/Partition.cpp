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
// Rules (tp axis):
//   matmul    contraction split on both sides -> P; on one side -> the other
//             is sliced; an output dimension split -> S of that dimension; a
//             bias of a P result is added after the all_reduce, once.
//   norms (and gradients) -> R, or rows split (the weights' gradients are
//             then partial sums); dropout -> any but P (a slice is marked
//             `mtc.slice_of` so its mask is the global tensor's)
//   cross-entropy (and gradient) -> R, or logits split on the vocabulary:
//             vocabulary-parallel, the softmax completed over the group
//   attention, rope (and gradients) -> R, or S(last) split by heads
//   embedding -> a vocabulary-split table gives P (rows of other ranks are 0)
//   elementwise (ops with the Elementwise trait) -> any one distribution
//             shared by all operands, not P
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
#include "llvm/ADT/TypeSwitch.h"

namespace mtc {
#define GEN_PASS_DEF_MTCPARTITION
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;

namespace {

struct Dist;
int64_t distKey(const Dist &d);

struct Dist {
  enum Kind { R, S, P } kind = R;
  int64_t dim = -1;
  static Dist r() { return {}; }
  static Dist s(int64_t d) { return {S, d}; }
  static Dist p() { return {P, -1}; }
  bool operator==(const Dist &o) const {
    return kind == o.kind && (kind != S || dim == o.dim);
  }
  bool operator!=(const Dist &o) const { return !(*this == o); }
};

int64_t distKey(const Dist &d) { return int64_t(d.kind) * 64 + d.dim + 1; }

RankedTensorType localType(Type global, Dist d, int64_t tp) {
  auto t = cast<RankedTensorType>(global);
  if (d.kind != Dist::S)
    return t;
  SmallVector<int64_t> shape(t.getShape());
  shape[d.dim] /= tp;
  return t.clone(shape);
}

class FunctionPartitioner {
public:
  FunctionPartitioner(func::FuncOp fn, shard::GridOp grid, int64_t tp,
                      const llvm::StringMap<Dist> &paramDists)
      : fn(fn), grid(grid), tp(tp), paramDists(paramDists),
        sequenceParallel(fn->hasAttr("mtc.sequence_parallel")),
        b(fn.getContext()) {}
  LogicalResult run();

private:
  LogicalResult partitionOp(Operation *op);
  /// The new value of `old` in distribution `want`.
  Value get(Value old, Dist want);
  Value convert(Value v, Dist from, Dist to, Location loc);
  void set(Value old, Value local, Dist d) {
    mapping.map(old, local);
    dists[old] = d;
  }
  Dist distOf(Value old) { return dists.lookup(old); }
  Type local(Value old, Dist d) { return localType(old.getType(), d, tp); }
  Value vocabStart(Location loc, int64_t localRows);
  /// How a value outside the tensor-parallel regions is held: whole, or
  /// with sequence parallelism, a (B, S, D) activation split on S.
  Dist whole(Value v) {
    auto t = cast<RankedTensorType>(v.getType());
    if (sequenceParallel && t.getRank() == 3 && t.getDimSize(1) % tp == 0)
      return Dist::s(1);
    return Dist::r();
  }
  /// The distribution of the parameter a gradient value accumulates into.
  std::optional<Dist> gradientTarget(Value v);
  LogicalResult partitionMatmul(mtc::MatmulOp mm);

  func::FuncOp fn;
  shard::GridOp grid;
  int64_t tp;
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
    shape[to.dim] /= tp;
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
    shape[from.dim] *= tp;
    v = shard::AllGatherOp::create(b, loc, t.clone(shape), gridSym,
                                   b.getDenseI16ArrayAttr(axes), v,
                                   b.getIndexAttr(from.dim));
    from = Dist::r();
  }
  if (to.kind == Dist::S) {
    auto t = cast<RankedTensorType>(v.getType());
    SmallVector<int64_t> shape(t.getShape());
    shape[to.dim] /= tp;
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

Value FunctionPartitioner::vocabStart(Location loc, int64_t localRows) {
  auto idx = shard::ProcessMultiIndexOp::create(
      b, loc, TypeRange{b.getIndexType()}, grid.getSymName(),
      ArrayRef<int16_t>{mtc::kAxisTP});
  Value rows = arith::ConstantIndexOp::create(b, loc, localRows);
  return arith::MulIOp::create(b, loc, idx->getResult(0), rows);
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

/// How a split operand divides a matmul's contraction (K) or its free
/// dimension (M for the lhs, N for the rhs). Operands are matrices made by
/// merging all but the last dimension ("rows"); `transpose` swaps rows and
/// columns.
struct MatSplit {
  enum Kind { none, contraction, free } kind = none;
  bool byRows = false;     // the split dimension is one of the merged rows
  int64_t dim = -1;        // the split tensor dimension
};

MatSplit matSplit(Value v, Dist d, bool transpose, bool isLhs) {
  if (d.kind != Dist::S)
    return {};
  int64_t last = cast<RankedTensorType>(v.getType()).getRank() - 1;
  bool byRows = d.dim != last;
  // Stored columns are K for an untransposed lhs and a transposed rhs.
  bool colsAreK = isLhs ? !transpose : transpose;
  bool isK = byRows ? !colsAreK : colsAreK;
  return {isK ? MatSplit::contraction : MatSplit::free, byRows, d.dim};
}

/// The split of `other` that divides the contraction exactly as `split`
/// divides it on `v`, if there is one.
std::optional<Dist> matchingContraction(Value v, MatSplit split, Value other,
                                        bool otherTranspose, bool otherIsLhs) {
  auto tv = cast<RankedTensorType>(v.getType());
  auto to = cast<RankedTensorType>(other.getType());
  bool colsAreK = otherIsLhs ? !otherTranspose : otherTranspose;
  int64_t otherLast = to.getRank() - 1;
  if (!split.byRows) {
    // K is v's last dimension, split in contiguous blocks.
    if (colsAreK)
      return Dist::s(otherLast);
    if (to.getRank() == 2)
      return Dist::s(0);
    return std::nullopt;
  }
  // K is v's merged rows, split on one of them: the other's K must be the
  // same rows (same leading shape), split on the same dimension.
  if (!colsAreK && tv.getShape().drop_back() == to.getShape().drop_back())
    return Dist::s(split.dim);
  if (colsAreK && tv.getRank() == 2)
    return Dist::s(otherLast);
  return std::nullopt;
}

LogicalResult FunctionPartitioner::partitionMatmul(mtc::MatmulOp mm) {
  bool ta = mm.getTransposeA(), tb = mm.getTransposeB();
  Value lhs = mm.getLhs(), rhs = mm.getRhs();
  int64_t resultRank = mm.getType().getRank();

  // The result's distribution for operand distributions (dl, dr), or none
  // if the pair is not consistent.
  auto evaluate = [&](Dist dl, Dist dr) -> std::optional<Dist> {
    bool partialL = dl.kind == Dist::P, partialR = dr.kind == Dist::P;
    if (partialL || partialR) // linear in one partial operand
      return (partialL && dr.kind == Dist::R) || (partialR && dl.kind == Dist::R)
                 ? std::optional<Dist>(Dist::p())
                 : std::nullopt;
    MatSplit sl = matSplit(lhs, dl, ta, true), sr = matSplit(rhs, dr, tb, false);
    if (sl.kind == MatSplit::contraction || sr.kind == MatSplit::contraction) {
      if (sl.kind != MatSplit::contraction || sr.kind != MatSplit::contraction)
        return std::nullopt;
      std::optional<Dist> match = matchingContraction(lhs, sl, rhs, tb, false);
      return match && *match == dr ? std::optional<Dist>(Dist::p())
                                   : std::nullopt;
    }
    if (sl.kind == MatSplit::free && sr.kind == MatSplit::free)
      return std::nullopt; // no 2-D splits
    if (sl.kind == MatSplit::free)
      return Dist::s(ta ? 0 : dl.dim);
    if (sr.kind == MatSplit::free)
      return Dist::s(resultRank - 1);
    return Dist::r();
  };

  // Candidates, cheapest first: as they are; slice a whole operand to match
  // the other's contraction split (free); gather an operand that was
  // already gathered (free: the conversion is reused); gather an
  // activation rather than a parameter; gather both.
  Dist dl = distOf(lhs), dr = distOf(rhs);
  SmallVector<std::pair<Dist, Dist>> candidates = {{dl, dr}};
  MatSplit sl = matSplit(lhs, dl, ta, true), sr = matSplit(rhs, dr, tb, false);
  if (sl.kind == MatSplit::contraction && dr.kind == Dist::R)
    if (auto m = matchingContraction(lhs, sl, rhs, tb, false))
      candidates.push_back({dl, *m});
  if (sr.kind == MatSplit::contraction && dl.kind == Dist::R)
    if (auto m = matchingContraction(rhs, sr, lhs, ta, true))
      candidates.push_back({*m, dr});
  auto gathered = [&](Value v) {
    return converted.count({v, distKey(Dist::r())}) > 0;
  };
  auto isParam = [](Value v) {
    if (auto s = v.getDefiningOp<shard::ShardOp>())
      v = s.getSrc();
    return v.getDefiningOp<mtc::ParamOp>() != nullptr;
  };
  if (gathered(rhs))
    candidates.push_back({dl, Dist::r()});
  if (gathered(lhs))
    candidates.push_back({Dist::r(), dr});
  if (!isParam(lhs)) {
    candidates.push_back({Dist::r(), dr});
    if (sr.kind == MatSplit::contraction)
      if (auto m = matchingContraction(rhs, sr, lhs, ta, true))
        candidates.push_back({*m, dr});
  }
  if (!isParam(rhs))
    candidates.push_back({dl.kind == Dist::P ? Dist::r() : dl, Dist::r()});
  candidates.push_back({Dist::r(), dr});
  candidates.push_back({dl.kind == Dist::P ? Dist::r() : dl, Dist::r()});
  candidates.push_back({Dist::r(), Dist::r()});
  Dist out;
  for (auto [cl, cr] : candidates)
    if (std::optional<Dist> o = evaluate(cl, cr)) {
      dl = cl;
      dr = cr;
      out = *o;
      break;
    }

  Value newLhs = get(lhs, dl), newRhs = get(rhs, dr);
  bool partial = out.kind == Dist::P;
  Value bias;
  if (Value oldBias = mm.getBias())
    bias = get(oldBias, out.kind == Dist::S && out.dim == resultRank - 1
                            ? Dist::s(0)
                            : Dist::r());
  Location loc = mm.getLoc();
  auto newMm = mtc::MatmulOp::create(b, loc, local(mm, out), newLhs, newRhs,
                                     partial ? Value() : bias, ta, tb);
  if (partial && bias) {
    // Row-parallel with a bias: reduce, then add the bias once.
    Dist reduced = whole(mm);
    Value r = convert(newMm, Dist::p(), reduced, loc);
    Value withBias = mtc::AddOp::create(b, loc, r.getType(), r, bias);
    set(mm, withBias, reduced);
    return success();
  }
  set(mm, newMm, out);
  return success();
}

LogicalResult FunctionPartitioner::partitionOp(Operation *op) {
  Location loc = op->getLoc();
  // Clone `op` with operands in `want` and results in `out`.
  auto rebuild = [&](ArrayRef<Dist> want, ArrayRef<Dist> out,
                     function_ref<void(Operation *)> adjust = nullptr) {
    SmallVector<Value> operands;
    for (auto [v, d] : llvm::zip(op->getOperands(), want))
      operands.push_back(get(v, d));
    Operation *clone = b.clone(*op);
    clone->setOperands(operands);
    for (auto [r, d] : llvm::zip(clone->getResults(), out))
      r.setType(local(r, d));
    if (adjust)
      adjust(clone);
    for (auto [r, nr, d] : llvm::zip(op->getResults(), clone->getResults(), out))
      set(r, nr, d);
    return success();
  };
  auto all = [&](Dist d) {
    return SmallVector<Dist>(op->getNumOperands(), d);
  };
  auto allResults = [&](Dist d) {
    return SmallVector<Dist>(op->getNumResults(), d);
  };
  auto divideHeads = [&](Operation *clone) {
    for (StringRef name : {"heads", "kv_heads"})
      if (auto a = clone->getAttrOfType<IntegerAttr>(name))
        clone->setAttr(name, b.getI64IntegerAttr(a.getInt() / tp));
  };
  auto last = [](Value v) {
    return cast<RankedTensorType>(v.getType()).getRank() - 1;
  };

  return llvm::TypeSwitch<Operation *, LogicalResult>(op)
      .Case([&](shard::ShardingOp) -> LogicalResult { return success(); })
      .Case([&](shard::ShardOp s) -> LogicalResult {
        mapping.map(s.getResult(), mapping.lookup(s.getSrc()));
        dists[s.getResult()] = distOf(s.getSrc());
        return success();
      })
      .Case([&](mtc::ParamOp p) -> LogicalResult {
        Dist d = paramDists.lookup(p.getName());
        return rebuild({}, {d}, [&](Operation *clone) {
          if (d.kind != Dist::S)
            return;
          clone->setAttr(
              "mtc.shard",
              b.getDictionaryAttr(
                  {b.getNamedAttr("dim", b.getI64IntegerAttr(d.dim)),
                   b.getNamedAttr("axis", b.getI64IntegerAttr(mtc::kAxisTP)),
                   b.getNamedAttr("global_shape",
                                  b.getDenseI64ArrayAttr(p.getType().getShape()))}));
        });
      })
      .Case([&](mtc::MatmulOp mm) { return partitionMatmul(mm); })
      .Case([&](mtc::EmbeddingOp e) -> LogicalResult {
        Dist dt = distOf(e.getTable());
        if (dt.kind == Dist::S && dt.dim == 0) {
          Value table = get(e.getTable(), dt);
          int64_t rows =
              cast<RankedTensorType>(table.getType()).getDimSize(0);
          auto n = mtc::EmbeddingOp::create(
              b, loc, e.getType(), get(e.getTokens(), Dist::r()), table,
              vocabStart(loc, rows));
          set(e, n, Dist::p());
          return success();
        }
        return rebuild(all(Dist::r()), {Dist::r()});
      })
      .Case([&](mtc::EmbeddingGradOp e) -> LogicalResult {
        std::optional<Dist> target = gradientTarget(e);
        if (target && target->kind == Dist::S && target->dim == 0) {
          auto type = cast<RankedTensorType>(local(e, *target));
          auto n = mtc::EmbeddingGradOp::create(
              b, loc, type, get(e.getTokens(), Dist::r()),
              get(e.getDout(), Dist::r()), vocabStart(loc, type.getDimSize(0)));
          set(e, n, *target);
          return success();
        }
        return rebuild(all(Dist::r()), {Dist::r()});
      })
      .Case([&](mtc::AddOp a) -> LogicalResult {
        Dist dl = distOf(a.getLhs()), dr = distOf(a.getRhs());
        auto tl = cast<RankedTensorType>(a.getLhs().getType());
        auto tr = cast<RankedTensorType>(a.getRhs().getType());
        int64_t lead = tl.getRank() - tr.getRank(); // broadcast dimensions
        // The rhs distribution that matches an lhs distribution.
        auto rhsFor = [&](Dist l) {
          if (l.kind == Dist::S && l.dim >= lead)
            return Dist::s(l.dim - lead);
          return l.kind == Dist::P && lead > 0 ? Dist::r() : l;
        };
        if (dl.kind == Dist::P && dr.kind == Dist::P && lead == 0)
          return rebuild({dl, dr}, {dl});
        if (dl.kind != Dist::P && dr.kind != Dist::P) {
          // Prefer the slice: slicing the other operand is free.
          if (dl.kind == Dist::S)
            return rebuild({dl, rhsFor(dl)}, {dl});
          if (dr.kind == Dist::S && lead == 0)
            return rebuild({dr, dr}, {dr});
          return rebuild(all(Dist::r()), {Dist::r()});
        }
        // A partial operand with a whole or sliced one: finish the sum into
        // the distribution values outside the parallel regions have.
        Dist d = dl.kind == Dist::S ? dl : whole(a);
        return rebuild({d, rhsFor(d)}, {d});
      })
      .Case([&](mtc::ReduceLeadingOp r) -> LogicalResult {
        Dist d = distOf(r.getInput());
        int64_t dropped = last(r.getInput()) - last(r);
        if (d.kind == Dist::S && d.dim < dropped)
          return rebuild({d}, {Dist::p()}); // summing over the split rows
        if (d.kind == Dist::S)
          return rebuild({d}, {Dist::s(d.dim - dropped)});
        return rebuild({d}, {d});
      })
      .Case([&](mtc::DropoutOp dr) -> LogicalResult {
        // The mask is keyed by the global element index, so a slice draws
        // the one-process program's mask for its elements as long as the
        // emitter knows where the slice lies: `mtc.slice_of` (dim, grid
        // axis, parts) on the rank's op. A partial sum is made whole first
        // (sequence shards under sp).
        Dist d = distOf(dr.getInput());
        if (d.kind == Dist::P)
          d = whole(dr.getInput());
        if (d.kind != Dist::S || dr.getP().convertToDouble() <= 0)
          return rebuild({d}, {d});
        return rebuild({d}, {d}, [&](Operation *clone) {
          clone->setAttr("mtc.slice_of",
                         b.getDictionaryAttr({
                             b.getNamedAttr("dim", b.getI64IntegerAttr(d.dim)),
                             b.getNamedAttr("axis",
                                            b.getI64IntegerAttr(mtc::kAxisTP)),
                             b.getNamedAttr("parts", b.getI64IntegerAttr(tp)),
                         }));
        });
      })
      .Case<mtc::RopeOp, mtc::AttentionOp>([&](Operation *) -> LogicalResult {
        Value qkv = op->getOperand(0);
        Dist d = distOf(qkv);
        if (d.kind == Dist::S && d.dim == last(qkv)) {
          SmallVector<Dist> want = {d};
          if (op->getNumOperands() > 1)
            want.push_back(Dist::r()); // padding mask
          SmallVector<Dist> out = {d};
          if (op->getNumResults() > 1)
            out.push_back(Dist::s(1)); // lse (B, H, S)
          return rebuild(want, out, divideHeads);
        }
        return rebuild(all(Dist::r()), allResults(Dist::r()));
      })
      .Case([&](mtc::AttentionGradOp a) -> LogicalResult {
        Dist d = distOf(a.getQkv());
        if (d.kind == Dist::S && d.dim == last(a.getQkv())) {
          Dist o = Dist::s(last(a.getOut()));
          SmallVector<Dist> want = {d, o, Dist::s(1), o};
          if (a.getMask())
            want.push_back(Dist::r());
          return rebuild(want, {d}, divideHeads);
        }
        return rebuild(all(Dist::r()), {Dist::r()});
      })
      .Case<mtc::LayerNormOp, mtc::RmsNormOp>([&](Operation *) -> LogicalResult {
        // Rows are independent: a split on a leading dimension (sequence
        // parallelism) stays; weights are whole.
        Value x = op->getOperand(0);
        Dist d = distOf(x);
        if (!(d.kind == Dist::S && d.dim != last(x)))
          d = whole(x);
        SmallVector<Dist> want(op->getNumOperands(), Dist::r());
        want[0] = d;
        return rebuild(want, {d});
      })
      .Case<mtc::LayerNormGradOp, mtc::RmsNormGradOp>(
          [&](Operation *) -> LogicalResult {
            // (x, gamma, dout) -> (dx, dgamma[, dbeta]): with rows split,
            // each rank sums its rows' share of the weight gradients.
            Value x = op->getOperand(0);
            Dist d = distOf(x);
            if (!(d.kind == Dist::S && d.dim != last(x)))
              d = whole(x);
            bool rowsSplit = d.kind == Dist::S;
            SmallVector<Dist> out(op->getNumResults(),
                                  rowsSplit ? Dist::p() : Dist::r());
            out[0] = d;
            return rebuild({d, Dist::r(), d}, out);
          })
      .Case([&](mtc::CrossEntropyOp c) -> LogicalResult {
        // Vocabulary-parallel: the logits stay split; the op completes the
        // softmax over the tp group (no rank holds the whole logits).
        Dist d = distOf(c.getLogits());
        if (d.kind != Dist::S || d.dim != last(c.getLogits()))
          return rebuild(all(Dist::r()), {Dist::r()});
        Value logits = get(c.getLogits(), d);
        int64_t v = cast<RankedTensorType>(logits.getType()).getShape().back();
        auto n = mtc::CrossEntropyOp::create(
            b, loc, c.getType(), logits, get(c.getTargets(), Dist::r()),
            vocabStart(loc, v), c.getIgnoreIndexAttr(),
            b.getI64IntegerAttr(c.getNumValidClasses()),
            b.getI64IntegerAttr(mtc::kAxisTP));
        set(c, n, Dist::r());
        return success();
      })
      .Case([&](mtc::CrossEntropyGradOp c) -> LogicalResult {
        Dist d = distOf(c.getLogits());
        if (d.kind != Dist::S || d.dim != last(c.getLogits()))
          return rebuild(all(Dist::r()), {Dist::r()});
        Value logits = get(c.getLogits(), d);
        int64_t v = cast<RankedTensorType>(logits.getType()).getShape().back();
        auto n = mtc::CrossEntropyGradOp::create(
            b, loc, logits.getType(), logits, get(c.getTargets(), Dist::r()),
            get(c.getDloss(), Dist::r()), vocabStart(loc, v),
            c.getIgnoreIndexAttr(), b.getI64IntegerAttr(c.getNumValidClasses()),
            b.getI64IntegerAttr(mtc::kAxisTP));
        set(c, n, d);
        return success();
      })
      .Case([&](mtc::AccumulateGradOp a) -> LogicalResult {
        Dist d = paramDists.lookup(a.getParam());
        return rebuild({d}, {});
      })
      .Case([&](mtc::GradNormOp g) -> LogicalResult {
        SmallVector<Attribute> split;
        for (auto &it : paramDists)
          if (it.second.kind == Dist::S)
            split.push_back(b.getStringAttr(it.first()));
        llvm::sort(split, [](Attribute x, Attribute y) {
          return cast<StringAttr>(x).getValue() < cast<StringAttr>(y).getValue();
        });
        return rebuild({}, {Dist::r()}, [&](Operation *clone) {
          if (!split.empty())
            clone->setAttr("tp_split_params", b.getArrayAttr(split));
        });
      })
      .Case([&](func::ReturnOp) -> LogicalResult {
        return rebuild(all(Dist::r()), {});
      })
      .Default([&](Operation *) -> LogicalResult {
        // Elementwise ops (the trait: activations and their gradients) run
        // on any one distribution all their operands share, except partial
        // sums (they are not linear).
        if (op->hasTrait<OpTrait::Elementwise>() && op->getNumOperands() > 0) {
          Dist d = distOf(op->getOperand(0));
          bool same = llvm::all_of(op->getOperands(),
                                   [&](Value v) { return distOf(v) == d; });
          if (!same || d.kind == Dist::P)
            d = Dist::r();
          return rebuild(all(d), allResults(d));
        }
        // Constants, the optimizer: everything whole.
        return rebuild(all(Dist::r()), allResults(Dist::r()));
      });
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
    if (shape.pp > 1) {
      module.emitError("mtc-partition: pipeline parallelism (pp = ")
          << shape.pp << ") is not implemented yet";
      return signalPassFailure();
    }

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
