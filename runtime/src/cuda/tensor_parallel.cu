// Tensor-parallel kernels (cuda_tp_kernels.h): vocabulary-parallel embedding
// and its gradient, the two phases of the vocabulary-parallel fused
// cross-entropy, and the (outer, parts, chunk) <-> (parts, outer, chunk)
// permutation around NCCL collectives.
//
// Math: see cuda_tp_kernels.h; the host twins are host embedding.cpp's
// *_shard functions and common/grid_ops.cpp's vocab_parallel_cross_entropy.
//
// Design:
// - Embedding: embedding.cu's kernels with the token shifted by vocab_start
//   (one thread per 8 values / 4 gradient values when D and the pointers
//   allow; fp32 atomics in the backward).
// - Cross-entropy stats: one block per row, each thread an online (max, sum
//   of exp) over its 8-wide column groups, then a fixed-shape block
//   reduction of the (max, sum) pairs: one read of the logits, deterministic.
// - Cross-entropy finish: one block of 1024 threads combines the ranks'
//   statistics per row (double), writes each counted row's lse to scratch
//   and the mean loss (fixed-order reduction: identical on every rank, and
//   needs no logits); then, when a gradient is wanted, one block per row
//   writes dlogits (each thread rewrites only what it read, so in place is
//   safe).
// - permute_parts: a grid-stride copy of 16-, 4- or 2-byte units.
#include <algorithm>

#include "cuda/common.cuh"
#include "mtc/rt/cuda_tp_kernels.h"

namespace mtc::rt::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kStatsThreads = 256;
constexpr int kGradThreads = 256;
constexpr int kLossThreads = 1024;

// ---------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------

// out (T, D) from table (V_local, D); see embedding_forward_shard.
template <bool kVec>
__global__ void embedding_forward_shard_kernel(const int32_t* tokens, const bf16* table, bf16* out,
                                               int64_t t, int64_t v_local, int64_t d,
                                               int64_t vocab_start, int64_t v_total,
                                               unsigned long long* bad_row) {
  constexpr int kW = kVec ? 8 : 1;
  const int64_t per_row = d / kW;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < t * per_row;
       i += stride) {
    const int64_t row = i / per_row, c = (i % per_row) * kW;
    const int64_t tok = tokens[row];
    const bool valid = tok >= 0 && tok < v_total;
    if (!valid && c == 0) atomicMin(bad_row, static_cast<unsigned long long>(row));
    const int64_t local = tok - vocab_start;
    const bool mine = valid && local >= 0 && local < v_local;
    if (kVec) {
      if (mine) {
        *reinterpret_cast<Bf16x8*>(out + row * d + c) =
            *reinterpret_cast<const Bf16x8*>(table + local * d + c);
      } else {
        const float z[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        store8(out + row * d + c, z);
      }
    } else {
      out[row * d + c] = mine ? table[local * d + c] : __float2bfloat16(0.f);
    }
  }
}

// dtable (V_local, D) fp32 += dout rows of this shard's tokens.
template <bool kVec>
__global__ void embedding_backward_shard_kernel(const int32_t* tokens, const bf16* dout,
                                                float* dtable, int64_t t, int64_t v_local,
                                                int64_t d, int64_t vocab_start) {
  constexpr int kW = kVec ? 4 : 1;
  const int64_t per_row = d / kW;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < t * per_row;
       i += stride) {
    const int64_t row = i / per_row, c = (i % per_row) * kW;
    const int64_t local = static_cast<int64_t>(tokens[row]) - vocab_start;
    if (local < 0 || local >= v_local) continue;
    float* dst = dtable + local * d + c;
    const bf16* src = dout + row * d + c;
    if (kVec) {
      const __nv_bfloat162* s2 = reinterpret_cast<const __nv_bfloat162*>(src);
      float2 a = __bfloat1622float2(s2[0]), b = __bfloat1622float2(s2[1]);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      atomicAdd(reinterpret_cast<float4*>(dst), make_float4(a.x, a.y, b.x, b.y));
#else
      atomicAdd(dst, a.x);
      atomicAdd(dst + 1, a.y);
      atomicAdd(dst + 2, b.x);
      atomicAdd(dst + 3, b.y);
#endif
    } else {
      atomicAdd(dst, __bfloat162float(*src));
    }
  }
}

// ---------------------------------------------------------------------------
// Vocabulary-parallel cross-entropy
// ---------------------------------------------------------------------------

__device__ __forceinline__ bool counted(int32_t target, int64_t valid, int32_t ignore_index) {
  return target != ignore_index && target >= 0 && target < valid;
}

// Valid local columns of a shard: global classes [vocab_start, valid).
__host__ __device__ __forceinline__ int64_t valid_cols(int64_t v_local, int64_t vocab_start,
                                                       int64_t valid) {
  const int64_t c = valid - vocab_start;
  return c < 0 ? 0 : (c > v_local ? v_local : c);
}

// Columns [c, c + 8) of a row as floats; columns >= cols read as -inf.
// kVec: 16-byte load (requires c + 8 <= row length and alignment).
template <bool kVec>
__device__ __forceinline__ void load8_masked(const bf16* row, int64_t c, int64_t cols,
                                             float (&f)[8]) {
  if (kVec && c + 8 <= cols) {
    load8(row + c, f);
    return;
  }
  if (kVec) load8(row + c, f);  // a group straddling `cols`: mask below
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (c + j >= cols)
      f[j] = -INFINITY;
    else if (!kVec)
      f[j] = __bfloat162float(row[c + j]);
  }
}

// (m, s) <- the combination of two (max, sum of exp(x - max)) pairs.
// (-inf, 0) is the empty pair.
__device__ __forceinline__ void combine_max_sum(float& m, float& s, float om, float os) {
  const float nm = fmaxf(m, om);
  if (nm == -INFINITY) return;  // both empty
  s = s * exp2f((m - nm) * kLog2e) + os * exp2f((om - nm) * kLog2e);
  m = nm;
}

// stats (T, 3); one block per row. kVec: V_local % 8 == 0, logits aligned.
template <bool kVec>
__global__ void __launch_bounds__(kStatsThreads) vp_ce_stats_kernel(
    const bf16* logits, const int32_t* targets, float* stats, int64_t v_local,
    int64_t vocab_start, int64_t valid, int32_t ignore_index) {
  __shared__ float sh_m[32], sh_s[32];
  const int64_t r = blockIdx.x;
  const bf16* row = logits + r * v_local;
  const int64_t cols = valid_cols(v_local, vocab_start, valid);
  float m = -INFINITY, s = 0.f, m2 = -INFINITY;  // m2 = m * log2(e)
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * 8; c < cols;
       c += static_cast<int64_t>(kStatsThreads) * 8) {
    float f[8];
    load8_masked<kVec>(row, c, cols, f);
    float vm = f[0];
#pragma unroll
    for (int j = 1; j < 8; ++j) vm = fmaxf(vm, f[j]);
    if (vm == -INFINITY) continue;  // nothing valid (or only -inf logits) here
    if (vm > m) {
      s *= exp2f((m - vm) * kLog2e);  // 0 while m == -inf (s is 0 then)
      m = vm;
      m2 = m * kLog2e;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (f[j] != -INFINITY) s += exp2f(fmaf(f[j], kLog2e, -m2));
  }
  // Fixed-shape reduction: warps, then warp 0 over the warps' pairs.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float om = __shfl_down_sync(0xffffffffu, m, o);
    const float os = __shfl_down_sync(0xffffffffu, s, o);
    combine_max_sum(m, s, om, os);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sh_m[warp] = m;
    sh_s[warp] = s;
  }
  __syncthreads();
  if (warp != 0) return;
  constexpr int kWarps = kStatsThreads / 32;
  m = lane < kWarps ? sh_m[lane] : -INFINITY;
  s = lane < kWarps ? sh_s[lane] : 0.f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float om = __shfl_down_sync(0xffffffffu, m, o);
    const float os = __shfl_down_sync(0xffffffffu, s, o);
    combine_max_sum(m, s, om, os);
  }
  if (lane == 0) {
    const int32_t y = targets[r];
    const int64_t local = static_cast<int64_t>(y) - vocab_start;
    const bool here = counted(y, valid, ignore_index) && local >= 0 && local < cols;
    stats[r * 3 + 0] = m;
    stats[r * 3 + 1] = s;
    stats[r * 3 + 2] = here ? __bfloat162float(row[local]) : 0.f;
  }
}

// One block of kLossThreads: row_lse (T) (0 on uncounted rows), *count,
// *loss from all_stats (P, T, 3); records the first bad target.
__global__ void __launch_bounds__(kLossThreads) vp_ce_loss_kernel(
    const int32_t* targets, const float* all_stats, int64_t parts, int64_t t, int64_t valid,
    int32_t ignore_index, float* row_lse, int* count, float* loss,
    unsigned long long* bad_row) {
  __shared__ double sh_d[32];
  __shared__ int sh_i[32];
  double total = 0.0;
  int n = 0;
  for (int64_t i = threadIdx.x; i < t; i += kLossThreads) {
    const int32_t y = targets[i];
    if (!counted(y, valid, ignore_index)) {
      if (y != ignore_index) atomicMin(bad_row, static_cast<unsigned long long>(i));
      row_lse[i] = 0.f;
      continue;
    }
    double mx = -INFINITY;
    for (int64_t r = 0; r < parts; ++r) {
      const float* st = all_stats + (r * t + i) * 3;
      if (st[1] > 0.f) mx = fmax(mx, static_cast<double>(st[0]));
    }
    double sum = 0.0, target_logit = 0.0;
    for (int64_t r = 0; r < parts; ++r) {
      const float* st = all_stats + (r * t + i) * 3;
      if (st[1] > 0.f) sum += static_cast<double>(st[1]) * exp(static_cast<double>(st[0]) - mx);
      target_logit += static_cast<double>(st[2]);
    }
    const double lse = mx + log(sum);
    row_lse[i] = static_cast<float>(lse);
    total += lse - target_logit;
    ++n;
  }
  total = block_sum(total, sh_d);
  n = block_sum(n, sh_i);
  if (threadIdx.x == 0) {
    *count = n;
    *loss = n > 0 ? static_cast<float>(total / static_cast<double>(n)) : 0.f;
  }
}

// dlogits (T, V_local); one block per row. kVec: V_local % 8 == 0, logits
// and dlogits 16-byte aligned.
template <bool kVec>
__global__ void __launch_bounds__(kGradThreads) vp_ce_grad_kernel(
    const bf16* logits, const int32_t* targets, const float* row_lse, const int* count,
    bf16* dlogits, int64_t v_local, int64_t vocab_start, int64_t valid, int32_t ignore_index,
    float dloss) {
  const int64_t r = blockIdx.x;
  const int32_t y = targets[r];
  const bf16* row = logits + r * v_local;
  bf16* drow = dlogits + r * v_local;
  if (!counted(y, valid, ignore_index)) {
    for (int64_t c = threadIdx.x; c < v_local; c += kGradThreads) drow[c] = __float2bfloat16(0.f);
    return;
  }
  const int n = *count;  // >= 1: this row counts
  const float coeff = dloss / static_cast<float>(n);
  const float lse2 = row_lse[r] * kLog2e;
  const int64_t cols = valid_cols(v_local, vocab_start, valid);
  const int64_t ty = static_cast<int64_t>(y) - vocab_start;  // local target column (any value)
  if (kVec) {
    for (int64_t c = static_cast<int64_t>(threadIdx.x) * 8; c < v_local;
         c += static_cast<int64_t>(kGradThreads) * 8) {
      float g[8];
      if (c < cols) {
        float f[8];
        load8(row + c, f);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float p = exp2f(fmaf(f[j], kLog2e, -lse2));
          g[j] = c + j < cols ? coeff * (p - (c + j == ty ? 1.f : 0.f)) : 0.f;
        }
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) g[j] = 0.f;
      }
      store8(drow + c, g);
    }
  } else {
    for (int64_t c = threadIdx.x; c < v_local; c += kGradThreads) {
      float g = 0.f;
      if (c < cols) {
        const float p = exp2f(fmaf(__bfloat162float(row[c]), kLog2e, -lse2));
        g = coeff * (p - (c == ty ? 1.f : 0.f));
      }
      drow[c] = __float2bfloat16(g);
    }
  }
}

// ---------------------------------------------------------------------------
// permute_parts
// ---------------------------------------------------------------------------

// out (A, B, chunk)[a, b, :] = in (B, A, chunk)[b, a, :], in units of U
// (chunk counted in units).
template <typename U>
__global__ void permute_parts_kernel(const U* in, U* out, int64_t a_dim, int64_t b_dim,
                                     int64_t chunk) {
  const int64_t n = a_dim * b_dim * chunk;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += stride) {
    const int64_t c = e % chunk, ab = e / chunk;
    const int64_t b = ab % b_dim, a = ab / b_dim;
    out[e] = in[(b * a_dim + a) * chunk + c];
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Host entry points
// ---------------------------------------------------------------------------

void embedding_forward_shard(Context& ctx, const int32_t* tokens, const bf16* table, bf16* out,
                             int64_t t, int64_t v_local, int64_t d, int64_t vocab_start,
                             int64_t v_total) {
  if (t <= 0 || d <= 0) return;
  require(v_local > 0 && v_total > 0 && vocab_start >= 0,
          "embedding_forward_shard: V_local and V_total must be positive, vocab_start "
          "non-negative (got V_local = " + std::to_string(v_local) + ", V_total = " +
              std::to_string(v_total) + ", vocab_start = " + std::to_string(vocab_start) + ")");
  const bool vec = d % 8 == 0 && aligned16(table) && aligned16(out);
  const int64_t items = vec ? t * d / 8 : t * d;
  const unsigned grid = grid_for(ctx, items, 256);
  if (vec)
    embedding_forward_shard_kernel<true><<<grid, 256, 0, ctx.stream>>>(
        tokens, table, out, t, v_local, d, vocab_start, v_total, ctx.data_error_slots);
  else
    embedding_forward_shard_kernel<false><<<grid, 256, 0, ctx.stream>>>(
        tokens, table, out, t, v_local, d, vocab_start, v_total, ctx.data_error_slots);
  MTC_LAUNCH_CHECK("embedding_forward_shard_kernel");
}

void embedding_backward_shard(Context& ctx, const int32_t* tokens, const bf16* dout,
                              float* dtable, int64_t t, int64_t v_local, int64_t d,
                              int64_t vocab_start) {
  if (t <= 0 || d <= 0 || v_local <= 0) return;
  const bool vec =
      d % 4 == 0 && aligned16(dtable) && (reinterpret_cast<uintptr_t>(dout) & 7u) == 0;
  const int64_t items = vec ? t * d / 4 : t * d;
  const unsigned grid = grid_for(ctx, items, 256);
  if (vec)
    embedding_backward_shard_kernel<true><<<grid, 256, 0, ctx.stream>>>(tokens, dout, dtable, t,
                                                                        v_local, d, vocab_start);
  else
    embedding_backward_shard_kernel<false><<<grid, 256, 0, ctx.stream>>>(tokens, dout, dtable, t,
                                                                         v_local, d, vocab_start);
  MTC_LAUNCH_CHECK("embedding_backward_shard_kernel");
}

namespace {
void check_vp_ce_args(const char* op, int64_t t, int64_t v_local, int64_t vocab_start,
                      int64_t valid) {
  require(t > 0 && v_local > 0, std::string(op) + ": T and V_local must be positive (got T = " +
                                    std::to_string(t) + ", V_local = " +
                                    std::to_string(v_local) + ")");
  require(t <= 0x7fffffff, std::string(op) + ": T must fit in 31 bits");
  require(vocab_start >= 0 && valid > 0,
          std::string(op) + ": vocab_start must be non-negative and valid positive (got " +
              std::to_string(vocab_start) + ", " + std::to_string(valid) + ")");
}
}  // namespace

void vp_cross_entropy_stats(Context& ctx, const bf16* logits, const int32_t* targets,
                            float* stats, int64_t t, int64_t v_local, int64_t vocab_start,
                            int64_t valid, int32_t ignore_index) {
  check_vp_ce_args("vp_cross_entropy_stats", t, v_local, vocab_start, valid);
  const bool vec = v_local % 8 == 0 && aligned16(logits);
  if (vec)
    vp_ce_stats_kernel<true><<<static_cast<unsigned>(t), kStatsThreads, 0, ctx.stream>>>(
        logits, targets, stats, v_local, vocab_start, valid, ignore_index);
  else
    vp_ce_stats_kernel<false><<<static_cast<unsigned>(t), kStatsThreads, 0, ctx.stream>>>(
        logits, targets, stats, v_local, vocab_start, valid, ignore_index);
  MTC_LAUNCH_CHECK("vp_ce_stats_kernel");
}

void vp_cross_entropy_finish(Context& ctx, const bf16* logits, const int32_t* targets,
                             const float* all_stats, int64_t parts, float* loss, bf16* dlogits,
                             int64_t t, int64_t v_local, int64_t vocab_start, int64_t valid,
                             int32_t ignore_index, float dloss) {
  check_vp_ce_args("vp_cross_entropy_finish", t, v_local, vocab_start, valid);
  require(parts >= 1, "vp_cross_entropy_finish: parts must be >= 1, got " +
                          std::to_string(parts));
  // Scratch: count (1 int, padded to 256 bytes), row_lse (T) floats.
  char* scratch = static_cast<char*>(ctx.scratch(256 + sizeof(float) * t));
  int* count = reinterpret_cast<int*>(scratch);
  float* row_lse = reinterpret_cast<float*>(scratch + 256);
  vp_ce_loss_kernel<<<1, kLossThreads, 0, ctx.stream>>>(targets, all_stats, parts, t, valid,
                                                        ignore_index, row_lse, count, loss,
                                                        ctx.data_error_slots + 1);
  MTC_LAUNCH_CHECK("vp_ce_loss_kernel");
  if (!dlogits) return;
  const bool vec = v_local % 8 == 0 && aligned16(logits) && aligned16(dlogits);
  if (vec)
    vp_ce_grad_kernel<true><<<static_cast<unsigned>(t), kGradThreads, 0, ctx.stream>>>(
        logits, targets, row_lse, count, dlogits, v_local, vocab_start, valid, ignore_index,
        dloss);
  else
    vp_ce_grad_kernel<false><<<static_cast<unsigned>(t), kGradThreads, 0, ctx.stream>>>(
        logits, targets, row_lse, count, dlogits, v_local, vocab_start, valid, ignore_index,
        dloss);
  MTC_LAUNCH_CHECK("vp_ce_grad_kernel");
}

void permute_parts(Context& ctx, const bf16* in, bf16* out, int64_t outer, int64_t parts,
                   int64_t chunk, bool to_parts_major) {
  require(outer >= 0 && parts >= 0 && chunk >= 0,
          "permute_parts: negative size (outer = " + std::to_string(outer) + ", parts = " +
              std::to_string(parts) + ", chunk = " + std::to_string(chunk) + ")");
  const int64_t n = outer * parts * chunk;
  if (n == 0) return;
  require(in + n <= out || out + n <= in, "permute_parts: out must not overlap in");
  // out (A, B, chunk) from in (B, A, chunk).
  const int64_t a_dim = to_parts_major ? parts : outer;
  const int64_t b_dim = to_parts_major ? outer : parts;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(out);
  if (chunk % 8 == 0 && (addr & 15u) == 0) {
    const unsigned grid = grid_for(ctx, n / 8, 256);
    permute_parts_kernel<uint4><<<grid, 256, 0, ctx.stream>>>(
        reinterpret_cast<const uint4*>(in), reinterpret_cast<uint4*>(out), a_dim, b_dim,
        chunk / 8);
  } else if (chunk % 2 == 0 && (addr & 3u) == 0) {
    const unsigned grid = grid_for(ctx, n / 2, 256);
    permute_parts_kernel<uint32_t><<<grid, 256, 0, ctx.stream>>>(
        reinterpret_cast<const uint32_t*>(in), reinterpret_cast<uint32_t*>(out), a_dim, b_dim,
        chunk / 2);
  } else {
    const unsigned grid = grid_for(ctx, n, 256);
    permute_parts_kernel<uint16_t><<<grid, 256, 0, ctx.stream>>>(
        reinterpret_cast<const uint16_t*>(in), reinterpret_cast<uint16_t*>(out), a_dim, b_dim,
        chunk);
  }
  MTC_LAUNCH_CHECK("permute_parts_kernel");
}

}  // namespace mtc::rt::cuda
