// Fused softmax cross-entropy: loss and dlogits from one read of the logits.
//
// Math (host loss.cpp's), rows t with a counted target y_t (count of them),
// classes v < valid (columns valid..V-1 are vocabulary padding: outside the
// softmax, zero gradient):
//   lse_t = log sum_{v < valid} exp(logits[t, v])  (fp32, max-shifted)
//   loss  = (1 / count) sum_t (lse_t - logits[t, y_t])          (0 if count == 0)
//   dlogits[t, v] = dloss / count * (exp(logits[t, v] - lse_t) - [v == y_t])
//   dlogits[t, :] = 0 on rows whose target is ignore_index (or out of
//   [0, valid)), and dlogits[t, v] = 0 for v >= valid.
//
// Design: three launches, none of which re-reads the logits from memory.
//   1. count_targets: one block counts the counted rows (fixed order) and
//      records the first out-of-range target in ctx.data_error_slots[1].
//   2. cross_entropy_rows: one block of 512 threads per row; each thread
//      keeps its 8 * kCache logits in registers as packed bf16 (rows up to
//      512 * 8 * 16 = 65536 values are read once; longer rows are re-read
//      tile by tile), so max, sum of exponentials and the gradient come from
//      registers. The gradient may overwrite the logits in place: every
//      thread writes only what it read, after the block's last reduction.
//   3. cross_entropy_mean: one block sums the row losses in a fixed order.
// The loss is deterministic; dloss/count is folded into the gradient so no
// separate scaling pass is needed.
#include "cuda/common.cuh"

namespace mtc::rt::cuda {
namespace {

constexpr int kRowThreads = 512;
constexpr int kCache = 16;
constexpr int64_t kTile = static_cast<int64_t>(kRowThreads) * 8 * kCache;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ bool counted(int32_t target, int64_t v, int32_t ignore_index) {
  return target != ignore_index && target >= 0 && target < v;
}

// *count (1) = number of counted rows of targets (T); v is the number of
// valid classes.
__global__ void count_targets_kernel(const int32_t* targets, int64_t t, int64_t v,
                                     int32_t ignore_index, int* count,
                                     unsigned long long* bad_row) {
  __shared__ int shared[32];
  int c = 0;
  for (int64_t i = threadIdx.x; i < t; i += blockDim.x) {
    int32_t y = targets[i];
    if (counted(y, v, ignore_index))
      ++c;
    else if (y != ignore_index)
      atomicMin(bad_row, static_cast<unsigned long long>(i));
  }
  c = block_sum(c, shared);
  if (threadIdx.x == 0) *count = c;
}

__device__ __forceinline__ void load_tile(const bf16* row, int64_t v, int64_t tile,
                                          Bf16x8 (&buf)[kCache], bool vec) {
#pragma unroll
  for (int k = 0; k < kCache; ++k) {
    const int64_t c = tile * kTile + (static_cast<int64_t>(k) * kRowThreads + threadIdx.x) * 8;
    if (c >= v) continue;
    if (vec) {
      buf[k] = *reinterpret_cast<const Bf16x8*>(row + c);
    } else {
      bf16 tmp[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) tmp[j] = c + j < v ? row[c + j] : __float2bfloat16(0.f);
      buf[k].h[0] = __halves2bfloat162(tmp[0], tmp[1]);
      buf[k].h[1] = __halves2bfloat162(tmp[2], tmp[3]);
      buf[k].h[2] = __halves2bfloat162(tmp[4], tmp[5]);
      buf[k].h[3] = __halves2bfloat162(tmp[6], tmp[7]);
    }
  }
}

// row_loss (T); dlogits (T, V) or nullptr; classes [valid, V) are padding.
__global__ void __launch_bounds__(kRowThreads) cross_entropy_rows_kernel(
    const bf16* logits, const int32_t* targets, const int* count, float* row_loss, bf16* dlogits,
    int64_t v, int64_t valid, int32_t ignore_index, float dloss, bool vec) {
  __shared__ float shared[32];
  const int64_t r = blockIdx.x;
  const bf16* row = logits + r * v;
  const int32_t y = targets[r];
  const bool use = counted(y, valid, ignore_index);
  if (!use) {
    if (threadIdx.x == 0) row_loss[r] = 0.f;
    if (dlogits) {
      bf16* drow = dlogits + r * v;
      for (int64_t c = threadIdx.x; c < v; c += kRowThreads) drow[c] = __float2bfloat16(0.f);
    }
    return;
  }
  const int64_t tiles = ceil_div(valid, kTile);  // passes 1 and 2 read [0, valid)
  Bf16x8 buf[kCache];
  // Pass 1: row max.
  float mx = -INFINITY;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    load_tile(row, v, tile, buf, vec);
#pragma unroll
    for (int k = 0; k < kCache; ++k) {
      const int64_t c = tile * kTile + (static_cast<int64_t>(k) * kRowThreads + threadIdx.x) * 8;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (c + j >= valid) continue;
        mx = fmaxf(mx, element(buf[k], j));
      }
    }
  }
  mx = block_max(mx, shared);
  const float target_logit = __bfloat162float(row[y]);  // read before any write
  // Pass 2: sum of exp(x - max).
  const float mx2 = mx * kLog2e;
  float sum = 0.f;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    if (tiles > 1) load_tile(row, v, tile, buf, vec);
#pragma unroll
    for (int k = 0; k < kCache; ++k) {
      const int64_t c = tile * kTile + (static_cast<int64_t>(k) * kRowThreads + threadIdx.x) * 8;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (c + j >= valid) continue;
        sum += exp2f(fmaf(element(buf[k], j), kLog2e, -mx2));
      }
    }
  }
  sum = block_sum(sum, shared);  // ends with every thread past its reads of pass 1 and 2
  const float lse = mx + logf(sum);
  if (threadIdx.x == 0) row_loss[r] = lse - target_logit;
  if (!dlogits) return;
  // Pass 3: gradient.
  const int n = *count;
  const float coeff = n > 0 ? dloss / static_cast<float>(n) : 0.f;
  const float lse2 = lse * kLog2e;
  bf16* drow = dlogits + r * v;
  const int64_t out_tiles = ceil_div(v, kTile);  // the gradient covers [0, V)
  for (int64_t tile = 0; tile < out_tiles; ++tile) {
    if (tiles > 1 || out_tiles > 1) load_tile(row, v, tile, buf, vec);
#pragma unroll
    for (int k = 0; k < kCache; ++k) {
      const int64_t c = tile * kTile + (static_cast<int64_t>(k) * kRowThreads + threadIdx.x) * 8;
      if (c >= v) continue;
      float g[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float p = exp2f(fmaf(element(buf[k], j), kLog2e,
                             -lse2));
        g[j] = c + j < valid ? coeff * (p - (c + j == y ? 1.f : 0.f)) : 0.f;
      }
      if (vec) {
        store8(drow + c, g);
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j)
          if (c + j < v) drow[c + j] = __float2bfloat16(g[j]);
      }
    }
  }
}

// loss (1) = sum(row_loss) / count, in a fixed order.
__global__ void cross_entropy_mean_kernel(const float* row_loss, const int* count, int64_t t,
                                          float* loss) {
  __shared__ float shared[32];
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < t; i += blockDim.x) s += row_loss[i];
  s = block_sum(s, shared);
  if (threadIdx.x == 0) {
    const int n = *count;
    *loss = n > 0 ? s / static_cast<float>(n) : 0.f;
  }
}

}  // namespace

void cross_entropy(Context& ctx, const bf16* logits, const int32_t* targets, float* loss,
                   bf16* dlogits, int64_t t, int64_t v, int64_t valid, int32_t ignore_index,
                   float dloss) {
  require(t > 0 && v > 0, "cross_entropy: T and V must be positive");
  require(valid > 0 && valid <= v, "cross_entropy: valid classes must be in [1, V], got " +
                                       std::to_string(valid) + " for V = " + std::to_string(v));
  require(t <= 0x7fffffff, "cross_entropy: T must fit in 31 bits");
  // Scratch: count (1 int, padded to 256 bytes), row_loss (T) floats.
  char* scratch = static_cast<char*>(ctx.scratch(256 + sizeof(float) * t));
  int* count = reinterpret_cast<int*>(scratch);
  float* row_loss = reinterpret_cast<float*>(scratch + 256);
  const bool vec = v % 8 == 0 && aligned16(logits) && (!dlogits || aligned16(dlogits));
  count_targets_kernel<<<1, 1024, 0, ctx.stream>>>(targets, t, valid, ignore_index, count,
                                                   ctx.data_error_slots + 1);
  MTC_LAUNCH_CHECK("count_targets_kernel");
  cross_entropy_rows_kernel<<<static_cast<unsigned>(t), kRowThreads, 0, ctx.stream>>>(
      logits, targets, count, row_loss, dlogits, v, valid, ignore_index, dloss, vec);
  MTC_LAUNCH_CHECK("cross_entropy_rows_kernel");
  cross_entropy_mean_kernel<<<1, 1024, 0, ctx.stream>>>(row_loss, count, t, loss);
  MTC_LAUNCH_CHECK("cross_entropy_mean_kernel");
}

}  // namespace mtc::rt::cuda
