//===- MtcMoe.cpp - the mixture-of-experts ops: verifiers, gradients, costs, rules, kernel rows -===//
//
// The MoE family (MtcOps.td, "Mixture of experts"; docs/moe.md) in one
// file, since its ops only make sense together: the router, the permute /
// unpermute pair (dropless, or with a capacity: token dropping) and the
// grouped GEMMs. Each op's verifier lists
// its checks; each gradient rule states its math; the tensor-parallel
// rules (mtc-partition) say how the experts split over tp while routing
// stays whole; the kernel rows name the host kernels of
// runtime/include/mtc/rt/host_kernels.h ("Mixture of experts"), which take
// exactly these arguments. There are no CUDA kernels
// for these ops yet: `mtc compile --target cuda` refuses MoE specs before
// any IR is built (tools/mtc/Compile.cpp).
//
// Costs: a grouped GEMM counts 2 N K Nout FLOPs for N = T*k permuted rows,
// i.e. top_k experts' work per token, which is what MFU on active
// parameters counts (with a capacity, N = min(E*C, T*k), the buffer's rows). Permute/unpermute count their multiply-adds.
//
//===----------------------------------------------------------------------===//
#include "mtc/Dialect/MtcDialect.h"

#include "mlir/IR/Builders.h"
#include "mlir/Interfaces/FunctionInterfaces.h"

#include <cmath>

using namespace mlir;
using namespace mtc;

namespace {
RankedTensorType typeOf(Value v) { return cast<RankedTensorType>(v.getType()); }
ArrayRef<int64_t> shapeOf(Value v) { return typeOf(v).getShape(); }
double numel(Value v) { return double(typeOf(v).getNumElements()); }
/// Tokens of a (..., last) tensor: the product of its leading dimensions.
int64_t tokens(Value v) { return typeOf(v).getNumElements() / shapeOf(v).back(); }
std::string shapeStr(ArrayRef<int64_t> s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i)
    r += (i ? ", " : "") + std::to_string(s[i]);
  return r + ")";
}
/// The same leading dimensions (the tokens) in `a` and `b`, rank >= 2.
bool sameTokens(Value a, Value b) {
  auto sa = shapeOf(a), sb = shapeOf(b);
  return sa.size() >= 2 && sa.size() == sb.size() &&
         sa.drop_back() == sb.drop_back();
}
std::string optional(BufferName buf, Value v) {
  return v ? buf(v) : std::string("nullptr");
}
using kernel_arg::f32;
using kernel_arg::flag;
using kernel_arg::integer;

/// Router checks shared by the op and its gradient: logits (..., E) with
/// rank >= 2; 1 <= top_k <= E; indices (..., k) and weights (..., k) with
/// the logits' tokens; scale > 0; coefficients >= 0.
LogicalResult verifyRouter(Operation *op, Value logits, Value indices,
                           Value weights, int64_t k, double scale, double aux,
                           double z) {
  auto s = shapeOf(logits);
  if (s.size() < 2)
    return op->emitOpError("logits must be (..., num_experts) with at least "
                           "one token dimension, got ")
           << shapeStr(s);
  int64_t e = s.back();
  if (k < 1 || k > e)
    return op->emitOpError("top_k must be in [1, num_experts = ")
           << e << "], got " << k;
  for (Value v : {indices, weights})
    if (!sameTokens(logits, v) || shapeOf(v).back() != k)
      return op->emitOpError("indices and weights must be (..., top_k) = ")
             << shapeStr(s.drop_back()) << " x " << k << ", got "
             << shapeStr(shapeOf(v));
  if (!(scale > 0))
    return op->emitOpError("scale must be > 0, got ") << scale;
  if (!(aux >= 0) || !(z >= 0))
    return op->emitOpError("aux_coeff and z_coeff must be >= 0");
  return success();
}

/// The row count and E of a grouped op: counts is (E) with E >= 1.
LogicalResult verifyCounts(Operation *op, Value counts) {
  if (shapeOf(counts).size() != 1 || shapeOf(counts)[0] < 1)
    return op->emitOpError("counts must be (num_experts), got ")
           << shapeStr(shapeOf(counts));
  return success();
}
} // namespace

//===----------------------------------------------------------------------===//
// Verifiers
//===----------------------------------------------------------------------===//

// Checks: verifyRouter; probs has the logits' type; bias, when present,
// is (num_experts).
LogicalResult MoeRouterOp::verify() {
  if (getProbs().getType() != getLogits().getType())
    return emitOpError("probs must have the logits' type");
  if (Value bias = getBias()) {
    int64_t e = shapeOf(getLogits()).back();
    if (shapeOf(bias) != ArrayRef<int64_t>{e})
      return emitOpError("bias must be (num_experts) = (")
             << e << "), one per expert, got " << shapeStr(shapeOf(bias));
  }
  return verifyRouter(*this, getLogits(), getIndices(), getWeights(),
                      getTopK(), getScale().convertToDouble(),
                      getAuxCoeff().convertToDouble(),
                      getZCoeff().convertToDouble());
}

// Checks: verifyRouter (types of logits, probs and result agree by trait).
LogicalResult MoeRouterGradOp::verify() {
  return verifyRouter(*this, getLogits(), getIndices(), getDweights(),
                      getTopK(), getScale().convertToDouble(),
                      getAuxCoeff().convertToDouble(),
                      getZCoeff().convertToDouble());
}

// Checks: input (..., D) and indices (..., k) share the token dimensions;
// num_experts >= 1; capacity, when present, >= 1; priority only with a
// capacity, of the indices' shape; result (T*k, D) dropless, (min(E*C,
// T*k), D) with capacity C, of the input's element type; positions has the
// indices' type; counts (num_experts).
LogicalResult MoePermuteOp::verify() {
  Value x = getInput(), idx = getIndices();
  if (!sameTokens(x, idx))
    return emitOpError("input (..., D) and indices (..., top_k) must have the "
                       "same token dimensions, got ")
           << shapeStr(shapeOf(x)) << " and " << shapeStr(shapeOf(idx));
  if (getNumExperts() < 1)
    return emitOpError("num_experts must be >= 1");
  std::optional<uint64_t> cap = getCapacity();
  if (cap && int64_t(*cap) < 1)
    return emitOpError("capacity must be >= 1 (rows per expert), got ")
           << int64_t(*cap);
  if (getPriority() && !cap)
    return emitOpError("priority ranks the assignments an expert keeps when "
                       "it is over capacity: it needs a capacity");
  if (getPriority() && shapeOf(getPriority()) != shapeOf(idx))
    return emitOpError("priority must have the indices' shape ")
           << shapeStr(shapeOf(idx)) << ", got "
           << shapeStr(shapeOf(getPriority()));
  int64_t rows = tokens(idx) * shapeOf(idx).back();
  if (cap)
    rows = std::min(rows, int64_t(getNumExperts()) * int64_t(*cap));
  auto r = typeOf(getResult());
  if (r.getShape() != ArrayRef<int64_t>{rows, shapeOf(x).back()} ||
      r.getElementType() != typeOf(x).getElementType()) {
    auto diag = emitOpError();
    if (cap)
      diag << "result must be (min(num_experts * capacity, tokens * top_k), "
              "D) = (";
    else
      diag << "result must be (tokens * top_k, D) = (";
    return diag << rows << ", " << shapeOf(x).back()
                << ") of the input's element type ("
                << (cap ? "a row for every kept assignment"
                        : "dropless: every assignment has a row")
                << "), got " << shapeStr(r.getShape());
  }
  if (getPositions().getType() != idx.getType())
    return emitOpError("positions must have the indices' type");
  if (shapeOf(getCounts()) != ArrayRef<int64_t>{int64_t(getNumExperts())})
    return emitOpError("counts must be (num_experts) = (")
           << getNumExperts() << "), got " << shapeStr(shapeOf(getCounts()));
  return success();
}

// Checks: input (N, D) with 1 <= N <= tokens * k of positions (..., k)
// (N < tokens * k: a permute with a capacity dropped assignments); weights,
// when present, has the positions' shape; result (..., D) with the
// positions' token dimensions and the input's element type.
static LogicalResult verifyUnpermute(Operation *op, Value input,
                                     Value positions, Value weights,
                                     Value result) {
  auto in = shapeOf(input), pos = shapeOf(positions);
  if (in.size() != 2 || pos.size() < 2 || in[0] < 1 ||
      in[0] > tokens(positions) * pos.back())
    return op->emitOpError("input must be (rows, D) with rows at most tokens "
                           "* top_k = ")
           << tokens(positions) * pos.back() << " for positions "
           << shapeStr(pos) << ", got " << shapeStr(in);
  if (weights && shapeOf(weights) != pos)
    return op->emitOpError("weights must have the positions' shape ")
           << shapeStr(pos) << ", got " << shapeStr(shapeOf(weights));
  SmallVector<int64_t> want(pos.drop_back());
  want.push_back(in[1]);
  if (shapeOf(result) != ArrayRef<int64_t>(want) ||
      typeOf(result).getElementType() != typeOf(input).getElementType())
    return op->emitOpError("result must be ")
           << shapeStr(want) << " of the input's element type, got "
           << shapeStr(shapeOf(result));
  return success();
}

LogicalResult MoeUnpermuteOp::verify() {
  return verifyUnpermute(*this, getInput(), getPositions(), getWeights(),
                         getResult());
}

// Checks: those of mtc.moe_unpermute, with dout in the result's place.
LogicalResult MoeUnpermuteGradOp::verify() {
  return verifyUnpermute(*this, getInput(), getPositions(), getWeights(),
                         getDout());
}

// Checks: lhs (N, K); rhs (E, K, Nout), or (E, Nout, K) with transpose_b;
// counts (E); bias (E, Nout); bias_rank only with a bias; result (N, Nout).
LogicalResult GroupedMatmulOp::verify() {
  if (failed(verifyCounts(*this, getCounts())))
    return failure();
  if (getBiasRank() && !getBias())
    return emitOpError("bias_rank without a bias: it says where the bias is "
                       "added");
  auto a = shapeOf(getLhs()), w = shapeOf(getRhs());
  int64_t e = shapeOf(getCounts())[0];
  if (a.size() != 2 || w.size() != 3 || w[0] != e)
    return emitOpError("lhs must be (rows, K) and rhs (num_experts = ")
           << e << ", ., .), got " << shapeStr(a) << " and " << shapeStr(w);
  int64_t k = getTransposeB() ? w[2] : w[1], n = getTransposeB() ? w[1] : w[2];
  if (a[1] != k)
    return emitOpError("contraction sizes differ: lhs has K = ")
           << a[1] << ", rhs " << k
           << (getTransposeB() ? " (its last dimension, transpose_b)"
                               : " (its second dimension)");
  if (getBias() && shapeOf(getBias()) != ArrayRef<int64_t>{e, n})
    return emitOpError("bias must be (num_experts, Nout) = (")
           << e << ", " << n << "), got " << shapeStr(shapeOf(getBias()));
  if (shapeOf(getResult()) != ArrayRef<int64_t>{a[0], n})
    return emitOpError("result must be (rows, Nout) = (")
           << a[0] << ", " << n << "), got "
           << shapeStr(shapeOf(getResult()));
  return success();
}

// Checks: lhs (N, P), rhs (N, Q), counts (E), result (E, P, Q).
LogicalResult GroupedMatmulWgradOp::verify() {
  if (failed(verifyCounts(*this, getCounts())))
    return failure();
  auto a = shapeOf(getLhs()), b = shapeOf(getRhs());
  if (a.size() != 2 || b.size() != 2 || a[0] != b[0])
    return emitOpError("lhs and rhs must be (rows, P) and (rows, Q), got ")
           << shapeStr(a) << " and " << shapeStr(b);
  int64_t e = shapeOf(getCounts())[0];
  if (shapeOf(getResult()) != ArrayRef<int64_t>{e, a[1], b[1]})
    return emitOpError("result must be (num_experts, P, Q) = (")
           << e << ", " << a[1] << ", " << b[1] << "), got "
           << shapeStr(shapeOf(getResult()));
  return success();
}

// Checks: dout (N, M), counts (E), result (E, M).
LogicalResult GroupedBiasGradOp::verify() {
  if (failed(verifyCounts(*this, getCounts())))
    return failure();
  auto d = shapeOf(getDout());
  int64_t e = shapeOf(getCounts())[0];
  if (d.size() != 2 || shapeOf(getResult()) != ArrayRef<int64_t>{e, d.back()})
    return emitOpError("dout must be (rows, M) and result (num_experts, M), "
                       "got ")
           << shapeStr(d) << " and " << shapeStr(shapeOf(getResult()));
  return success();
}

// Checks: counts (E) with E >= 1; update_rate > 0 and finite; the named
// parameter, where the function defines it (the training step does), is
// a `not_trained` (E) f32 tensor: a trained parameter's slot holds its
// gradient.
LogicalResult MoeAccumulateLoadOp::verify() {
  if (failed(verifyCounts(*this, getCounts())))
    return failure();
  double rate = getUpdateRate().convertToDouble();
  if (!(rate > 0) || !std::isfinite(rate))
    return emitOpError("update_rate must be a finite number > 0, got ")
           << rate;
  int64_t e = shapeOf(getCounts())[0];
  auto fn = (*this)->getParentOfType<FunctionOpInterface>();
  ParamOp target;
  if (fn)
    fn->walk([&](ParamOp p) {
      if (!target && p.getName() == getParam())
        target = p;
    });
  if (!target)
    return success();
  if (!target.getNotTrained())
    return emitOpError("accumulates into '")
           << getParam()
           << "', a trained parameter: its gradient-buffer slot holds its "
              "gradient (an expert bias is `not_trained`)";
  if (target.getType().getShape() != ArrayRef<int64_t>{e})
    return emitOpError("'")
           << getParam() << "' must be (num_experts) = (" << e
           << "), one per expert, got "
           << shapeStr(target.getType().getShape());
  return success();
}

// Checks: rate > 0 and finite.
LogicalResult MoeUpdateExpertBiasOp::verify() {
  double rate = getRate().convertToDouble();
  if (!(rate > 0) || !std::isfinite(rate))
    return emitOpError("rate must be a finite number > 0, got ") << rate;
  return success();
}

//===----------------------------------------------------------------------===//
// Gradient rules
//===----------------------------------------------------------------------===//

// (probs, indices, weights, aux) = router(logits[, bias])  =>  dlogits
// from dweights and daux (moe_router_grad). probs feeds only the aux loss
// inside the op, and indices are integers: neither carries a gradient out.
// The expert bias only chooses the indices, so it gets none.
LogicalResult MoeRouterOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                         SmallVectorImpl<Value> &grads) {
  if (dy[0])
    return emitOpError("probs has no gradient rule (use weights or the aux "
                       "loss)");
  Value dweights = dy[2];
  if (!dweights)
    return emitOpError("the router's weights do not reach the loss: nothing "
                       "to differentiate through");
  auto g = MoeRouterGradOp::create(
      b, getLoc(), getLogits().getType(), getLogits(), getProbs(),
      getIndices(), dweights, dy[3], getTopKAttr(), getRouterAttr(),
      getScaleAttr(), getAuxCoeffAttr(), getZCoeffAttr(),
      getBias() ? b.getUnitAttr() : UnitAttr());
  grads.assign({Value(g)});
  grads.resize(getNumOperands()); // the bias's: none
  return success();
}

// xp[positions[t, j]] = x[t]  =>  dx[t] = sum_j dxp[positions[t, j]]: an
// unweighted moe_unpermute (a dropped assignment, position -1, adds
// nothing). indices and the priority get none.
LogicalResult MoePermuteOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                          SmallVectorImpl<Value> &grads) {
  if (!dy[0]) {
    grads.assign(getNumOperands(), Value());
    return success();
  }
  Value dx = MoeUnpermuteOp::create(b, getLoc(), getInput().getType(), dy[0],
                                    getPositions(), Value());
  grads.assign({dx, Value()});
  grads.resize(getNumOperands()); // the priority's: none (a ranking)
  return success();
}

// y[t] = sum_j w[t, j] h[positions[t, j]]  =>  moe_unpermute_grad gives
// dh and dw. Unweighted unpermutes are gradients themselves (of
// moe_permute) and are not differentiated again.
LogicalResult MoeUnpermuteOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                            SmallVectorImpl<Value> &grads) {
  if (!getWeights())
    return emitOpError("has no gradient rule without weights (only produced "
                       "by autodiff itself)");
  auto g = MoeUnpermuteGradOp::create(
      b, getLoc(), getInput().getType(), getWeights().getType(), getInput(),
      getPositions(), getWeights(), dy[0]);
  grads.assign({g.getDinput(), Value(), g.getDweights()});
  return success();
}

// Per group e, Y_e = X_e · op(W_e) + b_e:
//   transpose_b (W_e (Nout, K)):  dX = dY · W_e  (grouped, no transpose),
//                                 dW_e = dY_e^T · X_e
//   otherwise   (W_e (K, Nout)):  dX = dY · W_e^T, dW_e = X_e^T · dY_e
//   db_e = sum of dY_e's rows.  counts get none.
LogicalResult GroupedMatmulOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                             SmallVectorImpl<Value> &grads) {
  Location loc = getLoc();
  Value counts = getCounts();
  Value dx = GroupedMatmulOp::create(
      b, loc, getLhs().getType(), dy[0], getRhs(), counts, Value(), Value(),
      getTransposeB() ? UnitAttr() : b.getUnitAttr());
  Value dw = getTransposeB()
                 ? GroupedMatmulWgradOp::create(b, loc, getRhs().getType(),
                                                dy[0], getLhs(), counts)
                 : GroupedMatmulWgradOp::create(b, loc, getRhs().getType(),
                                                getLhs(), dy[0], counts);
  grads.assign({dx, dw, Value()});
  if (getBias()) {
    if (getBiasRank())
      return emitOpError("a bias added on one rank (bias_rank) is the "
                         "partitioner's, after autodiff: no gradient rule");
    grads.push_back(GroupedBiasGradOp::create(b, loc, getBias().getType(),
                                              dy[0], counts));
  }
  return success();
}

//===----------------------------------------------------------------------===//
// Costs
//===----------------------------------------------------------------------===//

// Softmax, top-k selection and the loss terms: a few FLOPs per logit.
double MoeRouterOp::getFlops() { return 8 * numel(getLogits()); }
double MoeRouterGradOp::getFlops() { return 10 * numel(getLogits()); }
double MoePermuteOp::getFlops() { return 0; }
double MoeUnpermuteOp::getFlops() {
  return getWeights() ? 2 * numel(getInput()) : numel(getInput());
}
double MoeUnpermuteGradOp::getFlops() { return 3 * numel(getInput()); }
double GroupedMatmulOp::getFlops() {
  auto a = shapeOf(getLhs());
  double n = double(shapeOf(getResult())[1]);
  double f = 2.0 * double(a[0]) * double(a[1]) * n;
  if (getBias())
    f += double(a[0]) * n;
  return f;
}
double GroupedMatmulWgradOp::getFlops() {
  return 2.0 * numel(getLhs()) * double(shapeOf(getRhs())[1]);
}
double GroupedBiasGradOp::getFlops() { return numel(getDout()); }
double MoeAccumulateLoadOp::getFlops() { return numel(getCounts()); }

//===----------------------------------------------------------------------===//
// Tensor-parallel rules (PartitionOpInterface; MtcPartition.h)
//
// Megatron's expert tensor parallelism (expert tp = tp): routing runs on
// whole tokens, identically on every tp rank, and the experts are split
// like the dense MLP, fc1 (gate/up) column-parallel, fc2 (down)
// row-parallel (mtc-shard-tensor-parallel):
//   moe_router, moe_router_grad, moe_permute   everything whole: the top-k
//             decisions and the aux loss need every token's logits, and
//             whole inputs make them the same on every rank (the expert
//             bias, a small (E) tensor, is whole on every rank too)
//   moe_accumulate_load   the counts whole: every tp rank adds the same
//             loads
//   grouped_matmul   rhs split on its output dimension -> the result's
//             columns S(1) (bias split alike); split on its contraction ->
//             P, the lhs's columns sliced to match, the bias added on tp
//             rank 0 only (bias_rank); else whole
//   grouped_matmul_wgrad   one operand's columns split -> that dimension of
//             the (E, P, Q) result; grouped_bias_grad keeps dout's columns
//   moe_unpermute    linear in its input: P -> P (the combine's partial
//             sums are reduced by whoever needs them whole: an all_reduce,
//             or with sp a reduce_scatter); S(1) -> the output's last dim
//   moe_unpermute_grad   dinput = w * dout follows dout; dweights = dout .
//             input[pos] is P when the input is P or split on D
// Anything else (a split on the experts' dimension 0, partial operands
// where a rule needs them whole) is made whole first: slower, never wrong.
//===----------------------------------------------------------------------===//

namespace {
SmallVector<Dist> whole(Operation *op) {
  return SmallVector<Dist>(op->getNumOperands(), Dist::r());
}
SmallVector<Dist> wholeResults(Operation *op) {
  return SmallVector<Dist>(op->getNumResults(), Dist::r());
}
int64_t lastDim(Value v) { return typeOf(v).getRank() - 1; }
bool splitOn(Dist d, int64_t dim) { return d.kind == Dist::S && d.dim == dim; }
} // namespace

LogicalResult MoeRouterOp::partition(Partitioner &p) {
  return p.rebuild(*this, whole(*this), wholeResults(*this));
}
LogicalResult MoeRouterGradOp::partition(Partitioner &p) {
  return p.rebuild(*this, whole(*this), wholeResults(*this));
}
LogicalResult MoePermuteOp::partition(Partitioner &p) {
  return p.rebuild(*this, whole(*this), wholeResults(*this));
}
// The counts are whole (the permute's), the same on every tp rank.
LogicalResult MoeAccumulateLoadOp::partition(Partitioner &p) {
  return p.rebuild(*this, whole(*this), {});
}

LogicalResult MoeUnpermuteOp::partition(Partitioner &p) {
  Dist d = p.distOf(getInput());
  SmallVector<Dist> want = whole(*this);
  if (d.kind == Dist::P || splitOn(d, 1)) {
    want[0] = d;
    return p.rebuild(*this, want,
                     {d.kind == Dist::P ? d : Dist::s(lastDim(getResult()))});
  }
  return p.rebuild(*this, want, {Dist::r()});
}

LogicalResult MoeUnpermuteGradOp::partition(Partitioner &p) {
  // Operands (input, positions, weights, dout); results (dinput, dweights).
  Dist din = p.distOf(getInput()), dout = p.distOf(getDout());
  Dist doutCols = Dist::s(lastDim(getDout()));
  if (splitOn(din, 1) || (din.kind == Dist::R && dout == doutCols))
    return p.rebuild(*this, {Dist::s(1), Dist::r(), Dist::r(), doutCols},
                     {Dist::s(1), Dist::p()});
  if (din.kind == Dist::P)
    return p.rebuild(*this, {din, Dist::r(), Dist::r(), Dist::r()},
                     {Dist::r(), Dist::p()});
  if (dout.kind == Dist::P)
    return p.rebuild(*this, {Dist::r(), Dist::r(), Dist::r(), dout},
                     {Dist::p(), Dist::p()});
  return p.rebuild(*this, whole(*this), wholeResults(*this));
}

LogicalResult GroupedMatmulOp::partition(Partitioner &p) {
  // rhs (E, K, Nout), or (E, Nout, K) with transpose_b.
  int64_t kDim = getTransposeB() ? 2 : 1, nDim = getTransposeB() ? 1 : 2;
  Dist dr = p.distOf(getRhs());
  Location loc = getLoc();
  auto build = [&](Dist lhs, Dist rhs, Dist bias, Dist out, Value rank) {
    Value b = getBias() ? p.get(getBias(), bias) : Value();
    auto mm = GroupedMatmulOp::create(
        p.builder(), loc, p.localType(getResult(), out), p.get(getLhs(), lhs),
        p.get(getRhs(), rhs), p.get(getCounts(), Dist::r()), b, rank,
        getTransposeBAttr());
    p.set(getResult(), mm, out);
    return success();
  };
  if (splitOn(dr, kDim)) // row-parallel: partial sums, the bias once
    return build(Dist::s(1), dr, Dist::r(), Dist::p(),
                 getBias() ? p.tpRank(loc) : Value());
  if (splitOn(dr, nDim)) // column-parallel
    return build(Dist::r(), dr, Dist::s(1), Dist::s(1), Value());
  return build(Dist::r(), Dist::r(), Dist::r(), Dist::r(), Value());
}

LogicalResult GroupedMatmulWgradOp::partition(Partitioner &p) {
  // result[e] = lhs_e^T rhs_e: (E, P, Q) from lhs (N, P), rhs (N, Q).
  Dist dl = p.distOf(getLhs()), dr = p.distOf(getRhs());
  if (splitOn(dl, 1))
    return p.rebuild(*this, {dl, Dist::r(), Dist::r()}, {Dist::s(1)});
  if (splitOn(dr, 1))
    return p.rebuild(*this, {Dist::r(), dr, Dist::r()}, {Dist::s(2)});
  return p.rebuild(*this, whole(*this), wholeResults(*this));
}

LogicalResult GroupedBiasGradOp::partition(Partitioner &p) {
  Dist d = p.distOf(getDout());
  if (splitOn(d, 1) || d.kind == Dist::P)
    return p.rebuild(*this, {d, Dist::r()}, {d});
  return p.rebuild(*this, whole(*this), wholeResults(*this));
}

//===----------------------------------------------------------------------===//
// Kernel rows (the count argument: tokens or rows, for half-batch lanes)
//===----------------------------------------------------------------------===//

// An expert bias is the last argument, printed only when there is one: the
// kernels default it to nullptr (host_kernels.h), so a router without one
// calls exactly what it did before the bias existed, on both targets.
KernelCall MoeRouterOp::getKernelCall(BufferName buf) {
  int64_t t = tokens(getLogits());
  KernelCall call{"moe_router_forward",
                  {buf(getLogits()), buf(getProbs()), buf(getIndices()),
                   buf(getWeights()), buf(getAuxLoss()), integer(t),
                   integer(shapeOf(getLogits()).back()), integer(getTopK()),
                   flag(getRouter() == RouterKind::topk_softmax),
                   f32(getScaleAttr()), f32(getAuxCoeffAttr()),
                   f32(getZCoeffAttr())},
                  5, t};
  if (getBias())
    call.args.push_back(buf(getBias()));
  return call;
}

// biased_selection likewise: a last `true` argument only when set (the
// kernels default it to false).
KernelCall MoeRouterGradOp::getKernelCall(BufferName buf) {
  int64_t t = tokens(getLogits());
  KernelCall call{"moe_router_backward",
                  {buf(getLogits()), buf(getProbs()), buf(getIndices()),
                   buf(getDweights()), optional(buf, getDaux()),
                   buf(getResult()), integer(t),
                   integer(shapeOf(getLogits()).back()), integer(getTopK()),
                   flag(getRouter() == RouterKind::topk_softmax),
                   f32(getScaleAttr()), f32(getAuxCoeffAttr()),
                   f32(getZCoeffAttr())},
                  6, t};
  if (getBiasedSelection())
    call.args.push_back(flag(true));
  return call;
}

// Dropless: moe_permute. With a capacity: moe_permute_capacity, the same
// arguments then the priority (or nullptr) and the capacity, so that a
// dropless program calls exactly what it did before token dropping existed.
KernelCall MoePermuteOp::getKernelCall(BufferName buf) {
  int64_t t = tokens(getInput());
  KernelCall call{"moe_permute",
                  {buf(getInput()), buf(getIndices()), buf(getResult()),
                   buf(getPositions()), buf(getCounts()), integer(t),
                   integer(shapeOf(getInput()).back()),
                   integer(getNumExperts()),
                   integer(shapeOf(getIndices()).back())},
                  5, t};
  if (std::optional<uint64_t> cap = getCapacity()) {
    call.name = "moe_permute_capacity";
    call.args.push_back(optional(buf, getPriority()));
    call.args.push_back(integer(int64_t(*cap)));
  }
  return call;
}

KernelCall MoeUnpermuteOp::getKernelCall(BufferName buf) {
  int64_t t = tokens(getPositions());
  return {"moe_unpermute",
          {buf(getInput()), buf(getPositions()), optional(buf, getWeights()),
           buf(getResult()), integer(t), integer(shapeOf(getInput()).back()),
           integer(shapeOf(getPositions()).back())},
          4, t};
}

KernelCall MoeUnpermuteGradOp::getKernelCall(BufferName buf) {
  int64_t t = tokens(getPositions());
  return {"moe_unpermute_backward",
          {buf(getInput()), buf(getPositions()), buf(getWeights()),
           buf(getDout()), buf(getDinput()), buf(getDweights()), integer(t),
           integer(shapeOf(getInput()).back()),
           integer(shapeOf(getPositions()).back())},
          6, t};
}

KernelCall GroupedMatmulOp::getKernelCall(BufferName buf) {
  auto a = shapeOf(getLhs());
  // With bias_rank, the bias pointer only where that rank is 0.
  std::string bias = optional(buf, getBias());
  if (getBiasRank())
    bias = "(" + buf(getBiasRank()) + " == 0 ? " + bias + " : nullptr)";
  return {"grouped_matmul",
          {buf(getLhs()), buf(getRhs()), buf(getCounts()), bias,
           buf(getResult()), integer(a[0]),
           integer(shapeOf(getCounts())[0]), integer(shapeOf(getResult())[1]),
           integer(a[1]), flag(getTransposeB())},
          5, a[0]};
}

KernelCall GroupedMatmulWgradOp::getKernelCall(BufferName buf) {
  auto a = shapeOf(getLhs());
  return {"grouped_matmul_wgrad",
          {buf(getLhs()), buf(getRhs()), buf(getCounts()), buf(getResult()),
           integer(a[0]), integer(shapeOf(getCounts())[0]), integer(a[1]),
           integer(shapeOf(getRhs())[1])},
          4, a[0]};
}

KernelCall GroupedBiasGradOp::getKernelCall(BufferName buf) {
  auto d = shapeOf(getDout());
  return {"grouped_bias_grad",
          {buf(getDout()), buf(getCounts()), buf(getResult()), integer(d[0]),
           integer(shapeOf(getCounts())[0]), integer(d[1])},
          3, d[0]};
}
