// Mixture-of-experts kernels (cuda_kernels.h, "Mixture of experts"): the
// GPU twins of runtime/src/host/moe.cpp, whose header comment gives the
// math. Differences of method, not of result:
//
// - Router: one warp per token; softmax and logsumexp in fp32 (the host
//   sums in double); top-k by k rounds of a warp argmax over the logits,
//   ties to the lower expert index as on the host. The load-balancing and
//   z-loss statistics are block sums in a fixed order, one block per
//   expert (deterministic, no atomics).
// - Permute: counts by one block per expert; each expert's positions by a
//   block-wide scan over the (token, slot) assignments in order, so the
//   layout is the host's (expert by expert, token order within one). Rows
//   are copied one block per assignment, 16 bytes at a time.
// - Token dropping: an assignment of an expert over capacity is kept when
//   fewer than `capacity` assignments of that expert come before it in
//   priority order (higher priority first, ties to the earlier), counted by
//   one thread per assignment over the expert's others: O(T K) per
//   assignment of an over-full expert, an option's cost, not the dropless
//   path's.
// - Grouped GEMMs: one cuBLASLt GEMM per expert with rows (gemm.cu), the
//   rows of each read from the host copy of the counts that moe_permute
//   made (cuda_kernels.h says why; one stream synchronization per permute).
#include <algorithm>
#include <map>
#include <vector>

#include "cuda/common.cuh"

namespace mtc::rt::cuda {

// Host copies of expert counts, by the device address moe_permute wrote
// them to.
struct MoeCounts {
  std::map<const int32_t*, std::vector<int32_t>> host;
};

void destroy_moe_counts(MoeCounts* counts) { delete counts; }

namespace {

constexpr int kMaxK = 32;
constexpr int64_t kMaxE = 4096;
constexpr int kRouterWarps = 8;   // tokens per router block
constexpr int kScanThreads = 1024;
constexpr int kRowThreads = 128;

// The better of two (logit, expert) candidates: the larger logit, ties to
// the lower index; index -1 is no candidate.
__device__ __forceinline__ void take_better(float& v, int& i, float ov, int oi) {
  if (oi >= 0 && (i < 0 || ov > v || (ov == v && oi < i))) {
    v = ov;
    i = oi;
  }
}

// The top k experts of row l (E logits) into sel, identical in every lane.
__device__ void warp_topk(const float* l, int e, int k, int* sel) {
  const int lane = threadIdx.x & 31;
  for (int j = 0; j < k; ++j) {
    float bv = 0.f;
    int bi = -1;
    for (int i = lane; i < e; i += 32) {
      bool taken = false;
      for (int m = 0; m < j; ++m) taken |= sel[m] == i;
      if (!taken) take_better(bv, bi, l[i], i);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      take_better(bv, bi, ov, oi);
    }
    sel[j] = bi;
  }
}

// Row max and sum of exp(l - max) over the warp.
__device__ __forceinline__ void warp_softmax_stats(const float* l, int e, float& mx, float& sum) {
  const int lane = threadIdx.x & 31;
  mx = -INFINITY;
  for (int i = lane; i < e; i += 32) mx = fmaxf(mx, l[i]);
  mx = warp_max(mx);
  sum = 0.f;
  for (int i = lane; i < e; i += 32) sum += expf(l[i] - mx);
  sum = warp_sum(sum);
}

__global__ void router_forward_kernel(const float* logits, float* probs, int32_t* indices,
                                      float* weights, float* lse, int64_t t, int e, int k,
                                      bool topk_softmax, float scale) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRouterWarps + (threadIdx.x >> 5);
  if (row >= t) return;
  const float* l = logits + row * e;
  float mx, sum;
  warp_softmax_stats(l, e, mx, sum);
  for (int i = lane; i < e; i += 32) probs[row * e + i] = expf(l[i] - mx) / sum;
  if (lane == 0 && lse) lse[row] = mx + logf(sum);
  int sel[kMaxK];
  warp_topk(l, e, k, sel);
  if (lane != 0) return;
  float qsum = 0.f;
  if (topk_softmax)
    for (int j = 0; j < k; ++j) qsum += expf(l[sel[j]] - l[sel[0]]);
  for (int j = 0; j < k; ++j) {
    indices[row * k + j] = sel[j];
    weights[row * k + j] = topk_softmax ? scale * (expf(l[sel[j]] - l[sel[0]]) / qsum)
                                        : scale * (expf(l[sel[j]] - mx) / sum);
  }
}

// Assignments of expert blockIdx.x among the n of `indices` (kept ones only
// when keep is non-null).
__global__ void count_kernel(const int32_t* indices, const unsigned char* keep, int64_t n,
                             int32_t* counts) {
  __shared__ int32_t part[32];
  const int ex = blockIdx.x;
  int32_t c = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    c += indices[i] == ex && (!keep || keep[i]);
  c = block_sum(c, part);
  if (threadIdx.x == 0) counts[ex] = c;
}

// stats[0, E): sum_t probs[t, e]; stats[E]: sum_t lse_t^2 (block E).
__global__ void router_stats_kernel(const float* probs, const float* lse, int64_t t, int e,
                                    float* stats) {
  __shared__ float part[32];
  const int ex = blockIdx.x;
  float s = 0.f;
  if (ex < e) {
    for (int64_t r = threadIdx.x; r < t; r += blockDim.x) s += probs[r * e + ex];
  } else {
    for (int64_t r = threadIdx.x; r < t; r += blockDim.x) s += lse[r] * lse[r];
  }
  s = block_sum(s, part);
  if (threadIdx.x == 0) stats[ex] = s;
}

__global__ void router_aux_kernel(const float* stats, const int32_t* assigned, int64_t t, int e,
                                  int k, float aux_coeff, float z_coeff, float* aux) {
  double lb = 0, z = 0;
  if (aux_coeff != 0.f) {
    for (int i = 0; i < e; ++i)
      lb += (double(assigned[i]) / double(t * k)) * (double(stats[i]) / double(t));
    lb *= double(aux_coeff) * double(e);
  }
  if (z_coeff != 0.f) z = double(z_coeff) * double(stats[e]) / double(t);
  aux[0] = float(lb + z);
}

__global__ void router_backward_kernel(const float* logits, const float* probs,
                                       const int32_t* indices, const float* dweights,
                                       const float* daux, const int32_t* assigned,
                                       bf16* dlogits, int64_t t, int e, int k, bool topk_softmax,
                                       float scale, float aux_coeff, float z_coeff) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRouterWarps + (threadIdx.x >> 5);
  if (row >= t) return;
  const float da = daux ? daux[0] : 0.f;
  const float* l = logits + row * e;
  const float* p = probs + row * e;
  const int32_t* idx = indices + row * k;
  const float* dw = dweights + row * k;
  // dp_i (the gradient reaching the full softmax's probabilities).
  auto dp_of = [&](int i) {
    float g = 0.f;
    if (da != 0.f && aux_coeff != 0.f)
      g = float(double(da) * aux_coeff * e * (double(assigned[i]) / double(t * k)) / double(t));
    if (!topk_softmax)
      for (int j = 0; j < k; ++j)
        if (idx[j] == i) g += scale * dw[j];
    return g;
  };
  float dot = 0.f;
  for (int i = lane; i < e; i += 32) dot += p[i] * dp_of(i);
  dot = warp_sum(dot);
  float zc = 0.f;
  if (da != 0.f && z_coeff != 0.f) {
    float mx, sum;
    warp_softmax_stats(l, e, mx, sum);
    zc = float(double(da) * z_coeff * 2.0 * (mx + logf(sum)) / double(t));
  }
  float qsum = 0.f, qdot = 0.f;
  if (topk_softmax) {
    for (int j = 0; j < k; ++j) qsum += expf(l[idx[j]] - l[idx[0]]);
    for (int j = 0; j < k; ++j) qdot += expf(l[idx[j]] - l[idx[0]]) / qsum * scale * dw[j];
  }
  for (int i = lane; i < e; i += 32) {
    float g = p[i] * (dp_of(i) - dot) + zc * p[i];
    if (topk_softmax)
      for (int j = 0; j < k; ++j)
        if (idx[j] == i) {
          const float q = expf(l[i] - l[idx[0]]) / qsum;
          g += q * (scale * dw[j] - qdot);
        }
    dlogits[row * e + i] = __float2bfloat16(g);
  }
}

// positions of expert blockIdx.x's assignments: its offset (the counts
// before it) plus its rank among its kept assignments in order; dropped
// ones (keep[i] == 0) get -1. blockDim.x == kScanThreads.
__global__ void positions_kernel(const int32_t* indices, const unsigned char* keep,
                                 const int32_t* counts, int64_t n, int32_t* positions) {
  __shared__ int32_t warp_totals[32];
  __shared__ int32_t base;
  const int ex = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) {
    int32_t off = 0;
    for (int f = 0; f < ex; ++f) off += counts[f];
    base = off;
  }
  __syncthreads();
  for (int64_t start = 0; start < n; start += kScanThreads) {
    const int64_t i = start + threadIdx.x;
    const bool mine = i < n && indices[i] == ex;
    const bool kept = mine && (!keep || keep[i]);
    const unsigned ballot = __ballot_sync(0xffffffffu, kept);
    const int32_t in_warp = __popc(ballot & ((1u << lane) - 1u));
    if (lane == 0) warp_totals[warp] = __popc(ballot);
    __syncthreads();
    int32_t before = 0, chunk = 0;
    for (int w = 0; w < kScanThreads / 32; ++w) {
      before += w < warp ? warp_totals[w] : 0;
      chunk += warp_totals[w];
    }
    if (kept) positions[i] = base + before + in_warp;
    else if (mine) positions[i] = -1;
    __syncthreads();  // every thread has read warp_totals and base
    if (threadIdx.x == 0) base += chunk;
    __syncthreads();
  }
}

// keep[i]: assignment i is among the first `capacity` of its expert in
// priority order (all kept when the expert is not over capacity).
__global__ void keep_kernel(const int32_t* indices, const float* priority, const int32_t* counts,
                            int64_t n, int64_t capacity, unsigned char* keep) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t ex = indices[i];
  if (counts[ex] <= capacity) {
    keep[i] = 1;
    return;
  }
  const float pi = priority ? priority[i] : 0.f;
  int64_t rank = 0;
  for (int64_t j = 0; j < n && rank < capacity; ++j) {
    if (j == i || indices[j] != ex) continue;
    if (priority) rank += priority[j] > pi || (priority[j] == pi && j < i);
    else rank += j < i;
  }
  keep[i] = rank < capacity;
}

// out[positions[i]] = x[i / k] for every kept assignment i (one block each).
template <bool kVec>
__global__ void copy_rows_kernel(const bf16* x, const int32_t* positions, bf16* out, int64_t d,
                                 int k) {
  const int64_t i = blockIdx.x;
  const int32_t pos = positions[i];
  if (pos < 0) return;
  const bf16* src = x + (i / k) * d;
  bf16* dst = out + static_cast<int64_t>(pos) * d;
  if (kVec) {
    for (int64_t c = threadIdx.x * 8; c < d; c += blockDim.x * 8)
      *reinterpret_cast<Bf16x8*>(dst + c) = *reinterpret_cast<const Bf16x8*>(src + c);
  } else {
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) dst[c] = src[c];
  }
}

// y[t] = sum_j w[t, j] h[positions[t, j]] (one block per token).
template <bool kVec>
__global__ void unpermute_kernel(const bf16* h, const int32_t* positions, const float* weights,
                                 bf16* y, int64_t d, int k) {
  const int64_t r = blockIdx.x;
  const int32_t* pos = positions + r * k;
  if (kVec) {
    for (int64_t c = threadIdx.x * 8; c < d; c += blockDim.x * 8) {
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, v[8];
      for (int j = 0; j < k; ++j) {
        if (pos[j] < 0) continue;
        const float w = weights ? weights[r * k + j] : 1.f;
        load8(h + static_cast<int64_t>(pos[j]) * d + c, v);
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[q] += w * v[q];
      }
      store8(y + r * d + c, acc);
    }
  } else {
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float acc = 0.f;
      for (int j = 0; j < k; ++j) {
        if (pos[j] < 0) continue;
        const float w = weights ? weights[r * k + j] : 1.f;
        acc += w * __bfloat162float(h[static_cast<int64_t>(pos[j]) * d + c]);
      }
      y[r * d + c] = __float2bfloat16(acc);
    }
  }
}

// dh[positions[t, j]] = w dy[t], dweights[t, j] = <dy[t], h[positions[t, j]]>.
template <bool kVec>
__global__ void unpermute_backward_kernel(const bf16* h, const int32_t* positions,
                                          const float* weights, const bf16* dy, bf16* dh,
                                          float* dweights, int64_t d, int k) {
  __shared__ float part[32];
  const int64_t r = blockIdx.x;
  const bf16* g = dy + r * d;
  for (int j = 0; j < k; ++j) {
    const int32_t pos = positions[r * k + j];
    if (pos < 0) {
      if (threadIdx.x == 0) dweights[r * k + j] = 0.f;
      continue;
    }
    const float w = weights[r * k + j];
    const bf16* hr = h + static_cast<int64_t>(pos) * d;
    bf16* out = dh + static_cast<int64_t>(pos) * d;
    float dot = 0.f;
    if (kVec) {
      for (int64_t c = threadIdx.x * 8; c < d; c += blockDim.x * 8) {
        float gv[8], hv[8];
        load8(g + c, gv);
        load8(hr + c, hv);
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          dot += gv[q] * hv[q];
          gv[q] *= w;
        }
        store8(out + c, gv);
      }
    } else {
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        const float gv = __bfloat162float(g[c]);
        dot += gv * __bfloat162float(hr[c]);
        out[c] = __float2bfloat16(w * gv);
      }
    }
    dot = block_sum(dot, part);
    if (threadIdx.x == 0) dweights[r * k + j] = dot;
  }
}

bool rows_vectorizable(int64_t d, const void* a, const void* b) {
  return d % 8 == 0 && aligned16(a) && aligned16(b);
}

void check_router(int64_t e, int64_t k) {
  require(e >= 1 && e <= kMaxE, "moe router: num_experts must be in [1, 4096]");
  require(k >= 1 && k <= kMaxK && k <= e, "moe router: top_k must be in [1, min(32, E)]");
}

MoeCounts& counts_of(Context& ctx) {
  if (!ctx.moe_counts) ctx.moe_counts = new MoeCounts;
  return *ctx.moe_counts;
}

// Copies counts (E, device) to the host, waits for them and keeps them for
// the grouped GEMMs.
const std::vector<int32_t>& mirror_counts(Context& ctx, const int32_t* counts, int64_t e) {
  std::vector<int32_t>& h = counts_of(ctx).host[counts];
  h.resize(static_cast<size_t>(e));
  MTC_CUDA_CHECK(cudaMemcpyAsync(h.data(), counts, static_cast<size_t>(e) * sizeof(int32_t),
                                 cudaMemcpyDeviceToHost, ctx.stream));
  MTC_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  return h;
}

// Row offsets of the experts (E + 1) from the host copy of `counts`.
std::vector<int64_t> host_offsets(Context& ctx, const int32_t* counts, int64_t e, int64_t rows) {
  MoeCounts& mc = counts_of(ctx);
  auto it = mc.host.find(counts);
  const std::vector<int32_t>& h = it != mc.host.end() && int64_t(it->second.size()) == e
                                      ? it->second
                                      : mirror_counts(ctx, counts, e);
  std::vector<int64_t> off(static_cast<size_t>(e) + 1, 0);
  for (int64_t i = 0; i < e; ++i) {
    require(h[i] >= 0, "grouped matmul: negative expert count");
    off[i + 1] = off[i] + h[i];
  }
  require(off[e] <= rows, "grouped matmul: the expert counts exceed the rows of the input");
  return off;
}

// The permutes' common part once keep (or nothing) is decided.
void permute_kept(Context& ctx, const bf16* x, const int32_t* indices, const unsigned char* keep,
                  bf16* out, int32_t* positions, int32_t* counts, int64_t t, int64_t d,
                  int64_t e, int64_t k) {
  const int64_t n = t * k;
  count_kernel<<<static_cast<unsigned>(e), 256, 0, ctx.stream>>>(indices, keep, n, counts);
  MTC_LAUNCH_CHECK("count_kernel");
  positions_kernel<<<static_cast<unsigned>(e), kScanThreads, 0, ctx.stream>>>(indices, keep,
                                                                               counts, n, positions);
  MTC_LAUNCH_CHECK("positions_kernel");
  if (rows_vectorizable(d, x, out))
    copy_rows_kernel<true><<<static_cast<unsigned>(n), kRowThreads, 0, ctx.stream>>>(
        x, positions, out, d, static_cast<int>(k));
  else
    copy_rows_kernel<false><<<static_cast<unsigned>(n), kRowThreads, 0, ctx.stream>>>(
        x, positions, out, d, static_cast<int>(k));
  MTC_LAUNCH_CHECK("copy_rows_kernel");
  mirror_counts(ctx, counts, e);
}

}  // namespace

void moe_counts_written(Context& ctx, const int32_t* counts) {
  if (ctx.moe_counts) ctx.moe_counts->host.erase(counts);
}

void moe_router_forward(Context& ctx, const float* logits, float* probs, int32_t* indices,
                        float* weights, float* aux_loss, int64_t t, int64_t e, int64_t k,
                        bool topk_softmax, float scale, float aux_coeff, float z_coeff) {
  check_router(e, k);
  if (t <= 0) return;
  const bool stats = aux_coeff != 0.f || z_coeff != 0.f;
  // Scratch: lse (T), stats (E + 1), assigned (E).
  char* s = static_cast<char*>(
      ctx.scratch(static_cast<size_t>(t + 2 * e + 1) * sizeof(float)));
  float* lse = reinterpret_cast<float*>(s);
  float* st = lse + t;
  int32_t* assigned = reinterpret_cast<int32_t*>(st + e + 1);
  router_forward_kernel<<<static_cast<unsigned>(ceil_div(t, kRouterWarps)), kRouterWarps * 32, 0,
                          ctx.stream>>>(logits, probs, indices, weights, stats ? lse : nullptr, t,
                                        static_cast<int>(e), static_cast<int>(k), topk_softmax,
                                        scale);
  MTC_LAUNCH_CHECK("router_forward_kernel");
  if (stats) {
    router_stats_kernel<<<static_cast<unsigned>(e + 1), 256, 0, ctx.stream>>>(
        probs, lse, t, static_cast<int>(e), st);
    MTC_LAUNCH_CHECK("router_stats_kernel");
    count_kernel<<<static_cast<unsigned>(e), 256, 0, ctx.stream>>>(indices, nullptr, t * k,
                                                                   assigned);
    MTC_LAUNCH_CHECK("count_kernel");
  }
  router_aux_kernel<<<1, 1, 0, ctx.stream>>>(st, assigned, t, static_cast<int>(e),
                                             static_cast<int>(k), stats ? aux_coeff : 0.f,
                                             stats ? z_coeff : 0.f, aux_loss);
  MTC_LAUNCH_CHECK("router_aux_kernel");
}

void moe_router_backward(Context& ctx, const float* logits, const float* probs,
                         const int32_t* indices, const float* dweights, const float* daux,
                         bf16* dlogits, int64_t t, int64_t e, int64_t k, bool topk_softmax,
                         float scale, float aux_coeff, float z_coeff) {
  check_router(e, k);
  if (t <= 0) return;
  int32_t* assigned = static_cast<int32_t*>(ctx.scratch(static_cast<size_t>(e) * sizeof(int32_t)));
  const bool lb = daux && aux_coeff != 0.f;
  if (lb) {
    count_kernel<<<static_cast<unsigned>(e), 256, 0, ctx.stream>>>(indices, nullptr, t * k,
                                                                   assigned);
    MTC_LAUNCH_CHECK("count_kernel");
  }
  router_backward_kernel<<<static_cast<unsigned>(ceil_div(t, kRouterWarps)), kRouterWarps * 32, 0,
                           ctx.stream>>>(logits, probs, indices, dweights, daux, assigned,
                                         dlogits, t, static_cast<int>(e), static_cast<int>(k),
                                         topk_softmax, scale, lb ? aux_coeff : 0.f,
                                         daux ? z_coeff : 0.f);
  MTC_LAUNCH_CHECK("router_backward_kernel");
}

void moe_permute(Context& ctx, const bf16* x, const int32_t* indices, bf16* out,
                 int32_t* positions, int32_t* counts, int64_t t, int64_t d, int64_t e,
                 int64_t k) {
  require(e >= 1 && k >= 1 && d >= 1, "moe_permute: E, K and D must be positive");
  if (t <= 0) return;
  permute_kept(ctx, x, indices, nullptr, out, positions, counts, t, d, e, k);
}

void moe_permute_capacity(Context& ctx, const bf16* x, const int32_t* indices, bf16* out,
                          int32_t* positions, int32_t* counts, int64_t t, int64_t d,
                          int64_t e, int64_t k, const float* priority, int64_t capacity) {
  require(e >= 1 && k >= 1 && d >= 1, "moe_permute: E, K and D must be positive");
  require(capacity >= 0, "moe_permute: negative capacity");
  if (t <= 0) return;
  const int64_t n = t * k;
  // Scratch: every assignment's expert count (E), then keep (n).
  char* s = static_cast<char*>(ctx.scratch(static_cast<size_t>(e) * sizeof(int32_t) +
                                           static_cast<size_t>(n)));
  int32_t* all = reinterpret_cast<int32_t*>(s);
  unsigned char* keep = reinterpret_cast<unsigned char*>(all + e);
  count_kernel<<<static_cast<unsigned>(e), 256, 0, ctx.stream>>>(indices, nullptr, n, all);
  MTC_LAUNCH_CHECK("count_kernel");
  keep_kernel<<<static_cast<unsigned>(ceil_div(n, 256)), 256, 0, ctx.stream>>>(
      indices, priority, all, n, capacity, keep);
  MTC_LAUNCH_CHECK("keep_kernel");
  permute_kept(ctx, x, indices, keep, out, positions, counts, t, d, e, k);
  const std::vector<int32_t>& h = counts_of(ctx).host[counts];
  int64_t kept = 0;
  for (int32_t c : h) kept += c;
  const int64_t rows = std::min(e * capacity, n);
  if (kept < rows)
    MTC_CUDA_CHECK(cudaMemsetAsync(out + kept * d, 0,
                                   static_cast<size_t>((rows - kept) * d) * sizeof(bf16),
                                   ctx.stream));
}

void moe_unpermute(Context& ctx, const bf16* h, const int32_t* positions, const float* weights,
                   bf16* y, int64_t t, int64_t d, int64_t k) {
  require(k >= 1 && d >= 1, "moe_unpermute: K and D must be positive");
  if (t <= 0) return;
  if (rows_vectorizable(d, h, y))
    unpermute_kernel<true><<<static_cast<unsigned>(t), kRowThreads, 0, ctx.stream>>>(
        h, positions, weights, y, d, static_cast<int>(k));
  else
    unpermute_kernel<false><<<static_cast<unsigned>(t), kRowThreads, 0, ctx.stream>>>(
        h, positions, weights, y, d, static_cast<int>(k));
  MTC_LAUNCH_CHECK("unpermute_kernel");
}

void moe_unpermute_backward(Context& ctx, const bf16* h, const int32_t* positions,
                            const float* weights, const bf16* dy, bf16* dh, float* dweights,
                            int64_t t, int64_t d, int64_t k) {
  require(k >= 1 && d >= 1, "moe_unpermute_backward: K and D must be positive");
  if (t <= 0) return;
  if (rows_vectorizable(d, h, dy) && aligned16(dh))
    unpermute_backward_kernel<true><<<static_cast<unsigned>(t), kRowThreads, 0, ctx.stream>>>(
        h, positions, weights, dy, dh, dweights, d, static_cast<int>(k));
  else
    unpermute_backward_kernel<false><<<static_cast<unsigned>(t), kRowThreads, 0, ctx.stream>>>(
        h, positions, weights, dy, dh, dweights, d, static_cast<int>(k));
  MTC_LAUNCH_CHECK("unpermute_backward_kernel");
}

void grouped_matmul(Context& ctx, const bf16* x, const bf16* w, const int32_t* counts,
                    const bf16* bias, bf16* y, int64_t rows, int64_t e, int64_t n, int64_t k,
                    bool trans_b) {
  if (rows <= 0) return;
  const std::vector<int64_t> off = host_offsets(ctx, counts, e, rows);
  for (int64_t i = 0; i < e; ++i) {
    const int64_t m = off[i + 1] - off[i];
    if (m == 0) continue;
    matmul(ctx, x + off[i] * k, w + i * n * k, bias ? bias + i * n : nullptr, y + off[i] * n, m,
           n, k, false, trans_b);
  }
  // Rows no expert owns (dropped capacity): zero, as on the host.
  if (off[e] < rows)
    MTC_CUDA_CHECK(cudaMemsetAsync(y + off[e] * n, 0,
                                   static_cast<size_t>((rows - off[e]) * n) * sizeof(bf16),
                                   ctx.stream));
}

void grouped_matmul_wgrad(Context& ctx, const bf16* a, const bf16* b, const int32_t* counts,
                          float* dw, int64_t rows, int64_t e, int64_t p, int64_t q) {
  if (rows <= 0) return;
  const std::vector<int64_t> off = host_offsets(ctx, counts, e, rows);
  for (int64_t i = 0; i < e; ++i) {
    const int64_t m = off[i + 1] - off[i];
    if (m == 0) continue;
    // (P, Q) += a_i^T (P, m) b_i (m, Q).
    matmul_f32(ctx, a + off[i] * p, b + off[i] * q, dw + i * p * q, nullptr, p, q, m, true,
               false, true);
  }
}

void grouped_bias_grad(Context& ctx, const bf16* dy, const int32_t* counts, float* db,
                       int64_t rows, int64_t e, int64_t m) {
  if (rows <= 0) return;
  const std::vector<int64_t> off = host_offsets(ctx, counts, e, rows);
  for (int64_t i = 0; i < e; ++i)
    if (off[i + 1] > off[i])
      reduce_rows_accumulate(ctx, dy + off[i] * m, db + i * m, off[i + 1] - off[i], m);
}

}  // namespace mtc::rt::cuda
