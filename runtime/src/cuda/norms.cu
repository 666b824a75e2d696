// LayerNorm and RMSNorm, forward and backward, bf16 in/out, fp32 statistics.
//
// Math (per row of D values, biased variance as PyTorch):
//   layer norm: mean = sum x / D, var = sum (x - mean)^2 / D,
//               rstd = 1 / sqrt(var + eps), xhat = (x - mean) * rstd,
//               y = xhat * gamma + beta
//               dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma
//   rms norm:   rstd = 1 / sqrt(sum x^2 / D + eps), xhat = x * rstd,
//               y = xhat * gamma,  dx = rstd * (g - xhat * mean(g * xhat))
//   dgamma += sum_rows dy * xhat,  dbeta += sum_rows dy.
//
// Design: one warp per row, 8 rows per block. A lane keeps its part of the
// row in registers as packed bf16 (16 bytes per 8 values, kVecs vectors per
// lane): rows up to kVecs * 256 values are read once; longer rows are
// processed in tiles of that width and re-read for each pass (from L1/L2).
// The variance is two-pass (no E[x^2] - mean^2 cancellation). Statistics are
// recomputed in backward (nothing is saved by the forward). The backward's
// row kernel writes dx and the row statistics (to scratch); dgamma/dbeta are
// then column sums over rows of dy * xhat and dy, reduced in a fixed order
// (deterministic) like reduce_rows_accumulate.
#include "cuda/common.cuh"

namespace mtc::rt::cuda {
namespace {

constexpr int kRowsPerBlock = 8;          // one warp each

// Loads the lane's vectors of one tile (columns tile*kTile + (v*32+lane)*8).
template <int kVecs>
__device__ __forceinline__ void load_tile(const bf16* row, int64_t d, int64_t tile, int lane,
                                          Bf16x8 (&buf)[kVecs]) {
  constexpr int kTile = kVecs * 256;
#pragma unroll
  for (int v = 0; v < kVecs; ++v) {
    int64_t c = tile * kTile + (v * 32 + lane) * 8;
    if (c < d) buf[v] = *reinterpret_cast<const Bf16x8*>(row + c);
  }
}

__device__ __forceinline__ void unpack(const Bf16x8& b, float (&f)[8]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 t = __bfloat1622float2(b.h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// y (T, D) = norm(x) * gamma (+ beta).
template <bool kRms, int kVecs>
__global__ void __launch_bounds__(256) norm_forward_kernel(const bf16* x, const bf16* gamma,
                                                           const bf16* beta, bf16* y, int64_t t,
                                                           int64_t d, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= t) return;
  const bf16* xr = x + row * d;
  constexpr int kTile = kVecs * 256;  // values per tile
  const int64_t tiles = ceil_div(d, kTile);
  Bf16x8 buf[kVecs];
  float mean = 0.f;
  if (!kRms) {
    float s = 0.f;
    for (int64_t tile = 0; tile < tiles; ++tile) {
      load_tile(xr, d, tile, lane, buf);
#pragma unroll
      for (int v = 0; v < kVecs; ++v) {
        if (tile * kTile + (v * 32 + lane) * 8 >= d) continue;
        float f[8];
        unpack(buf[v], f);
#pragma unroll
        for (int j = 0; j < 8; ++j) s += f[j];
      }
    }
    mean = warp_sum(s) / static_cast<float>(d);
  }
  float sq = 0.f;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    if (tiles > 1 || kRms) load_tile(xr, d, tile, lane, buf);
#pragma unroll
    for (int v = 0; v < kVecs; ++v) {
      if (tile * kTile + (v * 32 + lane) * 8 >= d) continue;
      float f[8];
      unpack(buf[v], f);
#pragma unroll
      for (int j = 0; j < 8; ++j) sq += (f[j] - mean) * (f[j] - mean);
    }
  }
  const float rstd = rsqrtf(warp_sum(sq) / static_cast<float>(d) + eps);
  bf16* yr = y + row * d;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    if (tiles > 1) load_tile(xr, d, tile, lane, buf);
#pragma unroll
    for (int v = 0; v < kVecs; ++v) {
      const int64_t c = tile * kTile + (v * 32 + lane) * 8;
      if (c >= d) continue;
      float f[8], g[8], b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      unpack(buf[v], f);
      load8(gamma + c, g);
      if (!kRms && beta) load8(beta + c, b);
#pragma unroll
      for (int j = 0; j < 8; ++j) f[j] = (f[j] - mean) * rstd * g[j] + b[j];
      store8(yr + c, f);
    }
  }
}

// dx (T, D) = base + d/dx (base null: d/dx alone; base may be dx), stats
// (T, 2) = (mean, rstd) of each row.
template <bool kRms, int kVecs>
__global__ void __launch_bounds__(256) norm_backward_rows_kernel(
    const bf16* x, const bf16* gamma, const bf16* dy, const bf16* base, bf16* dx, float2* stats,
    int64_t t, int64_t d, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= t) return;
  const bf16* xr = x + row * d;
  const bf16* dyr = dy + row * d;
  constexpr int kTile = kVecs * 256;  // values per tile
  const int64_t tiles = ceil_div(d, kTile);
  const float inv_d = 1.f / static_cast<float>(d);
  Bf16x8 bx[kVecs], bdy[kVecs];
  // Statistics of x, as in forward.
  float mean = 0.f;
  if (!kRms) {
    float s = 0.f;
    for (int64_t tile = 0; tile < tiles; ++tile) {
      load_tile(xr, d, tile, lane, bx);
#pragma unroll
      for (int v = 0; v < kVecs; ++v) {
        if (tile * kTile + (v * 32 + lane) * 8 >= d) continue;
        float f[8];
        unpack(bx[v], f);
#pragma unroll
        for (int j = 0; j < 8; ++j) s += f[j];
      }
    }
    mean = warp_sum(s) * inv_d;
  }
  float sq = 0.f;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    if (tiles > 1 || kRms) load_tile(xr, d, tile, lane, bx);
#pragma unroll
    for (int v = 0; v < kVecs; ++v) {
      if (tile * kTile + (v * 32 + lane) * 8 >= d) continue;
      float f[8];
      unpack(bx[v], f);
#pragma unroll
      for (int j = 0; j < 8; ++j) sq += (f[j] - mean) * (f[j] - mean);
    }
  }
  const float rstd = rsqrtf(warp_sum(sq) * inv_d + eps);
  // mean(g) and mean(g * xhat), g = dy * gamma.
  float sg = 0.f, sgx = 0.f;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    if (tiles > 1) load_tile(xr, d, tile, lane, bx);
    load_tile(dyr, d, tile, lane, bdy);
#pragma unroll
    for (int v = 0; v < kVecs; ++v) {
      const int64_t c = tile * kTile + (v * 32 + lane) * 8;
      if (c >= d) continue;
      float f[8], gy[8], ga[8];
      unpack(bx[v], f);
      unpack(bdy[v], gy);
      load8(gamma + c, ga);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float g = gy[j] * ga[j];
        sg += g;
        sgx += g * (f[j] - mean) * rstd;
      }
    }
  }
  const float mg = kRms ? 0.f : warp_sum(sg) * inv_d;
  const float mgx = warp_sum(sgx) * inv_d;
  bf16* dxr = dx + row * d;
  const bf16* baser = base ? base + row * d : nullptr;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    if (tiles > 1) {
      load_tile(xr, d, tile, lane, bx);
      load_tile(dyr, d, tile, lane, bdy);
    }
#pragma unroll
    for (int v = 0; v < kVecs; ++v) {
      const int64_t c = tile * kTile + (v * 32 + lane) * 8;
      if (c >= d) continue;
      float f[8], gy[8], ga[8], old[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      unpack(bx[v], f);
      unpack(bdy[v], gy);
      load8(gamma + c, ga);
      if (baser) load8(baser + c, old);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float xhat = (f[j] - mean) * rstd;
        f[j] = old[j] + rstd * (gy[j] * ga[j] - mg - xhat * mgx);
      }
      store8(dxr + c, f);
    }
  }
  if (lane == 0) stats[row] = make_float2(mean, rstd);
}

// dgamma/dbeta stage 1: partial (2, chunks, D) column sums of dy * xhat and
// dy over a chunk of rows. Block = 32 column groups of 8 x 8 row lanes, as
// elementwise.cu's column sums.
template <bool kRms>
__global__ void __launch_bounds__(256) norm_param_grad_partial_kernel(
    const bf16* x, const bf16* dy, const float2* stats, float* partial, int64_t t, int64_t d,
    int64_t rows_per_chunk, int64_t chunks) {
  __shared__ float sums[2][8][257];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t col0 = (static_cast<int64_t>(blockIdx.x) * 32 + tx) * 8;
  const int64_t row_begin = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t row_end = min(t, row_begin + rows_per_chunk);
  float ag[8] = {0, 0, 0, 0, 0, 0, 0, 0}, ab[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (col0 < d) {
    for (int64_t r = row_begin + ty; r < row_end; r += 8) {
      float f[8], g[8];
      load8(x + r * d + col0, f);
      load8(dy + r * d + col0, g);
      const float2 st = stats[r];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        ag[j] += g[j] * (f[j] - st.x) * st.y;
        ab[j] += g[j];
      }
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    sums[0][ty][tx * 8 + j] = ag[j];
    sums[1][ty][tx * 8 + j] = ab[j];
  }
  __syncthreads();
  const int c = threadIdx.x;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 256 + c;
  if (col < d) {
    float sg = 0.f, sb = 0.f;
#pragma unroll
    for (int l = 0; l < 8; ++l) {
      sg += sums[0][l][c];
      sb += sums[1][l][c];
    }
    partial[static_cast<int64_t>(blockIdx.y) * d + col] = sg;
    if (!kRms) partial[(chunks + blockIdx.y) * d + col] = sb;
  }
}

// dgamma/dbeta stage 2: sum the chunks in order and accumulate.
__global__ void norm_param_grad_final_kernel(const float* partial, float* dgamma, float* dbeta,
                                             int64_t chunks, int64_t d) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= d) return;
  float sg = 0.f, sb = 0.f;
  for (int64_t c = 0; c < chunks; ++c) sg += partial[c * d + col];
  dgamma[col] += sg;
  if (dbeta) {
    for (int64_t c = 0; c < chunks; ++c) sb += partial[(chunks + c) * d + col];
    dbeta[col] += sb;
  }
}

void check_norm_args(const char* op, const void* x, const void* y, const void* gamma,
                     int64_t d) {
  require(d > 0 && d % 8 == 0, std::string(op) + ": D must be a positive multiple of 8, got " +
                                   std::to_string(d));
  require(aligned16(x) && aligned16(y) && aligned16(gamma),
          std::string(op) + ": x, y and gamma must be 16-byte aligned");
}

template <bool kRms>
void launch_forward(Context& ctx, const bf16* x, const bf16* gamma, const bf16* beta, bf16* y,
                    int64_t t, int64_t d, float eps) {
  if (t <= 0) return;
  check_norm_args(kRms ? "rms_norm_forward" : "layer_norm_forward", x, y, gamma, d);
  require(!beta || aligned16(beta), "layer_norm_forward: beta must be 16-byte aligned");
  unsigned grid = static_cast<unsigned>(ceil_div(t, kRowsPerBlock));
  auto kernel = d <= 4 * 256   ? norm_forward_kernel<kRms, 4>
                : d <= 8 * 256 ? norm_forward_kernel<kRms, 8>
                               : norm_forward_kernel<kRms, 16>;
  kernel<<<grid, 32 * kRowsPerBlock, 0, ctx.stream>>>(x, gamma, beta, y, t, d, eps);
  MTC_LAUNCH_CHECK("norm_forward_kernel");
}

template <bool kRms>
void launch_backward(Context& ctx, const bf16* x, const bf16* gamma, const bf16* dy,
                     const bf16* base, bf16* dx, float* dgamma, float* dbeta, int64_t t,
                     int64_t d, float eps) {
  if (t <= 0) return;
  const char* op = kRms ? "rms_norm_backward" : "layer_norm_backward";
  check_norm_args(op, x, dx, gamma, d);
  require(aligned16(dy) && (!base || aligned16(base)),
          std::string(op) + ": dy (and the residual gradient) must be 16-byte aligned");
  const int64_t col_blocks = ceil_div(d, 256);
  int64_t chunks = ceil_div(2 * ctx.sm_count, col_blocks);
  chunks = std::max<int64_t>(1, std::min(chunks, ceil_div(t, 64)));
  chunks = std::min<int64_t>(chunks, 65535);
  const int64_t rows_per_chunk = ceil_div(t, chunks);
  chunks = ceil_div(t, rows_per_chunk);
  // Scratch: stats (T) float2, then partial (2, chunks, D) floats.
  const size_t stats_bytes = ((sizeof(float2) * t + 255) / 256) * 256;
  char* scratch = static_cast<char*>(
      ctx.scratch(stats_bytes + sizeof(float) * 2 * static_cast<size_t>(chunks * d)));
  float2* stats = reinterpret_cast<float2*>(scratch);
  float* partial = reinterpret_cast<float*>(scratch + stats_bytes);

  unsigned grid = static_cast<unsigned>(ceil_div(t, kRowsPerBlock));
  auto rows_kernel = d <= 4 * 256   ? norm_backward_rows_kernel<kRms, 4>
                     : d <= 8 * 256 ? norm_backward_rows_kernel<kRms, 8>
                                    : norm_backward_rows_kernel<kRms, 16>;
  rows_kernel<<<grid, 32 * kRowsPerBlock, 0, ctx.stream>>>(x, gamma, dy, base, dx, stats, t, d,
                                                           eps);
  MTC_LAUNCH_CHECK("norm_backward_rows_kernel");
  dim3 pgrid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(chunks));
  norm_param_grad_partial_kernel<kRms><<<pgrid, 256, 0, ctx.stream>>>(
      x, dy, stats, partial, t, d, rows_per_chunk, chunks);
  MTC_LAUNCH_CHECK("norm_param_grad_partial_kernel");
  norm_param_grad_final_kernel<<<static_cast<unsigned>(ceil_div(d, 256)), 256, 0, ctx.stream>>>(
      partial, dgamma, kRms ? nullptr : dbeta, chunks, d);
  MTC_LAUNCH_CHECK("norm_param_grad_final_kernel");
}

}  // namespace

void layer_norm_forward(Context& ctx, const bf16* x, const bf16* gamma, const bf16* beta, bf16* y,
                        int64_t t, int64_t d, float eps) {
  launch_forward<false>(ctx, x, gamma, beta, y, t, d, eps);
}

void layer_norm_backward(Context& ctx, const bf16* x, const bf16* gamma, const bf16* dy, bf16* dx,
                         float* dgamma, float* dbeta, int64_t t, int64_t d, float eps,
                         bool accumulate_dx) {
  launch_backward<false>(ctx, x, gamma, dy, accumulate_dx ? dx : nullptr, dx, dgamma, dbeta, t,
                         d, eps);
}

void layer_norm_backward_add(Context& ctx, const bf16* x, const bf16* gamma, const bf16* dy,
                             const bf16* base, bf16* dx, float* dgamma, float* dbeta, int64_t t,
                             int64_t d, float eps) {
  launch_backward<false>(ctx, x, gamma, dy, base, dx, dgamma, dbeta, t, d, eps);
}

void rms_norm_forward(Context& ctx, const bf16* x, const bf16* gamma, bf16* y, int64_t t,
                      int64_t d, float eps) {
  launch_forward<true>(ctx, x, gamma, nullptr, y, t, d, eps);
}

void rms_norm_backward(Context& ctx, const bf16* x, const bf16* gamma, const bf16* dy, bf16* dx,
                       float* dgamma, int64_t t, int64_t d, float eps, bool accumulate_dx) {
  launch_backward<true>(ctx, x, gamma, dy, accumulate_dx ? dx : nullptr, dx, dgamma, nullptr, t,
                        d, eps);
}

void rms_norm_backward_add(Context& ctx, const bf16* x, const bf16* gamma, const bf16* dy,
                           const bf16* base, bf16* dx, float* dgamma, int64_t t, int64_t d,
                           float eps) {
  launch_backward<true>(ctx, x, gamma, dy, base, dx, dgamma, nullptr, t, d, eps);
}

}  // namespace mtc::rt::cuda
