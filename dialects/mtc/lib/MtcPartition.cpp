//===- MtcPartition.cpp - tensor-parallel rules of mtc ops ----------------===//
//
// PartitionOpInterface::partition: how each op runs on tp-distributed
// operands (MtcPartition.h; the partitioner is compiler/lib/Transforms/
// Partition.cpp). Rules:
//   param     its annotated split; the global shape recorded (`mtc.shard`),
//             since checkpoints keep global tensors
//   matmul    contraction split on both sides -> P; on one side -> the other
//             is sliced; an output dimension split -> S of that dimension; a
//             bias of a P result is added after the all_reduce, once
//   norms (and gradients) -> R, or rows split (the weights' gradients are
//             then partial sums); dropout -> any but P (a slice is marked
//             `mtc.slice_of` so its mask is the global tensor's)
//   cross-entropy (and gradient) -> R, or logits split on the vocabulary:
//             vocabulary-parallel, the softmax completed over the group
//   attention, rope (and gradients) -> R, or S(last) split by heads
//   embedding -> a vocabulary-split table gives P (rows of other ranks are 0)
//   add       partial + partial -> P; a slice wins over whole; a partial
//             with anything else is finished into the distribution values
//             outside the parallel regions have
//   accumulate_grad -> its parameter's distribution; grad_norm learns which
//             parameters are split (their squared norms are summed over tp)
// The mixture-of-experts ops' rules live with those ops (MtcMoe.cpp).
//
//===----------------------------------------------------------------------===//
#include "mtc/Dialect/MtcDialect.h"

#include "mlir/Dialect/Shard/IR/ShardOps.h"

using namespace mlir;
using namespace mtc;

namespace {

SmallVector<Dist> all(Operation *op, Dist d) {
  return SmallVector<Dist>(op->getNumOperands(), d);
}
SmallVector<Dist> allResults(Operation *op, Dist d) {
  return SmallVector<Dist>(op->getNumResults(), d);
}
int64_t last(Value v) { return cast<RankedTensorType>(v.getType()).getRank() - 1; }

/// Head counts divided by tp on a head-split op's clone.
std::function<void(Operation *)> divideHeads(Partitioner &p) {
  return [&p](Operation *clone) {
    OpBuilder &b = p.builder();
    for (StringRef name : {"heads", "kv_heads"})
      if (auto a = clone->getAttrOfType<IntegerAttr>(name))
        clone->setAttr(name, b.getI64IntegerAttr(a.getInt() / p.tp()));
  };
}

/// Rope and attention: split by heads (the last dimension of the fused
/// QKV) or whole.
LogicalResult partitionHeads(Operation *op, Partitioner &p) {
  Value qkv = op->getOperand(0);
  Dist d = p.distOf(qkv);
  if (d.kind == Dist::S && d.dim == last(qkv)) {
    SmallVector<Dist> want = {d};
    if (op->getNumOperands() > 1)
      want.push_back(Dist::r()); // padding mask
    SmallVector<Dist> out = {d};
    if (op->getNumResults() > 1)
      out.push_back(Dist::s(1)); // lse (B, H, S)
    return p.rebuild(op, want, out, divideHeads(p));
  }
  return p.rebuild(op, all(op, Dist::r()), allResults(op, Dist::r()));
}

/// Norms: rows are independent, so a split on a leading dimension (sequence
/// parallelism) stays; weights are whole.
LogicalResult partitionNorm(Operation *op, Partitioner &p) {
  Value x = op->getOperand(0);
  Dist d = p.distOf(x);
  if (!(d.kind == Dist::S && d.dim != last(x)))
    d = p.whole(x);
  SmallVector<Dist> want(op->getNumOperands(), Dist::r());
  want[0] = d;
  return p.rebuild(op, want, {d});
}

/// Norm gradients (x, gamma, dout) -> (dx, dgamma[, dbeta]): with rows
/// split, each rank sums its rows' share of the weight gradients.
LogicalResult partitionNormGrad(Operation *op, Partitioner &p) {
  Value x = op->getOperand(0);
  Dist d = p.distOf(x);
  if (!(d.kind == Dist::S && d.dim != last(x)))
    d = p.whole(x);
  SmallVector<Dist> out(op->getNumResults(),
                        d.kind == Dist::S ? Dist::p() : Dist::r());
  out[0] = d;
  return p.rebuild(op, {d, Dist::r(), d}, out);
}

/// How a split operand divides a matmul's contraction (K) or its free
/// dimension (M for the lhs, N for the rhs). Operands are matrices made by
/// merging all but the last dimension ("rows"); `transpose` swaps rows and
/// columns.
struct MatSplit {
  enum Kind { none, contraction, free } kind = none;
  bool byRows = false; // the split dimension is one of the merged rows
  int64_t dim = -1;    // the split tensor dimension
};

MatSplit matSplit(Value v, Dist d, bool transpose, bool isLhs) {
  if (d.kind != Dist::S)
    return {};
  bool byRows = d.dim != last(v);
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

/// Vocabulary-parallel cross-entropy and its gradient: the logits stay
/// split on the vocabulary and the op completes the softmax over the tp
/// group; else whole. `make` builds the op on the split logits; its result
/// is whole (the loss) or split like the logits (their gradient).
template <typename Op>
LogicalResult partitionVocabParallel(
    Op op, Partitioner &p, bool resultSplitLikeLogits,
    function_ref<Value(Value logits, Value start)> make) {
  Dist d = p.distOf(op.getLogits());
  if (d.kind != Dist::S || d.dim != last(op.getLogits()))
    return p.rebuild(op, all(op, Dist::r()), allResults(op, Dist::r()));
  Value logits = p.get(op.getLogits(), d);
  int64_t v = cast<RankedTensorType>(logits.getType()).getShape().back();
  Value start = p.vocabStart(op.getLoc(), v);
  p.set(op.getResult(), make(logits, start),
        resultSplitLikeLogits ? d : Dist::r());
  return success();
}

} // namespace

LogicalResult ParamOp::partition(Partitioner &p) {
  Dist d = p.paramDist(getName());
  return p.rebuild(*this, {}, {d}, [&](Operation *clone) {
    if (d.kind != Dist::S)
      return;
    OpBuilder &b = p.builder();
    clone->setAttr(
        "mtc.shard",
        b.getDictionaryAttr(
            {b.getNamedAttr("dim", b.getI64IntegerAttr(d.dim)),
             b.getNamedAttr("axis", b.getI64IntegerAttr(p.tpAxis())),
             b.getNamedAttr("global_shape",
                            b.getDenseI64ArrayAttr(getType().getShape()))}));
  });
}

LogicalResult MatmulOp::partition(Partitioner &p) {
  bool ta = getTransposeA(), tb = getTransposeB();
  Value lhs = getLhs(), rhs = getRhs();
  int64_t resultRank = getType().getRank();

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
  Dist dl = p.distOf(lhs), dr = p.distOf(rhs);
  SmallVector<std::pair<Dist, Dist>> candidates = {{dl, dr}};
  MatSplit sl = matSplit(lhs, dl, ta, true), sr = matSplit(rhs, dr, tb, false);
  if (sl.kind == MatSplit::contraction && dr.kind == Dist::R)
    if (auto m = matchingContraction(lhs, sl, rhs, tb, false))
      candidates.push_back({dl, *m});
  if (sr.kind == MatSplit::contraction && dl.kind == Dist::R)
    if (auto m = matchingContraction(rhs, sr, lhs, ta, true))
      candidates.push_back({*m, dr});
  auto isParam = [](Value v) {
    if (auto s = v.getDefiningOp<shard::ShardOp>())
      v = s.getSrc();
    return v.getDefiningOp<ParamOp>() != nullptr;
  };
  if (p.gathered(rhs))
    candidates.push_back({dl, Dist::r()});
  if (p.gathered(lhs))
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

  Value newLhs = p.get(lhs, dl), newRhs = p.get(rhs, dr);
  bool partial = out.kind == Dist::P;
  Value bias;
  if (Value oldBias = getBias())
    bias = p.get(oldBias, out.kind == Dist::S && out.dim == resultRank - 1
                              ? Dist::s(0)
                              : Dist::r());
  OpBuilder &b = p.builder();
  auto newMm = MatmulOp::create(b, getLoc(), p.localType(getResult(), out),
                                newLhs, newRhs, partial ? Value() : bias, ta,
                                tb);
  if (partial && bias) {
    // Row-parallel with a bias: reduce, then add the bias once.
    Dist reduced = p.whole(getResult());
    Value r = p.convert(newMm, Dist::p(), reduced, getLoc());
    Value withBias = AddOp::create(b, getLoc(), r.getType(), r, bias);
    p.set(getResult(), withBias, reduced);
    return success();
  }
  p.set(getResult(), newMm, out);
  return success();
}

LogicalResult EmbeddingOp::partition(Partitioner &p) {
  Dist dt = p.distOf(getTable());
  if (dt.kind == Dist::S && dt.dim == 0) {
    Value table = p.get(getTable(), dt);
    int64_t rows = cast<RankedTensorType>(table.getType()).getDimSize(0);
    auto n = EmbeddingOp::create(p.builder(), getLoc(), getType(),
                                 p.get(getTokens(), Dist::r()), table,
                                 p.vocabStart(getLoc(), rows));
    p.set(getResult(), n, Dist::p());
    return success();
  }
  return p.rebuild(*this, all(*this, Dist::r()), {Dist::r()});
}

LogicalResult EmbeddingGradOp::partition(Partitioner &p) {
  std::optional<Dist> target = p.gradientTarget(getResult());
  if (target && target->kind == Dist::S && target->dim == 0) {
    auto type = cast<RankedTensorType>(p.localType(getResult(), *target));
    auto n = EmbeddingGradOp::create(
        p.builder(), getLoc(), type, p.get(getTokens(), Dist::r()),
        p.get(getDout(), Dist::r()), p.vocabStart(getLoc(), type.getDimSize(0)));
    p.set(getResult(), n, *target);
    return success();
  }
  return p.rebuild(*this, all(*this, Dist::r()), {Dist::r()});
}

LogicalResult AddOp::partition(Partitioner &p) {
  Dist dl = p.distOf(getLhs()), dr = p.distOf(getRhs());
  int64_t lead = last(getLhs()) - last(getRhs()); // broadcast dimensions
  // The rhs distribution that matches an lhs distribution.
  auto rhsFor = [&](Dist l) {
    if (l.kind == Dist::S && l.dim >= lead)
      return Dist::s(l.dim - lead);
    return l.kind == Dist::P && lead > 0 ? Dist::r() : l;
  };
  if (dl.kind == Dist::P && dr.kind == Dist::P && lead == 0)
    return p.rebuild(*this, {dl, dr}, {dl});
  if (dl.kind != Dist::P && dr.kind != Dist::P) {
    // Prefer the slice: slicing the other operand is free.
    if (dl.kind == Dist::S)
      return p.rebuild(*this, {dl, rhsFor(dl)}, {dl});
    if (dr.kind == Dist::S && lead == 0)
      return p.rebuild(*this, {dr, dr}, {dr});
    return p.rebuild(*this, all(*this, Dist::r()), {Dist::r()});
  }
  // A partial operand with a whole or sliced one: finish the sum into the
  // distribution values outside the parallel regions have.
  Dist d = dl.kind == Dist::S ? dl : p.whole(getResult());
  return p.rebuild(*this, {d, rhsFor(d)}, {d});
}

LogicalResult ReduceLeadingOp::partition(Partitioner &p) {
  Dist d = p.distOf(getInput());
  int64_t dropped = last(getInput()) - last(getResult());
  if (d.kind == Dist::S && d.dim < dropped)
    return p.rebuild(*this, {d}, {Dist::p()}); // summing over the split rows
  if (d.kind == Dist::S)
    return p.rebuild(*this, {d}, {Dist::s(d.dim - dropped)});
  return p.rebuild(*this, {d}, {d});
}

LogicalResult DropoutOp::partition(Partitioner &p) {
  // The mask is keyed by the global element index, so a slice draws the
  // one-process program's mask for its elements as long as the emitter
  // knows where the slice lies: `mtc.slice_of` (dim, grid axis, parts) on
  // the rank's op. A partial sum is made whole first (sequence shards
  // under sp).
  Dist d = p.distOf(getInput());
  if (d.kind == Dist::P)
    d = p.whole(getInput());
  if (d.kind != Dist::S || getP().convertToDouble() <= 0)
    return p.rebuild(*this, {d}, {d});
  return p.rebuild(*this, {d}, {d}, [&](Operation *clone) {
    OpBuilder &b = p.builder();
    clone->setAttr("mtc.slice_of",
                   b.getDictionaryAttr({
                       b.getNamedAttr("dim", b.getI64IntegerAttr(d.dim)),
                       b.getNamedAttr("axis", b.getI64IntegerAttr(p.tpAxis())),
                       b.getNamedAttr("parts", b.getI64IntegerAttr(p.tp())),
                   }));
  });
}

LogicalResult RopeOp::partition(Partitioner &p) {
  return partitionHeads(*this, p);
}
LogicalResult AttentionOp::partition(Partitioner &p) {
  return partitionHeads(*this, p);
}

LogicalResult AttentionGradOp::partition(Partitioner &p) {
  Dist d = p.distOf(getQkv());
  if (d.kind == Dist::S && d.dim == last(getQkv())) {
    Dist o = Dist::s(last(getOut()));
    SmallVector<Dist> want = {d, o, Dist::s(1), o};
    if (getMask())
      want.push_back(Dist::r());
    return p.rebuild(*this, want, {d}, divideHeads(p));
  }
  return p.rebuild(*this, all(*this, Dist::r()), {Dist::r()});
}

LogicalResult LayerNormOp::partition(Partitioner &p) {
  return partitionNorm(*this, p);
}
LogicalResult RmsNormOp::partition(Partitioner &p) {
  return partitionNorm(*this, p);
}
LogicalResult LayerNormGradOp::partition(Partitioner &p) {
  return partitionNormGrad(*this, p);
}
LogicalResult RmsNormGradOp::partition(Partitioner &p) {
  return partitionNormGrad(*this, p);
}

LogicalResult CrossEntropyOp::partition(Partitioner &p) {
  OpBuilder &b = p.builder();
  return partitionVocabParallel(
      *this, p, /*resultSplitLikeLogits=*/false,
      [&](Value logits, Value start) -> Value {
        return CrossEntropyOp::create(
            b, getLoc(), getType(), logits, p.get(getTargets(), Dist::r()),
            start, getIgnoreIndexAttr(),
            b.getI64IntegerAttr(getNumValidClasses()),
            b.getI64IntegerAttr(p.tpAxis()));
      });
}

LogicalResult CrossEntropyGradOp::partition(Partitioner &p) {
  OpBuilder &b = p.builder();
  return partitionVocabParallel(
      *this, p, /*resultSplitLikeLogits=*/true,
      [&](Value logits, Value start) -> Value {
        return CrossEntropyGradOp::create(
            b, getLoc(), logits.getType(), logits,
            p.get(getTargets(), Dist::r()), p.get(getDloss(), Dist::r()),
            start, getIgnoreIndexAttr(),
            b.getI64IntegerAttr(getNumValidClasses()),
            b.getI64IntegerAttr(p.tpAxis()));
      });
}

LogicalResult AccumulateGradOp::partition(Partitioner &p) {
  return p.rebuild(*this, {p.paramDist(getParam())}, {});
}

LogicalResult GradNormOp::partition(Partitioner &p) {
  SmallVector<Attribute> split;
  OpBuilder &b = p.builder();
  for (StringRef name : p.splitParams())
    split.push_back(b.getStringAttr(name));
  return p.rebuild(*this, {}, {Dist::r()}, [&](Operation *clone) {
    if (!split.empty())
      clone->setAttr("tp_split_params", b.getArrayAttr(split));
  });
}
