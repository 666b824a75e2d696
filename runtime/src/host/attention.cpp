// Host attention core (softmax(q k^T * scale) v) on Megatron's grouped fused
// QKV layout, with grouped-query attention, causal and padding masks, plus
// rotary position embedding on the same layout.
//
// Layout (see host_kernels.h): a token's row of qkv has W = (H + 2*KV) * Dh
// floats: KV groups of [R query heads, k, v], R = H / KV, each Dh wide. So
//   q of head h  at (h / R) * (R + 2) * Dh + (h % R) * Dh
//   k of group g at g * (R + 2) * Dh + R * Dh,   v of group g right after.
//
// Forward, for each (b, h) and query i, with A(i) the admissible keys
// (j <= i if causal, mask[b, j] != 0 if masked):
//   s_j = scale * q_i . k_j,   lse_i = log sum_{j in A(i)} exp(s_j),
//   P_j = exp(s_j - lse_i),    out_i = sum_j P_j v_j.
// Scores are materialized for one query row at a time, in double.
//
// Backward recomputes P from the saved lse (nothing else is saved):
//   dP_j = dout_i . v_j,  D_i = dout_i . out_i,  dS_j = P_j (dP_j - D_i)
//   dq_i = scale sum_j dS_j k_j,  dk_j += scale dS_j q_i,  dv_j += P_j dout_i
// It runs in parallel over (b, KV group) so that the R query heads sharing a
// k/v accumulate into it (in double, in a fixed order) without races.
//
// Rope (rotate-half): pair (c, c + Dh/2) of every q and k head at position s
// is rotated by theta_c = s * base^(-2c/Dh); inverse rotates by -theta.
// Assumes Dh even (checked by the op verifier). qkv == out is allowed.
#include "mtc/rt/host_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "host/parallel.h"

namespace mtc::rt::host {
namespace {

struct QkvLayout {
  int64_t s, h, kv, dh, r, width;
  QkvLayout(int64_t s_, int64_t h_, int64_t kv_, int64_t dh_)
      : s(s_), h(h_), kv(kv_), dh(dh_), r(h_ / kv_), width((h_ + 2 * kv_) * dh_) {}
  int64_t q(int64_t head) const { return (head / r) * (r + 2) * dh + (head % r) * dh; }
  int64_t k(int64_t group) const { return group * (r + 2) * dh + r * dh; }
  int64_t v(int64_t group) const { return k(group) + dh; }
  // Row of token (b, pos).
  int64_t row(int64_t b, int64_t pos) const { return (b * s + pos) * width; }
};

double dot(const float* a, const float* b, int64_t n) {
  double acc = 0.0;
  for (int64_t c = 0; c < n; ++c) acc += static_cast<double>(a[c]) * b[c];
  return acc;
}

// Number of keys a query at position i may look at (a prefix); the mask
// further excludes padded keys inside it.
int64_t key_end(int64_t i, int64_t s, bool causal) { return causal ? i + 1 : s; }

bool admissible(const int32_t* mask_b, int64_t j) { return !mask_b || mask_b[j] != 0; }

}  // namespace

// out (B, S, H*Dh); lse (B, H, S).
void attention_forward(const float* qkv, const int32_t* mask, float* out,
                       float* lse, int64_t b, int64_t s, int64_t h,
                       int64_t kv, int64_t dh, bool causal, float scale) {
  const QkvLayout L(s, h, kv, dh);
  const double neg_inf = -std::numeric_limits<double>::infinity();
  parallel_for(b * h, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> scores(static_cast<size_t>(s));  // (S) one query row
    std::vector<double> acc(static_cast<size_t>(dh));    // (Dh)
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / h, head = task % h, group = head / L.r;
      const int32_t* mask_b = mask ? mask + bi * s : nullptr;
      for (int64_t i = 0; i < s; ++i) {
        const float* q = qkv + L.row(bi, i) + L.q(head);
        const int64_t jend = key_end(i, s, causal);
        double mx = neg_inf;
        for (int64_t j = 0; j < jend; ++j) {
          if (!admissible(mask_b, j)) continue;
          scores[j] = scale * dot(q, qkv + L.row(bi, j) + L.k(group), dh);
          mx = std::max(mx, scores[j]);
        }
        float* o = out + (bi * s + i) * h * dh + head * dh;
        float* l = lse + (bi * h + head) * s + i;
        if (mx == neg_inf) {  // no admissible key
          std::fill(o, o + dh, 0.0f);
          *l = -std::numeric_limits<float>::infinity();
          continue;
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        double sum = 0.0;
        for (int64_t j = 0; j < jend; ++j) {
          if (!admissible(mask_b, j)) continue;
          double p = std::exp(scores[j] - mx);
          sum += p;
          const float* vj = qkv + L.row(bi, j) + L.v(group);
          for (int64_t c = 0; c < dh; ++c) acc[c] += p * vj[c];
        }
        for (int64_t c = 0; c < dh; ++c) o[c] = static_cast<float>(acc[c] / sum);
        *l = static_cast<float>(mx + std::log(sum));
      }
    }
  });
}

// dqkv (B, S, (H + 2*KV) * Dh) overwritten.
void attention_backward(const float* qkv, const int32_t* mask,
                        const float* out, const float* lse, const float* dout,
                        float* dqkv, int64_t b, int64_t s, int64_t h,
                        int64_t kv, int64_t dh, bool causal, float scale) {
  const QkvLayout L(s, h, kv, dh);
  parallel_for(b * kv, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> dk(static_cast<size_t>(s * dh));  // (S, Dh) of group g
    std::vector<double> dv(static_cast<size_t>(s * dh));  // (S, Dh)
    std::vector<double> dq(static_cast<size_t>(dh));      // (Dh) one query
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / kv, group = task % kv;
      const int32_t* mask_b = mask ? mask + bi * s : nullptr;
      std::fill(dk.begin(), dk.end(), 0.0);
      std::fill(dv.begin(), dv.end(), 0.0);
      for (int64_t head = group * L.r; head < (group + 1) * L.r; ++head) {
        for (int64_t i = 0; i < s; ++i) {
          const float* q = qkv + L.row(bi, i) + L.q(head);
          float* dqi = dqkv + L.row(bi, i) + L.q(head);
          const double li = lse[(bi * h + head) * s + i];
          if (std::isinf(li)) {  // no admissible key: out was 0, no gradient
            std::fill(dqi, dqi + dh, 0.0f);
            continue;
          }
          const float* doi = dout + (bi * s + i) * h * dh + head * dh;
          const double di = dot(doi, out + (bi * s + i) * h * dh + head * dh, dh);
          std::fill(dq.begin(), dq.end(), 0.0);
          const int64_t jend = key_end(i, s, causal);
          for (int64_t j = 0; j < jend; ++j) {
            if (!admissible(mask_b, j)) continue;
            const float* kj = qkv + L.row(bi, j) + L.k(group);
            const float* vj = qkv + L.row(bi, j) + L.v(group);
            const double p = std::exp(scale * dot(q, kj, dh) - li);
            const double ds = p * (dot(doi, vj, dh) - di);
            double* dkj = dk.data() + j * dh;
            double* dvj = dv.data() + j * dh;
            for (int64_t c = 0; c < dh; ++c) {
              dq[c] += ds * kj[c];
              dkj[c] += scale * ds * q[c];
              dvj[c] += p * doi[c];
            }
          }
          for (int64_t c = 0; c < dh; ++c) dqi[c] = static_cast<float>(scale * dq[c]);
        }
      }
      for (int64_t j = 0; j < s; ++j) {
        float* dkj = dqkv + L.row(bi, j) + L.k(group);
        float* dvj = dqkv + L.row(bi, j) + L.v(group);
        for (int64_t c = 0; c < dh; ++c) {
          dkj[c] = static_cast<float>(dk[j * dh + c]);
          dvj[c] = static_cast<float>(dv[j * dh + c]);
        }
      }
    }
  });
}

// out (B, S, (H + 2*KV) * Dh): q and k heads rotated, v copied.
void rope(const float* qkv, float* out, int64_t b, int64_t s, int64_t h,
          int64_t kv, int64_t dh, float base, bool inverse) {
  const QkvLayout L(s, h, kv, dh);
  const int64_t half = dh / 2;
  // cos / sin of theta_c = pos * base^(-2c/Dh), computed in double.
  std::vector<float> cos_t(static_cast<size_t>(s * half));  // (S, Dh/2)
  std::vector<float> sin_t(static_cast<size_t>(s * half));  // (S, Dh/2)
  for (int64_t pos = 0; pos < s; ++pos) {
    for (int64_t c = 0; c < half; ++c) {
      double inv_freq = std::pow(static_cast<double>(base),
                                 -2.0 * static_cast<double>(c) / static_cast<double>(dh));
      double theta = static_cast<double>(pos) * inv_freq;
      cos_t[pos * half + c] = static_cast<float>(std::cos(theta));
      sin_t[pos * half + c] = static_cast<float>((inverse ? -1.0 : 1.0) * std::sin(theta));
    }
  }
  // Rotates one head of Dh values at position pos.
  auto rotate = [&](const float* x, float* y, int64_t pos) {
    const float* cs = cos_t.data() + pos * half;
    const float* sn = sin_t.data() + pos * half;
    for (int64_t c = 0; c < half; ++c) {
      float x1 = x[c], x2 = x[c + half];
      y[c] = x1 * cs[c] - x2 * sn[c];
      y[c + half] = x2 * cs[c] + x1 * sn[c];
    }
  };
  parallel_for(b * s, std::max<int64_t>(1, 8192 / L.width), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t pos = t % s;
      const float* x = qkv + t * L.width;
      float* y = out + t * L.width;
      for (int64_t g = 0; g < kv; ++g) {
        const int64_t base_off = g * (L.r + 2) * dh;
        for (int64_t head = 0; head <= L.r; ++head)  // R query heads, then k
          rotate(x + base_off + head * dh, y + base_off + head * dh, pos);
        if (x != y) std::copy(x + L.v(g), x + L.v(g) + dh, y + L.v(g));
      }
    }
  });
}

}  // namespace mtc::rt::host
