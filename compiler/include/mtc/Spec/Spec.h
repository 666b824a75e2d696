// The model spec: the JSON file a user writes (docs/spec.md), parsed and
// validated into plain structs. No MLIR here: the importer (Import.cpp) turns
// a validated Spec into IR, and the runtime never sees a Spec.
//
// Every error names its JSON path ("model.num_heads"), the offending value and
// what would be valid. Parsing never throws to the caller and never aborts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mtc::spec {

enum class Arch { gpt, llama, bert };
enum class NormKind { layernorm, rmsnorm };
enum class NormPlacement { pre, post };
enum class Activation { gelu, gelu_tanh, swiglu, squared_relu };
enum class PositionKind { learned, rope };
enum class Schedule { gpipe, one_f_one_b, interleaved, zb_h1 };   // "gpipe" | "1f1b" | "interleaved" | "zb-h1"
enum class Recompute { none, selective, full, auto_ };
enum class Precision { fp32, bf16, fp16 };
enum class LrDecay { constant, linear, cosine };
enum class RouterKind { softmax_topk, topk_softmax };   // "softmax-topk" | "topk-softmax"
enum class DropPolicy { probs, position };              // "probs" | "position"

// model.moe: mixture-of-experts MLPs (docs/moe.md). Absent: num_experts 0
// and every MLP dense.
struct MoeSpec {
  int64_t num_experts = 0;         // E, counting fine-grained experts; 0: no MoE
  int64_t top_k = 2;               // experts per token
  int64_t granularity = 1;         // G: each expert's ffn is ffn_hidden_size / G
  int64_t shared_expert_ffn_hidden_size = 0;  // a dense MLP beside the experts; 0: none
  RouterKind router = RouterKind::softmax_topk;
  double router_scale = 1.0;       // multiplies the routing weights
  double aux_loss_coeff = 0.01;    // load-balancing loss coefficient (alpha)
  double z_loss_coeff = 0.0;       // router z-loss coefficient
  // Which layers are MoE layers: every layer_freq-th (0, N, 2N, ...,
  // Megatron's --moe-layer-freq N), or layer_pattern[l] != 0 when the spec
  // wrote a list.
  int64_t layer_freq = 1;
  std::vector<int64_t> layer_pattern;
  // Token dropping (Megatron's --moe-expert-capacity-factor and
  // --moe-token-drop-policy): each expert takes at most C = ceil(factor *
  // T * top_k / E) assignments of a micro-batch's T tokens; 0: dropless.
  double capacity_factor = 0.0;
  DropPolicy drop_policy = DropPolicy::probs;  // which assignments are kept
  // Aux-loss-free load balancing (DeepSeek-V3; Megatron's
  // --moe-router-enable-expert-bias and --moe-router-bias-update-rate): a
  // per-layer bias on the router's scores for the top-k selection only,
  // moved after each step by bias_update_rate * sign(mean load - load).
  bool expert_bias = false;
  double bias_update_rate = 1e-3;

  bool enabled() const { return num_experts > 0; }
  bool isMoeLayer(int64_t layer) const {
    if (!enabled()) return false;
    if (!layer_pattern.empty())
      return layer >= 0 && layer < int64_t(layer_pattern.size()) && layer_pattern[layer] != 0;
    return layer_freq > 0 && layer % layer_freq == 0;
  }
};

struct ModelSpec {
  std::string name = "model";
  Arch arch = Arch::gpt;
  int64_t num_layers = 0;
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;      // defaults to num_heads
  int64_t ffn_hidden_size = 0;   // defaults to defaultFfnHiddenSize()
  int64_t vocab_size = 0;
  int64_t seq_length = 0;
  NormKind norm = NormKind::layernorm;
  NormPlacement norm_placement = NormPlacement::pre;
  double norm_eps = 1e-5;
  Activation activation = Activation::gelu_tanh;
  PositionKind position_embedding = PositionKind::learned;
  double rope_theta = 10000.0;
  bool tied_embeddings = true;
  bool bias = true;              // biases in linear layers (and LayerNorm beta)
  double hidden_dropout = 0.0;
  double attention_dropout = 0.0; // on the attention output (before the projection)
  double init_std = 0.02;
  bool causal = true;            // causal attention mask; bert: bidirectional
  MoeSpec moe;                   // model.moe
};

// Llama's rule for the SwiGLU width: 2/3 of 4*hidden, rounded up to a
// multiple of 256; 4*hidden for the other activations. Used when the spec
// leaves ffn_hidden_size out.
int64_t defaultFfnHiddenSize(int64_t hidden_size, Activation activation);

struct ParallelSpec {
  int64_t tp = 1, pp = 1, dp = 1;
  // Expert parallelism (Megatron's --expert-model-parallel-size): carved out
  // of dp, so it divides dp; the experts of every MoE layer are split over
  // ep consecutive dp ranks (docs/moe.md).
  int64_t ep = 1;
  bool sp = false;
  int64_t virtual_stages = 1;    // virtual pipeline chunks per stage
  Schedule schedule = Schedule::one_f_one_b;
  // Which layers each pipeline chunk holds: "" (even), "auto" (balanced by
  // the ops' cost, embedding and LM head included) or Megatron's
  // --pipeline-model-parallel-layout syntax, chunks separated by '|'
  // ("E,t*3|t*4|t*4|t*3,L"; E the embedding, t a layer, L the final norm,
  // LM head and loss). The compiler checks a layout against the model.
  std::string pipeline_layout;
  bool distributed_optimizer = false;
  // As written in the spec ("parallel.microbatches"); when present it must
  // equal global_batch_size / (micro_batch_size * dp).
  std::optional<int64_t> microbatches;
};

struct OptimizerSpec {
  double lr = 3e-4, min_lr = 3e-5;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;
  int64_t warmup_steps = 0;
  int64_t decay_steps = 0;       // 0: train_steps
  LrDecay decay = LrDecay::cosine;
};

struct TrainingSpec {
  int64_t micro_batch_size = 1;
  int64_t global_batch_size = 0; // 0: micro_batch_size * dp * microbatches
                                 // (microbatches: 1 if absent); filled in
                                 // by applyOverridesAndValidate
  int64_t train_steps = 100;
  Precision precision = Precision::bf16;
  OptimizerSpec optimizer;
  double grad_clip = 1.0;
  uint64_t seed = 1234;
};

struct Spec {
  ModelSpec model;
  ParallelSpec parallel;
  Recompute recompute = Recompute::none;
  TrainingSpec training;

  // Derived after validation: global_batch / (micro_batch * dp).
  int64_t numMicrobatches() const;

  // The embedding table's row count: vocab_size rounded up to a multiple of
  // 128 * tp (Megatron's make-vocab-size-divisible-by), so every tensor
  // parallel rank holds an equal, aligned slice. The padded rows are never
  // produced by the data; their logits are masked out of the loss.
  int64_t paddedVocabSize() const;
};

struct Diagnostic {
  std::string path;     // JSON path, "model.num_heads"; "" for the whole file
  std::string message;  // what is wrong and what would be valid
};

// Command-line overrides (Megatron's flag names); unset fields keep the spec.
// The flags' spellings, used as diagnostic paths; the driver parses these.
inline constexpr const char* kFlagTp = "--tp";
inline constexpr const char* kFlagPp = "--pp";
inline constexpr const char* kFlagDp = "--dp";
inline constexpr const char* kFlagEp = "--expert-model-parallel-size";
inline constexpr const char* kFlagMoeCapacityFactor = "--moe-expert-capacity-factor";
inline constexpr const char* kFlagMoeExpertBias = "--moe-router-enable-expert-bias";
inline constexpr const char* kFlagMoeBiasUpdateRate = "--moe-router-bias-update-rate";
inline constexpr const char* kFlagSp = "--sp";
inline constexpr const char* kFlagDistributedOptimizer = "--use-distributed-optimizer";
inline constexpr const char* kFlagMicroBatchSize = "--micro-batch-size";
inline constexpr const char* kFlagGlobalBatchSize = "--global-batch-size";
inline constexpr const char* kFlagRecompute = "--recompute";
inline constexpr const char* kFlagTrainIters = "--train-iters";
inline constexpr const char* kFlagSchedule = "--pipeline-schedule";
inline constexpr const char* kFlagVirtualStages = "--virtual-pipeline-model-parallel-size";
inline constexpr const char* kFlagLayersPerVirtualStage = "--num-layers-per-virtual-pipeline-stage";
inline constexpr const char* kFlagPipelineLayout = "--pipeline-model-parallel-layout";

struct Overrides {
  std::optional<int64_t> tp, pp, dp, ep, micro_batch_size, global_batch_size;
  // Megatron's --moe-expert-capacity-factor: model.moe.capacity_factor.
  std::optional<double> moe_capacity_factor;
  // Megatron's --moe-router-enable-expert-bias and
  // --moe-router-bias-update-rate: model.moe.expert_bias and
  // model.moe.bias_update_rate.
  std::optional<bool> moe_expert_bias;
  std::optional<double> moe_bias_update_rate;
  std::optional<bool> sp;
  std::optional<bool> distributed_optimizer;
  std::optional<Recompute> recompute;
  std::optional<int64_t> train_steps;
  std::optional<Schedule> schedule;
  std::optional<int64_t> virtual_stages;
  // Megatron's --num-layers-per-virtual-pipeline-stage: virtual_stages =
  // num_layers / (pp * this), which must divide.
  std::optional<int64_t> layers_per_virtual_stage;
  std::optional<std::string> pipeline_layout;
};

// Parses `text` (the contents of a spec file). On failure returns nullopt and
// fills `diags` with every problem found (not only the first). The file is
// checked on its own, cross-field rules included, so a spec file that parses
// is valid without any override.
std::optional<Spec> parseSpec(const std::string& text,
                              std::vector<Diagnostic>& diags);

// Applies overrides, then validates the whole spec (sizes positive, heads
// divisible by kv heads and by tp, seq divisible by tp under sp, batch
// divisible by micro batch * dp, ...). Appends to `diags`; returns false if
// any error. Overridden values are reported with the flag's name as path
// ("--tp"). Zero num_kv_heads, ffn_hidden_size and global_batch_size (a
// Spec built in code) take their defaults first.
bool applyOverridesAndValidate(Spec& spec, const Overrides& overrides,
                               std::vector<Diagnostic>& diags);

// "path: message" lines, prefixed with `file`: "gpt.json: error: at
// model.num_heads: ...".
std::string formatDiagnostics(const std::string& file,
                              const std::vector<Diagnostic>& diags);

// The fully resolved spec as pretty-printed JSON: every key of docs/spec.md
// with its value after presets, defaults and overrides (parallel.microbatches
// and training.global_batch_size derived when left out), plus the derived
// "model.padded_vocab_size" (paddedVocabSize()). With that one key removed,
// parseSpec reads it back to an equal spec. Never throws.
std::string toJson(const Spec& spec);

// Parses enum spellings shared with the command line ("selective", ...).
std::optional<Recompute> parseRecompute(const std::string& s);
std::optional<Schedule> parseSchedule(const std::string& s);

// One pipeline chunk of a layout: whether it holds the embedding (E), its
// transformer layers [first_layer, first_layer + num_layers), and whether
// it holds the final norm, LM head and loss (L).
struct LayoutChunk {
  bool embedding = false;
  int64_t first_layer = 0, num_layers = 0;
  bool head = false;
};

// Resolves parallel.pipeline_layout for `num_layers` layers and `chunks` =
// pp * virtual_stages chunks in model order (chunk c runs on pipeline rank
// c % pp). "" splits the layers evenly (the first chunks take one more when
// they do not divide), the embedding on the first chunk and the head on the
// last. An explicit layout is Megatron's syntax: chunks separated by '|',
// each a list of E, t and L (commas between them optional: "Et*3" is
// "E,t*3"), any of them repeated as "t*3" (whitespace ignored; a chunk may
// be empty). E must open the first chunk
// and L close the last, and the layout must hold exactly `num_layers` t's.
// "auto" is not resolved here (the compiler balances it from the ops' cost).
// On failure returns false and says what is wrong: the chunk count, the
// missing or extra layer, a misplaced E or L, an unknown token.
bool resolvePipelineLayout(const std::string& layout, int64_t num_layers, int64_t chunks,
                           std::vector<LayoutChunk>& out, std::string& error);
const char* toString(Arch);
const char* toString(NormKind);
const char* toString(NormPlacement);
const char* toString(Activation);
const char* toString(PositionKind);
const char* toString(Schedule);
const char* toString(Recompute);
const char* toString(Precision);
const char* toString(LrDecay);
const char* toString(RouterKind);
const char* toString(DropPolicy);

}  // namespace mtc::spec
