// Spec validation: every range and cross-field rule (docs/spec.md, "Rules"),
// run by parseSpec on the file alone and again by applyOverridesAndValidate
// after command-line overrides.
//
// Each rule reports once, at the path of the field it is about; when one of
// the fields a rule involves was set by a flag, the flag is named instead
// ("--tp"), since that is what the user just typed. A rule is skipped when a
// field it needs was already reported, so one mistake gives one diagnostic.
// Products of two fields are taken in 128 bits: fields are at most 2^40 only
// after their own checks pass, and cross rules may still see wild values.
#include "SpecInternal.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <limits>
#include <numeric>

namespace mtc::spec {
namespace detail {
namespace {

std::string str(Wide v) {
  if (v == 0) return "0";
  bool neg = v < 0;
  UWide u = neg ? -(UWide)v : (UWide)v;
  std::string s;
  for (; u; u /= 10) s.insert(s.begin(), char('0' + int(u % 10)));
  return neg ? "-" + s : s;
}

// The divisors of n that pass `valid` (every other rule on the value) closest
// to v from below and above, as a hint: " (nearby valid values: 8 or 16)".
// O(sqrt(n)), n <= 2^40.
std::string divisorHint(int64_t n, int64_t v, const std::function<bool(int64_t)>& valid) {
  if (n < 1 || n > kMaxInt) return "";
  int64_t below = 0, above = 0;
  auto consider = [&](int64_t d) {
    if (!valid(d)) return;
    if (d < v && d > below) below = d;
    if (d > v && (above == 0 || d < above)) above = d;
  };
  for (int64_t d = 1; d * d <= n; ++d)
    if (n % d == 0) { consider(d); consider(n / d); }
  if (below && above) return " (nearby valid values: " + str(below) + " or " + str(above) + ")";
  if (below) return " (nearby valid value: " + str(below) + ")";
  if (above) return " (nearby valid value: " + str(above) + ")";
  return "";
}

// Printable form of a user string: ASCII as is, other bytes as \xNN.
std::string printable(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s.substr(0, 64)) {
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      out += char(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out + (s.size() > 64 ? "...\"" : "\"");
}

class Checker {
 public:
  Checker(const Spec& spec, CheckContext ctx, std::vector<Diagnostic>& diags)
      : s_(spec), ctx_(std::move(ctx)), diags_(diags) {}

  bool run() {
    size_t before = diags_.size();
    checkFields();
    checkModel();
    checkMoe();
    checkParallel();
    checkBatch();
    checkOptimizer();
    checkSizes();
    return diags_.size() == before;
  }

 private:
  using Paths = std::initializer_list<const char*>;

  // A field as named in paths and messages: its flag if a flag set it.
  std::string name(const std::string& path) const {
    auto it = ctx_.flags.find(path);
    return it == ctx_.flags.end() ? path : it->second;
  }
  // "model.num_heads (12)"
  std::string ref(const char* path, Wide v) const { return name(path) + " (" + str(v) + ")"; }
  std::string ref(const char* path, int64_t v) const { return ref(path, (Wide)v); }
  std::string ref(const char* path, double v) const { return name(path) + " (" + formatReal(v) + ")"; }
  bool ok(Paths paths) const {
    for (const char* p : paths)
      if (ctx_.bad.count(p)) return false;
    return true;
  }
  bool flagged(const char* path) const { return ctx_.flags.count(path) != 0; }

  // Reports at the first of `paths` that a flag set, else at the first path.
  void fail(Paths paths, const std::string& message) {
    const char* at = *paths.begin();
    for (const char* p : paths)
      if (flagged(p)) { at = p; break; }
    diags_.push_back({name(at), message});
    ctx_.bad.insert(at);
  }

  // ---- one field at a time ------------------------------------------------

  // At most 2^40, or `hi` with its reason.
  void integer(const char* path, int64_t v, int64_t lo, int64_t hi = kMaxInt, const char* why = nullptr) {
    if (!ok({path})) return;
    if (v > hi)
      fail({path}, str(v) + " is too large (at most " +
                       (why ? str(hi) + ": " + why : "2^40 = " + str(kMaxInt)) + ")");
    else if (v < lo)
      fail({path}, std::string(lo == 1 ? "must be a positive integer" : "must be a non-negative integer") +
                       ", got " + str(v));
  }
  // v must lie in the interval from lo to hi; open ends exclude the bound.
  // hi = inf: no upper bound.
  void real(const char* path, double v, double lo, bool lo_open, double hi, bool hi_open) {
    if (!ok({path})) return;
    bool good = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
    if (good) return;
    std::string range;
    if (std::isinf(hi))
      range = std::string(lo_open ? "> " : ">= ") + formatReal(lo);
    else
      range = std::string("in ") + (lo_open ? "(" : "[") + formatReal(lo) + ", " + formatReal(hi) +
              (hi_open ? ")" : "]");
    fail({path}, "must be a finite number " + range + ", got " + formatReal(v));
  }

  void checkFields() {
    const double inf = std::numeric_limits<double>::infinity();
    const ModelSpec& m = s_.model;
    if (ok({"model.name"})) {
      bool good = !m.name.empty() && m.name.size() <= 64;
      for (char c : m.name)
        good = good && (std::isalnum((unsigned char)c) || c == '_' || c == '-' || c == '.');
      if (!good)
        fail({"model.name"}, "must be 1 to 64 characters from A-Z a-z 0-9 _ - . (it names "
                             "output files), got " + printable(m.name));
    }
    integer("model.num_layers", m.num_layers, 1, kMaxLayers,
            "each layer adds tens of ops to the compiled program");
    integer("model.hidden_size", m.hidden_size, 1);
    integer("model.num_heads", m.num_heads, 1);
    integer("model.num_kv_heads", m.num_kv_heads, 1);
    integer("model.ffn_hidden_size", m.ffn_hidden_size, 1);
    integer("model.vocab_size", m.vocab_size, 1);
    integer("model.seq_length", m.seq_length, 1);
    real("model.norm_eps", m.norm_eps, 0, true, 1, true);
    real("model.rope_theta", m.rope_theta, 0, true, inf, false);
    real("model.hidden_dropout", m.hidden_dropout, 0, false, 1, true);
    real("model.attention_dropout", m.attention_dropout, 0, false, 1, true);
    real("model.init_std", m.init_std, 0, true, inf, false);

    const ParallelSpec& p = s_.parallel;
    integer("parallel.tp", p.tp, 1);
    integer("parallel.pp", p.pp, 1);
    integer("parallel.dp", p.dp, 1);
    integer("parallel.ep", p.ep, 1);
    integer("parallel.virtual_stages", p.virtual_stages, 1);
    if (p.microbatches) integer("parallel.microbatches", *p.microbatches, 1);

    const TrainingSpec& t = s_.training;
    integer("training.micro_batch_size", t.micro_batch_size, 1);
    // 0 means "not given" (the parser rejects a written 0); a flag must be >= 1.
    if (t.global_batch_size != 0 || flagged("training.global_batch_size"))
      integer("training.global_batch_size", t.global_batch_size, 1);
    integer("training.train_steps", t.train_steps, 1);
    real("training.grad_clip", t.grad_clip, 0, false, inf, false);

    const OptimizerSpec& o = t.optimizer;
    real("training.optimizer.lr", o.lr, 0, true, inf, false);
    real("training.optimizer.min_lr", o.min_lr, 0, false, inf, false);
    real("training.optimizer.beta1", o.beta1, 0, false, 1, true);
    real("training.optimizer.beta2", o.beta2, 0, false, 1, true);
    real("training.optimizer.eps", o.eps, 0, true, inf, false);
    real("training.optimizer.weight_decay", o.weight_decay, 0, false, inf, false);
    integer("training.optimizer.warmup_steps", o.warmup_steps, 0);
    integer("training.optimizer.decay_steps", o.decay_steps, 0);
  }

  // ---- across fields ------------------------------------------------------

  // The tp values nearest the given one that pass every rule on tp: common
  // divisors of num_heads, num_kv_heads, ffn_hidden_size (with MoE layers
  // the experts' and the shared expert's widths, and seq_length under sp),
  // above 1 under sp, within the GPU bound. Fields already
  // reported are left out. "" when there is none to offer.
  std::string tpHint() const {
    const ModelSpec& m = s_.model;
    const ParallelSpec& p = s_.parallel;
    int64_t g = 0;
    auto add = [&](const char* path, int64_t n) {
      if (ok({path}) && n >= 1 && n <= kMaxInt) g = std::gcd(g, n);
    };
    add("model.num_heads", m.num_heads);
    add("model.num_kv_heads", m.num_kv_heads);
    add("model.ffn_hidden_size", m.ffn_hidden_size);
    if (m.moe.enabled()) {
      if (ok({"model.moe.granularity"}) && m.moe.granularity >= 1 && m.ffn_hidden_size % m.moe.granularity == 0)
        add("model.moe.granularity", m.ffn_hidden_size / m.moe.granularity);
      if (m.moe.shared_expert_ffn_hidden_size > 0)
        add("model.moe.shared_expert_ffn_hidden_size", m.moe.shared_expert_ffn_hidden_size);
    }
    bool sp = ok({"parallel.sp"}) && p.sp;
    if (sp) add("model.seq_length", m.seq_length);
    int64_t hi = g;
    if (ok({"parallel.pp", "parallel.dp"}) && p.pp >= 1 && p.dp >= 1 && p.pp <= kMaxInt && p.dp <= kMaxInt)
      hi = std::min<Wide>(g, kMaxInt / ((Wide)p.pp * p.dp));
    return divisorHint(g, p.tp, [&](int64_t d) { return d >= (sp ? 2 : 1) && d <= hi; });
  }

  // Head counts must also split over tp (when tp is valid); query heads must
  // also leave an even head size under rope.
  bool splitsOverTp(int64_t heads) const {
    const ParallelSpec& p = s_.parallel;
    return !ok({"parallel.tp"}) || p.tp < 1 || p.tp > kMaxInt || heads % p.tp == 0;
  }

  void checkModel() {
    const ModelSpec& m = s_.model;
    if (ok({"model.hidden_size", "model.num_heads"})) {
      if (m.hidden_size % m.num_heads != 0) {
        fail({"model.num_heads", "model.hidden_size"},
             ref("model.hidden_size", m.hidden_size) + " is not divisible by " +
                 ref("model.num_heads", m.num_heads) + "; the head size is hidden_size / num_heads" +
                 divisorHint(m.hidden_size, m.num_heads, [&](int64_t d) {
                   bool rope = ok({"model.position_embedding"}) && m.position_embedding == PositionKind::rope;
                   return splitsOverTp(d) && (!rope || (m.hidden_size / d) % 2 == 0);
                 }));
      } else if (m.position_embedding == PositionKind::rope &&
                 ok({"model.position_embedding"}) && (m.hidden_size / m.num_heads) % 2 != 0) {
        fail({"model.position_embedding", "model.hidden_size", "model.num_heads"},
             "'rope' rotates pairs of channels, so the head size must be even; hidden_size / "
             "num_heads = " + str(m.hidden_size) + " / " + str(m.num_heads) + " = " +
                 str(m.hidden_size / m.num_heads));
      }
    }
    if (ok({"model.num_heads", "model.num_kv_heads"}) && m.num_heads % m.num_kv_heads != 0)
      fail({"model.num_kv_heads", "model.num_heads"},
           ref("model.num_heads", m.num_heads) + " is not divisible by " +
               ref("model.num_kv_heads", m.num_kv_heads) +
               ": each key/value head serves an equal group of query heads" +
               divisorHint(m.num_heads, m.num_kv_heads, [&](int64_t d) { return splitsOverTp(d); }));
  }

  // model.moe (docs/moe.md): ranges, top_k <= num_experts, granularity
  // divides ffn_hidden_size, a layer pattern of num_layers entries with at
  // least one MoE layer, capacity_factor >= 0 (0: dropless); what is not
  // implemented yet is refused by name (pipeline parallelism with MoE
  // layers). The experts' widths under tp are checkParallel's.
  void checkMoe() {
    const ModelSpec& m = s_.model;
    const MoeSpec& e = m.moe;
    if (!e.enabled()) {
      // A written num_experts of 0 or less is an error, not "no MoE".
      // Megatron's expert-bias flag on a dense model would do nothing.
      if (e.expert_bias && ok({"model.moe.expert_bias"}))
        fail({"model.moe.expert_bias"},
             "an expert bias balances the experts of MoE layers, and this model has none "
             "(model.moe with num_experts)");
      return;
    }
    const double inf = std::numeric_limits<double>::infinity();
    integer("model.moe.num_experts", e.num_experts, 1);
    integer("model.moe.top_k", e.top_k, 1);
    integer("model.moe.granularity", e.granularity, 1);
    integer("model.moe.shared_expert_ffn_hidden_size", e.shared_expert_ffn_hidden_size, 0);
    real("model.moe.router_scale", e.router_scale, 0, true, inf, false);
    real("model.moe.aux_loss_coeff", e.aux_loss_coeff, 0, false, inf, false);
    real("model.moe.z_loss_coeff", e.z_loss_coeff, 0, false, inf, false);
    real("model.moe.capacity_factor", e.capacity_factor, 0, false, inf, false);
    real("model.moe.bias_update_rate", e.bias_update_rate, 0, true, inf, false);
    if (ok({"model.moe.num_experts", "model.moe.top_k"}) && e.top_k > e.num_experts)
      fail({"model.moe.top_k", "model.moe.num_experts"},
           ref("model.moe.top_k", e.top_k) + " is more than " +
               ref("model.moe.num_experts", e.num_experts) +
               ": each token picks top_k distinct experts");
    if (ok({"model.moe.granularity", "model.ffn_hidden_size"}) &&
        m.ffn_hidden_size % e.granularity != 0)
      fail({"model.moe.granularity", "model.ffn_hidden_size"},
           ref("model.ffn_hidden_size", m.ffn_hidden_size) + " is not divisible by " +
               ref("model.moe.granularity", e.granularity) +
               ": each expert's hidden layer is ffn_hidden_size / granularity" +
               divisorHint(m.ffn_hidden_size, e.granularity, [](int64_t) { return true; }));
    if (ok({"model.moe.layer_freq", "model.num_layers"})) {
      if (e.layer_pattern.empty()) {
        if (e.layer_freq < 1 || e.layer_freq > m.num_layers)
          fail({"model.moe.layer_freq"},
               "must be an integer in [1, num_layers = " + str(m.num_layers) +
                   "] (every layer_freq-th layer is an MoE layer) or a list of 0/1, got " +
                   str(e.layer_freq));
      } else if ((int64_t)e.layer_pattern.size() != m.num_layers) {
        fail({"model.moe.layer_freq"}, "the layer pattern has " + str((int64_t)e.layer_pattern.size()) +
                                           " entries; it needs one per layer, num_layers = " +
                                           str(m.num_layers));
      } else if (std::count(e.layer_pattern.begin(), e.layer_pattern.end(), 1) == 0) {
        fail({"model.moe.layer_freq"}, "the layer pattern has no MoE layer (no 1); leave "
                                       "model.moe out for a dense model");
      }
    }
    const ParallelSpec& p = s_.parallel;
    if (ok({"parallel.ep", "model.moe.num_experts"}) && e.num_experts % p.ep != 0)
      fail({"parallel.ep", "model.moe.num_experts"},
           ref("model.moe.num_experts", e.num_experts) + " is not divisible by " +
               ref("parallel.ep", p.ep) + ": each expert-parallel rank holds num_experts / ep experts" +
               divisorHint(e.num_experts, p.ep, [](int64_t) { return true; }));
    if (ok({"parallel.ep", "parallel.tp", "parallel.sp"}) && p.ep > 1 && p.tp > 1 && !p.sp)
      fail({"parallel.ep", "parallel.sp"},
           "expert parallelism with tensor parallelism (" + ref("parallel.ep", p.ep) + ", " +
               ref("parallel.tp", p.tp) +
               ") needs sequence parallelism, as in Megatron-LM: add --sp (parallel.sp)");
    if (ok({"parallel.pp"}) && p.pp > 1)
      fail({"parallel.pp"}, "MoE layers (model.moe) run with pp = 1 so far: the pipeline passes "
                            "do not carry the router's aux loss between stages yet (docs/moe.md); "
                            "got " + ref("parallel.pp", p.pp));
  }

  void checkParallel() {
    const ModelSpec& m = s_.model;
    const ParallelSpec& p = s_.parallel;
    if (ok({"parallel.tp"})) {
      const std::string hint = tpHint();
      auto divides = [&](const char* path, int64_t n, const char* why) {
        if (ok({path}) && n % p.tp != 0)
          fail({"parallel.tp", path}, ref(path, n) + " is not divisible by " + ref("parallel.tp", p.tp) +
                                          ": " + why + hint);
      };
      divides("model.num_heads", m.num_heads, "tensor parallelism gives each rank num_heads / tp heads");
      // With num_kv_heads == num_heads the rule above already covers it.
      if (m.num_kv_heads != m.num_heads)
        divides("model.num_kv_heads", m.num_kv_heads,
                "tensor parallelism gives each rank num_kv_heads / tp key/value heads");
      divides("model.ffn_hidden_size", m.ffn_hidden_size,
              "tensor parallelism splits the MLP's hidden layer across tp ranks");
      // MoE layers: every expert's hidden layer (ffn_hidden_size /
      // granularity) and the shared expert's split over tp like the MLP's.
      const MoeSpec& e = m.moe;
      if (e.enabled() && ok({"model.ffn_hidden_size", "model.moe.granularity"}) && e.granularity >= 1 &&
          m.ffn_hidden_size % e.granularity == 0 && (m.ffn_hidden_size / e.granularity) % p.tp != 0)
        fail({"parallel.tp", "model.moe.granularity"},
             "each expert's hidden layer, " + name("model.ffn_hidden_size") + " / " +
                 name("model.moe.granularity") + " = " + str(m.ffn_hidden_size / e.granularity) +
                 ", is not divisible by " + ref("parallel.tp", p.tp) +
                 ": tensor parallelism splits every expert's hidden layer across tp ranks" + hint);
      if (e.enabled() && e.shared_expert_ffn_hidden_size > 0)
        divides("model.moe.shared_expert_ffn_hidden_size", e.shared_expert_ffn_hidden_size,
                "tensor parallelism splits the shared expert's hidden layer across tp ranks");
      if (ok({"parallel.sp"}) && p.sp) {
        if (p.tp == 1)
          fail({"parallel.sp", "parallel.tp"},
               "sequence parallelism needs tensor parallelism: " + name("parallel.tp") +
                   " must be > 1, got 1 (turn sp off or raise tp)");
        else if (ok({"model.seq_length"}) && m.seq_length % p.tp != 0)
          fail({"model.seq_length", "parallel.tp", "parallel.sp"},
               ref("model.seq_length", m.seq_length) + " is not divisible by " +
                   ref("parallel.tp", p.tp) + ": sequence parallelism splits the sequence across the tp ranks" +
                   hint);
      }
    }
    const bool own_layout = !p.pipeline_layout.empty() && p.pipeline_layout != "auto";
    if (own_layout && ok({"model.num_layers", "parallel.pp", "parallel.virtual_stages",
                          "parallel.pipeline_layout"}) &&
        (Wide)p.pp * p.virtual_stages <= kMaxInt) {
      std::vector<LayoutChunk> chunks;
      std::string why;
      if (!resolvePipelineLayout(p.pipeline_layout, m.num_layers, p.pp * p.virtual_stages, chunks,
                                 why))
        fail({"parallel.pipeline_layout", "parallel.pp", "parallel.virtual_stages",
              "model.num_layers"},
             "'" + p.pipeline_layout + "' " + why);
    }
    if (!own_layout && ok({"model.num_layers", "parallel.pp", "parallel.virtual_stages"})) {
      Wide chunks = (Wide)p.pp * p.virtual_stages;
      if (m.num_layers < chunks)
        fail({"parallel.pp", "model.num_layers", "parallel.virtual_stages"},
             ref("model.num_layers", m.num_layers) +
                 " is fewer than the pipeline chunks, pp * virtual_stages = " + str(p.pp) + " * " +
                 str(p.virtual_stages) + " = " + str(chunks) + ": each chunk needs at least one layer");
    }
    bool interleaved = p.schedule == Schedule::interleaved;
    if (ok({"parallel.virtual_stages", "parallel.schedule"})) {
      if (p.virtual_stages > 1 && !interleaved)
        fail({"parallel.virtual_stages", "parallel.schedule"},
             ref("parallel.virtual_stages", p.virtual_stages) +
                 " needs parallel.schedule 'interleaved', got '" + toString(p.schedule) + "'");
      if (p.virtual_stages == 1 && interleaved)
        fail({"parallel.schedule", "parallel.virtual_stages"},
             "the 'interleaved' schedule needs parallel.virtual_stages > 1 (virtual chunks per "
             "stage to interleave), got 1");
    }
    if (ok({"parallel.schedule", "parallel.pp"}) && interleaved && p.pp == 1)
      fail({"parallel.schedule", "parallel.pp"},
           "the 'interleaved' schedule needs " + name("parallel.pp") + " > 1, got 1");
    // Expert parallelism is carved out of dp (Megatron's order: ep groups are
    // ep consecutive dp ranks), and only splits MoE layers' experts.
    if (ok({"parallel.ep", "parallel.dp"}) && p.dp % p.ep != 0)
      fail({"parallel.ep", "parallel.dp"},
           ref("parallel.dp", p.dp) + " is not divisible by " + ref("parallel.ep", p.ep) +
               ": expert parallelism is carved out of data parallelism (dp / ep expert-data-"
               "parallel groups of ep ranks each); make dp a multiple of ep");
    if (ok({"parallel.ep"}) && p.ep > 1 && !s_.model.moe.enabled())
      fail({"parallel.ep"}, ref("parallel.ep", p.ep) +
                                " splits the experts of MoE layers, but the model has none "
                                "(model.moe); leave ep at 1");
    if (ok({"parallel.tp", "parallel.pp", "parallel.dp"})) {
      Wide world = (Wide)p.tp * p.pp * p.dp;
      if (world > kMaxInt)
        fail({"parallel.dp", "parallel.tp", "parallel.pp"},
             "tp * pp * dp = " + str(world) + " GPUs is too large (at most 2^40)");
    }
  }

  void checkBatch() {
    const ParallelSpec& p = s_.parallel;
    const TrainingSpec& t = s_.training;
    if (!ok({"training.micro_batch_size", "parallel.dp", "training.global_batch_size",
             "parallel.microbatches"}))
      return;
    Wide per_step = (Wide)t.micro_batch_size * p.dp;
    std::string per_step_text = "micro_batch_size * dp = " + str(t.micro_batch_size) + " * " + str(p.dp);
    Wide global = t.global_batch_size;
    if (global == 0) {
      // Not given: micro_batch_size * dp * microbatches; only its size can be wrong.
      global = per_step * p.microbatches.value_or(1);
      if (global > kMaxInt) {
        fail({"training.micro_batch_size", "parallel.dp", "parallel.microbatches"},
             "the global batch, " + per_step_text + (p.microbatches ? " * microbatches" : "") + " = " +
                 str(global) + ", is too large (at most 2^40)");
        return;
      }
    } else if (global % per_step != 0) {
      fail({"training.global_batch_size", "training.micro_batch_size", "parallel.dp"},
           ref("training.global_batch_size", global) + " is not divisible by " + per_step_text + " = " +
               str(per_step) + "; valid values are its multiples" +
               (per_step <= kMaxInt ? " such as " + str((global + per_step - 1) / per_step * per_step) : ""));
      return;
    }
    int64_t m = (int64_t)(global / per_step);
    if (p.microbatches && *p.microbatches != m)
      fail({"parallel.microbatches", "training.global_batch_size", "training.micro_batch_size", "parallel.dp"},
           ref("parallel.microbatches", *p.microbatches) +
               " does not match global_batch_size / (micro_batch_size * dp) = " + str(global) + " / (" +
               str(t.micro_batch_size) + " * " + str(p.dp) + ") = " + str(m) + "; set it to " + str(m) +
               " or leave it out");
    if (p.schedule == Schedule::interleaved && ok({"parallel.schedule", "parallel.pp"}) && p.pp > 1 &&
        m % p.pp != 0)
      fail({"parallel.schedule", "parallel.pp", "training.global_batch_size", "training.micro_batch_size",
            "parallel.dp", "parallel.microbatches"},
           "the 'interleaved' schedule needs the number of microbatches, global_batch_size / "
           "(micro_batch_size * dp) = " + str(m) + ", to be divisible by " + ref("parallel.pp", p.pp));
  }

  void checkOptimizer() {
    const TrainingSpec& t = s_.training;
    const OptimizerSpec& o = t.optimizer;
    if (ok({"training.optimizer.lr", "training.optimizer.min_lr"}) && o.min_lr > o.lr)
      fail({"training.optimizer.min_lr", "training.optimizer.lr"},
           ref("training.optimizer.min_lr", o.min_lr) + " is greater than " +
               ref("training.optimizer.lr", o.lr) + "; the learning rate decays from lr down to min_lr");
    // The training binary refuses a decaying schedule whose horizon D
    // (decay_steps, or train_steps when it is 0) does not exceed the warm-up W
    // (check_lr_schedule in runtime/src/common/lr_schedule.cpp: lr_at divides
    // by D - W); the same rule here, so what compiles also runs.
    // LrRuleAgreementTest checks the two agree.
    const bool decays = o.decay != LrDecay::constant;
    const std::string decay_name = std::string("the '") + toString(o.decay) + "' decay";
    if (ok({"training.optimizer.warmup_steps", "training.train_steps"})) {
      if (o.warmup_steps > t.train_steps)
        fail({"training.optimizer.warmup_steps", "training.train_steps"},
             ref("training.optimizer.warmup_steps", o.warmup_steps) + " is more than " +
                 ref("training.train_steps", t.train_steps));
      else if (decays && o.decay_steps == 0 && ok({"training.optimizer.decay_steps", "training.optimizer.decay"}) &&
               o.warmup_steps == t.train_steps)
        fail({"training.optimizer.warmup_steps", "training.train_steps", "training.optimizer.decay"},
             ref("training.optimizer.warmup_steps", o.warmup_steps) + " equals " +
                 ref("training.train_steps", t.train_steps) + ", where " + decay_name +
                 " ends (decay_steps is 0): the decay needs at least one step after the warm-up, and the "
                 "training program refuses this schedule; lower warmup_steps, set decay_steps above it, "
                 "or use the 'constant' decay");
    }
    if (ok({"training.optimizer.warmup_steps", "training.optimizer.decay_steps"}) && o.decay_steps > 0) {
      if (o.warmup_steps > o.decay_steps)
        fail({"training.optimizer.warmup_steps", "training.optimizer.decay_steps"},
             ref("training.optimizer.warmup_steps", o.warmup_steps) + " is more than " +
                 ref("training.optimizer.decay_steps", o.decay_steps) + " (decay_steps counts warmup)");
      else if (decays && ok({"training.optimizer.decay"}) && o.warmup_steps == o.decay_steps)
        fail({"training.optimizer.warmup_steps", "training.optimizer.decay_steps", "training.optimizer.decay"},
             ref("training.optimizer.warmup_steps", o.warmup_steps) + " equals " +
                 ref("training.optimizer.decay_steps", o.decay_steps) + ": " + decay_name +
                 " needs at least one step after the warm-up (decay_steps counts warmup), and the "
                 "training program refuses this schedule; lower warmup_steps, raise decay_steps, or "
                 "use the 'constant' decay");
    }
  }

  // Sizes a machine can hold: every tensor of the program (weights, and the
  // activations of one microbatch) and the tokens of one step at most
  // kMaxElements, the whole model at most kMaxParams parameters (num_layers
  // has its own bound, kMaxLayers, in checkFields). Counts are exact (the importer's
  // tensors) and taken in 128 bits; fields are each <= 2^40 here, so no
  // product of three overflows. One diagnostic: the first bound exceeded.
  void checkSizes() {
    const ModelSpec& m = s_.model;
    const ParallelSpec& p = s_.parallel;
    const TrainingSpec& t = s_.training;
    if (!ok({"model.num_layers", "model.hidden_size", "model.num_heads", "model.num_kv_heads",
             "model.ffn_hidden_size", "model.vocab_size", "model.seq_length", "parallel.tp",
             "training.micro_batch_size"}))
      return;
    const Wide d = m.hidden_size, heads = m.num_heads, kv = m.num_kv_heads, f = m.ffn_hidden_size;
    const Wide s = m.seq_length, b = t.micro_batch_size, layers = m.num_layers;
    const Wide dh = d / heads, qkv = (heads + 2 * kv) * dh;
    const Wide multiple = 128 * (Wide)p.tp;
    const Wide v = ((Wide)m.vocab_size + multiple - 1) / multiple * multiple;
    const std::string bound = " elements, more than any machine holds (at most 2^40 = " + str(kMaxElements) +
                              " elements per tensor)";
    auto tensor = [&](Paths paths, const std::string& what, Wide n) {
      if (n <= kMaxElements) return true;
      fail(paths, what + " = " + str(n) + bound);
      return false;
    };
    const std::string bs = "micro_batch_size * seq_length * ";
    if (!tensor({"model.vocab_size", "model.hidden_size", "parallel.tp"},
                "the embedding table, padded vocab_size * hidden_size = " + str(v) + " * " + str(d), v * d) ||
        !tensor({"model.ffn_hidden_size", "model.hidden_size"},
                "an MLP weight, ffn_hidden_size * hidden_size = " + str(f) + " * " + str(d), f * d) ||
        !tensor({"model.hidden_size", "model.num_heads", "model.num_kv_heads"},
                "the qkv weight, (num_heads + 2 * num_kv_heads) * head size * hidden_size = " + str(qkv) +
                    " * " + str(d), qkv * d) ||
        (m.position_embedding == PositionKind::learned &&
         !tensor({"model.seq_length", "model.hidden_size"},
                 "the position table, seq_length * hidden_size = " + str(s) + " * " + str(d), s * d)) ||
        !tensor({"training.micro_batch_size", "model.seq_length", "model.vocab_size"},
                "the logits of a microbatch, " + bs + "padded vocab_size = " + str(b) + " * " + str(s) +
                    " * " + str(v), b * s * v) ||
        !tensor({"training.micro_batch_size", "model.seq_length", "model.ffn_hidden_size"},
                "the MLP activation of a microbatch, " + bs + "ffn_hidden_size = " + str(b) + " * " + str(s) +
                    " * " + str(f), b * s * f) ||
        !tensor({"training.micro_batch_size", "model.seq_length", "model.hidden_size"},
                "the qkv activation of a microbatch, " + bs + "(num_heads + 2 * num_kv_heads) * head size = " +
                    str(b) + " * " + str(s) + " * " + str(qkv), b * s * qkv))
      return;
    // The training program counts a step's tokens in an int64.
    if (ok({"training.global_batch_size", "parallel.dp", "parallel.microbatches"})) {
      const Wide global = resolvedGlobalBatch(s_), tokens = global * s;
      if (tokens > kMaxElements) {
        fail({"training.global_batch_size", "model.seq_length", "parallel.dp"},
             "a step reads global_batch_size * seq_length = " + str(global) + " * " + str(s) + " = " +
                 str(tokens) + " tokens, more than any machine holds (at most 2^40 = " + str(kMaxElements) +
                 " tokens a step)");
        return;
      }
    }
    // The importer's parameters (docs/checkpoints.md lists them).
    const bool layernorm_bias = m.norm == NormKind::layernorm && m.bias;
    const Wide norm = d * (layernorm_bias ? 2 : 1);
    const Wide attn = qkv * d + heads * dh * d + (m.bias ? qkv + d : 0);
    const Wide mlp = m.activation == Activation::swiglu ? 3 * f * d + (m.bias ? 2 * f + d : 0)
                                                        : 2 * f * d + (m.bias ? f + d : 0);
    Wide params = v * d + (m.tied_embeddings ? 0 : v * d) +
                  (m.position_embedding == PositionKind::learned ? s * d : 0) + norm +
                  layers * (attn + mlp + 2 * norm);
    if (params > kMaxParams)
      fail({"model.num_layers", "model.hidden_size", "model.ffn_hidden_size", "model.vocab_size"},
           "the model has " + str(params) + " parameters (num_layers = " + str(layers) + ", hidden_size = " +
               str(d) + ", ffn_hidden_size = " + str(f) + ", padded vocab_size = " + str(v) +
               "), more than any machine holds (at most 2^40 = " + str(kMaxParams) + " parameters)");
  }

  const Spec& s_;
  CheckContext ctx_;
  std::vector<Diagnostic>& diags_;
};

}  // namespace

bool checkSpec(const Spec& spec, CheckContext ctx, std::vector<Diagnostic>& diags) {
  return Checker(spec, std::move(ctx), diags).run();
}

}  // namespace detail

bool applyOverridesAndValidate(Spec& spec, const Overrides& overrides,
                               std::vector<Diagnostic>& diags) {
  try {
    detail::CheckContext ctx;
    auto apply = [&](auto& field, const auto& value, const char* path, const char* flag) {
      if (!value) return;
      field = *value;
      ctx.flags[path] = flag;
    };
    apply(spec.parallel.tp, overrides.tp, "parallel.tp", kFlagTp);
    apply(spec.parallel.pp, overrides.pp, "parallel.pp", kFlagPp);
    apply(spec.parallel.dp, overrides.dp, "parallel.dp", kFlagDp);
    apply(spec.parallel.ep, overrides.ep, "parallel.ep", kFlagEp);
    apply(spec.model.moe.capacity_factor, overrides.moe_capacity_factor,
          "model.moe.capacity_factor", kFlagMoeCapacityFactor);
    apply(spec.model.moe.expert_bias, overrides.moe_expert_bias, "model.moe.expert_bias",
          kFlagMoeExpertBias);
    apply(spec.model.moe.bias_update_rate, overrides.moe_bias_update_rate,
          "model.moe.bias_update_rate", kFlagMoeBiasUpdateRate);
    apply(spec.parallel.sp, overrides.sp, "parallel.sp", kFlagSp);
    apply(spec.parallel.distributed_optimizer, overrides.distributed_optimizer,
          "parallel.distributed_optimizer", kFlagDistributedOptimizer);
    apply(spec.training.micro_batch_size, overrides.micro_batch_size, "training.micro_batch_size",
          kFlagMicroBatchSize);
    apply(spec.training.global_batch_size, overrides.global_batch_size, "training.global_batch_size",
          kFlagGlobalBatchSize);
    apply(spec.recompute, overrides.recompute, "recompute", kFlagRecompute);
    apply(spec.training.train_steps, overrides.train_steps, "training.train_steps", kFlagTrainIters);
    apply(spec.parallel.schedule, overrides.schedule, "parallel.schedule", kFlagSchedule);
    apply(spec.parallel.virtual_stages, overrides.virtual_stages, "parallel.virtual_stages",
          kFlagVirtualStages);
    if (overrides.layers_per_virtual_stage) {
      // After --pp and the spec's layers are known; num_layers is checked
      // on its own below, so a bad one is not reported twice here.
      const int64_t per = *overrides.layers_per_virtual_stage, pp = spec.parallel.pp;
      const int64_t layers = spec.model.num_layers;
      if (per < 1 || pp < 1 || layers < 1 || layers % (pp * per) != 0) {
        diags.push_back({kFlagLayersPerVirtualStage,
                         "must be >= 1 and divide num_layers / pp = " + std::to_string(layers) +
                             " / " + std::to_string(pp) + " evenly, got " + std::to_string(per)});
        return false;
      }
      spec.parallel.virtual_stages = layers / (pp * per);
      ctx.flags["parallel.virtual_stages"] = kFlagLayersPerVirtualStage;
    }
    apply(spec.parallel.pipeline_layout, overrides.pipeline_layout, "parallel.pipeline_layout",
          kFlagPipelineLayout);

    // Defaults a Spec built in code may leave at 0; a default taken from a
    // bad field is bad too (reported once, at the field).
    ModelSpec& m = spec.model;
    if (m.num_kv_heads == 0) {
      m.num_kv_heads = m.num_heads;
      if (m.num_heads < 1) ctx.bad.insert("model.num_kv_heads");
    }
    if (m.ffn_hidden_size == 0) {
      m.ffn_hidden_size = defaultFfnHiddenSize(m.hidden_size, m.activation);
      if (m.ffn_hidden_size == 0) ctx.bad.insert("model.ffn_hidden_size");
    }

    bool ok = detail::checkSpec(spec, std::move(ctx), diags);
    if (ok && spec.training.global_batch_size == 0)
      spec.training.global_batch_size = detail::resolvedGlobalBatch(spec);
    return ok;
  } catch (const std::exception& e) {
    diags.push_back({"", std::string("internal error while validating the spec: ") + e.what()});
  } catch (...) {
    diags.push_back({"", "internal error while validating the spec"});
  }
  return false;
}

}  // namespace mtc::spec
