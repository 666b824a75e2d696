// Tests that every class of mistake in a spec file is reported at the right
// JSON path, with the offending value and what would be valid, that all
// problems are collected (not only the first), and that one mistake gives one
// diagnostic (no cascade through the rules that depend on it).
#include "mtc/Spec/Spec.h"

#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>

namespace mtc::spec {
namespace {

using Json = nlohmann::ordered_json;

// A small valid spec that the tests below break one key at a time.
const char* kBase = R"({
  "model": {"name": "t", "arch": "gpt", "num_layers": 4, "hidden_size": 64, "num_heads": 4,
            "vocab_size": 256, "seq_length": 32},
  "parallel": {"tp": 1, "pp": 1, "dp": 1},
  "training": {"micro_batch_size": 4, "global_batch_size": 8, "train_steps": 100,
               "optimizer": {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10}}
})";

Json base() { return Json::parse(kBase); }

std::string dump(const std::vector<Diagnostic>& diags) { return formatDiagnostics("spec.json", diags); }

// The diagnostics of a spec that must be rejected.
std::vector<Diagnostic> errorsOf(const std::string& text) {
  std::vector<Diagnostic> diags;
  std::optional<Spec> spec = parseSpec(text, diags);
  EXPECT_FALSE(spec.has_value()) << "accepted:\n" << text;
  EXPECT_FALSE(diags.empty());
  return diags;
}
std::vector<Diagnostic> errorsOf(const char* text) { return errorsOf(std::string(text)); }
std::vector<Diagnostic> errorsOf(const Json& j) { return errorsOf(j.dump()); }

// Expects a diagnostic at `path` whose message contains every one of `words`.
void expectDiag(const std::vector<Diagnostic>& diags, const std::string& path,
                std::initializer_list<std::string> words) {
  for (const Diagnostic& d : diags) {
    if (d.path != path) continue;
    for (const std::string& w : words)
      EXPECT_NE(d.message.find(w), std::string::npos) << "'" << w << "' not in: " << d.message;
    return;
  }
  ADD_FAILURE() << "no diagnostic at '" << path << "'; got:\n" << dump(diags);
}

TEST(SpecErrors, BaseIsValid) {
  std::vector<Diagnostic> diags;
  EXPECT_TRUE(parseSpec(kBase, diags).has_value()) << dump(diags);
}

// ---- the file as a whole --------------------------------------------------

TEST(SpecErrors, NotJsonReportsLineAndColumn) {
  auto diags = errorsOf("{\n  \"model\": {\n    \"num_layers\": 2,,\n  }\n}\n");
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  EXPECT_EQ(diags[0].path, "");
  EXPECT_NE(diags[0].message.find("line 3, column 21"), std::string::npos) << diags[0].message;
  EXPECT_NE(diags[0].message.find("not valid JSON"), std::string::npos);
}

TEST(SpecErrors, TruncatedAndEmptyFiles) {
  std::string text = kBase;
  auto diags = errorsOf(text.substr(0, text.size() / 2));
  ASSERT_EQ(diags.size(), 1u);
  EXPECT_NE(diags[0].message.find("unexpected end of input"), std::string::npos) << diags[0].message;
  expectDiag(errorsOf(""), "", {"empty"});
  expectDiag(errorsOf("  \n "), "", {"empty"});
}

TEST(SpecErrors, NumberTooLargeForADoubleIsPlaced) {
  auto diags = errorsOf("{\"model\":\n  {\"norm_eps\": 1e400}}");
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  EXPECT_NE(diags[0].message.find("line 2, column 16"), std::string::npos) << diags[0].message;
  EXPECT_NE(diags[0].message.find("1e400"), std::string::npos);
}

TEST(SpecErrors, TopLevelMustBeAnObject) {
  expectDiag(errorsOf("[1, 2]"), "", {"JSON object", "array"});
  expectDiag(errorsOf("42"), "", {"JSON object", "42"});
}

TEST(SpecErrors, SectionsMustBeObjects) {
  Json j = base();
  j["parallel"] = 3;
  j["training"]["optimizer"] = "adamw";
  auto diags = errorsOf(j);
  expectDiag(diags, "parallel", {"object", "3"});
  expectDiag(diags, "training.optimizer", {"object", "\"adamw\""});
  EXPECT_EQ(diags.size(), 2u) << dump(diags);
}

TEST(SpecErrors, DuplicateKeys) {
  auto diags = errorsOf(R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4,
      "num_heads": 8, "vocab_size": 10, "seq_length": 8}})");
  expectDiag(diags, "model.num_heads", {"duplicate", "'num_heads'"});
}

// ---- keys -----------------------------------------------------------------

TEST(SpecErrors, UnknownKeysSuggestTheClosest) {
  Json j = base();
  j["model"]["num_head"] = 4;
  j["model"]["vocab"] = 4;
  j["parallel"]["tensor_model_parallel_size"] = 2;
  j["training"]["optimizer"]["weight_decya"] = 0.1;
  j["num_layers"] = 4;
  j["zzzz"] = 1;
  auto diags = errorsOf(j);
  expectDiag(diags, "model.num_head", {"unknown key 'num_head'", "did you mean 'num_heads'?"});
  expectDiag(diags, "model.vocab", {"did you mean 'vocab_size'?"});
  expectDiag(diags, "parallel.tensor_model_parallel_size", {"did you mean 'tp'?"});
  expectDiag(diags, "training.optimizer.weight_decya", {"did you mean 'weight_decay'?"});
  expectDiag(diags, "num_layers", {"did you mean 'model.num_layers'?"});
  expectDiag(diags, "zzzz", {"unknown key 'zzzz'", "valid keys at the top level: model, parallel"});
  EXPECT_EQ(diags.size(), 6u) << dump(diags);
}

TEST(SpecErrors, MissingRequiredKeys) {
  Json j = base();
  j["model"].erase("num_heads");
  j["model"].erase("seq_length");
  auto diags = errorsOf(j);
  expectDiag(diags, "model.num_heads", {"missing required key 'num_heads'"});
  expectDiag(diags, "model.seq_length", {"missing required key 'seq_length'"});
  // No cascade: num_kv_heads, hidden % heads and heads % tp are not reported.
  EXPECT_EQ(diags.size(), 2u) << dump(diags);

  Json k = base();
  k.erase("model");
  auto d2 = errorsOf(k);
  ASSERT_EQ(d2.size(), 1u) << dump(d2);
  expectDiag(d2, "model", {"missing required key 'model'"});
}

// ---- types ----------------------------------------------------------------

TEST(SpecErrors, WrongTypesNameTheValueAndTheExpectedType) {
  Json j = base();
  j["model"]["num_heads"] = "4";
  j["model"]["num_layers"] = 2.5;
  j["model"]["bias"] = 1;
  j["model"]["name"] = 7;
  j["model"]["norm_eps"] = "1e-5";
  j["parallel"]["sp"] = "yes";
  j["training"]["seed"] = -1;
  auto diags = errorsOf(j);
  expectDiag(diags, "model.num_heads", {"expected an integer", "\"4\""});
  expectDiag(diags, "model.num_layers", {"expected an integer", "2.5"});
  expectDiag(diags, "model.bias", {"true or false", "1"});
  expectDiag(diags, "model.name", {"expected a string", "7"});
  expectDiag(diags, "model.norm_eps", {"expected a number", "\"1e-5\""});
  expectDiag(diags, "parallel.sp", {"true or false", "\"yes\""});
  expectDiag(diags, "training.seed", {"non-negative", "-1"});
  EXPECT_EQ(diags.size(), 7u) << dump(diags);
}

TEST(SpecErrors, NegativeZeroAndHugeIntegers) {
  Json j = base();
  j["model"]["hidden_size"] = -64;
  j["model"]["vocab_size"] = 0;
  j["model"]["seq_length"] = int64_t(1) << 41;
  j["training"]["train_steps"] = 18446744073709551615ull;
  j["training"]["optimizer"]["warmup_steps"] = -5;
  auto diags = errorsOf(j);
  expectDiag(diags, "model.hidden_size", {"positive integer", "-64"});
  expectDiag(diags, "model.vocab_size", {"positive integer", "0"});
  expectDiag(diags, "model.seq_length", {"2199023255552", "too large", "2^40"});
  expectDiag(diags, "training.train_steps", {"18446744073709551615", "too large"});
  expectDiag(diags, "training.optimizer.warmup_steps", {"non-negative", "-5"});
  EXPECT_EQ(diags.size(), 5u) << dump(diags);
}

TEST(SpecErrors, RealsOutOfRange) {
  Json j = base();
  j["model"]["hidden_dropout"] = 1.0;
  j["model"]["attention_dropout"] = -0.1;
  j["model"]["norm_eps"] = 0;
  j["model"]["init_std"] = -0.02;
  j["training"]["optimizer"]["beta2"] = 1.5;
  j["training"]["optimizer"]["eps"] = 0.0;
  j["training"]["optimizer"]["weight_decay"] = -0.1;
  j["training"]["grad_clip"] = -1;
  auto diags = errorsOf(j);
  expectDiag(diags, "model.hidden_dropout", {"[0, 1)", "got 1"});
  expectDiag(diags, "model.attention_dropout", {"[0, 1)", "-0.1"});
  expectDiag(diags, "model.norm_eps", {"(0, 1)", "got 0"});
  expectDiag(diags, "model.init_std", {"> 0", "-0.02"});
  expectDiag(diags, "training.optimizer.beta2", {"[0, 1)", "1.5"});
  expectDiag(diags, "training.optimizer.eps", {"> 0", "got 0"});
  expectDiag(diags, "training.optimizer.weight_decay", {">= 0", "-0.1"});
  expectDiag(diags, "training.grad_clip", {">= 0", "-1"});
  EXPECT_EQ(diags.size(), 8u) << dump(diags);
}

TEST(SpecErrors, LearningRateSchedule) {
  Json j = base();
  j["training"]["optimizer"]["lr"] = 1e-4;
  j["training"]["optimizer"]["min_lr"] = 1e-3;
  j["training"]["optimizer"]["warmup_steps"] = 200;
  auto diags = errorsOf(j);
  expectDiag(diags, "training.optimizer.min_lr", {"0.001", "0.0001", "greater than"});
  expectDiag(diags, "training.optimizer.warmup_steps", {"200", "training.train_steps (100)"});
  EXPECT_EQ(diags.size(), 2u) << dump(diags);

  Json k = base();
  k["training"]["optimizer"]["lr"] = 0;
  expectDiag(errorsOf(k), "training.optimizer.lr", {"> 0", "got 0"});
  Json d = base();
  d["training"]["optimizer"]["decay_steps"] = 5;
  expectDiag(errorsOf(d), "training.optimizer.warmup_steps", {"decay_steps (5)", "(10)"});
}

// Tests that the schedule the training program refuses (check_lr_schedule:
// a decay needs at least one step after the warm-up) is refused here too.
TEST(SpecErrors, DecayNeedsAStepAfterWarmup) {
  Json j = base();
  j["training"]["optimizer"]["decay_steps"] = 10;  // = warmup_steps
  auto diags = errorsOf(j);
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  expectDiag(diags, "training.optimizer.warmup_steps",
             {"(10) equals training.optimizer.decay_steps (10)", "'cosine' decay", "refuses"});

  Json t = base();  // decay_steps 0: decay ends at train_steps
  t["training"]["optimizer"]["warmup_steps"] = 100;
  t["training"]["optimizer"]["decay"] = "linear";
  expectDiag(errorsOf(t), "training.optimizer.warmup_steps",
             {"(100) equals training.train_steps (100)", "'linear' decay", "decay_steps is 0"});

  // A constant learning rate has no decay to run: both are fine.
  for (Json c : {j, t}) {
    c["training"]["optimizer"]["decay"] = "constant";
    std::vector<Diagnostic> ok;
    EXPECT_TRUE(parseSpec(c.dump(), ok).has_value()) << dump(ok);
  }

  // Set by --train-iters, the flag is named.
  std::vector<Diagnostic> none;
  std::optional<Spec> s = parseSpec(base().dump(), none);
  ASSERT_TRUE(s.has_value());
  Overrides o;
  o.train_steps = 10;
  std::vector<Diagnostic> flagged;
  EXPECT_FALSE(applyOverridesAndValidate(*s, o, flagged));
  expectDiag(flagged, "--train-iters", {"equals --train-iters (10)"});
}

// Tests that every recompute policy is accepted in the file and as a flag,
// and that an unknown one is refused with its JSON path and the valid values.
TEST(SpecErrors, RecomputePolicies) {
  for (const char* policy : {"none", "selective", "full", "auto"}) {
    Json j = base();
    j["recompute"] = policy;
    std::vector<Diagnostic> diags;
    std::optional<Spec> s = parseSpec(j.dump(), diags);
    ASSERT_TRUE(s.has_value()) << dump(diags);
    EXPECT_TRUE(applyOverridesAndValidate(*s, Overrides(), diags)) << dump(diags);
    EXPECT_STREQ(toString(s->recompute), policy);
  }
  Json bad = base();
  bad["recompute"] = "sometimes";
  auto diags = errorsOf(bad);
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  expectDiag(diags, "recompute", {"'none', 'selective', 'full', 'auto'"});
}

// Tests that sizes are bounded by what a machine could hold, with exact
// 128-bit products (no overflow into negative numbers), and that each case
// gives one diagnostic naming the bound.
TEST(SpecErrors, SizesAreBoundedByWhatAMachineHolds) {
  Json l = base();
  l["model"]["num_layers"] = int64_t(1) << 40;
  auto diags = errorsOf(l);
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  expectDiag(diags, "model.num_layers", {"1099511627776 is too large (at most 16384: each layer adds"});

  Json e = base();  // padded vocab 2^30 * hidden 2^11 = 2^41
  e["model"]["vocab_size"] = int64_t(1) << 30;
  e["model"]["hidden_size"] = 2048;
  diags = errorsOf(e);
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  expectDiag(diags, "model.vocab_size",
             {"embedding table", "1073741824 * 2048 = 2199023255552 elements", "at most 2^40 = 1099511627776"});

  Json a = base();  // logits: 2^20 * 2^12 * 2^10 elements
  a["training"]["micro_batch_size"] = int64_t(1) << 20;
  a["training"]["global_batch_size"] = int64_t(1) << 20;
  a["model"]["seq_length"] = int64_t(1) << 12;
  a["model"]["vocab_size"] = int64_t(1) << 10;
  diags = errorsOf(a);
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  expectDiag(diags, "training.micro_batch_size", {"logits", "1048576 * 4096 * 1024 = 4398046511104"});

  // Each microbatch fits, the step does not: 2^30 sequences of 2^11 tokens.
  Json s = base();
  s["model"]["seq_length"] = 2048;
  s["training"]["micro_batch_size"] = 1;
  s["training"]["global_batch_size"] = int64_t(1) << 30;
  diags = errorsOf(s);
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  expectDiag(diags, "training.global_batch_size",
             {"global_batch_size * seq_length = 1073741824 * 2048 = 2199023255552 tokens", "at most 2^40"});

  // Every tensor fits, the whole model does not: 16384 layers of width 8192.
  Json p = base();
  p["model"]["num_layers"] = 16384;
  p["model"]["hidden_size"] = 8192;
  p["model"]["num_heads"] = 64;
  diags = errorsOf(p);
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  expectDiag(diags, "model.num_layers", {"the model has 13195886739456 parameters", "num_layers = 16384", "at most 2^40"});

  // GPT-3 175B is well inside.
  Json g = base();
  g["model"]["num_layers"] = 96;
  g["model"]["hidden_size"] = 12288;
  g["model"]["num_heads"] = 96;
  g["model"]["vocab_size"] = 50257;
  g["model"]["seq_length"] = 2048;
  std::vector<Diagnostic> ok;
  EXPECT_TRUE(parseSpec(g.dump(), ok).has_value()) << dump(ok);
}

// Tests that an object with tens of thousands of keys is read in linear time
// and reported briefly: the keys past the 64th are dropped with one
// diagnostic (nlohmann's ordered map would make reading them quadratic).
TEST(SpecErrors, ObjectsWithTooManyKeysAreCut) {
  std::string text = R"({"model": {"num_layers": 4, "hidden_size": 64, "num_heads": 4,
      "vocab_size": 256, "seq_length": 32)";
  for (int i = 0; i < 50000; ++i) text += ", \"k" + std::to_string(i) + "\": " + std::to_string(i);
  text += "}}";
  auto diags = errorsOf(text);
  // 64 keys read: 5 known, 59 unknown; one for the rest.
  EXPECT_EQ(diags.size(), 60u) << dump(diags).substr(0, 2000);
  expectDiag(diags, "model", {"more than 64 keys in one object", "at most 22", "not read"});
  expectDiag(diags, "model.k0", {"unknown key 'k0'"});
}

// Tests that large documents are read in linear time: 200,000 objects in an
// array (nlohmann's callback parser scanned the array at the end of each
// one: 20 s) and 100,000 copies of one key. The bound is 10 times what the
// linear reader takes on a loaded machine.
TEST(SpecErrors, LargeDocumentsAreReadInLinearTime) {
  std::string objects = R"({"model": {"num_layers": 4, "hidden_size": 64, "num_heads": 4,
      "vocab_size": 256, "seq_length": 32, "x": [)";
  for (int i = 0; i < 200000; ++i) objects += std::string(i ? "," : "") + R"({"a": 1, "b": 2})";
  objects += "]}}";
  std::string duplicates = R"({"model": {"num_layers": 4)";
  for (int i = 0; i < 100000; ++i) duplicates += R"(, "hidden_size": 64)";
  duplicates += "}}";
  auto start = std::chrono::steady_clock::now();
  auto diags = errorsOf(objects);
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  expectDiag(diags, "model.x", {"unknown key 'x'"});
  diags = errorsOf(duplicates);
  EXPECT_EQ(diags.size(), 100u + 3u);  // 100 duplicates reported; 3 missing keys
  expectDiag(diags, "model.hidden_size", {"duplicate key 'hidden_size'"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

// Tests that tp suggestions only offer values that pass every rule on tp,
// not only the rule that failed.
TEST(SpecErrors, TpSuggestionsPassEveryRule) {
  Json f = base();  // 250 is divisible by 5, but num_heads (4) is not
  f["model"]["ffn_hidden_size"] = 250;
  f["parallel"]["tp"] = 4;
  auto diags = errorsOf(f);
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  expectDiag(diags, "parallel.tp", {"model.ffn_hidden_size (250)", "(nearby valid value: 2)"});

  Json s = base();  // sp: 6 divides heads and ffn but not seq_length 32; 1 is not allowed
  s["model"]["hidden_size"] = 96;
  s["model"]["num_heads"] = 12;
  s["model"]["seq_length"] = 32;
  s["parallel"]["tp"] = 3;
  s["parallel"]["sp"] = true;
  diags = errorsOf(s);
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  expectDiag(diags, "model.seq_length", {"(32)", "parallel.tp (3)", "(nearby valid values: 2 or 4)"});

  // The head counts suggested split over tp too, and leave an even head
  // size under rope.
  Json h = base();  // 6 divides 96 but not over tp = 4
  h["model"]["hidden_size"] = 96;
  h["model"]["num_heads"] = 5;
  h["parallel"]["tp"] = 4;
  diags = errorsOf(h);
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  expectDiag(diags, "model.num_heads", {"model.num_heads (5)", "(nearby valid values: 4 or 8)"});
  Json r = base();  // 36 / 4 = 9 is odd
  r["model"]["arch"] = "llama";
  r["model"]["hidden_size"] = 36;
  r["model"]["num_heads"] = 5;
  diags = errorsOf(r);
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  expectDiag(diags, "model.num_heads", {"(nearby valid values: 3 or 6)"});
  Json k = base();  // kv heads: 2 divides 8 but not over tp = 4
  k["model"]["num_heads"] = 8;
  k["model"]["num_kv_heads"] = 3;
  k["parallel"]["tp"] = 4;
  diags = errorsOf(k);
  expectDiag(diags, "model.num_kv_heads", {"(3)", "(nearby valid value: 4)"});
}

TEST(SpecErrors, EnumValuesListTheValidOnes) {
  Json j = base();
  j["model"]["activation"] = "swiglue";
  j["model"]["arch"] = "mamba";
  j["parallel"]["schedule"] = 1;
  j["recompute"] = "Full";
  j["training"]["precision"] = "fp8";
  j["training"]["optimizer"]["type"] = "sgd";
  auto diags = errorsOf(j);
  expectDiag(diags, "model.activation",
             {"\"swiglue\"", "'gelu', 'gelu_tanh', 'swiglu'", "did you mean 'swiglu'?"});
  expectDiag(diags, "model.arch", {"\"mamba\"", "'gpt', 'llama', 'bert'"});
  expectDiag(diags, "parallel.schedule", {"'gpipe', '1f1b', 'interleaved'", "the integer 1"});
  expectDiag(diags, "recompute", {"\"Full\"", "did you mean 'full'?"});
  expectDiag(diags, "training.precision", {"\"fp8\"", "'fp32', 'bf16', 'fp16'"});
  expectDiag(diags, "training.optimizer.type", {"\"sgd\"", "'adamw'"});
  EXPECT_EQ(diags.size(), 6u) << dump(diags);
}

TEST(SpecErrors, ModelNameMustBeUsableInFileNames) {
  Json j = base();
  j["model"]["name"] = "my model/1";
  expectDiag(errorsOf(j), "model.name", {"\"my model/1\"", "A-Z"});
}

// ---- across fields ---------------------------------------------------------

TEST(SpecErrors, HeadDivisibility) {
  Json j = base();
  j["model"]["hidden_size"] = 100;
  j["model"]["num_heads"] = 3;
  auto diags = errorsOf(j);
  ASSERT_EQ(diags.size(), 1u) << dump(diags);
  expectDiag(diags, "model.num_heads", {"model.hidden_size (100)", "model.num_heads (3)", "2 or 4"});

  Json k = base();
  k["model"]["num_kv_heads"] = 3;
  expectDiag(errorsOf(k), "model.num_kv_heads", {"model.num_heads (4)", "model.num_kv_heads (3)"});
  Json m = base();
  m["model"]["num_kv_heads"] = 8;  // more kv heads than heads
  expectDiag(errorsOf(m), "model.num_kv_heads", {"(8)"});
}

TEST(SpecErrors, TensorParallelDivisibility) {
  Json j = base();
  j["parallel"]["tp"] = 3;
  auto diags = errorsOf(j);
  expectDiag(diags, "parallel.tp", {"model.num_heads (4)", "parallel.tp (3)"});

  Json k = base();
  k["model"]["num_heads"] = 8;
  k["model"]["num_kv_heads"] = 2;
  k["parallel"]["tp"] = 4;
  expectDiag(errorsOf(k), "parallel.tp", {"model.num_kv_heads (2)", "parallel.tp (4)"});

  Json f = base();
  f["model"]["ffn_hidden_size"] = 250;
  f["parallel"]["tp"] = 4;
  expectDiag(errorsOf(f), "parallel.tp", {"model.ffn_hidden_size (250)", "(4)"});
}

TEST(SpecErrors, VocabNotDivisibleByTpIsPaddedNotAnError) {
  Json j = base();
  j["model"]["vocab_size"] = 257;
  j["parallel"]["tp"] = 2;
  std::vector<Diagnostic> diags;
  std::optional<Spec> s = parseSpec(j.dump(), diags);
  ASSERT_TRUE(s.has_value()) << dump(diags);
  EXPECT_EQ(s->paddedVocabSize(), 512);
}

TEST(SpecErrors, SequenceParallel) {
  Json j = base();
  j["parallel"]["sp"] = true;
  expectDiag(errorsOf(j), "parallel.sp", {"needs tensor parallelism", "must be > 1"});

  Json k = base();
  k["parallel"]["sp"] = true;
  k["parallel"]["tp"] = 4;
  k["model"]["seq_length"] = 30;
  expectDiag(errorsOf(k), "model.seq_length", {"model.seq_length (30)", "parallel.tp (4)"});
}

TEST(SpecErrors, PipelineStagesAndSchedules) {
  Json j = base();
  j["parallel"]["pp"] = 8;
  expectDiag(errorsOf(j), "parallel.pp", {"model.num_layers (4)", "8 * 1 = 8"});

  // An uneven split (5 layers on 2 stages) is fine.
  Json u = base();
  u["model"]["num_layers"] = 5;
  u["parallel"]["pp"] = 2;
  std::vector<Diagnostic> diags;
  EXPECT_TRUE(parseSpec(u.dump(), diags).has_value()) << dump(diags);

  Json v = base();
  v["parallel"]["virtual_stages"] = 2;
  v["parallel"]["pp"] = 2;
  expectDiag(errorsOf(v), "parallel.virtual_stages", {"(2)", "'interleaved'", "'1f1b'"});

  Json i = base();
  i["parallel"]["schedule"] = "interleaved";
  i["parallel"]["pp"] = 2;
  expectDiag(errorsOf(i), "parallel.schedule", {"virtual_stages > 1", "got 1"});

  Json p = base();
  p["parallel"]["schedule"] = "interleaved";
  p["parallel"]["virtual_stages"] = 2;
  expectDiag(errorsOf(p), "parallel.schedule", {"pp > 1"});

  Json m = base();  // 24 / (8 * 1) = 3 microbatches on 2 stages
  m["parallel"]["schedule"] = "interleaved";
  m["parallel"]["virtual_stages"] = 2;
  m["parallel"]["pp"] = 2;
  m["training"]["micro_batch_size"] = 8;
  m["training"]["global_batch_size"] = 24;
  expectDiag(errorsOf(m), "parallel.schedule", {"= 3", "parallel.pp (2)"});
}

TEST(SpecErrors, BatchSizes) {
  Json j = base();
  j["training"]["global_batch_size"] = 20;
  j["training"]["micro_batch_size"] = 8;
  expectDiag(errorsOf(j), "training.global_batch_size", {"(20)", "8 * 1 = 8", "24"});

  Json z = base();
  z["training"]["global_batch_size"] = 0;
  expectDiag(errorsOf(z), "training.global_batch_size", {"positive", "0"});

  Json m = base();  // 8 / (4 * 1) = 2
  m["parallel"]["microbatches"] = 3;
  expectDiag(errorsOf(m), "parallel.microbatches", {"(3)", "= 2"});

  Json ok = base();
  ok["parallel"]["microbatches"] = 2;
  std::vector<Diagnostic> diags;
  EXPECT_TRUE(parseSpec(ok.dump(), diags).has_value()) << dump(diags);
}

TEST(SpecErrors, RopeNeedsAnEvenHeadSize) {
  Json j = base();
  j["model"]["arch"] = "llama";
  j["model"]["hidden_size"] = 36;
  j["model"]["num_heads"] = 4;  // head size 9
  j["model"]["ffn_hidden_size"] = 128;
  expectDiag(errorsOf(j), "model.position_embedding", {"even", "= 9"});
}

TEST(SpecErrors, BertWithRopeIsAllowed) {
  Json j = base();
  j["model"]["arch"] = "bert";
  j["model"]["position_embedding"] = "rope";
  std::vector<Diagnostic> diags;
  std::optional<Spec> s = parseSpec(j.dump(), diags);
  ASSERT_TRUE(s.has_value()) << dump(diags);
  EXPECT_EQ(s->model.position_embedding, PositionKind::rope);
  EXPECT_FALSE(s->model.causal);
}

// ---- all errors, one each -------------------------------------------------

TEST(SpecErrors, CollectsEveryProblemNotOnlyTheFirst) {
  Json j = base();
  j["model"]["num_heads"] = 0;
  j["model"]["norm"] = "batchnorm";
  j["model"]["hiddden_size"] = 64;
  j["parallel"]["dp"] = -2;
  j["training"]["optimizer"]["beta1"] = 2;
  auto diags = errorsOf(j);
  EXPECT_EQ(diags.size(), 5u) << dump(diags);
  for (const char* p : {"model.num_heads", "model.norm", "model.hiddden_size", "parallel.dp",
                        "training.optimizer.beta1"})
    expectDiag(diags, p, {});
}

TEST(SpecErrors, OneMistakeGivesOneDiagnostic) {
  // A bad num_heads must not also trip hidden % heads, heads % kv_heads,
  // heads % tp, or the defaulted num_kv_heads.
  for (Json bad : {Json("x"), Json(-4), Json(0), Json(2.5), Json(nullptr)}) {
    Json j = base();
    j["model"]["num_heads"] = bad;
    j["parallel"]["tp"] = 2;
    auto diags = errorsOf(j);
    EXPECT_EQ(diags.size(), 1u) << dump(diags);
    expectDiag(diags, "model.num_heads", {});
  }
  Json h = base();
  h["model"]["hidden_size"] = "64";  // the defaulted ffn_hidden_size is not reported
  auto diags = errorsOf(h);
  EXPECT_EQ(diags.size(), 1u) << dump(diags);
}

// ---- whole bad specs, as a user would write them --------------------------

struct BadSpec {
  const char* name;
  const char* text;
  const char* path;
  std::vector<std::string> words;
};

const BadSpec kBadSpecs[] = {
    {"trailing_comma", R"({"model": {"num_layers": 2,}})", "", {"line 1, column 28", "not valid JSON", "trailing comma"}},
    {"missing_comma", "{\"model\": {\n  \"num_layers\": 2\n  \"hidden_size\": 64}}", "", {"line 3, column 15", "missing comma"}},
    {"unquoted_key", "{\n  model: {}\n}", "", {"line 2, column 3"}},
    {"top_level_string", R"("gpt")", "", {"JSON object", "\"gpt\""}},
    {"typo_in_key",
     R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "vocab_size": 10,
        "seq_length": 8, "num_kv_head": 2}})",
     "model.num_kv_head", {"did you mean 'num_kv_heads'?"}},
    {"hf_config_key",
     R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "vocab_size": 10,
        "seq_length": 8, "intermediate_size": 256}})",
     "model.intermediate_size", {"did you mean 'ffn_hidden_size'?"}},
    {"string_for_int",
     R"({"model": {"num_layers": "2", "hidden_size": 64, "num_heads": 4, "vocab_size": 10, "seq_length": 8}})",
     "model.num_layers", {"expected an integer", "\"2\""}},
    {"float_for_int",
     R"({"model": {"num_layers": 2, "hidden_size": 64.5, "num_heads": 4, "vocab_size": 10, "seq_length": 8}})",
     "model.hidden_size", {"expected an integer", "64.5"}},
    {"negative_layers",
     R"({"model": {"num_layers": -2, "hidden_size": 64, "num_heads": 4, "vocab_size": 10, "seq_length": 8}})",
     "model.num_layers", {"positive", "-2"}},
    {"huge_vocab",
     R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "vocab_size": 2000000000000, "seq_length": 8}})",
     "model.vocab_size", {"2000000000000", "too large"}},
    {"bad_norm",
     R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "vocab_size": 10, "seq_length": 8,
        "norm": "rms"}})",
     "model.norm", {"\"rms\"", "'layernorm', 'rmsnorm'"}},
    {"dropout_one",
     R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "vocab_size": 10, "seq_length": 8,
        "attention_dropout": 1}})",
     "model.attention_dropout", {"[0, 1)", "got 1"}},
    {"heads_not_dividing_hidden",
     R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 6, "vocab_size": 10, "seq_length": 8}})",
     "model.num_heads", {"(64)", "(6)", "4 or 8"}},
    {"gqa_mismatch",
     R"({"model": {"arch": "llama", "num_layers": 2, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 3,
        "vocab_size": 10, "seq_length": 8}})",
     "model.num_kv_heads", {"(4)", "(3)"}},
    {"tp_vs_heads",
     R"({"model": {"num_layers": 2, "hidden_size": 96, "num_heads": 6, "vocab_size": 10, "seq_length": 8},
        "parallel": {"tp": 4}})",
     "parallel.tp", {"model.num_heads (6)", "parallel.tp (4)", "3 or 6"}},
    {"sp_without_tp",
     R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "vocab_size": 10, "seq_length": 8},
        "parallel": {"sp": true}})",
     "parallel.sp", {"tp", "> 1"}},
    {"too_many_stages",
     R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "vocab_size": 10, "seq_length": 8},
        "parallel": {"pp": 2, "virtual_stages": 2, "schedule": "interleaved", "microbatches": 2}})",
     "parallel.pp", {"model.num_layers (2)", "2 * 2 = 4"}},
    {"global_batch",
     R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "vocab_size": 10, "seq_length": 8},
        "parallel": {"dp": 4}, "training": {"micro_batch_size": 2, "global_batch_size": 12}})",
     "training.global_batch_size", {"(12)", "2 * 4 = 8", "16"}},
    {"min_lr_above_lr",
     R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "vocab_size": 10, "seq_length": 8},
        "training": {"optimizer": {"lr": 1e-5}}})",
     "training.optimizer.min_lr", {"(3e-05)", "(1e-05)"}},
    {"warmup_past_end",
     R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "vocab_size": 10, "seq_length": 8},
        "training": {"train_steps": 10, "optimizer": {"warmup_steps": 11}}})",
     "training.optimizer.warmup_steps", {"(11)", "(10)"}},
};

TEST(SpecErrors, BadSpecFixtures) {
  for (const BadSpec& b : kBadSpecs) {
    SCOPED_TRACE(b.name);
    std::vector<Diagnostic> diags;
    std::optional<Spec> s = parseSpec(b.text, diags);
    EXPECT_FALSE(s.has_value());
    ASSERT_EQ(diags.size(), 1u) << dump(diags);
    EXPECT_EQ(diags[0].path, b.path) << dump(diags);
    for (const std::string& w : b.words)
      EXPECT_NE(diags[0].message.find(w), std::string::npos) << "'" << w << "' not in: " << diags[0].message;
  }
}

}  // namespace
}  // namespace mtc::spec
