// Tests that command-line overrides replace spec values, that the result is
// validated as a whole, and that problems an override causes are reported at
// the flag ("--tp"), not at the JSON path the user did not just type.
#include "mtc/Spec/Spec.h"

#include <gtest/gtest.h>

namespace mtc::spec {
namespace {

// 4 layers, hidden 64, 4 heads, seq 32; micro 4, global 8, 100 steps, warmup 10.
const char* kSpec = R"({
  "model": {"num_layers": 4, "hidden_size": 64, "num_heads": 4, "vocab_size": 256, "seq_length": 32},
  "training": {"micro_batch_size": 4, "global_batch_size": 8, "train_steps": 100,
               "optimizer": {"warmup_steps": 10}}
})";

Spec parsed(const char* text = kSpec) {
  std::vector<Diagnostic> diags;
  std::optional<Spec> s = parseSpec(text, diags);
  EXPECT_TRUE(s.has_value()) << formatDiagnostics("spec.json", diags);
  return s ? *s : Spec{};
}

// Applies `o` to kSpec; returns the diagnostics (empty when accepted).
std::vector<Diagnostic> apply(const Overrides& o, Spec* out = nullptr) {
  Spec s = parsed();
  std::vector<Diagnostic> diags;
  bool ok = applyOverridesAndValidate(s, o, diags);
  EXPECT_EQ(ok, diags.empty()) << formatDiagnostics("spec.json", diags);
  if (out) *out = s;
  return diags;
}

void expectOnly(const std::vector<Diagnostic>& diags, const std::string& path,
                std::initializer_list<std::string> words) {
  ASSERT_EQ(diags.size(), 1u) << formatDiagnostics("spec.json", diags);
  EXPECT_EQ(diags[0].path, path) << diags[0].message;
  for (const std::string& w : words)
    EXPECT_NE(diags[0].message.find(w), std::string::npos) << "'" << w << "' not in: " << diags[0].message;
}

TEST(SpecOverrides, NoOverridesKeepsTheSpec) {
  Spec s;
  EXPECT_TRUE(apply(Overrides{}, &s).empty());
  EXPECT_EQ(s.parallel.tp, 1);
  EXPECT_EQ(s.training.global_batch_size, 8);
  EXPECT_EQ(s.numMicrobatches(), 2);
}

TEST(SpecOverrides, ValidOverridesAreApplied) {
  Overrides o;
  o.tp = 2;
  o.sp = true;
  o.pp = 2;
  o.dp = 2;
  o.micro_batch_size = 2;
  o.global_batch_size = 16;
  o.recompute = Recompute::none;
  o.train_steps = 50;
  Spec s;
  EXPECT_TRUE(apply(o, &s).empty());
  EXPECT_EQ(s.parallel.tp, 2);
  EXPECT_TRUE(s.parallel.sp);
  EXPECT_EQ(s.parallel.pp, 2);
  EXPECT_EQ(s.parallel.dp, 2);
  EXPECT_EQ(s.training.micro_batch_size, 2);
  EXPECT_EQ(s.training.global_batch_size, 16);
  EXPECT_EQ(s.recompute, Recompute::none);
  EXPECT_EQ(s.training.train_steps, 50);
  EXPECT_EQ(s.numMicrobatches(), 4);  // 16 / (2 * 2)
}

TEST(SpecOverrides, InvalidValuesAreReportedAtTheFlag) {
  Overrides tp0;
  tp0.tp = 0;
  expectOnly(apply(tp0), kFlagTp, {"positive", "0"});

  Overrides tp3;
  tp3.tp = 3;
  auto diags = apply(tp3);
  ASSERT_FALSE(diags.empty());
  for (const Diagnostic& d : diags) EXPECT_EQ(d.path, "--tp") << d.message;
  EXPECT_NE(diags[0].message.find("model.num_heads (4)"), std::string::npos) << diags[0].message;
  EXPECT_NE(diags[0].message.find("--tp (3)"), std::string::npos) << diags[0].message;

  Overrides big;
  big.pp = int64_t(1) << 41;
  expectOnly(apply(big), kFlagPp, {"2199023255552", "too large"});
}

TEST(SpecOverrides, CrossFieldProblemsNameTheFlag) {
  Overrides sp;
  sp.sp = true;  // tp is 1
  expectOnly(apply(sp), kFlagSp, {"tp", "> 1"});

  Overrides sptp;  // with --tp 4 (divides heads, ffn and seq) --sp is fine
  sptp.sp = true;
  sptp.tp = 4;
  EXPECT_TRUE(apply(sptp).empty());

  Overrides dp;
  dp.dp = 3;  // 8 % (4 * 3)
  expectOnly(apply(dp), kFlagDp, {"(8)", "4 * 3 = 12"});

  Overrides micro;
  micro.micro_batch_size = 3;
  expectOnly(apply(micro), kFlagMicroBatchSize, {"(8)", "3 * 1 = 3"});

  Overrides global;
  global.global_batch_size = 10;
  expectOnly(apply(global), kFlagGlobalBatchSize, {"--global-batch-size (10)", "4 * 1 = 4"});

  Overrides global0;
  global0.global_batch_size = 0;
  expectOnly(apply(global0), kFlagGlobalBatchSize, {"positive", "0"});

  Overrides steps;
  steps.train_steps = 5;  // warmup is 10
  expectOnly(apply(steps), kFlagTrainIters, {"(10)", "--train-iters (5)"});

  Overrides pp;
  pp.pp = 8;  // 4 layers
  expectOnly(apply(pp), kFlagPp, {"model.num_layers (4)", "8 * 1 = 8"});
}

TEST(SpecOverrides, DefaultGlobalBatchFollowsOverriddenDp) {
  Spec s = parsed(R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4,
      "vocab_size": 10, "seq_length": 8}, "training": {"micro_batch_size": 8}})");
  EXPECT_EQ(s.training.global_batch_size, 0);  // not given
  Overrides o;
  o.dp = 4;
  std::vector<Diagnostic> diags;
  ASSERT_TRUE(applyOverridesAndValidate(s, o, diags)) << formatDiagnostics("spec.json", diags);
  EXPECT_EQ(s.training.global_batch_size, 32);
  EXPECT_EQ(s.numMicrobatches(), 1);
}

TEST(SpecOverrides, MicrobatchesInTheSpecMustStillMatch) {
  Spec s = parsed(R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4,
      "vocab_size": 10, "seq_length": 8}, "parallel": {"microbatches": 4},
      "training": {"micro_batch_size": 2, "global_batch_size": 8}})");
  Overrides o;
  o.dp = 2;
  std::vector<Diagnostic> diags;
  EXPECT_FALSE(applyOverridesAndValidate(s, o, diags));
  expectOnly(diags, kFlagDp, {"parallel.microbatches (4)", "= 2"});
}

TEST(SpecOverrides, DiagnosticsAreAppended) {
  std::vector<Diagnostic> diags = {{"earlier", "kept"}};
  Spec s = parsed();
  Overrides o;
  o.tp = 0;
  EXPECT_FALSE(applyOverridesAndValidate(s, o, diags));
  ASSERT_EQ(diags.size(), 2u);
  EXPECT_EQ(diags[0].path, "earlier");
  EXPECT_EQ(formatDiagnostics("gpt.json", {diags[1]}).rfind("gpt.json: error: at --tp: ", 0), 0u);
}

TEST(SpecOverrides, SpecBuiltInCodeTakesItsDefaults) {
  Spec s;
  s.model.arch = Arch::llama;
  s.model.activation = Activation::swiglu;
  s.model.num_layers = 2;
  s.model.hidden_size = 4096;
  s.model.num_heads = 32;
  s.model.vocab_size = 32000;
  s.model.seq_length = 16;
  s.training.micro_batch_size = 2;
  s.training.optimizer.warmup_steps = 0;
  Overrides o;
  o.dp = 2;
  std::vector<Diagnostic> diags;
  ASSERT_TRUE(applyOverridesAndValidate(s, o, diags)) << formatDiagnostics("code", diags);
  EXPECT_EQ(s.model.num_kv_heads, 32);
  EXPECT_EQ(s.model.ffn_hidden_size, 11008);
  EXPECT_EQ(s.training.global_batch_size, 4);

  Spec empty;  // every required size is 0: reported once each, no cascade
  diags.clear();
  EXPECT_FALSE(applyOverridesAndValidate(empty, Overrides{}, diags));
  EXPECT_EQ(diags.size(), 5u) << formatDiagnostics("code", diags);
}

}  // namespace
}  // namespace mtc::spec
