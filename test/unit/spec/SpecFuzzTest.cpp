// Tests that parseSpec and applyOverridesAndValidate never crash or throw on
// damaged specs, that every rejection explains itself, and that every spec
// they accept satisfies the rules of docs/spec.md, checked here by an
// independent re-statement of those rules. The inputs are the examples with
// a few thousand random mutations (fixed seed): keys deleted, renamed or
// invented, values replaced by other types or by negative, zero, huge and
// fractional numbers, and the text truncated or corrupted byte by byte.
#include "mtc/Spec/Spec.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace mtc::spec {
namespace {

using Json = nlohmann::ordered_json;
using Rng = std::mt19937_64;

constexpr int64_t kMax = int64_t(1) << 40;
__extension__ typedef __int128 Wide;  // products of sizes up to 2^40

size_t pick(Rng& rng, size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); }
bool chance(Rng& rng, double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }

// ---- the rules, restated ---------------------------------------------------

// Every rule docs/spec.md states for a valid spec; returns the broken ones.
std::vector<std::string> violations(const Spec& s) {
  std::vector<std::string> v;
  auto rule = [&](bool holds, const char* what) {
    if (!holds) v.push_back(what);
  };
  auto size = [&](int64_t x, const char* what) { rule(x >= 1 && x <= kMax, what); };
  auto unit = [&](double x, const char* what) { rule(x >= 0 && x < 1, what); };
  const ModelSpec& m = s.model;
  const ParallelSpec& p = s.parallel;
  const TrainingSpec& t = s.training;
  const OptimizerSpec& o = t.optimizer;

  bool name_ok = !m.name.empty() && m.name.size() <= 64;
  for (char c : m.name) name_ok = name_ok && (std::isalnum((unsigned char)c) || c == '-' || c == '_' || c == '.');
  rule(name_ok, "name");
  size(m.num_layers, "num_layers");
  size(m.hidden_size, "hidden_size");
  size(m.num_heads, "num_heads");
  size(m.num_kv_heads, "num_kv_heads");
  size(m.ffn_hidden_size, "ffn_hidden_size");
  size(m.vocab_size, "vocab_size");
  size(m.seq_length, "seq_length");
  size(p.tp, "tp");
  size(p.pp, "pp");
  size(p.dp, "dp");
  size(p.virtual_stages, "virtual_stages");
  size(t.micro_batch_size, "micro_batch_size");
  size(t.train_steps, "train_steps");
  if (!v.empty()) return v;  // the rules below divide by these

  rule(m.hidden_size % m.num_heads == 0, "hidden % heads");
  rule(m.num_heads % m.num_kv_heads == 0, "heads % kv_heads");
  rule(m.position_embedding != PositionKind::rope || (m.hidden_size / m.num_heads) % 2 == 0, "rope head size");
  rule(m.num_heads % p.tp == 0, "heads % tp");
  rule(m.num_kv_heads % p.tp == 0, "kv_heads % tp");
  rule(m.ffn_hidden_size % p.tp == 0, "ffn % tp");
  rule(!p.sp || (p.tp > 1 && m.seq_length % p.tp == 0), "sp");
  rule((Wide)p.pp * p.virtual_stages <= m.num_layers, "layers >= pp * v");
  bool interleaved = p.schedule == Schedule::interleaved;
  rule((p.virtual_stages > 1) == interleaved, "virtual_stages <=> interleaved");
  rule(!interleaved || p.pp > 1, "interleaved pp");
  rule((Wide)p.tp * p.pp * p.dp <= kMax, "world size");
  rule(m.num_layers <= 16384, "num_layers bound");
  Wide padded = ((Wide)m.vocab_size + 128 * p.tp - 1) / (128 * p.tp) * (128 * p.tp);
  rule(padded * m.hidden_size <= kMax, "embedding table elements");
  rule((Wide)t.micro_batch_size * m.seq_length * padded <= kMax, "logits elements");

  Wide per_step = (Wide)t.micro_batch_size * p.dp;
  Wide global = t.global_batch_size ? t.global_batch_size : per_step * p.microbatches.value_or(1);
  rule(global >= 1 && global <= kMax, "global batch size");
  rule(global * m.seq_length <= kMax, "tokens a step");
  if (global >= 1 && global <= kMax) {
    rule(global % per_step == 0, "global % (micro * dp)");
    Wide mb = global / per_step;
    rule(!p.microbatches || *p.microbatches == mb, "microbatches");
    rule(!interleaved || mb % p.pp == 0, "interleaved microbatches % pp");
  }

  rule(m.norm_eps > 0 && m.norm_eps < 1, "norm_eps");
  rule(m.rope_theta > 0 && std::isfinite(m.rope_theta), "rope_theta");
  unit(m.hidden_dropout, "hidden_dropout");
  unit(m.attention_dropout, "attention_dropout");
  rule(m.init_std > 0 && std::isfinite(m.init_std), "init_std");
  rule(o.lr > 0 && std::isfinite(o.lr), "lr");
  rule(o.min_lr >= 0 && o.min_lr <= o.lr, "min_lr");
  unit(o.beta1, "beta1");
  unit(o.beta2, "beta2");
  rule(o.eps > 0 && std::isfinite(o.eps), "eps");
  rule(o.weight_decay >= 0 && std::isfinite(o.weight_decay), "weight_decay");
  rule(o.warmup_steps >= 0 && o.warmup_steps <= t.train_steps, "warmup_steps");
  // The training program's rule: a decay needs a step after the warm-up.
  rule(o.decay == LrDecay::constant || o.warmup_steps < (o.decay_steps ? o.decay_steps : t.train_steps),
       "decay horizon > warmup_steps");
  rule(o.decay_steps >= 0 && o.decay_steps <= kMax && (o.decay_steps == 0 || o.warmup_steps <= o.decay_steps),
       "decay_steps");
  rule(t.grad_clip >= 0 && std::isfinite(t.grad_clip), "grad_clip");
  return v;
}

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& s : v) out += s + "; ";
  return out;
}

// ---- mutations -------------------------------------------------------------

Json randomValue(Rng& rng) {
  static const std::vector<Json> pool = {
      "x", "", "1", "NaN", "Infinity", "-inf", "rope", "swiglu", "interleaved", "gpipe", "post",
      "rmsnorm", "fp16", "linear", "full", "bert", "llama", "adamw", true, false, nullptr,
      Json::array(), Json::object(), Json::array({1, 2}), Json::object({{"a", 1}}), 0, -1, 1, 2, 3, 4, 8,
      -1000000, kMax, kMax + 1, int64_t(1) << 41, INT64_MAX, INT64_MIN, UINT64_MAX, 1e300, -1e300,
      1e-300, 0.5, -0.5, 1.5, 1e-5, 0.999, 1.0, 2.0, 3.0000001, 1e16, -0.0};
  switch (pick(rng, 3)) {
    case 0: return pool[pick(rng, pool.size())];
    case 1: return std::uniform_int_distribution<int64_t>(-4, 130)(rng);
    default: return std::uniform_real_distribution<double>(-2, 2)(rng);
  }
}

std::string randomKey(Rng& rng, const std::string& near) {
  static const std::vector<std::string> pool = {
      "", "x", "num_head", "tp", "model", "n_head", "num_attention_heads", "seq_len", "lr_decay_style",
      "Hidden_Size", "n\xc3\xa9\xc3\xa9", "a\"b", "\t", "tensor_model_parallel_size", "optimizer"};
  if (near.empty() || chance(rng, 0.4)) return pool[pick(rng, pool.size())];
  std::string k = near;  // a typo of a real key
  size_t i = pick(rng, k.size());
  switch (pick(rng, 3)) {
    case 0: k.erase(i, 1); break;
    case 1: k.insert(i, 1, char('a' + pick(rng, 26))); break;
    default:
      if (i + 1 < k.size()) std::swap(k[i], k[i + 1]);
      else k += "s";
  }
  return k;
}

// Every JSON pointer to a value in `j` (the root excluded).
void collect(const Json& j, const Json::json_pointer& at, std::vector<Json::json_pointer>& out) {
  if (j.is_object()) {
    for (const auto& item : j.items()) {
      out.push_back(at / item.key());
      collect(item.value(), at / item.key(), out);
    }
  } else if (j.is_array()) {
    for (size_t i = 0; i < j.size(); ++i) out.push_back(at / i);
  }
}

void mutateJson(Json& root, Rng& rng) {
  std::vector<Json::json_pointer> ptrs;
  collect(root, Json::json_pointer(), ptrs);
  if (ptrs.empty()) return;
  Json::json_pointer ptr = ptrs[pick(rng, ptrs.size())];
  Json& parent = root.at(ptr.parent_pointer());
  std::string key = ptr.back();
  switch (pick(rng, 5)) {
    case 0:  // delete the key
      if (parent.is_object()) parent.erase(key);
      break;
    case 1:
    case 2:  // another value, often of another type
      root.at(ptr) = randomValue(rng);
      break;
    case 3: {  // an unknown (often misspelled) key
      Json& obj = root.at(ptr).is_object() ? root.at(ptr) : parent;
      if (obj.is_object()) obj[randomKey(rng, key)] = randomValue(rng);
      break;
    }
    default: {  // scale a number
      Json& v = root.at(ptr);
      if (v.is_number_integer()) v = v.get<int64_t>() * int64_t(pick(rng, 5)) - int64_t(pick(rng, 3));
      else if (v.is_number()) v = v.get<double>() * std::uniform_real_distribution<double>(-3, 3)(rng);
      else v = randomValue(rng);
    }
  }
}

void mutateText(std::string& text, Rng& rng) {
  if (text.empty()) return;
  size_t at = pick(rng, text.size());
  switch (pick(rng, 5)) {
    case 0: text.resize(at); break;  // truncate
    case 1:
      for (int i = 0, n = 1 + int(pick(rng, 4)); i < n; ++i) text[pick(rng, text.size())] ^= char(1 << pick(rng, 8));
      break;
    case 2: {
      static const char bytes[] = {'{', '}', '[', ']', '"', ',', ':', '\0', '\xff', '\\', '/', '*', '-', 'e', '9'};
      text.insert(at, 1, bytes[pick(rng, sizeof bytes)]);
      break;
    }
    case 3: text.erase(at, pick(rng, 40)); break;
    default: text.insert(at, text.substr(pick(rng, text.size()), pick(rng, 40)));
  }
}

Overrides randomOverrides(Rng& rng) {
  Overrides o;
  auto maybe = [&](std::optional<int64_t>& f, std::initializer_list<int64_t> values) {
    if (chance(rng, 0.3)) f = *(values.begin() + pick(rng, values.size()));
  };
  maybe(o.tp, {-1, 0, 1, 2, 3, 4, 8});
  maybe(o.pp, {0, 1, 2, 4});
  maybe(o.dp, {1, 2, 3, 4, kMax});
  maybe(o.micro_batch_size, {0, 1, 2, 4, 8});
  maybe(o.global_batch_size, {0, 8, 16, 64, 100});
  maybe(o.train_steps, {0, 1, 10, 1000});
  if (chance(rng, 0.3)) o.sp = chance(rng, 0.5);
  if (chance(rng, 0.3)) o.recompute = chance(rng, 0.5) ? Recompute::full : Recompute::none;
  return o;
}

// ---- the property ------------------------------------------------------------

struct Counts {
  int accepted = 0, rejected = 0, overrides_accepted = 0, overrides_rejected = 0;
};

void expectExplained(const std::vector<Diagnostic>& diags, const std::string& text) {
  ASSERT_FALSE(diags.empty()) << text;
  for (const Diagnostic& d : diags) {
    EXPECT_FALSE(d.message.empty()) << "empty message at '" << d.path << "' for:\n" << text;
    EXPECT_EQ(d.message.find('\n'), std::string::npos) << d.message;
  }
  std::string lines = formatDiagnostics("f.json", diags);
  EXPECT_EQ(size_t(std::count(lines.begin(), lines.end(), '\n')), diags.size());
}

void check(const std::string& text, Rng& rng, Counts& counts) {
  std::vector<Diagnostic> diags;
  std::optional<Spec> spec;
  ASSERT_NO_THROW(spec = parseSpec(text, diags));
  if (!spec) {
    ++counts.rejected;
    expectExplained(diags, text);
    return;
  }
  ++counts.accepted;
  EXPECT_TRUE(diags.empty());
  EXPECT_TRUE(violations(*spec).empty()) << joined(violations(*spec)) << "\n" << text;

  Spec plain = *spec;
  EXPECT_TRUE(applyOverridesAndValidate(plain, Overrides{}, diags)) << formatDiagnostics("f", diags);
  EXPECT_GT(plain.training.global_batch_size, 0);

  Spec over = *spec;
  std::vector<Diagnostic> odiags;
  bool ok = false;
  ASSERT_NO_THROW(ok = applyOverridesAndValidate(over, randomOverrides(rng), odiags));
  if (ok) {
    ++counts.overrides_accepted;
    EXPECT_TRUE(odiags.empty());
    EXPECT_TRUE(violations(over).empty()) << joined(violations(over)) << "\n" << text;
  } else {
    ++counts.overrides_rejected;
    expectExplained(odiags, text);
    for (const Diagnostic& d : odiags) EXPECT_FALSE(d.path.empty()) << d.message;
  }
}

TEST(SpecFuzz, MutatedExamplesNeverCrashAndRejectionsExplainThemselves) {
  std::vector<std::string> texts;
  for (const auto& entry : std::filesystem::directory_iterator(MTC_EXAMPLES_DIR)) {
    if (entry.path().extension() != ".json") continue;
    std::ifstream in(entry.path());
    std::stringstream ss;
    ss << in.rdbuf();
    texts.push_back(ss.str());
  }
  ASSERT_GE(texts.size(), 7u);

  Rng rng(0x5eed5eedu);
  Counts counts;
  const int kPerExample = 600;
  for (const std::string& original : texts) {
    Json json = Json::parse(original);
    for (int i = 0; i < kPerExample; ++i) {
      Json j = json;
      for (int n = int(pick(rng, 4)); n > 0; --n) mutateJson(j, rng);
      std::string text = j.dump(chance(rng, 0.5) ? 2 : -1);
      if (chance(rng, 0.35)) mutateText(text, rng);
      check(text, rng, counts);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  // Both sides of every decision were exercised.
  EXPECT_GT(counts.accepted, 200);
  EXPECT_GT(counts.rejected, 1000);
  EXPECT_GT(counts.overrides_accepted, 50);
  EXPECT_GT(counts.overrides_rejected, 50);
  std::printf("accepted %d, rejected %d; with overrides: accepted %d, rejected %d\n", counts.accepted,
              counts.rejected, counts.overrides_accepted, counts.overrides_rejected);
}

TEST(SpecFuzz, RandomBytesNeverCrash) {
  Rng rng(7);
  for (int i = 0; i < 2000; ++i) {
    std::string text(pick(rng, 64), '\0');
    for (char& c : text) c = char(pick(rng, 256));
    if (i % 2) text = "{\"model\": " + text;
    std::vector<Diagnostic> diags;
    std::optional<Spec> spec;
    ASSERT_NO_THROW(spec = parseSpec(text, diags));
    ASSERT_FALSE(spec.has_value());
    expectExplained(diags, text);
  }
}

}  // namespace
}  // namespace mtc::spec
