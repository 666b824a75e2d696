// Tests that toJson writes the fully resolved spec: every documented key with
// its resolved value plus model.padded_vocab_size, and that the output (with
// that derived key removed) parses back to an equal spec, for every example,
// under command-line overrides, and for a spec that sets every key to a
// non-default value (doubles that need all 17 digits, the largest seed).
#include "mtc/Spec/Spec.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace mtc::spec {
namespace {

using Json = nlohmann::ordered_json;

std::string readFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Parses and validates `text` under `overrides`; fails the test on any
// diagnostic.
Spec load(const std::string& text, const Overrides& overrides = {}) {
  std::vector<Diagnostic> diags;
  std::optional<Spec> spec = parseSpec(text, diags);
  EXPECT_TRUE(spec.has_value()) << formatDiagnostics("<spec>", diags);
  if (!spec) return Spec{};
  EXPECT_TRUE(applyOverridesAndValidate(*spec, overrides, diags)) << formatDiagnostics("<spec>", diags);
  return *spec;
}

// Every field, compared exactly (doubles too: the JSON must round-trip them).
// parallel.microbatches is compared resolved: toJson writes the derived count.
void expectSameSpec(const Spec& a, const Spec& b) {
  const ModelSpec &x = a.model, &y = b.model;
  EXPECT_EQ(x.name, y.name);
  EXPECT_EQ(x.arch, y.arch);
  EXPECT_EQ(x.num_layers, y.num_layers);
  EXPECT_EQ(x.hidden_size, y.hidden_size);
  EXPECT_EQ(x.num_heads, y.num_heads);
  EXPECT_EQ(x.num_kv_heads, y.num_kv_heads);
  EXPECT_EQ(x.ffn_hidden_size, y.ffn_hidden_size);
  EXPECT_EQ(x.vocab_size, y.vocab_size);
  EXPECT_EQ(x.seq_length, y.seq_length);
  EXPECT_EQ(x.norm, y.norm);
  EXPECT_EQ(x.norm_placement, y.norm_placement);
  EXPECT_EQ(x.norm_eps, y.norm_eps);
  EXPECT_EQ(x.activation, y.activation);
  EXPECT_EQ(x.position_embedding, y.position_embedding);
  EXPECT_EQ(x.rope_theta, y.rope_theta);
  EXPECT_EQ(x.tied_embeddings, y.tied_embeddings);
  EXPECT_EQ(x.bias, y.bias);
  EXPECT_EQ(x.causal, y.causal);
  EXPECT_EQ(x.hidden_dropout, y.hidden_dropout);
  EXPECT_EQ(x.attention_dropout, y.attention_dropout);
  EXPECT_EQ(x.init_std, y.init_std);

  const ParallelSpec &p = a.parallel, &q = b.parallel;
  EXPECT_EQ(p.tp, q.tp);
  EXPECT_EQ(p.pp, q.pp);
  EXPECT_EQ(p.dp, q.dp);
  EXPECT_EQ(p.sp, q.sp);
  EXPECT_EQ(p.virtual_stages, q.virtual_stages);
  EXPECT_EQ(p.schedule, q.schedule);
  EXPECT_EQ(p.distributed_optimizer, q.distributed_optimizer);
  EXPECT_EQ(p.microbatches.value_or(a.numMicrobatches()), q.microbatches.value_or(b.numMicrobatches()));
  EXPECT_EQ(a.numMicrobatches(), b.numMicrobatches());
  EXPECT_EQ(a.paddedVocabSize(), b.paddedVocabSize());
  EXPECT_EQ(a.recompute, b.recompute);

  const TrainingSpec &t = a.training, &u = b.training;
  EXPECT_EQ(t.micro_batch_size, u.micro_batch_size);
  EXPECT_EQ(t.global_batch_size, u.global_batch_size);
  EXPECT_EQ(t.train_steps, u.train_steps);
  EXPECT_EQ(t.precision, u.precision);
  EXPECT_EQ(t.grad_clip, u.grad_clip);
  EXPECT_EQ(t.seed, u.seed);
  const OptimizerSpec &o = t.optimizer, &r = u.optimizer;
  EXPECT_EQ(o.lr, r.lr);
  EXPECT_EQ(o.min_lr, r.min_lr);
  EXPECT_EQ(o.beta1, r.beta1);
  EXPECT_EQ(o.beta2, r.beta2);
  EXPECT_EQ(o.eps, r.eps);
  EXPECT_EQ(o.weight_decay, r.weight_decay);
  EXPECT_EQ(o.warmup_steps, r.warmup_steps);
  EXPECT_EQ(o.decay_steps, r.decay_steps);
  EXPECT_EQ(o.decay, r.decay);
}

// The keys of docs/spec.md, in its order, per section.
const std::vector<std::string> kModelKeys = {
    "name", "arch", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size",
    "vocab_size", "padded_vocab_size", "seq_length", "norm", "norm_placement", "norm_eps",
    "activation", "position_embedding", "rope_theta", "tied_embeddings", "bias", "causal",
    "hidden_dropout", "attention_dropout", "init_std"};
const std::vector<std::string> kParallelKeys = {
    "tp", "pp", "dp", "ep", "sp", "virtual_stages", "microbatches", "schedule", "pipeline_layout",
    "distributed_optimizer"};
const std::vector<std::string> kTrainingKeys = {
    "micro_batch_size", "global_batch_size", "train_steps", "precision", "optimizer", "grad_clip", "seed"};
const std::vector<std::string> kOptimizerKeys = {
    "type", "lr", "min_lr", "beta1", "beta2", "eps", "weight_decay", "warmup_steps", "decay_steps", "decay"};

std::vector<std::string> keysOf(const Json& obj) {
  std::vector<std::string> keys;
  for (const auto& item : obj.items()) keys.push_back(item.key());
  return keys;
}

// toJson(spec) has every key, its padded_vocab_size is right, and without
// that key it re-parses to `spec`.
void checkRoundTrip(const Spec& spec) {
  std::string text = toJson(spec);
  Json j = Json::parse(text);
  EXPECT_EQ(keysOf(j), (std::vector<std::string>{"model", "parallel", "recompute", "training"}));
  std::vector<std::string> modelKeys = kModelKeys;
  if (spec.model.moe.enabled()) modelKeys.push_back("moe");  // only when present
  EXPECT_EQ(keysOf(j["model"]), modelKeys);
  EXPECT_EQ(keysOf(j["parallel"]), kParallelKeys);
  EXPECT_EQ(keysOf(j["training"]), kTrainingKeys);
  EXPECT_EQ(keysOf(j["training"]["optimizer"]), kOptimizerKeys);
  EXPECT_EQ(j["model"]["padded_vocab_size"].get<int64_t>(), spec.paddedVocabSize());

  // padded_vocab_size is derived, not a spec key: the parser rejects it.
  std::vector<Diagnostic> diags;
  EXPECT_FALSE(parseSpec(text, diags).has_value());
  ASSERT_EQ(diags.size(), 1u) << formatDiagnostics("spec.json", diags);
  EXPECT_EQ(diags[0].path, "model.padded_vocab_size");

  j["model"].erase("padded_vocab_size");
  Spec back = load(j.dump());
  expectSameSpec(spec, back);
  // And the printed form is a fixed point.
  Json again = Json::parse(toJson(back));
  again["model"].erase("padded_vocab_size");
  EXPECT_EQ(again.dump(), j.dump());
}

TEST(SpecToJson, EveryExampleRoundTrips) {
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(MTC_EXAMPLES_DIR)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".json") continue;
    SCOPED_TRACE(entry.path().filename().string());
    checkRoundTrip(load(readFile(entry.path())));
    ++count;
  }
  EXPECT_GE(count, 7);
}

TEST(SpecToJson, OverriddenValuesAreWrittenResolved) {
  // tiny-gpt with the overrides the PyTorch reference check uses, and tp 2
  // (which doubles the vocabulary padding multiple).
  Overrides o;
  o.micro_batch_size = 2;
  o.global_batch_size = 4;
  o.tp = 2;
  Spec s = load(readFile(std::string(MTC_EXAMPLES_DIR) + "/tiny-gpt.json"), o);
  Json j = Json::parse(toJson(s));
  EXPECT_EQ(j["training"]["micro_batch_size"], 2);
  EXPECT_EQ(j["training"]["global_batch_size"], 4);
  EXPECT_EQ(j["parallel"]["microbatches"], 2);
  EXPECT_EQ(j["parallel"]["tp"], 2);
  EXPECT_EQ(j["model"]["vocab_size"], 256);
  EXPECT_EQ(j["model"]["padded_vocab_size"], 256);
  // Presets and defaults, written out.
  EXPECT_EQ(j["model"]["norm"], "layernorm");
  EXPECT_EQ(j["model"]["activation"], "gelu_tanh");
  EXPECT_EQ(j["model"]["num_kv_heads"], 2);
  EXPECT_EQ(j["model"]["ffn_hidden_size"], 512);
  EXPECT_EQ(j["model"]["init_std"], 0.02);
  checkRoundTrip(s);

  // A vocabulary that needs padding: at tp 2, 1000 rounds up to a multiple
  // of 256.
  Spec v = load(R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4,
      "vocab_size": 1000, "seq_length": 8}, "parallel": {"tp": 2}})");
  EXPECT_EQ(Json::parse(toJson(v))["model"]["padded_vocab_size"], 1024);
  checkRoundTrip(v);
}

TEST(SpecToJson, EveryKeyAwayFromItsDefaultRoundTrips) {
  // Doubles that need 17 significant digits, the largest seed, every enum
  // away from its default (recompute excepted: only "none" is implemented).
  Spec s = load(R"({
    "model": {"name": "odd.model-1", "arch": "llama", "num_layers": 4, "hidden_size": 96,
      "num_heads": 6, "num_kv_heads": 3, "ffn_hidden_size": 258, "vocab_size": 300,
      "seq_length": 24, "norm": "layernorm", "norm_placement": "post",
      "norm_eps": 0.30000000000000004, "activation": "gelu", "position_embedding": "rope",
      "rope_theta": 123456.789, "tied_embeddings": true, "bias": true, "causal": false,
      "hidden_dropout": 0.1, "attention_dropout": 0.2, "init_std": 0.0123456789012345678},
    "parallel": {"tp": 3, "pp": 2, "dp": 2, "sp": true, "virtual_stages": 2,
      "schedule": "interleaved", "distributed_optimizer": true},
    "recompute": "none",
    "training": {"micro_batch_size": 3, "global_batch_size": 24, "train_steps": 77,
      "precision": "fp16", "grad_clip": 0, "seed": 18446744073709551615,
      "optimizer": {"lr": 1e-3, "min_lr": 1e-3, "beta1": 0.5, "beta2": 0.25, "eps": 1e-12,
        "weight_decay": 0, "warmup_steps": 7, "decay_steps": 70, "decay": "linear"}}
  })");
  EXPECT_EQ(s.numMicrobatches(), 4);
  EXPECT_EQ(s.paddedVocabSize(), 384);
  checkRoundTrip(s);
}

// Token dropping: capacity_factor and drop_policy round-trip; a dropless
// spec writes no drop_policy (its spec.json is what it was before token
// dropping existed).
TEST(SpecToJson, MoeTokenDroppingRoundTrips) {
  const char* base = R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4,
      "vocab_size": 256, "seq_length": 8, "moe": {"num_experts": 4, "top_k": 2%s}}})";
  auto withMoe = [&](const std::string& extra) {
    std::string text = base;
    return text.replace(text.find("%s"), 2, extra);
  };
  Spec s = load(withMoe(R"(, "capacity_factor": 1.2500000000000002, "drop_policy": "position")"));
  Json j = Json::parse(toJson(s));
  EXPECT_EQ(j["model"]["moe"]["capacity_factor"].get<double>(), 1.2500000000000002);
  EXPECT_EQ(j["model"]["moe"]["drop_policy"], "position");
  j["model"].erase("padded_vocab_size");
  Spec back = load(j.dump());
  EXPECT_EQ(back.model.moe.capacity_factor, s.model.moe.capacity_factor);
  EXPECT_EQ(back.model.moe.drop_policy, DropPolicy::position);

  Spec dropless = load(withMoe(""));
  EXPECT_EQ(dropless.model.moe.drop_policy, DropPolicy::probs);
  EXPECT_FALSE(Json::parse(toJson(dropless))["model"]["moe"].contains("drop_policy"));
}

TEST(SpecToJson, SpecBuiltInCodeGetsItsDefaultsWritten) {
  Spec s;
  s.model.num_layers = 2;
  s.model.hidden_size = 64;
  s.model.num_heads = 4;
  s.model.vocab_size = 10;
  s.model.seq_length = 8;
  s.model.activation = Activation::swiglu;
  Json j = Json::parse(toJson(s));
  EXPECT_EQ(j["model"]["num_kv_heads"], 4);
  EXPECT_EQ(j["model"]["ffn_hidden_size"], defaultFfnHiddenSize(64, Activation::swiglu));
  EXPECT_EQ(j["training"]["global_batch_size"], 1);
  EXPECT_EQ(j["parallel"]["microbatches"], 1);
  std::vector<Diagnostic> diags;
  ASSERT_TRUE(applyOverridesAndValidate(s, Overrides{}, diags)) << formatDiagnostics("<code>", diags);
  checkRoundTrip(s);
}

}  // namespace
}  // namespace mtc::spec
