//===- MtcOps.cpp - verifiers and helpers of mtc ops ----------------------===//
//
// Each verifier lists its checks in its comment. Messages say what was found
// and what would be valid; they are tested in test/lit/Dialect/invalid.mlir.
//
//===----------------------------------------------------------------------===//
#include "mtc/Dialect/MtcDialect.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/ADT/StringSet.h"

using namespace mlir;
using namespace mtc;

namespace {
RankedTensorType rankedOf(Value v) {
  return cast<RankedTensorType>(v.getType());
}

/// Checks that `shape` is a (possibly equal) suffix of `full`.
bool isSuffix(ArrayRef<int64_t> shape, ArrayRef<int64_t> full) {
  if (shape.size() > full.size())
    return false;
  return shape == full.take_back(shape.size());
}

std::string shapeStr(ArrayRef<int64_t> shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

int64_t product(ArrayRef<int64_t> dims) {
  int64_t p = 1;
  for (int64_t d : dims)
    p *= d;
  return p;
}

/// Checks: a norm's weight is 1-D and as long as the input's last dimension.
LogicalResult verifyNormWeight(Operation *op, Value input, Value weight,
                               StringRef what) {
  auto in = rankedOf(input);
  auto w = rankedOf(weight);
  if (in.getRank() < 1)
    return op->emitOpError("input must have rank >= 1");
  if (w.getRank() != 1 || w.getDimSize(0) != in.getShape().back())
    return op->emitOpError() << what << " must be 1-D of size "
                             << in.getShape().back()
                             << " (the input's last dimension), got "
                             << shapeStr(w.getShape());
  return success();
}

/// Checks of the attention ops: qkv is (B, S, (H + 2 KV) Dh), H divisible by
/// KV, mask (B, S), out (B, S, H Dh), lse (B, H, S).
LogicalResult verifyAttentionShapes(Operation *op, Value qkv, Value mask,
                                    Value out, Value lse, int64_t heads,
                                    int64_t kvHeads) {
  auto q = rankedOf(qkv);
  if (q.getRank() != 3)
    return op->emitOpError("qkv must be (batch, seq, (heads + 2 * kv_heads) "
                           "* head_dim), got rank ")
           << q.getRank();
  if (heads <= 0 || kvHeads <= 0)
    return op->emitOpError("heads and kv_heads must be positive, got ")
           << heads << " and " << kvHeads;
  if (heads % kvHeads != 0)
    return op->emitOpError("heads (")
           << heads << ") must be a multiple of kv_heads (" << kvHeads << ")";
  int64_t width = q.getDimSize(2);
  int64_t parts = heads + 2 * kvHeads;
  if (width % parts != 0)
    return op->emitOpError("qkv's last dimension ")
           << width << " is not (heads + 2 * kv_heads) = " << parts
           << " times a head_dim";
  int64_t b = q.getDimSize(0), s = q.getDimSize(1), dh = width / parts;
  if (mask) {
    auto m = rankedOf(mask);
    if (m.getShape() != ArrayRef<int64_t>{b, s})
      return op->emitOpError("mask must be (batch, seq) = ")
             << shapeStr({b, s}) << ", got " << shapeStr(m.getShape());
  }
  if (out && rankedOf(out).getShape() != ArrayRef<int64_t>{b, s, heads * dh})
    return op->emitOpError("attention output must be (batch, seq, heads * "
                           "head_dim) = ")
           << shapeStr({b, s, heads * dh}) << ", got "
           << shapeStr(rankedOf(out).getShape());
  if (lse && rankedOf(lse).getShape() != ArrayRef<int64_t>{b, heads, s})
    return op->emitOpError("lse must be (batch, heads, seq) = ")
           << shapeStr({b, heads, s}) << ", got "
           << shapeStr(rankedOf(lse).getShape());
  return success();
}

/// Checks of cross-entropy: logits (B, S, V), targets (B, S),
/// 0 < valid_classes <= V.
LogicalResult verifyLossShapes(Operation *op, Value logits, Value targets,
                               std::optional<uint64_t> valid) {
  auto l = rankedOf(logits);
  auto t = rankedOf(targets);
  if (valid && (int64_t(*valid) <= 0 || int64_t(*valid) > l.getShape().back()))
    return op->emitOpError("valid_classes must be in [1, ")
           << l.getShape().back() << "] (the logits' last dimension), got "
           << int64_t(*valid);
  if (l.getRank() < 2)
    return op->emitOpError("logits must have rank >= 2, got ") << l.getRank();
  if (t.getShape() != l.getShape().drop_back())
    return op->emitOpError("targets must have the logits' shape without the "
                           "vocabulary dimension, ")
           << shapeStr(l.getShape().drop_back()) << ", got "
           << shapeStr(t.getShape());
  return success();
}
} // namespace

double mtc::defaultBytesMoved(Operation *op) {
  double bytes = 0;
  auto add = [&](Type t) {
    if (auto rt = dyn_cast<RankedTensorType>(t))
      bytes += double(rt.getNumElements()) *
               double(rt.getElementTypeBitWidth()) / 8.0;
  };
  for (Type t : op->getOperandTypes())
    add(t);
  for (Type t : op->getResultTypes())
    add(t);
  return bytes;
}

// Checks: name non-empty; std > 0 for normal init; static shape.
LogicalResult ParamOp::verify() {
  if (getName().empty())
    return emitOpError("parameter name must not be empty");
  if (getInit() == InitKind::normal && !(getStd().convertToDouble() > 0))
    return emitOpError("normal init needs std > 0, got ")
           << getStd().convertToDouble();
  if (!getType().hasStaticShape())
    return emitOpError("parameter shape must be static");
  return success();
}

// Checks: tokens (B, S); table (V, D); result (B, S, D), table's element type.
LogicalResult EmbeddingOp::verify() {
  auto tok = rankedOf(getTokens());
  auto table = rankedOf(getTable());
  if (table.getRank() != 2)
    return emitOpError("table must be (vocab, hidden), got rank ")
           << table.getRank();
  SmallVector<int64_t> expect(tok.getShape());
  expect.push_back(table.getDimSize(1));
  if (getType().getShape() != ArrayRef<int64_t>(expect))
    return emitOpError("result must be the tokens' shape followed by the "
                       "table's width, ")
           << shapeStr(expect) << ", got " << shapeStr(getType().getShape());
  if (getType().getElementType() != table.getElementType())
    return emitOpError("result element type must match the table's");
  return success();
}

// Checks: dout is the tokens' shape followed by D; result (V, D).
LogicalResult EmbeddingGradOp::verify() {
  auto tok = rankedOf(getTokens());
  auto dout = rankedOf(getDout());
  auto res = getType();
  if (res.getRank() != 2)
    return emitOpError("result must be (vocab, hidden), got rank ")
           << res.getRank();
  SmallVector<int64_t> expect(tok.getShape());
  expect.push_back(res.getDimSize(1));
  if (dout.getShape() != ArrayRef<int64_t>(expect))
    return emitOpError("dout must be ")
           << shapeStr(expect) << ", got " << shapeStr(dout.getShape());
  return success();
}

// Checks: rhs's shape is a suffix of lhs's; same element type.
LogicalResult AddOp::verify() {
  auto l = rankedOf(getLhs());
  auto r = rankedOf(getRhs());
  if (!isSuffix(r.getShape(), l.getShape()))
    return emitOpError("rhs shape ")
           << shapeStr(r.getShape())
           << " must equal lhs shape or a suffix of it to broadcast, lhs is "
           << shapeStr(l.getShape());
  if (l.getElementType() != r.getElementType())
    return emitOpError("operands must have one element type");
  return success();
}

// Checks: result shape is a suffix of the input shape.
LogicalResult ReduceLeadingOp::verify() {
  auto in = rankedOf(getInput());
  if (!isSuffix(getType().getShape(), in.getShape()))
    return emitOpError("result shape ")
           << shapeStr(getType().getShape())
           << " must be a suffix of the input shape " << shapeStr(in.getShape());
  return success();
}

// Checks: 0 <= p < 1; key >= 0.
LogicalResult DropoutOp::verify() {
  double p = getP().convertToDouble();
  if (!(p >= 0.0 && p < 1.0))
    return emitOpError("dropout probability must be in [0, 1), got ") << p;
  int64_t key = getKeyAttr().getInt();
  if (key < 0)
    return emitOpError("dropout key must be >= 0, got ") << key;
  return success();
}

int64_t MatmulOp::getM() {
  auto l = rankedOf(getLhs());
  return getTransposeA() ? l.getShape().back()
                         : product(l.getShape().drop_back());
}
int64_t MatmulOp::getK() {
  auto l = rankedOf(getLhs());
  return getTransposeA() ? product(l.getShape().drop_back())
                         : l.getShape().back();
}
int64_t MatmulOp::getN() {
  auto r = rankedOf(getRhs());
  return getTransposeB() ? product(r.getShape().drop_back())
                         : r.getShape().back();
}

// Checks: ranks >= 2; contraction sizes agree; bias (N); result shape as the
// op description says; one element type for lhs and rhs.
LogicalResult MatmulOp::verify() {
  auto l = rankedOf(getLhs());
  auto r = rankedOf(getRhs());
  if (l.getRank() < 2 || r.getRank() < 2)
    return emitOpError("operands must have rank >= 2, got ")
           << l.getRank() << " and " << r.getRank();
  if (l.getElementType() != r.getElementType())
    return emitOpError("lhs and rhs must have one element type");
  int64_t k = getK();
  int64_t kr = getTransposeB() ? r.getShape().back()
                               : product(r.getShape().drop_back());
  if (k != kr)
    return emitOpError("contraction sizes differ: lhs gives ")
           << k << ", rhs gives " << kr << " (lhs " << shapeStr(l.getShape())
           << (getTransposeA() ? " transposed" : "") << ", rhs "
           << shapeStr(r.getShape()) << (getTransposeB() ? " transposed" : "")
           << ")";
  int64_t n = getN();
  if (Value bias = getBias()) {
    auto b = rankedOf(bias);
    if (b.getRank() != 1 || b.getDimSize(0) != n)
      return emitOpError("bias must be 1-D of size ")
             << n << ", got " << shapeStr(b.getShape());
  }
  SmallVector<int64_t> expect;
  if (getTransposeA()) {
    expect = {l.getShape().back(), n};
  } else {
    expect.assign(l.getShape().begin(), l.getShape().end() - 1);
    expect.push_back(n);
  }
  if (getType().getShape() != ArrayRef<int64_t>(expect))
    return emitOpError("result must be ")
           << shapeStr(expect) << ", got " << shapeStr(getType().getShape());
  return success();
}

// Checks: gamma (and beta) 1-D of the last dimension; eps > 0.
LogicalResult LayerNormOp::verify() {
  if (failed(verifyNormWeight(*this, getInput(), getGamma(), "gamma")))
    return failure();
  if (getBeta() &&
      failed(verifyNormWeight(*this, getInput(), getBeta(), "beta")))
    return failure();
  if (!(getEps().convertToDouble() > 0))
    return emitOpError("eps must be > 0");
  return success();
}

// Checks: dout like input; gamma 1-D; results: dinput like input, dgamma and
// dbeta like gamma.
LogicalResult LayerNormGradOp::verify() {
  if (failed(verifyNormWeight(*this, getInput(), getGamma(), "gamma")))
    return failure();
  if (getDout().getType() != getInput().getType() ||
      getDinput().getType() != getInput().getType())
    return emitOpError("dout and dinput must have the input's type");
  if (getDgamma().getType() != getGamma().getType() ||
      getDbeta().getType() != getGamma().getType())
    return emitOpError("dgamma and dbeta must have gamma's type");
  return success();
}

LogicalResult RmsNormOp::verify() {
  if (failed(verifyNormWeight(*this, getInput(), getGamma(), "gamma")))
    return failure();
  if (!(getEps().convertToDouble() > 0))
    return emitOpError("eps must be > 0");
  return success();
}

LogicalResult RmsNormGradOp::verify() {
  if (failed(verifyNormWeight(*this, getInput(), getGamma(), "gamma")))
    return failure();
  if (getDout().getType() != getInput().getType() ||
      getDinput().getType() != getInput().getType())
    return emitOpError("dout and dinput must have the input's type");
  if (getDgamma().getType() != getGamma().getType())
    return emitOpError("dgamma must have gamma's type");
  return success();
}

// Checks: the fused QKV shape; head_dim even (rotate-half pairs); theta > 0.
LogicalResult RopeOp::verify() {
  if (failed(verifyAttentionShapes(*this, getInput(), {}, {}, {}, getHeads(),
                                   getKvHeads())))
    return failure();
  int64_t width = getType().getDimSize(2);
  int64_t dh = width / (getHeads() + 2 * getKvHeads());
  if (dh % 2 != 0)
    return emitOpError("rope needs an even head_dim, got ") << dh;
  if (!(getTheta().convertToDouble() > 0))
    return emitOpError("theta must be > 0");
  return success();
}

int64_t AttentionOp::getHeadDim() {
  return rankedOf(getQkv()).getDimSize(2) / (getHeads() + 2 * getKvHeads());
}

// Checks: see verifyAttentionShapes; scale > 0.
LogicalResult AttentionOp::verify() {
  if (failed(verifyAttentionShapes(*this, getQkv(), getMask(), getResult(),
                                   getLse(), getHeads(), getKvHeads())))
    return failure();
  if (!(getScale().convertToDouble() > 0))
    return emitOpError("scale must be > 0");
  return success();
}

LogicalResult AttentionGradOp::verify() {
  if (failed(verifyAttentionShapes(*this, getQkv(), getMask(), getOut(),
                                   getLse(), getHeads(), getKvHeads())))
    return failure();
  if (getDout().getType() != getOut().getType())
    return emitOpError("dout must have the attention output's type");
  if (getType() != getQkv().getType())
    return emitOpError("result must have qkv's type");
  return success();
}

LogicalResult CrossEntropyOp::verify() {
  if (bool(getVocabStart()) != bool(getGridAxis()))
    return emitOpError("vocab_start and the grid axis come together");
  if (getVocabStart()) // logits are a slice; valid_classes counts globally
    return verifyLossShapes(*this, getLogits(), getTargets(), std::nullopt);
  return verifyLossShapes(*this, getLogits(), getTargets(), getValidClasses());
}

LogicalResult CrossEntropyGradOp::verify() {
  if (bool(getVocabStart()) != bool(getGridAxis()))
    return emitOpError("vocab_start and the grid axis come together");
  if (getVocabStart())
    return verifyLossShapes(*this, getLogits(), getTargets(), std::nullopt);
  return verifyLossShapes(*this, getLogits(), getTargets(), getValidClasses());
}

int64_t CrossEntropyOp::getNumValidClasses() {
  if (auto v = getValidClasses())
    return int64_t(*v);
  return rankedOf(getLogits()).getShape().back();
}

int64_t CrossEntropyGradOp::getNumValidClasses() {
  if (auto v = getValidClasses())
    return int64_t(*v);
  return rankedOf(getLogits()).getShape().back();
}

// Checks: non-empty, unique parameter names; hyper-parameters in range.
LogicalResult AdamWOp::verify() {
  if (getParams().empty())
    return emitOpError("parameter group must not be empty");
  llvm::StringSet<> seen;
  for (Attribute a : getParams())
    if (!seen.insert(cast<StringAttr>(a).getValue()).second)
      return emitOpError("parameter '")
             << cast<StringAttr>(a).getValue() << "' listed twice";
  auto inUnit = [](double x) { return x >= 0.0 && x < 1.0; };
  if (!inUnit(getBeta1().convertToDouble()) ||
      !inUnit(getBeta2().convertToDouble()))
    return emitOpError("beta1 and beta2 must be in [0, 1)");
  if (!(getEps().convertToDouble() > 0))
    return emitOpError("eps must be > 0");
  if (getWeightDecay().convertToDouble() < 0 ||
      getMaxGradNorm().convertToDouble() < 0)
    return emitOpError("weight_decay and max_grad_norm must be >= 0");
  return success();
}

// Grid axes of a collective over the whole parameter set: at least one,
// each once, non-negative.
static LogicalResult verifyParamAxes(Operation *op, ArrayRef<int16_t> axes) {
  if (axes.empty())
    return op->emitOpError("needs at least one grid axis");
  for (size_t i = 0; i < axes.size(); ++i) {
    if (axes[i] < 0)
      return op->emitOpError("grid axis ") << axes[i] << " is negative";
    for (size_t j = 0; j < i; ++j)
      if (axes[i] == axes[j])
        return op->emitOpError("grid axis ") << axes[i] << " listed twice";
  }
  return success();
}

// A sharded optimizer step is a pair: reduce_gradients with
// shard_optimizer_state, later all_gather_params over the same axes.
static Operation *findPartner(Operation *op, bool after,
                              function_ref<bool(Operation *)> match) {
  for (Operation *o = after ? op->getNextNode() : op->getPrevNode(); o;
       o = after ? o->getNextNode() : o->getPrevNode())
    if (match(o))
      return o;
  return nullptr;
}

LogicalResult ReduceGradientsOp::verify() {
  if (failed(verifyParamAxes(*this, getGridAxes())))
    return failure();
  if (!getShardOptimizerState())
    return success();
  ArrayRef<int16_t> axes = getGridAxes();
  if (!findPartner(*this, /*after=*/true, [&](Operation *o) {
        auto g = dyn_cast<AllGatherParamsOp>(o);
        return g && g.getGrid() == getGrid() && g.getGridAxes() == axes;
      }))
    return emitOpError("shards the optimizer state but no "
                       "mtc.all_gather_params over the same grid and axes "
                       "follows it");
  return success();
}

LogicalResult AllGatherParamsOp::verify() {
  if (failed(verifyParamAxes(*this, getGridAxes())))
    return failure();
  ArrayRef<int16_t> axes = getGridAxes();
  if (!findPartner(*this, /*after=*/false, [&](Operation *o) {
        auto r = dyn_cast<ReduceGradientsOp>(o);
        return r && r.getShardOptimizerState() && r.getGrid() == getGrid() &&
               r.getGridAxes() == axes;
      }))
    return emitOpError("needs an earlier mtc.reduce_gradients with "
                       "shard_optimizer_state over the same grid and axes "
                       "(only a sharded optimizer step gathers parameters)");
  return success();
}

LogicalResult MicrobatchOp::verify() {
  auto in = cast<RankedTensorType>(getBatch().getType());
  auto out = cast<RankedTensorType>(getResult().getType());
  if (in.getRank() != out.getRank() + 1 ||
      in.getShape().drop_front() != out.getShape())
    return emitOpError("takes (M, ...) to one (...) microbatch, got ")
           << in << " -> " << out;
  // The attribute's signed value: getIndex() is unsigned, so -1 would read
  // as 2^64 - 1.
  const int64_t index = getIndexAttr().getInt();
  if (index < 0 || index >= in.getDimSize(0))
    return emitOpError("microbatch ")
           << index << " is outside [0, " << in.getDimSize(0) << ")";
  return success();
}

bool mtc::parsePipelineTransfer(Attribute attr, PipelineTransfer &out,
                                std::string &why) {
  auto d = dyn_cast<DictionaryAttr>(attr);
  const char *shape =
      "a transfer is a dictionary {kind, payload, microbatch, chunk, index, peer}";
  if (!d || d.size() != 6) {
    why = shape;
    return false;
  }
  auto kind = d.getAs<StringAttr>("kind");
  auto payload = d.getAs<StringAttr>("payload");
  auto mb = d.getAs<IntegerAttr>("microbatch");
  auto chunk = d.getAs<IntegerAttr>("chunk");
  auto index = d.getAs<IntegerAttr>("index");
  auto peer = d.getAs<IntegerAttr>("peer");
  if (!kind || !payload || !mb || !chunk || !index || !peer) {
    why = shape;
    return false;
  }
  if (kind.getValue() != "send" && kind.getValue() != "recv") {
    why = "kind must be \"send\" or \"recv\", got \"" + kind.getValue().str() + "\"";
    return false;
  }
  if (payload.getValue() != "activation" && payload.getValue() != "gradient") {
    why = "payload must be \"activation\" or \"gradient\", got \"" +
          payload.getValue().str() + "\"";
    return false;
  }
  out.send = kind.getValue() == "send";
  out.gradient = payload.getValue() == "gradient";
  out.microbatch = mb.getInt();
  out.chunk = chunk.getInt();
  out.index = index.getInt();
  out.peer = peer.getInt();
  if (out.microbatch < 0 || out.chunk < 0 || out.index < 0 || out.peer < 0) {
    why = "microbatch, chunk, index and peer must be >= 0";
    return false;
  }
  return true;
}

DictionaryAttr mtc::buildPipelineTransfer(MLIRContext *ctx,
                                          const PipelineTransfer &t) {
  Builder b(ctx);
  return b.getDictionaryAttr({
      b.getNamedAttr("kind", b.getStringAttr(t.send ? "send" : "recv")),
      b.getNamedAttr("payload",
                     b.getStringAttr(t.gradient ? "gradient" : "activation")),
      b.getNamedAttr("microbatch", b.getI64IntegerAttr(t.microbatch)),
      b.getNamedAttr("chunk", b.getI64IntegerAttr(t.chunk)),
      b.getNamedAttr("index", b.getI64IntegerAttr(t.index)),
      b.getNamedAttr("peer", b.getI64IntegerAttr(t.peer)),
  });
}

LogicalResult P2POp::verify() {
  unsigned sends = 0, recvs = 0;
  for (auto [i, a] : llvm::enumerate(getTransfers())) {
    PipelineTransfer t;
    std::string why;
    if (!parsePipelineTransfer(a, t, why))
      return emitOpError("transfer ") << i << ": " << why;
    if (t.send) {
      if (sends >= getSends().size())
        return emitOpError("transfer ")
               << i << " sends, but the op has only " << getSends().size()
               << " operand(s)";
      ++sends;
    } else {
      if (recvs >= getRecvs().size())
        return emitOpError("transfer ")
               << i << " receives, but the op has only " << getRecvs().size()
               << " result(s)";
      ++recvs;
    }
  }
  if (sends != getSends().size() || recvs != getRecvs().size())
    return emitOpError("has ")
           << getSends().size() << " operand(s) and " << getRecvs().size()
           << " result(s) but its transfers send " << sends << " and receive "
           << recvs;
  if (getTransfers().empty())
    return emitOpError("has no transfers");
  return success();
}

#define GET_OP_CLASSES
#include "mtc/Dialect/MtcOps.cpp.inc"
