// A hand-written SPMD program for the multi-rank trainer tests: the tiny
// bigram model of train_test_support.h (same parameter names, global shapes,
// initialization and AdamW), written for a grid of dp x tp ranks with the
// collectives of HostState::comm, and helpers to run train_main as the ranks
// of one job in forked processes (comm_test_support.h).
//
// Tensor parallelism (T = grid tp, r = this rank's tp index, Dl = D / T,
// Vl = V / T); every rank holds
//   wte          (V, Dl)   split_dim 1: columns [r*Dl, (r+1)*Dl) of (V, D)
//   head.weight  (Vl, D)   split_dim 0: rows [r*Vl, (r+1)*Vl) of (V, D)
//   head.bias    (V)       whole (replicated)
// Forward, for the T = B*S positions of a microbatch:
//   h_r = wte_r[token]                       (T, Dl)
//   h = all_gather_tp(h_r), columns by rank  (T, D)
//   z_r = h head.weight_r^T                  (T, Vl)
//   z = all_gather_tp(z_r) + head.bias       (T, V)
//   loss = mean_t logsumexp(z_t) - z_t[target_t]
// Backward (dz = (softmax(z) - onehot) / T, the same on every tp rank):
//   d head.bias += sum_t dz                  (every rank, whole)
//   d head.weight_r += dz[:, r's rows]^T h
//   dh = all_reduce_sum_tp(dz[:, r's rows] head.weight_r)
//   d wte_r[token] += dh[:, r's columns]
// Optimizer: gradients averaged over dp (all_reduce_sum / dp, what the
// compiler's optimizer step does), the global norm of g / M (split tensors'
// squares summed over tp, the bias once), clipping to 1, then the same AdamW
// as tiny::optimizer_step (M = microbatches per rank).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <algorithm>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm_test_support.h"
#include "mtc/rt/program.h"
#include "mtc/rt/safetensors.h"
#include "train_test_support.h"

namespace mtc::rt::testing::sharded {

using tiny::kB;
using tiny::kD;
using tiny::kS;
using tiny::kT;
using tiny::kV;

struct Layout {
  int64_t tp = 1, r = 0;  // tp ranks, this rank's index
  int64_t dl() const { return kD / tp; }
  int64_t vl() const { return kV / tp; }
  int64_t wte() const { return 0; }
  int64_t head_w() const { return kV * dl(); }
  int64_t head_b() const { return kV * dl() + vl() * kD; }
  int64_t total() const { return head_b() + kV; }
};

inline Layout layout_of(const HostState& s) {
  Layout l;
  if (s.comm != nullptr) {
    l.tp = s.comm->size(2);
    l.r = s.comm->index(2);
  }
  return l;
}

// out (T, parts * n_each) from a gather of (parts, T, n_each) blocks. The
// activations are host vectors: only tp > 1 gathers them through the comm
// (a device backend's comm takes program memory only, backend_test_pool.h).
inline void gather_columns(HostState& s, const std::vector<float>& mine, int64_t n_each,
                           std::vector<float>& out) {
  const Layout l = layout_of(s);
  out.assign(static_cast<size_t>(kT * l.tp * n_each), 0.0f);
  std::vector<float> all(static_cast<size_t>(l.tp * kT * n_each));
  if (l.tp > 1) s.comm->all_gather(2, mine.data(), all.data(), kT * n_each);
  else all = mine;
  for (int64_t q = 0; q < l.tp; ++q)
    for (int64_t t = 0; t < kT; ++t)
      for (int64_t j = 0; j < n_each; ++j)
        out[t * l.tp * n_each + q * n_each + j] = all[(q * kT + t) * n_each + j];
}

inline float forward(HostState& s, const int32_t* tokens, const int32_t* targets,
                     bool backward) {
  const Layout l = layout_of(s);
  const int64_t dl = l.dl(), vl = l.vl();
  const float* wte = s.params + l.wte();
  const float* w = s.params + l.head_w();
  const float* b = s.params + l.head_b();
  for (int64_t t = 0; t < kT; ++t)
    for (const int32_t* ids : {tokens, targets})
      if (ids[t] < 0 || ids[t] >= kV) {
        s.error = "token " + std::to_string(ids[t]) + " at position " + std::to_string(t) +
                  " is outside the vocabulary [0, 16)";
        return std::numeric_limits<float>::quiet_NaN();
      }
  std::vector<float> h_r(static_cast<size_t>(kT * dl)), h, z_r(static_cast<size_t>(kT * vl)), z;
  for (int64_t t = 0; t < kT; ++t)
    for (int64_t d = 0; d < dl; ++d) h_r[t * dl + d] = wte[tokens[t] * dl + d];
  gather_columns(s, h_r, dl, h);
  for (int64_t t = 0; t < kT; ++t)
    for (int64_t v = 0; v < vl; ++v) {
      float acc = 0;
      for (int64_t d = 0; d < kD; ++d) acc += w[v * kD + d] * h[t * kD + d];
      z_r[t * vl + v] = acc;
    }
  gather_columns(s, z_r, vl, z);
  double loss = 0;
  std::vector<float> dz(static_cast<size_t>(kT * kV));
  for (int64_t t = 0; t < kT; ++t) {
    float* zt = z.data() + t * kV;
    float mx = -1e30f;
    for (int64_t v = 0; v < kV; ++v) {
      zt[v] += b[v];
      mx = std::max(mx, zt[v]);
    }
    double sum = 0;
    for (int64_t v = 0; v < kV; ++v) sum += std::exp(double(zt[v]) - mx);
    loss += std::log(sum) + mx - zt[targets[t]];
    for (int64_t v = 0; v < kV; ++v)
      dz[t * kV + v] = static_cast<float>(
          (std::exp(double(zt[v]) - mx) / sum - (v == targets[t] ? 1.0 : 0.0)) / kT);
  }
  if (!backward) return static_cast<float>(loss / kT);
  float* gwte = s.grads + l.wte();
  float* gw = s.grads + l.head_w();
  float* gb = s.grads + l.head_b();
  std::vector<float> dh(static_cast<size_t>(kT * kD), 0.0f);
  for (int64_t t = 0; t < kT; ++t) {
    for (int64_t v = 0; v < kV; ++v) gb[v] += dz[t * kV + v];
    for (int64_t v = 0; v < vl; ++v) {
      const float g = dz[t * kV + l.r * vl + v];
      for (int64_t d = 0; d < kD; ++d) {
        gw[v * kD + d] += g * h[t * kD + d];
        dh[t * kD + d] += g * w[v * kD + d];
      }
    }
  }
  if (l.tp > 1) s.comm->all_reduce_sum(2, dh.data(), kT * kD);
  for (int64_t t = 0; t < kT; ++t)
    for (int64_t d = 0; d < dl; ++d) gwte[tokens[t] * dl + d] += dh[t * kD + l.r * dl + d];
  return static_cast<float>(loss / kT);
}

inline float forward_loss(HostState& s, const int32_t* tok, const int32_t* tgt) {
  return forward(s, tok, tgt, false);
}
inline float forward_backward(HostState& s, const int32_t* tok, const int32_t* tgt) {
  return forward(s, tok, tgt, true);
}

// The mean of the gradients over the data-parallel ranks.
inline void mean_over_dp(HostState& s) {
  if (s.comm == nullptr || s.comm->size(1) <= 1) return;
  const int64_t n = layout_of(s).total();
  s.comm->all_reduce_sum(1, s.grads, n);
  const float inv = 1.0f / static_cast<float>(s.comm->size(1));
  for (int64_t i = 0; i < n; ++i) s.grads[i] *= inv;
}

// Like the CUDA programs' gradient buckets: the dp mean inside the last
// microbatch's backward pass (ProgramDesc::grads_summed_in_backward).
template <int M>
float forward_backward_summed(HostState& s, const int32_t* tok, const int32_t* tgt) {
  const float loss = forward(s, tok, tgt, true);
  if (s.microbatch == M - 1) mean_over_dp(s);
  return loss;
}

template <int M, bool SummedInBackward = false>
double optimizer_step(HostState& s, float lr, int64_t step) {
  const Layout l = layout_of(s);
  const int64_t n = l.total();
  if (!SummedInBackward) mean_over_dp(s);
  const double b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, clip = 1.0;
  double split_sq = 0, whole_sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double g = s.grads[i] / double(M);
    (i < l.head_b() ? split_sq : whole_sq) += g * g;
  }
  if (s.comm != nullptr && l.tp > 1) {
    float x = static_cast<float>(split_sq);
    s.comm->all_reduce_sum(2, &x, 1);
    split_sq = x;
  }
  const double norm = std::sqrt(split_sq + whole_sq);
  const double scale = (norm > clip ? clip / (norm + 1e-6) : 1.0) / M;
  for (int64_t i = 0; i < n; ++i) {
    const double g = s.grads[i] * scale;
    const double mi = b1 * s.exp_avg[i] + (1 - b1) * g;
    const double vi = b2 * s.exp_avg_sq[i] + (1 - b2) * g * g;
    s.exp_avg[i] = static_cast<float>(mi);
    s.exp_avg_sq[i] = static_cast<float>(vi);
    const double mhat = mi / (1 - std::pow(b1, double(step)));
    const double vhat = vi / (1 - std::pow(b2, double(step)));
    const double decay = i < l.head_b() ? wd : 0.0;
    s.params[i] -=
        static_cast<float>(lr * (mhat / (std::sqrt(vhat) + eps) + decay * s.params[i]));
  }
  return norm;
}

// The program compiled for grid {1, dp, tp} with M microbatches of kB rows
// per rank (global batch kB * M * dp), training config as tiny::program();
// summed_in_backward: the dp mean in the last microbatch's backward pass.
template <int M>
ProgramDesc program(int64_t dp, int64_t tp, bool summed_in_backward = false) {
  ProgramDesc p = tiny::program();
  p.model_name = "tiny-linear-softmax";
  Layout l;
  l.tp = tp;
  p.params = {
      {"wte", {kV, kD}, l.wte(), kV * l.dl(), InitKind::normal, 0.5, true, 1, 2},
      {"head.weight", {kV, kD}, l.head_w(), l.vl() * kD, InitKind::normal, 0.5, true, 0, 2},
      {"head.bias", {kV}, l.head_b(), kV, InitKind::zeros, 0.0, false},
  };
  p.num_param_elems = l.total();
  p.grid[1] = dp;
  p.grid[2] = tp;
  p.train.num_microbatches = M;
  p.train.global_batch = kB * M * dp;
  p.forward_loss = &forward_loss;
  p.forward_backward = &forward_backward;
  p.optimizer_step = &optimizer_step<M>;
  if (summed_in_backward) {
    p.forward_backward = &forward_backward_summed<M>;
    p.optimizer_step = &optimizer_step<M, true>;
    p.grads_summed_in_backward = true;
  }
  return p;
}

// ---------------------------------------------------------------------------
// Running a job

struct Job {
  std::vector<RankResult> ranks;
  std::vector<std::string> out;  // each rank's stdout
};

// body(rank) (its exit status) as `n` ranks meeting through a fresh
// directory; each rank's stdout and stderr are kept. Collectives time out
// after 60 s (a hang fails the test instead of stalling it).
inline Job run_job_with(int n, const std::function<int(int rank)>& body, double deadline_s = 90) {
  const std::string logs = unique_dir("job-out");
  RunOptions opt;
  opt.deadline_s = deadline_s;
  opt.rdzv_dir = unique_dir("job-rdzv");
  opt.env = {{"MTC_COLLECTIVE_TIMEOUT", "60"}, {"MTC_RDZV_TIMEOUT", "60"}};
  Job job;
  job.ranks = run_ranks(
      n,
      [&](int rank) {
        std::string out = logs + "/rank" + std::to_string(rank) + ".out";
        if (std::freopen(out.c_str(), "w", stdout) == nullptr) return 121;
        return body(rank);
      },
      opt);
  for (int r = 0; r < n; ++r) job.out.push_back(slurp(logs + "/rank" + std::to_string(r) + ".out"));
  return job;
}

// train_main(program, args_of(rank)) as the ranks of one job (run_job_with).
inline Job run_job(int n, const ProgramDesc& program,
                   const std::function<std::vector<std::string>(int rank)>& args_of,
                   double deadline_s = 90) {
  return run_job_with(n, [&](int rank) { return run_train(program, args_of(rank)); }, deadline_s);
}

// Every rank with the same arguments.
inline Job run_job(int n, const ProgramDesc& program, const std::vector<std::string>& args,
                   double deadline_s = 90) {
  return run_job(n, program, [&](int) { return args; }, deadline_s);
}

// ---------------------------------------------------------------------------
// Checks shared by the multi-rank tests (multirank_test.cpp on the host
// backend, backend_multirank_test.cpp on the stand-in device backend).
// ---------------------------------------------------------------------------

// Every rank exited 0 and only rank 0 printed.
inline void expect_ok(const Job& job) {
  expect_all_ok(job.ranks);
  for (size_t r = 1; r < job.out.size(); ++r)
    EXPECT_EQ(job.out[r], "") << "rank " << r << " printed";
}

// A run on data with token 99 (outside the vocabulary) on one rank: every
// rank exited 1 without hanging, one named the bad token and the step,
// the others stopped because of it, and `ckpt_dir` holds no checkpoint.
inline void expect_data_error_stops_every_rank(const Job& job, const std::string& ckpt_dir) {
  int reported = 0;
  for (size_t r = 0; r < job.ranks.size(); ++r) {
    const auto& res = job.ranks[r];
    EXPECT_FALSE(res.timed_out) << "rank " << r << " hung:\n" << res.err;
    EXPECT_EQ(res.exit_code, 1) << res.err;
    if (res.err.find("token id 99 is outside the vocabulary") != std::string::npos) {
      ++reported;
      EXPECT_NE(res.err.find("training step "), std::string::npos) << res.err;
    } else {
      EXPECT_NE(res.err.find("stopping because rank " + std::to_string(1 - r) +
                             " failed (see its error)"),
                std::string::npos)
          << res.err;
    }
  }
  EXPECT_GE(reported, 1);
  EXPECT_FALSE(std::filesystem::exists(ckpt_dir + "/latest"));
}

// |a - b| <= rel * |a| element by element, same length, not empty.
inline void expect_close(const std::vector<double>& a, const std::vector<double>& b, double rel,
                         const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  ASSERT_FALSE(a.empty()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(a[i], b[i], rel * std::abs(a[i])) << what << " [" << i << "]";
}

inline std::vector<float> tensor(const SafetensorsReader& f, const std::string& name) {
  std::vector<float> x(static_cast<size_t>(shape_numel(f.info(name).shape)));
  f.read_f32(name, x.data(), static_cast<int64_t>(x.size()));
  return x;
}

// Every F32 tensor of two files: same names and shapes, |a - b| <= tol *
// max|a| (+ 1e-30: all-zero tensors must match exactly); tol 0 = bitwise.
inline void expect_same_tensors(const std::string& a_path, const std::string& b_path,
                                double tol) {
  SafetensorsReader a(a_path), b(b_path);
  ASSERT_EQ(a.tensors().size(), b.tensors().size()) << a_path << " vs " << b_path;
  for (const auto& [name, info] : a.tensors()) {
    ASSERT_TRUE(b.has(name)) << name;
    ASSERT_EQ(info.shape, b.info(name).shape) << name;
    if (info.dtype != "F32") continue;
    std::vector<float> x = tensor(a, name), y = tensor(b, name);
    if (tol == 0) {
      EXPECT_EQ(x, y) << name;
      continue;
    }
    double scale = 0;
    for (float v : x) scale = std::max(scale, double(std::abs(v)));
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_NEAR(x[i], y[i], tol * scale + 1e-30) << name << " [" << i << "]";
  }
}

}  // namespace mtc::rt::testing::sharded
