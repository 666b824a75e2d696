//===- Import.cpp - model spec -> forward program in mtc IR ----------------===//
//
// Steps:
//  1. Module attributes: model name, training config (the numbers
//     mtc-autodiff and the runtime need), parallel plan, recompute policy.
//  2. @forward(tokens (B, S) i32, targets (B, S) i32 [, mask (B, S) i32]):
//     embeddings (+ learned positions), then per layer attention and MLP
//     blocks with pre- or post-LN residuals, final norm (pre-LN), LM head
//     (tied to the word embeddings or not), mean cross-entropy.
//  3. Every op gets a location naming its place in the model
//     (`layers.3.attn.qkv`) inside the spec file, so errors from later passes
//     and from the runtime point at the layer.
//
// Parameter names are checkpoint keys; docs/checkpoints.md lists them.
// Output projections (attn.proj, mlp.fc2 / mlp.down) are initialized with
// std / sqrt(2 * num_layers), as GPT-2 and Megatron do.
//
//===----------------------------------------------------------------------===//
#include "mtc/Import/Import.h"

#include "mtc/Dialect/MtcDialect.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/Verifier.h"

#include <cmath>

using namespace mlir;
using mtc::spec::Spec;

namespace {

class Importer {
public:
  Importer(const Spec &spec, MLIRContext &ctx, StringRef file)
      : spec(spec), m(spec.model), ctx(ctx), b(&ctx),
        fileLoc(FileLineColLoc::get(&ctx, file, 1, 1)) {}

  OwningOpRef<ModuleOp> run();

private:
  Location loc(const Twine &name) {
    return NameLoc::get(StringAttr::get(&ctx, name), fileLoc);
  }
  RankedTensorType f32(ArrayRef<int64_t> shape) {
    return RankedTensorType::get(shape, b.getF32Type());
  }
  Value param(const Twine &name, ArrayRef<int64_t> shape, mtc::InitKind init,
              double std = 0.02, bool notTrained = false) {
    std::string n = name.str();
    return mtc::ParamOp::create(b, loc(n), f32(shape), b.getStringAttr(n),
                                mtc::InitKindAttr::get(&ctx, init),
                                b.getF64FloatAttr(std),
                                notTrained ? b.getUnitAttr() : UnitAttr());
  }
  Value weight(const Twine &name, ArrayRef<int64_t> shape, double std) {
    return param(name + ".weight", shape, mtc::InitKind::normal, std);
  }
  Value bias(const Twine &name, int64_t n) {
    if (!m.bias)
      return Value();
    return param(name + ".bias", {n}, mtc::InitKind::zeros);
  }
  /// A linear layer with an (out, in) weight.
  Value linear(const Twine &name, Value x, int64_t out, double std) {
    auto xt = cast<RankedTensorType>(x.getType());
    int64_t in = xt.getShape().back();
    Value w = weight(name, {out, in}, std);
    Value bi = bias(name, out);
    SmallVector<int64_t> shape(xt.getShape().drop_back());
    shape.push_back(out);
    return mtc::MatmulOp::create(b, loc(name), f32(shape), x, w, bi, false,
                                 true);
  }
  Value norm(const Twine &name, Value x) {
    int64_t d = m.hidden_size;
    Value g = param(name + ".weight", {d}, mtc::InitKind::ones);
    if (m.norm == mtc::spec::NormKind::rmsnorm)
      return mtc::RmsNormOp::create(b, loc(name), x.getType(), x, g,
                                    b.getF64FloatAttr(m.norm_eps));
    Value be = m.bias ? param(name + ".bias", {d}, mtc::InitKind::zeros)
                      : Value();
    return mtc::LayerNormOp::create(b, loc(name), x.getType(), x, g, be,
                                    b.getF64FloatAttr(m.norm_eps));
  }
  Value dropout(const Twine &name, Value x, double p) {
    if (p <= 0)
      return x;
    return mtc::DropoutOp::create(b, loc(name), x.getType(), x,
                                  b.getF64FloatAttr(p),
                                  b.getI64IntegerAttr(nextDropoutKey++));
  }
  Value attention(const Twine &prefix, Value x, Value mask);
  Value mlp(const Twine &prefix, Value x);
  Value denseMlp(const Twine &prefix, Value x, int64_t ffn);
  Value activation(const Twine &prefix, Value h);
  Value moeMlp(const Twine &prefix, Value x);
  /// Block of layer `l`'s MLP: an MoE layer's or the dense one.
  Value layerMlp(int64_t l, const Twine &prefix, Value x) {
    return m.moe.isMoeLayer(l) ? moeMlp(prefix, x) : mlp(prefix, x);
  }
  void setModuleAttributes(ModuleOp module);

  const Spec &spec;
  const mtc::spec::ModelSpec &m;
  MLIRContext &ctx;
  OpBuilder b;
  Location fileLoc;
  int64_t nextDropoutKey = 0;
  /// The MoE routers' aux losses (load balancing + z-loss), added to the
  /// returned loss.
  SmallVector<Value> auxLosses;
};

Value Importer::attention(const Twine &prefix, Value x, Value mask) {
  int64_t h = m.num_heads, kv = m.num_kv_heads;
  int64_t dh = m.hidden_size / h;
  double std = m.init_std, outStd = m.init_std / std::sqrt(2.0 * m.num_layers);
  Value qkv = linear(prefix + ".qkv", x, (h + 2 * kv) * dh, std);
  if (m.position_embedding == mtc::spec::PositionKind::rope)
    qkv = mtc::RopeOp::create(b, loc(prefix + ".rope"), qkv.getType(), qkv,
                              b.getI64IntegerAttr(h), b.getI64IntegerAttr(kv),
                              b.getF64FloatAttr(m.rope_theta), UnitAttr());
  auto xt = cast<RankedTensorType>(x.getType());
  int64_t bsz = xt.getDimSize(0), s = xt.getDimSize(1);
  bool causal = m.causal;
  auto core = mtc::AttentionOp::create(
      b, loc(prefix + ".core"), f32({bsz, s, h * dh}), f32({bsz, h, s}), qkv,
      mask, b.getI64IntegerAttr(h), b.getI64IntegerAttr(kv),
      causal ? b.getUnitAttr() : UnitAttr(),
      b.getF64FloatAttr(1.0 / std::sqrt(double(dh))));
  Value o = dropout(prefix + ".core_dropout", core.getResult(),
                    m.attention_dropout);
  Value y = linear(prefix + ".proj", o, m.hidden_size, outStd);
  return dropout(prefix + ".dropout", y, m.hidden_dropout);
}

Value Importer::mlp(const Twine &prefix, Value x) {
  return dropout(prefix + ".dropout", denseMlp(prefix, x, m.ffn_hidden_size),
                 m.hidden_dropout);
}

Value Importer::denseMlp(const Twine &prefix, Value x, int64_t ffn) {
  double std = m.init_std, outStd = m.init_std / std::sqrt(2.0 * m.num_layers);
  Value y;
  if (m.activation == mtc::spec::Activation::swiglu) {
    Value gate = linear(prefix + ".gate", x, ffn, std);
    Value up = linear(prefix + ".up", x, ffn, std);
    Value act = mtc::SwigluOp::create(b, loc(prefix + ".swiglu"),
                                      gate.getType(), gate, up);
    y = linear(prefix + ".down", act, m.hidden_size, outStd);
  } else {
    Value h = linear(prefix + ".fc1", x, ffn, std);
    y = linear(prefix + ".fc2", activation(prefix, h), m.hidden_size, outStd);
  }
  return y;
}

Value Importer::activation(const Twine &prefix, Value h) {
  if (m.activation == mtc::spec::Activation::squared_relu)
    return mtc::SquaredReluOp::create(b, loc(prefix + ".squared_relu"),
                                      h.getType(), h);
  auto approx = m.activation == mtc::spec::Activation::gelu_tanh
                    ? mtc::GeluApprox::tanh
                    : mtc::GeluApprox::none;
  return mtc::GeluOp::create(b, loc(prefix + ".gelu"), h.getType(), h,
                             mtc::GeluApproxAttr::get(&ctx, approx));
}

/// An MoE layer's MLP (docs/moe.md): router, permute (dropless, or with a
/// capacity when model.moe.capacity_factor > 0), the experts
/// as grouped GEMMs over the permuted rows, weighted unpermute; plus a
/// shared expert (a dense MLP on every token) when the spec has one. The
/// experts' weights are stacked, (E, out, in), one parameter per linear;
/// the router's aux loss goes to `auxLosses`. With model.moe.expert_bias
/// the router selects with `router.expert_bias`, a not-trained (E)
/// parameter, and the permute's counts go to its load accumulator
/// (mtc.moe_accumulate_load), from which mtc-autodiff builds the update.
Value Importer::moeMlp(const Twine &prefix, Value x) {
  const mtc::spec::MoeSpec &e = m.moe;
  int64_t ne = e.num_experts, k = e.top_k, d = m.hidden_size;
  int64_t f = m.ffn_hidden_size / e.granularity;
  double std = m.init_std, outStd = m.init_std / std::sqrt(2.0 * m.num_layers);
  auto xt = cast<RankedTensorType>(x.getType());
  SmallVector<int64_t> lead(xt.getShape().drop_back());
  auto withLast = [&](int64_t last, Type elem) {
    SmallVector<int64_t> s(lead);
    s.push_back(last);
    return RankedTensorType::get(s, elem);
  };
  int64_t rows = xt.getNumElements() / d * k;

  std::string r = (prefix + ".router").str();
  Value logits = mtc::MatmulOp::create(
      b, loc(r), withLast(ne, b.getF32Type()), x,
      weight(r, {ne, d}, std), Value(), false, true);
  std::string biasName = r + ".expert_bias";
  Value expertBias = e.expert_bias ? param(biasName, {ne}, mtc::InitKind::zeros,
                                           0.02, /*notTrained=*/true)
                                   : Value();
  auto router = mtc::MoeRouterOp::create(
      b, loc(r), withLast(ne, b.getF32Type()), withLast(k, b.getI32Type()),
      withLast(k, b.getF32Type()), f32({}), logits, expertBias,
      b.getI64IntegerAttr(k),
      mtc::RouterKindAttr::get(&ctx, e.router == mtc::spec::RouterKind::topk_softmax
                                         ? mtc::RouterKind::topk_softmax
                                         : mtc::RouterKind::softmax_topk),
      b.getF64FloatAttr(e.router_scale), b.getF64FloatAttr(e.aux_loss_coeff),
      b.getF64FloatAttr(e.z_loss_coeff));
  if (e.aux_loss_coeff > 0 || e.z_loss_coeff > 0)
    auxLosses.push_back(router.getAuxLoss());

  // Token dropping: capacity C = ceil(capacity_factor * T * k / E) rows per
  // expert (Megatron's get_capacity), at most T (an expert gets at most one
  // assignment per token, so a larger C drops nothing); the permuted
  // buffer holds min(E * C, T * k) rows. The "probs" policy ranks by the
  // routing weights.
  Value priority;
  IntegerAttr capacity;
  if (e.capacity_factor > 0) {
    int64_t t = rows / k;
    int64_t c = std::min<int64_t>(
        t, static_cast<int64_t>(std::ceil(e.capacity_factor * double(rows) / double(ne))));
    c = std::max<int64_t>(c, 1);
    capacity = b.getI64IntegerAttr(c);
    rows = std::min(rows, ne * c);
    if (e.drop_policy == mtc::spec::DropPolicy::probs)
      priority = router.getWeights();
  }
  std::string ex = (prefix + ".experts").str();
  auto permute = mtc::MoePermuteOp::create(
      b, loc(ex + ".permute"), f32({rows, d}), router.getIndices().getType(),
      RankedTensorType::get({ne}, b.getI32Type()), x, router.getIndices(),
      priority, b.getI64IntegerAttr(ne), capacity);
  Value counts = permute.getCounts();
  if (expertBias)
    mtc::MoeAccumulateLoadOp::create(b, loc(r + ".load"), counts,
                                     b.getStringAttr(biasName),
                                     b.getF64FloatAttr(e.bias_update_rate));
  // A stacked linear: weight (E, out, in), bias (E, out).
  auto experts = [&](const std::string &name, Value in, int64_t out,
                     double s) -> Value {
    int64_t inDim = cast<RankedTensorType>(in.getType()).getShape().back();
    Value w = weight(name, {ne, out, inDim}, s);
    Value bi = m.bias ? param(name + ".bias", {ne, out}, mtc::InitKind::zeros)
                      : Value();
    return mtc::GroupedMatmulOp::create(b, loc(name), f32({rows, out}), in, w,
                                        counts, bi, Value(), b.getUnitAttr());
  };
  Value h;
  if (m.activation == mtc::spec::Activation::swiglu) {
    Value gate = experts(ex + ".gate", permute.getResult(), f, std);
    Value up = experts(ex + ".up", permute.getResult(), f, std);
    Value act = mtc::SwigluOp::create(b, loc(ex + ".swiglu"), gate.getType(),
                                      gate, up);
    h = experts(ex + ".down", act, d, outStd);
  } else {
    Value h1 = experts(ex + ".fc1", permute.getResult(), f, std);
    h = experts(ex + ".fc2", activation(ex, h1), d, outStd);
  }
  Value y = mtc::MoeUnpermuteOp::create(b, loc(ex + ".unpermute"),
                                        x.getType(), h,
                                        permute.getPositions(),
                                        router.getWeights());
  if (e.shared_expert_ffn_hidden_size > 0)
    y = mtc::AddOp::create(
        b, loc(prefix + ".shared_experts.residual"), y.getType(), y,
        denseMlp(prefix + ".shared_experts", x, e.shared_expert_ffn_hidden_size));
  return dropout(prefix + ".dropout", y, m.hidden_dropout);
}

void Importer::setModuleAttributes(ModuleOp module) {
  const auto &t = spec.training;
  const auto &o = t.optimizer;
  const auto &p = spec.parallel;
  auto i64 = [&](int64_t v) { return b.getI64IntegerAttr(v); };
  auto f64 = [&](double v) { return b.getF64FloatAttr(v); };
  auto str = [&](const char *s) { return b.getStringAttr(s); };
  module->setAttr("mtc.model", b.getStringAttr(m.name));
  module->setAttr(
      "mtc.training",
      b.getDictionaryAttr({
          b.getNamedAttr("micro_batch_size", i64(t.micro_batch_size)),
          b.getNamedAttr("global_batch_size", i64(t.global_batch_size)),
          b.getNamedAttr("num_microbatches", i64(spec.numMicrobatches())),
          b.getNamedAttr("seq_length", i64(m.seq_length)),
          b.getNamedAttr("vocab_size", i64(m.vocab_size)),
          b.getNamedAttr("train_steps", i64(t.train_steps)),
          b.getNamedAttr("precision", str(toString(t.precision))),
          b.getNamedAttr("lr", f64(o.lr)),
          b.getNamedAttr("min_lr", f64(o.min_lr)),
          b.getNamedAttr("warmup_steps", i64(o.warmup_steps)),
          b.getNamedAttr("decay_steps", i64(o.decay_steps)),
          b.getNamedAttr("decay", str(toString(o.decay))),
          b.getNamedAttr("beta1", f64(o.beta1)),
          b.getNamedAttr("beta2", f64(o.beta2)),
          b.getNamedAttr("eps", f64(o.eps)),
          b.getNamedAttr("weight_decay", f64(o.weight_decay)),
          b.getNamedAttr("grad_clip", f64(t.grad_clip)),
          b.getNamedAttr("seed", i64(int64_t(t.seed))),
      }));
  SmallVector<NamedAttribute> parallel = {
      b.getNamedAttr("tp", i64(p.tp)),
      b.getNamedAttr("pp", i64(p.pp)),
      b.getNamedAttr("dp", i64(p.dp)),
      b.getNamedAttr("sp", b.getBoolAttr(p.sp)),
      b.getNamedAttr("virtual_stages", i64(p.virtual_stages)),
      b.getNamedAttr("schedule", str(toString(p.schedule))),
      b.getNamedAttr("distributed_optimizer",
                     b.getBoolAttr(p.distributed_optimizer)),
  };
  // Only when not the default (ep 1, layout "" = even).
  if (p.ep > 1)
    parallel.push_back(b.getNamedAttr("ep", i64(p.ep)));
  if (!p.pipeline_layout.empty())
    parallel.push_back(b.getNamedAttr("layout", str(p.pipeline_layout.c_str())));
  module->setAttr("mtc.parallel", b.getDictionaryAttr(parallel));
  module->setAttr("mtc.recompute", str(toString(spec.recompute)));
}

OwningOpRef<ModuleOp> Importer::run() {
  OwningOpRef<ModuleOp> module = ModuleOp::create(fileLoc);
  setModuleAttributes(*module);
  b.setInsertionPointToEnd(module->getBody());

  int64_t bsz = spec.training.micro_batch_size, s = m.seq_length;
  // Megatron pads the vocabulary to a multiple of 128 * tp so the embedding
  // splits evenly; the loss leaves the padding classes out.
  int64_t d = m.hidden_size, v = spec.paddedVocabSize();
  bool isBert = m.arch == mtc::spec::Arch::bert;
  auto tokType = RankedTensorType::get({bsz, s}, b.getI32Type());
  SmallVector<Type> args = {tokType, tokType};
  if (isBert)
    args.push_back(tokType);
  auto fn = func::FuncOp::create(b, loc("forward"), "forward",
                                 b.getFunctionType(args, {f32({})}));
  fn.setArgAttr(0, "mtc.name", b.getStringAttr("tokens"));
  fn.setArgAttr(1, "mtc.name", b.getStringAttr("targets"));
  if (isBert)
    fn.setArgAttr(2, "mtc.name", b.getStringAttr("attention_mask"));
  Block *entry = fn.addEntryBlock();
  b.setInsertionPointToStart(entry);
  Value tokens = entry->getArgument(0), targets = entry->getArgument(1);
  Value mask = isBert ? entry->getArgument(2) : Value();

  Value wte = weight("embedding.word_embeddings", {v, d}, m.init_std);
  Value x = mtc::EmbeddingOp::create(b, loc("embedding"), f32({bsz, s, d}),
                                     tokens, wte, Value());
  if (m.position_embedding == mtc::spec::PositionKind::learned) {
    Value wpe = weight("embedding.position_embeddings", {s, d}, m.init_std);
    x = mtc::AddOp::create(b, loc("embedding.position"), x.getType(), x, wpe);
  }
  bool post = m.norm_placement == mtc::spec::NormPlacement::post;
  if (post)
    x = norm("embedding.norm", x);
  x = dropout("embedding.dropout", x, m.hidden_dropout);

  for (int64_t l = 0; l < m.num_layers; ++l) {
    std::string p = "layers." + std::to_string(l);
    if (post) {
      x = mtc::AddOp::create(b, loc(p + ".attn.residual"), x.getType(), x,
                             attention(p + ".attn", x, mask));
      x = norm(p + ".post_attn_norm", x);
      x = mtc::AddOp::create(b, loc(p + ".mlp.residual"), x.getType(), x,
                             layerMlp(l, p + ".mlp", x));
      x = norm(p + ".post_mlp_norm", x);
    } else {
      Value a = attention(p + ".attn", norm(p + ".input_norm", x), mask);
      x = mtc::AddOp::create(b, loc(p + ".attn.residual"), x.getType(), x, a);
      Value f = layerMlp(l, p + ".mlp", norm(p + ".pre_mlp_norm", x));
      x = mtc::AddOp::create(b, loc(p + ".mlp.residual"), x.getType(), x, f);
    }
  }
  if (!post)
    x = norm("final_norm", x);
  Value head = m.tied_embeddings ? wte : weight("lm_head", {v, d}, m.init_std);
  Value logits = mtc::MatmulOp::create(b, loc("lm_head"), f32({bsz, s, v}), x,
                                       head, Value(), false, true);
  // Padding classes stay out of the softmax (see mtc.cross_entropy).
  IntegerAttr valid =
      v > m.vocab_size ? b.getI64IntegerAttr(m.vocab_size) : IntegerAttr();
  Value loss = mtc::CrossEntropyOp::create(b, loc("loss"), f32({}), logits,
                                           targets, Value(),
                                           b.getI64IntegerAttr(-1), valid,
                                           IntegerAttr());
  // The training loss includes the routers' aux losses (Megatron adds them
  // to the gradient the same way; the evaluation loss includes them too).
  for (Value aux : auxLosses)
    loss = mtc::AddOp::create(b, loc("loss.moe_aux"), loss.getType(), loss, aux);
  func::ReturnOp::create(b, loc("forward"), loss);

  if (failed(verify(*module)))
    return nullptr;
  return module;
}

} // namespace

OwningOpRef<ModuleOp> mtc::importSpec(const Spec &spec, MLIRContext &context,
                                      StringRef filename) {
  context.loadDialect<mtc::MtcDialect, func::FuncDialect>();
  return Importer(spec, context, filename).run();
}
