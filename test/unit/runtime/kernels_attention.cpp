// Tests of the host attention core and rotary embedding on the grouped fused
// QKV layout: forward (out and lse) against a naive double-precision
// attention with full score matrices, for MHA, GQA (H=4 with KV=2 and KV=1),
// causal and bidirectional, with padding masks and queries that see no key;
// backward against finite differences of the kernel and of the reference; rope against a direct rotation, its
// inverse, and its gradient.
#include <limits>

#include "kernels_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::host::test {
namespace {

struct Shape {
  int64_t b, s, h, kv, dh;
  bool causal, masked;
  int64_t width() const { return (h + 2 * kv) * dh; }
  int64_t numel() const { return b * s * width(); }
  std::string str() const {
    return "B=" + std::to_string(b) + " S=" + std::to_string(s) + " H=" + std::to_string(h) +
           " KV=" + std::to_string(kv) + " Dh=" + std::to_string(dh) +
           (causal ? " causal" : " bidirectional") + (masked ? " masked" : "");
  }
};

// Column of slot `slot` of group g in a token's row: each group holds R query
// heads then k then v.
int64_t slot_column(const Shape& sh, int64_t g, int64_t slot) {
  const int64_t r = sh.h / sh.kv;
  return (g * (r + 2) + slot) * sh.dh;
}
int64_t q_index(const Shape& sh, int64_t b, int64_t s, int64_t head, int64_t c) {
  const int64_t r = sh.h / sh.kv;
  return (b * sh.s + s) * sh.width() + slot_column(sh, head / r, head % r) + c;
}
int64_t k_index(const Shape& sh, int64_t b, int64_t s, int64_t g, int64_t c) {
  return (b * sh.s + s) * sh.width() + slot_column(sh, g, sh.h / sh.kv) + c;
}
int64_t v_index(const Shape& sh, int64_t b, int64_t s, int64_t g, int64_t c) {
  return (b * sh.s + s) * sh.width() + slot_column(sh, g, sh.h / sh.kv + 1) + c;
}

// Naive attention: out (B, S, H*Dh) and lse (B, H, S) in double.
template <typename T>
void attention_ref(const Shape& sh, const std::vector<T>& qkv, const std::vector<int32_t>& mask,
                   double scale, std::vector<double>& out, std::vector<double>& lse) {
  const double inf = std::numeric_limits<double>::infinity();
  out.assign(sh.b * sh.s * sh.h * sh.dh, 0.0);
  lse.assign(sh.b * sh.h * sh.s, 0.0);
  for (int64_t b = 0; b < sh.b; ++b)
    for (int64_t head = 0; head < sh.h; ++head) {
      const int64_t g = head * sh.kv / sh.h;
      std::vector<double> scores(sh.s * sh.s, -inf);  // (S, S)
      for (int64_t i = 0; i < sh.s; ++i)
        for (int64_t j = 0; j < sh.s; ++j) {
          if (sh.causal && j > i) continue;
          if (sh.masked && mask[b * sh.s + j] == 0) continue;
          double acc = 0;
          for (int64_t c = 0; c < sh.dh; ++c)
            acc += double(qkv[q_index(sh, b, i, head, c)]) * qkv[k_index(sh, b, j, g, c)];
          scores[i * sh.s + j] = acc * scale;
        }
      for (int64_t i = 0; i < sh.s; ++i) {
        double mx = -inf;
        for (int64_t j = 0; j < sh.s; ++j) mx = std::max(mx, scores[i * sh.s + j]);
        double& l = lse[(b * sh.h + head) * sh.s + i];
        if (mx == -inf) {
          l = -inf;
          continue;
        }
        double z = 0;
        for (int64_t j = 0; j < sh.s; ++j) z += std::exp(scores[i * sh.s + j] - mx);
        l = mx + std::log(z);
        for (int64_t j = 0; j < sh.s; ++j) {
          const double p = std::exp(scores[i * sh.s + j] - l);
          for (int64_t c = 0; c < sh.dh; ++c)
            out[((b * sh.s + i) * sh.h + head) * sh.dh + c] += p * qkv[v_index(sh, b, j, g, c)];
        }
      }
    }
}

// A padding mask with zeros, including key 0 of batch 0 (so under the causal
// mask query 0 of batch 0 sees no key).
std::vector<int32_t> make_mask(const Shape& sh, Rng& rng) {
  std::vector<int32_t> mask(sh.b * sh.s);
  for (auto& m : mask) m = rng.integer(0, 3) != 0;
  mask[0] = 0;
  mask[sh.s - 1] = 1;
  return mask;
}

TEST(KernelAttention, ForwardMatchesNaiveAttention) {
  Rng rng(40);
  const std::vector<Shape> shapes = {
      {2, 7, 4, 2, 8, true, false},  {2, 7, 4, 1, 8, false, true}, {1, 5, 4, 4, 4, true, true},
      {3, 6, 4, 2, 6, false, false}, {2, 33, 2, 1, 16, true, true}, {1, 1, 3, 1, 5, false, false},
      {2, 9, 4, 1, 3, true, false},  {1, 96, 4, 2, 32, true, false}};
  for (const Shape& sh : shapes) {
    auto qkv = rng.uniform(sh.numel(), -2.0f, 2.0f);
    std::vector<int32_t> mask = sh.masked ? make_mask(sh, rng) : std::vector<int32_t>();
    const float scale = 1.0f / std::sqrt(float(sh.dh));
    std::vector<float> out(sh.b * sh.s * sh.h * sh.dh, 9.0f), lse(sh.b * sh.h * sh.s, 9.0f);
    attention_forward(qkv.data(), sh.masked ? mask.data() : nullptr, out.data(), lse.data(),
                      sh.b, sh.s, sh.h, sh.kv, sh.dh, sh.causal, scale);
    std::vector<double> out_ref, lse_ref;
    attention_ref(sh, qkv, mask, scale, out_ref, lse_ref);
    expect_near_all(out, out_ref, 1e-5, 1e-5, "out " + sh.str());
    // -inf == -inf compares as an exact match; finite values within tolerance.
    for (size_t i = 0; i < lse.size(); ++i) {
      if (std::isinf(lse_ref[i])) {
        EXPECT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "lse[" << i << "] " << sh.str();
      } else {
        EXPECT_NEAR(lse[i], lse_ref[i], 1e-5 * (1 + std::abs(lse_ref[i]))) << "lse " << sh.str();
      }
    }
  }
}

TEST(KernelAttention, QueryWithoutKeysGivesZeroAndMinusInfinity) {
  Rng rng(41);
  const Shape sh{1, 4, 2, 1, 4, false, true};
  auto qkv = rng.uniform(sh.numel());
  std::vector<int32_t> mask(sh.s, 0);  // every key is padding
  std::vector<float> out(sh.s * sh.h * sh.dh, 9.0f), lse(sh.h * sh.s, 9.0f);
  attention_forward(qkv.data(), mask.data(), out.data(), lse.data(), sh.b, sh.s, sh.h, sh.kv,
                    sh.dh, sh.causal, 0.5f);
  EXPECT_EQ(out, std::vector<float>(out.size(), 0.0f));
  for (float l : lse) EXPECT_EQ(l, -std::numeric_limits<float>::infinity());
}

TEST(KernelAttention, BackwardMatchesFiniteDifferences) {
  Rng rng(42);
  const std::vector<Shape> shapes = {{2, 5, 4, 2, 4, true, true},
                                     {1, 6, 4, 1, 4, false, true},
                                     {2, 4, 2, 2, 3, false, false},
                                     {1, 5, 4, 4, 2, true, false}};
  for (const Shape& sh : shapes) {
    auto qkv = rng.uniform(sh.numel(), -1.5f, 1.5f);
    std::vector<int32_t> mask = sh.masked ? make_mask(sh, rng) : std::vector<int32_t>();
    const int32_t* m = sh.masked ? mask.data() : nullptr;
    const float scale = 1.0f / std::sqrt(float(sh.dh));
    const int64_t n_out = sh.b * sh.s * sh.h * sh.dh;
    auto w = rng.uniform(n_out);
    std::vector<float> out(n_out), lse(sh.b * sh.h * sh.s), dqkv(sh.numel(), 9.0f);
    auto objective = [&] {
      attention_forward(qkv.data(), m, out.data(), lse.data(), sh.b, sh.s, sh.h, sh.kv, sh.dh,
                        sh.causal, scale);
      return weighted_sum(out, w);
    };
    objective();
    attention_backward(qkv.data(), m, out.data(), lse.data(), w.data(), dqkv.data(), sh.b, sh.s,
                       sh.h, sh.kv, sh.dh, sh.causal, scale);
    expect_gradient(dqkv, finite_difference(qkv, objective, 1e-2f), 1e-2, "dqkv " + sh.str());
    auto qkv_d = to_double(qkv);
    auto objective_d = [&] {
      std::vector<double> out_d, lse_d;
      attention_ref(sh, qkv_d, mask, scale, out_d, lse_d);
      return weighted_sum(out_d, w);
    };
    expect_gradient(dqkv, finite_difference(qkv_d, objective_d, 1e-6), 1e-4,
                    "dqkv (double) " + sh.str());
  }
}

// theta_c = pos * base^(-2c/Dh); (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
std::vector<double> rope_ref(const Shape& sh, const std::vector<float>& qkv, double base) {
  std::vector<double> out(qkv.begin(), qkv.end());
  const int64_t half = sh.dh / 2, r = sh.h / sh.kv;
  for (int64_t b = 0; b < sh.b; ++b)
    for (int64_t s = 0; s < sh.s; ++s)
      for (int64_t g = 0; g < sh.kv; ++g)
        for (int64_t slot = 0; slot <= r; ++slot)  // q heads and k; not v
          for (int64_t c = 0; c < half; ++c) {
            const double theta = s * std::pow(base, -2.0 * c / sh.dh);
            const int64_t i1 = (b * sh.s + s) * sh.width() + slot_column(sh, g, slot) + c;
            const int64_t i2 = i1 + half;
            out[i1] = qkv[i1] * std::cos(theta) - qkv[i2] * std::sin(theta);
            out[i2] = qkv[i2] * std::cos(theta) + qkv[i1] * std::sin(theta);
          }
  return out;
}

TEST(KernelRope, ForwardMatchesRotationAndCopiesV) {
  Rng rng(43);
  for (const Shape& sh : {Shape{2, 9, 4, 2, 8, false, false}, Shape{1, 17, 4, 1, 6, false, false},
                          Shape{3, 5, 2, 2, 2, false, false}}) {
    auto qkv = rng.uniform(sh.numel());
    std::vector<float> out(sh.numel());
    rope(qkv.data(), out.data(), sh.b, sh.s, sh.h, sh.kv, sh.dh, 10000.0f, false);
    expect_near_all(out, rope_ref(sh, qkv, 10000.0), 1e-6, 1e-6, "rope " + sh.str());
    for (int64_t b = 0; b < sh.b; ++b)
      for (int64_t s = 0; s < sh.s; ++s)
        for (int64_t g = 0; g < sh.kv; ++g)
          for (int64_t c = 0; c < sh.dh; ++c) {
            const int64_t i = v_index(sh, b, s, g, c);
            ASSERT_EQ(out[i], qkv[i]) << "v changed " << sh.str();
          }
  }
}

TEST(KernelRope, InverseUndoesForwardAlsoInPlace) {
  Rng rng(44);
  const Shape sh{2, 11, 4, 2, 8, false, false};
  auto qkv = rng.uniform(sh.numel());
  std::vector<float> y = qkv;
  rope(y.data(), y.data(), sh.b, sh.s, sh.h, sh.kv, sh.dh, 500.0f, false);  // in place
  rope(y.data(), y.data(), sh.b, sh.s, sh.h, sh.kv, sh.dh, 500.0f, true);
  expect_near_all(y, to_double(qkv), 0, 1e-6, "inverse(rope(x))");
}

// L = sum(w . rope(x)): dL/dx = rope_inverse(w).
TEST(KernelRope, InverseIsTheGradient) {
  Rng rng(45);
  const Shape sh{2, 6, 4, 2, 4, false, false};
  auto qkv = rng.uniform(sh.numel()), w = rng.uniform(sh.numel());
  std::vector<float> out(sh.numel()), grad(sh.numel());
  auto objective = [&] {
    rope(qkv.data(), out.data(), sh.b, sh.s, sh.h, sh.kv, sh.dh, 10000.0f, false);
    return weighted_sum(out, w);
  };
  rope(w.data(), grad.data(), sh.b, sh.s, sh.h, sh.kv, sh.dh, 10000.0f, true);
  expect_gradient(grad, finite_difference(qkv, objective, 1e-2f), 1e-3, "drope");
}

}  // namespace
}  // namespace mtc::rt::host::test
