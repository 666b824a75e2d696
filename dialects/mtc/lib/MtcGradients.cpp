//===- MtcGradients.cpp - gradient rules of mtc ops -----------------------===//
//
// GradientOpInterface implementations. Each rule states its math. Operand
// gradients are returned in operand order; a null Value means "no gradient"
// (token ids, masks) or "nothing depends on it".
//
// Forward values the rules read (operands, and results such as attention's
// output and lse) are what the recompute planner later keeps or recomputes.
//
//===----------------------------------------------------------------------===//
#include "mtc/Dialect/MtcDialect.h"

#include "mlir/IR/Builders.h"

using namespace mlir;
using namespace mtc;

namespace {
/// The gradient for a broadcast operand of shape `target` from a gradient of
/// the full shape: identity when shapes agree, else a sum over leading dims.
Value reduceToType(OpBuilder &b, Location loc, Value grad, Type target) {
  if (grad.getType() == target)
    return grad;
  return ReduceLeadingOp::create(b, loc, target, grad);
}
} // namespace

// y = table[tokens]  =>  dtable = scatter_add(tokens, dy); no grad for tokens.
LogicalResult EmbeddingOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                         SmallVectorImpl<Value> &grads) {
  Value dtable = EmbeddingGradOp::create(b, getLoc(), getTable().getType(),
                                         getTokens(), dy[0], getVocabStart());
  grads.assign({Value(), dtable});
  if (getVocabStart())
    grads.push_back(Value());
  return success();
}

// y = lhs + broadcast(rhs)  =>  dlhs = dy; drhs = sum over broadcast dims.
LogicalResult AddOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                   SmallVectorImpl<Value> &grads) {
  grads.assign(
      {dy[0], reduceToType(b, getLoc(), dy[0], getRhs().getType())});
  return success();
}

// y = gelu(x)  =>  dx = dy * gelu'(x).
LogicalResult GeluOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                    SmallVectorImpl<Value> &grads) {
  grads.assign({Value(GeluGradOp::create(b, getLoc(), getType(), getInput(),
                                         dy[0], getApproximateAttr()))});
  return success();
}

// y = silu(g) * u  =>  dg = dy * u * silu'(g); du = dy * silu(g).
LogicalResult SwigluOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                      SmallVectorImpl<Value> &grads) {
  auto g = SwigluGradOp::create(b, getLoc(), getType(), getType(), getGate(),
                                getUp(), dy[0]);
  grads.assign({g.getDgate(), g.getDup()});
  return success();
}

// y = mask * x / (1 - p)  =>  dx = mask * dy / (1 - p): the same dropout
// (same key, so the same mask) applied to dy.
LogicalResult DropoutOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                       SmallVectorImpl<Value> &grads) {
  grads.assign({Value(DropoutOp::create(b, getLoc(), getType(), dy[0],
                                        getPAttr(), getKeyAttr()))});
  return success();
}

// Y = A · op(B) + bias with A (M, K) (leading dims flattened):
//   transpose_b (B is (N, K)):  dA = dY · B,    dB = dY^T · A
//   otherwise   (B is (K, N)):  dA = dY · B^T,  dB = A^T · dY
//   dbias = sum over rows of dY.
// Products with a transposed lhs only occur in backward programs; they are
// not differentiated again.
LogicalResult MatmulOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                      SmallVectorImpl<Value> &grads) {
  if (getTransposeA())
    return emitOpError("has no gradient rule for transpose_a (only produced "
                       "by autodiff itself)");
  auto rhsType = cast<RankedTensorType>(getRhs().getType());
  if (rhsType.getRank() != 2)
    return emitOpError("gradient rule needs a 2-D rhs (a weight), got rank ")
           << rhsType.getRank();
  Location loc = getLoc();
  Value dlhs, drhs;
  if (getTransposeB()) {
    dlhs = MatmulOp::create(b, loc, getLhs().getType(), dy[0], getRhs(),
                            Value(), false, false);
    drhs = MatmulOp::create(b, loc, rhsType, dy[0], getLhs(), Value(), true,
                            false);
  } else {
    dlhs = MatmulOp::create(b, loc, getLhs().getType(), dy[0], getRhs(),
                            Value(), false, true);
    drhs = MatmulOp::create(b, loc, rhsType, getLhs(), dy[0], Value(), true,
                            false);
  }
  grads.assign({dlhs, drhs});
  if (getBias())
    grads.push_back(reduceToType(b, loc, dy[0], getBias().getType()));
  return success();
}

// y = layer_norm(x; gamma, beta)  =>  layer_norm_grad gives dx, dgamma, dbeta.
LogicalResult LayerNormOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                         SmallVectorImpl<Value> &grads) {
  Type g = getGamma().getType();
  auto op = LayerNormGradOp::create(b, getLoc(), getType(), g, g, getInput(),
                                    getGamma(), dy[0], getEpsAttr());
  grads.assign({op.getDinput(), op.getDgamma()});
  if (getBeta())
    grads.push_back(op.getDbeta());
  return success();
}

LogicalResult RmsNormOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                       SmallVectorImpl<Value> &grads) {
  Type g = getGamma().getType();
  auto op = RmsNormGradOp::create(b, getLoc(), getType(), g, getInput(),
                                  getGamma(), dy[0], getEpsAttr());
  grads.assign({op.getDinput(), op.getDgamma()});
  return success();
}

// y = R(theta) x per head pair  =>  dx = R(-theta) dy (rotations are
// orthogonal), i.e. the same op with `inverse` flipped.
LogicalResult RopeOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                    SmallVectorImpl<Value> &grads) {
  auto op = RopeOp::create(b, getLoc(), getType(), dy[0], getHeadsAttr(),
                           getKvHeadsAttr(), getThetaAttr(),
                           getInverse() ? UnitAttr() : b.getUnitAttr());
  grads.assign({Value(op)});
  return success();
}

// (out, lse) = attention(qkv)  =>  dqkv = attention_grad(qkv, out, lse, dout).
// lse is an auxiliary result for backward; nothing differentiates through it.
LogicalResult AttentionOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                         SmallVectorImpl<Value> &grads) {
  if (dy.size() > 1 && dy[1])
    return emitOpError("lse is auxiliary and has no gradient rule");
  auto op = AttentionGradOp::create(
      b, getLoc(), getQkv().getType(), getQkv(), getResult(), getLse(), dy[0],
      getMask(), getHeadsAttr(), getKvHeadsAttr(), getCausalAttr(),
      getScaleAttr());
  grads.assign({Value(op)});
  if (getMask())
    grads.push_back(Value());
  return success();
}

// loss = mean CE(logits, targets)  =>  dlogits = dloss (softmax - onehot)/n.
LogicalResult CrossEntropyOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                            SmallVectorImpl<Value> &grads) {
  auto op = CrossEntropyGradOp::create(
      b, getLoc(), getLogits().getType(), getLogits(), getTargets(), dy[0],
      getVocabStart(), getIgnoreIndexAttr(), getValidClassesAttr(),
      getGridAxisAttr());
  grads.assign({Value(op), Value()});
  if (getVocabStart())
    grads.push_back(Value());
  return success();
}
