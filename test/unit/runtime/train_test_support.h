// Helpers for the runtime's data/checkpoint/trainer tests: scratch
// directories, running train_main with a vector of arguments, reading JSONL
// metrics, and a tiny hand-written program.
//
// The tiny program ("tiny-linear-softmax") is a bigram model written in
// plain C++ with the host kernels' semantics (fp32, gradients accumulated
// into state.grads, optimizer scaling by 1/num_microbatches inside):
//   h = wte[token]                 wte (V, D)           h (T, D)
//   logits = h head.weight^T + head.bias                logits (T, V)
//   loss = mean_t cross_entropy(logits_t, target_t)
// and AdamW (PyTorch's, decoupled weight decay on wte and head.weight, the
// moments in state.exp_avg / exp_avg_sq) with global-norm clipping.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "mtc/rt/data.h"
#include "mtc/rt/program.h"
#include "mtc/rt/trainer.h"

namespace mtc::rt::testing {

// A fresh, empty directory under the build tree's test scratch space.
inline std::string scratch_dir(const std::string& name) {
  std::filesystem::path p = std::filesystem::path(MTC_TEST_TMPDIR) / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline int run_train(const ProgramDesc& program, std::vector<std::string> args) {
  args.insert(args.begin(), "tiny-train");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return train_main(static_cast<int>(args.size()), argv.data(), program);
}

inline std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

// rows[i][key] for the rows that have it (a metrics file's column).
inline std::vector<double> column(const std::vector<nlohmann::json>& rows, const char* key) {
  std::vector<double> out;
  for (const auto& r : rows)
    if (r.contains(key)) out.push_back(r[key].get<double>());
  return out;
}

// ---------------------------------------------------------------------------
// The tiny program
// ---------------------------------------------------------------------------

namespace tiny {

inline constexpr int64_t kV = 16, kD = 8, kB = 2, kS = 8, kMicro = 2;
inline constexpr int64_t kT = kB * kS;
// Parameter layout: wte (V, D) | head.weight (V, D) | head.bias (V).
inline constexpr int64_t kWte = 0, kHeadW = kV * kD, kHeadB = 2 * kV * kD;
inline constexpr int64_t kNumParams = 2 * kV * kD + kV;

// Mean cross-entropy of one microbatch; if `grads`, adds its gradient.
// logits live in the arena (T, V). Returns NaN and sets state.error on a
// token outside [0, V).
inline float forward(HostState& state, const int32_t* tokens,
                     const int32_t* targets, bool backward) {
  const float* p = state.params;
  float* logits = state.arena;  // (T, V)
  for (int64_t t = 0; t < kT; ++t) {
    for (const int32_t* ids : {tokens, targets})
      if (ids[t] < 0 || ids[t] >= kV) {
        state.error = "token " + std::to_string(ids[t]) + " at position " +
                      std::to_string(t) + " is outside the vocabulary [0, 16)";
        return std::numeric_limits<float>::quiet_NaN();
      }
  }
  double loss = 0;
  for (int64_t t = 0; t < kT; ++t) {
    const float* h = p + kWte + tokens[t] * kD;
    float* z = logits + t * kV;
    float mx = -1e30f;
    for (int64_t v = 0; v < kV; ++v) {
      float acc = p[kHeadB + v];
      for (int64_t d = 0; d < kD; ++d) acc += p[kHeadW + v * kD + d] * h[d];
      z[v] = acc;
      mx = std::max(mx, acc);
    }
    double sum = 0;
    for (int64_t v = 0; v < kV; ++v) sum += std::exp(double(z[v]) - mx);
    loss += std::log(sum) + mx - z[targets[t]];
    if (!backward) continue;
    float dh[kD] = {};
    for (int64_t v = 0; v < kV; ++v) {
      float dz = static_cast<float>((std::exp(double(z[v]) - mx) / sum -
                                     (v == targets[t] ? 1.0 : 0.0)) / kT);
      state.grads[kHeadB + v] += dz;
      for (int64_t d = 0; d < kD; ++d) {
        state.grads[kHeadW + v * kD + d] += dz * h[d];
        dh[d] += dz * p[kHeadW + v * kD + d];
      }
    }
    for (int64_t d = 0; d < kD; ++d) state.grads[kWte + tokens[t] * kD + d] += dh[d];
  }
  return static_cast<float>(loss / kT);
}

inline float forward_loss(HostState& s, const int32_t* tok, const int32_t* tgt) {
  return forward(s, tok, tgt, false);
}
inline float forward_backward(HostState& s, const int32_t* tok, const int32_t* tgt) {
  return forward(s, tok, tgt, true);
}

inline double optimizer_step(HostState& state, float lr, int64_t step) {
  const double b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, clip = 1.0;
  double sq = 0;
  for (int64_t i = 0; i < kNumParams; ++i) {
    double g = state.grads[i] / double(kMicro);
    sq += g * g;
  }
  const double norm = std::sqrt(sq);
  const double scale = (norm > clip ? clip / (norm + 1e-6) : 1.0) / kMicro;
  float* m = state.exp_avg;
  float* v = state.exp_avg_sq;
  for (int64_t i = 0; i < kNumParams; ++i) {
    const double g = state.grads[i] * scale;
    const double mi = b1 * m[i] + (1 - b1) * g, vi = b2 * v[i] + (1 - b2) * g * g;
    m[i] = static_cast<float>(mi);
    v[i] = static_cast<float>(vi);
    const double mhat = mi / (1 - std::pow(b1, double(step)));
    const double vhat = vi / (1 - std::pow(b2, double(step)));
    const double decay = i < kHeadB ? wd : 0.0;
    state.params[i] -= static_cast<float>(
        lr * (mhat / (std::sqrt(vhat) + eps) + decay * state.params[i]));
  }
  return norm;
}

inline ProgramDesc program() {
  ProgramDesc p;
  p.model_name = "tiny-linear-softmax";
  p.target = "host";
  p.params = {
      {"wte", {kV, kD}, kWte, kV * kD, InitKind::normal, 0.5, true},
      {"head.weight", {kV, kD}, kHeadW, kV * kD, InitKind::normal, 0.5, true},
      {"head.bias", {kV}, kHeadB, kV, InitKind::zeros, 0.0, false},
  };
  p.num_param_elems = kNumParams;
  p.arena_floats = kT * kV;
  p.flops_per_step = 6.0 * kNumParams * kT * kMicro;
  p.train.micro_batch = kB;
  p.train.seq_length = kS;
  p.train.vocab_size = kV;
  p.train.num_microbatches = kMicro;
  p.train.global_batch = kB * kMicro;
  p.train.train_steps = 20;
  p.train.lr = 3e-2;
  p.train.min_lr = 3e-3;
  p.train.warmup_steps = 3;
  p.train.decay_steps = 0;
  p.train.decay = LrDecay::cosine;
  p.train.seed = 7;
  p.forward_loss = &forward_loss;
  p.forward_backward = &forward_backward;
  p.optimizer_step = &optimizer_step;
  return p;
}

// A learnable corpus: documents walking t -> (3 t + 1) mod 16, with every
// 7th step replaced by (t + 5) mod 16; `bad_token`, if >= 0, is planted in
// document 3.
inline void write_corpus(const std::string& prefix, int64_t num_docs,
                         int32_t bad_token = -1) {
  IndexedDatasetWriter w(prefix, optimal_token_dtype(kV));
  for (int64_t d = 0; d < num_docs; ++d) {
    std::vector<int32_t> doc;
    int32_t t = static_cast<int32_t>(d % kV);
    int64_t len = 20 + (d * 13) % 41;
    for (int64_t i = 0; i < len; ++i) {
      doc.push_back(t);
      t = (i % 7 == 6) ? (t + 5) % kV : (3 * t + 1) % kV;
    }
    if (d == 3 && bad_token >= 0) doc[5] = bad_token;
    w.add_document(doc);
  }
  w.finalize();
}

}  // namespace tiny

}  // namespace mtc::rt::testing
