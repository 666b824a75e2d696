// Host kernels of the mixture-of-experts ops (declared in host_kernels.h,
// "Mixture of experts"): the router, the permute (dropless or with a
// capacity) / unpermute and the grouped GEMMs. The numerical reference for
// future CUDA kernels.
//
// Math (per token t; p = softmax(l) over the E experts, S the k selected
// experts, s the scale):
//   softmax_topk: w_j = s p_{S_j}
//                 dp_e = s dw_j where e = S_j (else 0)
//   topk_softmax: w_j = s q_j, q = softmax(l_S)
//                 dl_{S_j} = q_j (s dw_j - sum_m q_m s dw_m)
//   load balance: LB = a E sum_e f_e P_e, P_e = (1/T) sum_t p_te, f_e fixed
//                 (counts are not differentiable): dp_te += daux a E f_e / T
//   z-loss:       Z = z (1/T) sum_t lse_t^2:  dl_te += daux z 2 lse_t p_te / T
//   through softmax: dl_te = p_te (dp_te - sum_f p_tf dp_tf)
// Sums are taken in double. Top-k is k passes of an argmax (k is small),
// the first maximum winning, so ties go to the lower index.
//
// Expert bias b (aux-loss-free balancing): the top-k ranks p + b
// (softmax_topk) or l + b (topk_softmax); w is computed as above from the
// unbiased p or l of the selected experts, so b gets no gradient and the
// formulas for dl hold with S the biased selection. f_e of the load
// balancing term counts the unbiased top-k of l (Megatron's aux loss
// ranks the unbiased scores). After the step: b_e += u sign(mean L - L_e)
// for the step's loads L (moe_update_expert_bias).
//
// The permutation is stable: expert e's rows start at offset_e = sum of
// the counts before e and hold its assignments in (token, slot) order. A
// grouped GEMM is one BLAS sgemm per expert on its rows.
//
// Token dropping (moe_permute_capacity, capacity C): an expert with more
// than C assignments keeps C of them, by decreasing priority (Megatron's
// "probs" drop policy; ties to the earlier assignment) or the first C
// ("position"); the kept ones are packed exactly as dropless ones, so when
// nothing is over capacity the rows, positions and counts are the dropless
// permute's. Dropped assignments get position -1: the unpermute skips them
// (weight 0 in the combine) and its backward gives them dw = 0.
#include "mtc/rt/host_kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "host/parallel.h"

namespace mtc::rt::host {
namespace {

constexpr int64_t kRowGrain = 64;

// p = softmax(l) over n; returns logsumexp(l).
double softmax_row(const float* l, float* p, int64_t n) {
  double mx = l[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, double(l[i]));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(double(l[i]) - mx);
  for (int64_t i = 0; i < n; ++i) p[i] = float(std::exp(double(l[i]) - mx) / sum);
  return mx + std::log(sum);
}

double logsumexp_row(const float* l, int64_t n) {
  double mx = l[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, double(l[i]));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(double(l[i]) - mx);
  return mx + std::log(sum);
}

// idx (k) = the k largest of score_i + (bias ? bias_i : 0), decreasing,
// the first maximum winning (ties to the lower index).
void top_k(const float* score, const float* bias, int32_t* idx, int64_t e,
           int64_t k, std::vector<char>& taken) {
  std::fill(taken.begin(), taken.end(), 0);
  auto key = [&](int64_t i) { return bias ? score[i] + bias[i] : score[i]; };
  for (int64_t j = 0; j < k; ++j) {
    int64_t best = -1;
    float bk = 0;
    for (int64_t i = 0; i < e; ++i)
      if (!taken[i] && (best < 0 || key(i) > bk)) {
        best = i;
        bk = key(i);
      }
    taken[best] = 1;
    idx[j] = static_cast<int32_t>(best);
  }
}

// Assignments per expert of the unbiased top-k of every token's logits
// (the aux loss's f_e times T k when the selection had a bias).
std::vector<double> unbiased_assignments(const float* logits, int64_t t, int64_t e,
                                         int64_t k) {
  std::vector<double> assigned(static_cast<size_t>(e), 0.0);
  std::vector<char> taken(static_cast<size_t>(e));
  std::vector<int32_t> idx(static_cast<size_t>(k));
  for (int64_t r = 0; r < t; ++r) {
    top_k(logits + r * e, nullptr, idx.data(), e, k, taken);
    for (int64_t j = 0; j < k; ++j) assigned[idx[j]] += 1;
  }
  return assigned;
}

// The largest of l over the selected experts (the softmax's shift).
double selected_max(const float* l, const int32_t* idx, int64_t k) {
  double mx = l[idx[0]];
  for (int64_t j = 1; j < k; ++j) mx = std::max(mx, double(l[idx[j]]));
  return mx;
}

// Row offsets of the experts from their counts.
std::vector<int64_t> offsets_of(const int32_t* counts, int64_t e) {
  std::vector<int64_t> off(static_cast<size_t>(e) + 1, 0);
  for (int64_t i = 0; i < e; ++i) off[i + 1] = off[i] + counts[i];
  return off;
}

}  // namespace

void moe_router_forward(const float* logits, float* probs, int32_t* indices,
                        float* weights, float* aux_loss, int64_t t, int64_t e,
                        int64_t k, bool topk_softmax, float scale,
                        float aux_coeff, float z_coeff, const float* bias) {
  std::vector<double> lse(static_cast<size_t>(t));
  parallel_for(t, kRowGrain, [&](int64_t begin, int64_t end) {
    std::vector<char> taken(static_cast<size_t>(e));
    for (int64_t r = begin; r < end; ++r) {
      const float* l = logits + r * e;
      float* p = probs + r * e;
      lse[r] = softmax_row(l, p, e);
      int32_t* idx = indices + r * k;
      // Without a bias the logits rank as the probabilities do (and decide
      // ties the same way as before the bias existed).
      top_k(bias && !topk_softmax ? p : l, bias, idx, e, k, taken);
      float* w = weights + r * k;
      if (topk_softmax) {
        // Softmax over the selected logits (the unbiased ones).
        const double mx = selected_max(l, idx, k);
        double sum = 0;
        for (int64_t j = 0; j < k; ++j) sum += std::exp(double(l[idx[j]]) - mx);
        for (int64_t j = 0; j < k; ++j)
          w[j] = float(scale * std::exp(double(l[idx[j]]) - mx) / sum);
      } else {
        for (int64_t j = 0; j < k; ++j) w[j] = scale * p[idx[j]];
      }
    }
  });
  double lb = 0, z = 0;
  if (aux_coeff != 0) {
    std::vector<double> psum(static_cast<size_t>(e), 0.0), assigned(static_cast<size_t>(e), 0.0);
    if (bias != nullptr) assigned = unbiased_assignments(logits, t, e, k);
    for (int64_t r = 0; r < t; ++r) {
      for (int64_t i = 0; i < e; ++i) psum[i] += probs[r * e + i];
      if (bias == nullptr)
        for (int64_t j = 0; j < k; ++j) assigned[indices[r * k + j]] += 1;
    }
    for (int64_t i = 0; i < e; ++i)
      lb += (assigned[i] / double(t * k)) * (psum[i] / double(t));
    lb *= double(aux_coeff) * double(e);
  }
  if (z_coeff != 0) {
    for (int64_t r = 0; r < t; ++r) z += lse[r] * lse[r];
    z *= double(z_coeff) / double(t);
  }
  aux_loss[0] = float(lb + z);
}

void moe_router_backward(const float* logits, const float* probs,
                         const int32_t* indices, const float* dweights,
                         const float* daux, float* dlogits, int64_t t,
                         int64_t e, int64_t k, bool topk_softmax, float scale,
                         float aux_coeff, float z_coeff, bool biased_selection) {
  const double da = daux != nullptr ? double(daux[0]) : 0.0;
  // dP_e / T of the load-balancing term: a E f_e / T, f_e from the indices
  // (from the unbiased top-k when the selection had a bias).
  std::vector<double> lb_grad(static_cast<size_t>(e), 0.0);
  if (da != 0 && aux_coeff != 0) {
    if (biased_selection)
      lb_grad = unbiased_assignments(logits, t, e, k);
    else
      for (int64_t r = 0; r < t; ++r)
        for (int64_t j = 0; j < k; ++j) lb_grad[indices[r * k + j]] += 1;
    for (int64_t i = 0; i < e; ++i)
      lb_grad[i] = da * aux_coeff * double(e) * (lb_grad[i] / double(t * k)) / double(t);
  }
  parallel_for(t, kRowGrain, [&](int64_t begin, int64_t end) {
    std::vector<double> dp(static_cast<size_t>(e));
    for (int64_t r = begin; r < end; ++r) {
      const float* l = logits + r * e;
      const float* p = probs + r * e;
      const int32_t* idx = indices + r * k;
      const float* dw = dweights + r * k;
      float* dl = dlogits + r * e;
      for (int64_t i = 0; i < e; ++i) dp[i] = lb_grad[i];
      if (!topk_softmax)
        for (int64_t j = 0; j < k; ++j) dp[idx[j]] += double(scale) * dw[j];
      // Through the full softmax.
      double dot = 0;
      for (int64_t i = 0; i < e; ++i) dot += double(p[i]) * dp[i];
      for (int64_t i = 0; i < e; ++i) dl[i] = float(double(p[i]) * (dp[i] - dot));
      if (topk_softmax) {
        // Through the softmax over the selected logits.
        const double mx = selected_max(l, idx, k);
        double sum = 0;
        for (int64_t j = 0; j < k; ++j) sum += std::exp(double(l[idx[j]]) - mx);
        double qdot = 0;
        for (int64_t j = 0; j < k; ++j)
          qdot += std::exp(double(l[idx[j]]) - mx) / sum * double(scale) * dw[j];
        for (int64_t j = 0; j < k; ++j) {
          double q = std::exp(double(l[idx[j]]) - mx) / sum;
          dl[idx[j]] += float(q * (double(scale) * dw[j] - qdot));
        }
      }
      if (da != 0 && z_coeff != 0) {
        double c = da * z_coeff * 2.0 * logsumexp_row(l, e) / double(t);
        for (int64_t i = 0; i < e; ++i) dl[i] += float(c * p[i]);
      }
    }
  });
}

namespace {

// Both permutes: keep[i] says whether assignment i = t*k + j keeps its row.
void permute_kept(const float* x, const int32_t* indices,
                  const std::vector<char>& keep, float* out,
                  int32_t* positions, int32_t* counts, int64_t t, int64_t d,
                  int64_t e, int64_t k) {
  std::fill(counts, counts + e, 0);
  for (int64_t i = 0; i < t * k; ++i)
    if (keep[i]) ++counts[indices[i]];
  std::vector<int64_t> next = offsets_of(counts, e);
  for (int64_t i = 0; i < t * k; ++i)
    positions[i] = keep[i] ? static_cast<int32_t>(next[indices[i]]++) : -1;
  parallel_for(t, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t j = 0; j < k; ++j)
        if (positions[r * k + j] >= 0)
          std::copy(x + r * d, x + (r + 1) * d, out + int64_t(positions[r * k + j]) * d);
  });
}

}  // namespace

void moe_permute(const float* x, const int32_t* indices, float* out,
                 int32_t* positions, int32_t* counts, int64_t t, int64_t d,
                 int64_t e, int64_t k) {
  permute_kept(x, indices, std::vector<char>(static_cast<size_t>(t * k), 1), out, positions,
               counts, t, d, e, k);
}

void moe_permute_capacity(const float* x, const int32_t* indices, float* out,
                          int32_t* positions, int32_t* counts, int64_t t,
                          int64_t d, int64_t e, int64_t k,
                          const float* priority, int64_t capacity) {
  // Each expert's assignments in (token, slot) order.
  std::vector<std::vector<int64_t>> of(static_cast<size_t>(e));
  for (int64_t i = 0; i < t * k; ++i) of[static_cast<size_t>(indices[i])].push_back(i);
  std::vector<char> keep(static_cast<size_t>(t * k), 1);
  for (std::vector<int64_t>& list : of) {
    if (int64_t(list.size()) <= capacity) continue;
    if (priority != nullptr)  // highest priority first, then the earlier
      std::stable_sort(list.begin(), list.end(),
                       [&](int64_t a, int64_t b) { return priority[a] > priority[b]; });
    for (size_t i = static_cast<size_t>(capacity); i < list.size(); ++i) keep[list[i]] = 0;
  }
  permute_kept(x, indices, keep, out, positions, counts, t, d, e, k);
  int64_t kept = 0, rows = std::min(e * capacity, t * k);
  for (int64_t i = 0; i < e; ++i) kept += counts[i];
  std::fill(out + kept * d, out + rows * d, 0.0f);
}

void moe_unpermute(const float* h, const int32_t* positions,
                   const float* weights, float* y, int64_t t, int64_t d,
                   int64_t k) {
  parallel_for(t, kRowGrain, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(static_cast<size_t>(d));
    for (int64_t r = begin; r < end; ++r) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < k; ++j) {
        if (positions[r * k + j] < 0) continue;  // dropped
        const float* row = h + int64_t(positions[r * k + j]) * d;
        double w = weights != nullptr ? double(weights[r * k + j]) : 1.0;
        for (int64_t c = 0; c < d; ++c) acc[c] += w * row[c];
      }
      for (int64_t c = 0; c < d; ++c) y[r * d + c] = float(acc[c]);
    }
  });
}

void moe_unpermute_backward(const float* h, const int32_t* positions,
                            const float* weights, const float* dy, float* dh,
                            float* dweights, int64_t t, int64_t d, int64_t k) {
  parallel_for(t, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* g = dy + r * d;
      for (int64_t j = 0; j < k; ++j) {
        int64_t row = positions[r * k + j];
        if (row < 0) {  // dropped: no row, no gradient
          dweights[r * k + j] = 0.0f;
          continue;
        }
        const float w = weights[r * k + j];
        double dot = 0;
        for (int64_t c = 0; c < d; ++c) {
          dot += double(g[c]) * h[row * d + c];
          dh[row * d + c] = w * g[c];
        }
        dweights[r * k + j] = float(dot);
      }
    }
  });
}

void grouped_matmul(const float* x, const float* w, const int32_t* counts,
                    const float* bias, float* y, int64_t rows, int64_t e,
                    int64_t n, int64_t k, bool trans_b) {
  std::vector<int64_t> off = offsets_of(counts, e);
  for (int64_t i = 0; i < e; ++i) {
    const int64_t m = off[i + 1] - off[i];
    if (m == 0) continue;
    matmul(x + off[i] * k, w + i * n * k, bias != nullptr ? bias + i * n : nullptr,
           y + off[i] * n, m, n, k, false, trans_b);
  }
  // Rows no expert owns (dropped capacity, the expert-parallel receive
  // buffer's slack): zero, never read.
  if (off[e] < rows) std::fill(y + off[e] * n, y + rows * n, 0.0f);
}

void grouped_matmul_wgrad(const float* a, const float* b,
                          const int32_t* counts, float* dw, int64_t rows,
                          int64_t e, int64_t p, int64_t q) {
  (void)rows;
  std::vector<int64_t> off = offsets_of(counts, e);
  for (int64_t i = 0; i < e; ++i) {
    const int64_t m = off[i + 1] - off[i];
    float* out = dw + i * p * q;
    if (m == 0) {
      std::fill(out, out + p * q, 0.0f);
      continue;
    }
    // (P, Q) = a_i^T (P, m) · b_i (m, Q).
    matmul(a + off[i] * p, b + off[i] * q, nullptr, out, p, q, m, true, false);
  }
}

void grouped_bias_grad(const float* dy, const int32_t* counts, float* db,
                       int64_t rows, int64_t e, int64_t m) {
  (void)rows;
  std::vector<int64_t> off = offsets_of(counts, e);
  for (int64_t i = 0; i < e; ++i) {
    if (off[i + 1] == off[i]) {
      std::fill(db + i * m, db + (i + 1) * m, 0.0f);
      continue;
    }
    reduce_rows(dy + off[i] * m, db + i * m, off[i + 1] - off[i], m);
  }
}

void moe_accumulate_load(const int32_t* counts, float* load, int64_t e) {
  for (int64_t i = 0; i < e; ++i) load[i] += static_cast<float>(counts[i]);
}

void moe_update_expert_bias(float* load, float* bias, int64_t e, float rate) {
  // sign(mean - L_e) = sign(sum - e L_e): exact in double for any load a
  // float holds exactly (whole counts below 2^24), where the mean itself
  // need not be representable.
  double sum = 0;
  for (int64_t i = 0; i < e; ++i) sum += load[i];
  for (int64_t i = 0; i < e; ++i) {
    const double offset = sum - double(e) * double(load[i]);
    const float sign = offset > 0 ? 1.0f : offset < 0 ? -1.0f : 0.0f;
    bias[i] += sign * rate;
  }
  std::fill(load, load + e, 0.0f);
}

}  // namespace mtc::rt::host
