// Tests that every spec in examples/ parses and validates, that the values
// people rely on (presets, defaults, derived sizes) come out as documented in
// docs/spec.md, and the small helpers (enum spellings, formatting).
#include "mtc/Spec/Spec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace mtc::spec {
namespace {

std::string readExample(const std::string& name) {
  std::ifstream in(std::string(MTC_EXAMPLES_DIR) + "/" + name);
  EXPECT_TRUE(in.good()) << "cannot open examples/" << name;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Parses and validates (no overrides); fails the test with the diagnostics.
Spec loadExample(const std::string& name) {
  std::vector<Diagnostic> diags;
  std::optional<Spec> spec = parseSpec(readExample(name), diags);
  EXPECT_TRUE(spec.has_value()) << formatDiagnostics(name, diags);
  if (!spec) return Spec{};
  EXPECT_TRUE(applyOverridesAndValidate(*spec, Overrides{}, diags)) << formatDiagnostics(name, diags);
  EXPECT_TRUE(diags.empty()) << formatDiagnostics(name, diags);
  return *spec;
}

Spec parseOk(const std::string& text) {
  std::vector<Diagnostic> diags;
  std::optional<Spec> spec = parseSpec(text, diags);
  EXPECT_TRUE(spec.has_value()) << formatDiagnostics("<text>", diags);
  return spec ? *spec : Spec{};
}

TEST(SpecExamples, EveryJsonFileInExamplesParsesAndValidates) {
  const std::vector<std::string> expected = {"tiny-gpt.json",  "tiny-llama.json", "tiny-bert.json",
                                             "gpt2-124m.json", "gpt-1.3b.json",   "llama-1b.json",
                                             "bert-base.json", "tiny-nemotron.json"};
  std::vector<std::string> found;
  for (const auto& entry : std::filesystem::directory_iterator(MTC_EXAMPLES_DIR))
    if (entry.is_regular_file() && entry.path().extension() == ".json")
      found.push_back(entry.path().filename().string());
  for (const std::string& name : expected)
    EXPECT_NE(std::find(found.begin(), found.end(), name), found.end()) << name << " is missing";
  for (const std::string& name : found) {
    SCOPED_TRACE(name);
    Spec s = loadExample(name);
    EXPECT_GT(s.model.num_layers, 0);
    EXPECT_EQ(s.training.global_batch_size % (s.training.micro_batch_size * s.parallel.dp), 0);
  }
}

TEST(SpecExamples, TinyGptIsSmallEnoughForTheCpuDemo) {
  Spec s = loadExample("tiny-gpt.json");
  EXPECT_EQ(s.model.vocab_size, 256);
  EXPECT_GE(s.model.seq_length, 64);
  EXPECT_LE(s.model.seq_length, 128);
  EXPECT_GE(s.model.num_layers, 2);
  EXPECT_LE(s.model.num_layers, 4);
  EXPECT_GE(s.model.hidden_size, 64);
  EXPECT_LE(s.model.hidden_size, 128);
  EXPECT_EQ(s.model.num_heads, 2);  // head_dim 64, which the CUDA attention kernels take
  EXPECT_GE(s.training.micro_batch_size, 8);
  EXPECT_LE(s.training.micro_batch_size, 16);
  EXPECT_GT(s.training.optimizer.warmup_steps, 0);
  EXPECT_EQ(s.training.train_steps, 600);  // about a minute on 2 cores
  EXPECT_EQ(s.model.ffn_hidden_size, 4 * s.model.hidden_size);
}

TEST(SpecExamples, Gpt2SmallMatchesTheReferenceModel) {
  Spec s = loadExample("gpt2-124m.json");
  EXPECT_EQ(s.model.arch, Arch::gpt);
  EXPECT_EQ(s.model.num_layers, 12);
  EXPECT_EQ(s.model.hidden_size, 768);
  EXPECT_EQ(s.model.num_heads, 12);
  EXPECT_EQ(s.model.num_kv_heads, 12);
  EXPECT_EQ(s.model.ffn_hidden_size, 3072);
  EXPECT_EQ(s.model.vocab_size, 50304);
  EXPECT_EQ(s.model.seq_length, 1024);
  EXPECT_EQ(s.model.norm, NormKind::layernorm);
  EXPECT_EQ(s.model.norm_placement, NormPlacement::pre);
  EXPECT_EQ(s.model.activation, Activation::gelu_tanh);
  EXPECT_EQ(s.model.position_embedding, PositionKind::learned);
  EXPECT_TRUE(s.model.tied_embeddings);
  EXPECT_TRUE(s.model.bias);
  EXPECT_TRUE(s.model.causal);
  EXPECT_EQ(s.training.micro_batch_size, 16);
  EXPECT_EQ(s.training.global_batch_size, 64);
  EXPECT_EQ(s.numMicrobatches(), 4);
  EXPECT_EQ(s.paddedVocabSize(), 50304);
}

TEST(SpecExamples, Gpt13b) {
  Spec s = loadExample("gpt-1.3b.json");
  EXPECT_EQ(s.model.num_layers, 24);
  EXPECT_EQ(s.model.hidden_size, 2048);
  EXPECT_EQ(s.model.num_heads, 16);
  EXPECT_EQ(s.model.seq_length, 2048);
  EXPECT_EQ(s.model.vocab_size, 50304);
  EXPECT_EQ(s.training.micro_batch_size, 8);
  EXPECT_EQ(s.model.ffn_hidden_size, 8192);
}

TEST(SpecExamples, Llama1bIsLikeLlama32_1B) {
  Spec s = loadExample("llama-1b.json");
  EXPECT_EQ(s.model.arch, Arch::llama);
  EXPECT_EQ(s.model.num_layers, 16);
  EXPECT_EQ(s.model.hidden_size, 2048);
  EXPECT_EQ(s.model.num_heads, 32);
  EXPECT_EQ(s.model.num_kv_heads, 8);
  EXPECT_EQ(s.model.ffn_hidden_size, 8192);
  EXPECT_EQ(s.model.vocab_size, 128256);
  EXPECT_EQ(s.model.seq_length, 2048);
  EXPECT_EQ(s.model.rope_theta, 500000.0);
  EXPECT_EQ(s.model.norm, NormKind::rmsnorm);
  EXPECT_EQ(s.model.activation, Activation::swiglu);
  EXPECT_EQ(s.model.position_embedding, PositionKind::rope);
  EXPECT_FALSE(s.model.bias);
  // Llama 3.2 1B ties its embeddings: the file overrides the llama preset.
  EXPECT_TRUE(s.model.tied_embeddings);
  EXPECT_EQ(s.recompute, Recompute::none);
}

TEST(SpecExamples, BertBaseIsPostLnBidirectional) {
  Spec s = loadExample("bert-base.json");
  EXPECT_EQ(s.model.arch, Arch::bert);
  EXPECT_EQ(s.model.num_layers, 12);
  EXPECT_EQ(s.model.hidden_size, 768);
  EXPECT_EQ(s.model.vocab_size, 30528);
  EXPECT_EQ(s.model.seq_length, 512);
  EXPECT_EQ(s.model.norm_placement, NormPlacement::post);
  EXPECT_EQ(s.model.activation, Activation::gelu);
  EXPECT_FALSE(s.model.causal);
  EXPECT_EQ(s.training.optimizer.decay, LrDecay::linear);
}

TEST(SpecExamples, TinyNemotronUsesSquaredRelu) {
  Spec n = loadExample("tiny-nemotron.json");
  EXPECT_EQ(n.model.activation, Activation::squared_relu);
  EXPECT_EQ(n.model.ffn_hidden_size, 4 * n.model.hidden_size);
  EXPECT_EQ(n.model.position_embedding, PositionKind::rope);
}

TEST(SpecExamples, TinyLlamaAndTinyBertTakeTheirArchPresets) {
  Spec l = loadExample("tiny-llama.json");
  EXPECT_EQ(l.model.norm, NormKind::rmsnorm);
  EXPECT_EQ(l.model.activation, Activation::swiglu);
  EXPECT_EQ(l.model.position_embedding, PositionKind::rope);
  EXPECT_FALSE(l.model.tied_embeddings);
  EXPECT_FALSE(l.model.bias);
  EXPECT_EQ(l.model.num_kv_heads, 2);

  Spec b = loadExample("tiny-bert.json");
  EXPECT_EQ(b.model.norm_placement, NormPlacement::post);
  EXPECT_EQ(b.model.activation, Activation::gelu);
  EXPECT_FALSE(b.model.causal);
  EXPECT_EQ(b.model.norm_eps, 1e-12);
  // No global_batch_size in the file: micro_batch_size * dp.
  EXPECT_EQ(b.training.global_batch_size, 8);
  EXPECT_EQ(b.numMicrobatches(), 1);
}

TEST(SpecPresets, ExplicitKeysWinWhateverTheirOrder) {
  // "norm" comes before "arch": the preset must not overwrite it.
  Spec s = parseOk(R"({"model": {"norm": "layernorm", "bias": true, "arch": "llama",
      "num_layers": 2, "hidden_size": 64, "num_heads": 4, "vocab_size": 10, "seq_length": 8}})");
  EXPECT_EQ(s.model.norm, NormKind::layernorm);
  EXPECT_TRUE(s.model.bias);
  EXPECT_EQ(s.model.activation, Activation::swiglu);  // from the preset
  EXPECT_FALSE(s.model.tied_embeddings);              // from the preset
}

TEST(SpecPresets, DefaultsWithoutArchAreGpt) {
  Spec s = parseOk(R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4,
      "vocab_size": 10, "seq_length": 8}})");
  EXPECT_EQ(s.model.arch, Arch::gpt);
  EXPECT_EQ(s.model.name, "model");
  EXPECT_EQ(s.model.norm, NormKind::layernorm);
  EXPECT_EQ(s.model.activation, Activation::gelu_tanh);
  EXPECT_EQ(s.model.num_kv_heads, 4);
  EXPECT_EQ(s.model.ffn_hidden_size, 256);
  EXPECT_EQ(s.parallel.schedule, Schedule::one_f_one_b);
  EXPECT_EQ(s.recompute, Recompute::none);
  EXPECT_EQ(s.training.precision, Precision::bf16);
  EXPECT_EQ(s.training.optimizer.decay, LrDecay::cosine);
  EXPECT_FALSE(s.parallel.microbatches.has_value());
}

TEST(SpecPresets, SwigluFfnDefaultFollowsLlama) {
  // Published Llama widths: 7B 4096 -> 11008, 13B 5120 -> 13824, 65B 8192 -> 22016.
  EXPECT_EQ(defaultFfnHiddenSize(4096, Activation::swiglu), 11008);
  EXPECT_EQ(defaultFfnHiddenSize(5120, Activation::swiglu), 13824);
  EXPECT_EQ(defaultFfnHiddenSize(8192, Activation::swiglu), 22016);
  EXPECT_EQ(defaultFfnHiddenSize(768, Activation::gelu_tanh), 3072);
  EXPECT_EQ(defaultFfnHiddenSize(768, Activation::gelu), 3072);
  Spec s = parseOk(R"({"model": {"arch": "llama", "num_layers": 2, "hidden_size": 4096,
      "num_heads": 32, "vocab_size": 32000, "seq_length": 16}})");
  EXPECT_EQ(s.model.ffn_hidden_size, 11008);
  // A gpt with swiglu gets the swiglu rule: the rule follows the activation.
  Spec g = parseOk(R"({"model": {"activation": "swiglu", "num_layers": 2, "hidden_size": 5120,
      "num_heads": 40, "vocab_size": 32000, "seq_length": 16}})");
  EXPECT_EQ(g.model.ffn_hidden_size, 13824);
}

TEST(SpecPresets, IntegralFloatsAndCommentsAreAccepted) {
  Spec s = parseOk(R"({
    // a comment
    "model": {"num_layers": 2.0, "hidden_size": 64, "num_heads": 4, "vocab_size": 10,
              "seq_length": 8},  /* another */
    "training": {"train_steps": 1e3, "seed": 18446744073709551615}})");
  EXPECT_EQ(s.model.num_layers, 2);
  EXPECT_EQ(s.training.train_steps, 1000);
  EXPECT_EQ(s.training.seed, 18446744073709551615ull);
}

TEST(SpecHelpers, EnumSpellingsRoundTrip) {
  EXPECT_STREQ(toString(Schedule::one_f_one_b), "1f1b");
  EXPECT_STREQ(toString(Schedule::interleaved), "interleaved");
  EXPECT_STREQ(toString(Activation::gelu_tanh), "gelu_tanh");
  EXPECT_STREQ(toString(Precision::bf16), "bf16");
  EXPECT_STREQ(toString(LrDecay::cosine), "cosine");
  EXPECT_STREQ(toString(Arch::bert), "bert");
  EXPECT_STREQ(toString(NormKind::rmsnorm), "rmsnorm");
  EXPECT_STREQ(toString(NormPlacement::post), "post");
  EXPECT_STREQ(toString(PositionKind::rope), "rope");
  for (Recompute r : {Recompute::none, Recompute::selective, Recompute::full})
    EXPECT_EQ(parseRecompute(toString(r)), r);
  EXPECT_FALSE(parseRecompute("Selective").has_value());
  EXPECT_FALSE(parseRecompute("").has_value());
}

TEST(SpecHelpers, FormatDiagnosticsWritesOneLinePerProblem) {
  std::vector<Diagnostic> diags = {{"model.num_heads", "must be a positive integer, got 0"},
                                   {"", "line 1, column 2: not valid JSON: x"},
                                   {"--tp", "bad"}};
  EXPECT_EQ(formatDiagnostics("gpt.json", diags),
            "gpt.json: error: at model.num_heads: must be a positive integer, got 0\n"
            "gpt.json: error: line 1, column 2: not valid JSON: x\n"
            "gpt.json: error: at --tp: bad\n");
  EXPECT_EQ(formatDiagnostics("gpt.json", {}), "");
}

TEST(SpecHelpers, PaddedVocabIsAMultipleOf128TimesTp) {
  Spec s;
  for (int64_t tp : {1, 2, 3, 8}) {
    for (int64_t vocab : {1, 127, 128, 129, 50257, 128256}) {
      s.parallel.tp = tp;
      s.model.vocab_size = vocab;
      int64_t padded = s.paddedVocabSize();
      EXPECT_EQ(padded % (128 * tp), 0);
      EXPECT_GE(padded, vocab);
      EXPECT_LT(padded - vocab, 128 * tp);
    }
  }
  s.parallel.tp = 1;
  s.model.vocab_size = 50257;  // GPT-2's vocabulary; Megatron pads it to 50304
  EXPECT_EQ(s.paddedVocabSize(), 50304);
}

}  // namespace
}  // namespace mtc::spec
