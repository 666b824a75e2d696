// Elementwise CUDA kernels: fp32 <-> bf16 conversion, fill, residual /
// broadcast add, gradient accumulation, column sums (bias gradients) and
// dropout (alone and fused into the residual add).
//
// Design: grid-stride loops; a 16-byte path (8 bf16 per access) when every
// pointer is 16-byte aligned and the sizes are multiples of 8, else a scalar
// path (same math). Arithmetic in fp32, one rounding to bf16 at the store.
// Dropout masks come from mtc/rt/dropout_hash.h and are bit-identical to the
// host kernel's.
#include "cuda/common.cuh"
#include "mtc/rt/dropout_hash.h"

namespace mtc::rt::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t global_tid() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// y (n) = bf16(x (n)).
template <bool kVec>
__global__ void convert_f32_bf16_kernel(const float* x, bf16* y, int64_t n) {
  if (kVec) {
    for (int64_t i = global_tid() * 8; i < n; i += grid_stride() * 8) {
      float4 a = *reinterpret_cast<const float4*>(x + i);
      float4 b = *reinterpret_cast<const float4*>(x + i + 4);
      float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
      store8(y + i, f);
    }
  } else {
    for (int64_t i = global_tid(); i < n; i += grid_stride()) y[i] = __float2bfloat16(x[i]);
  }
}

// y (n) = float(x (n)).
template <bool kVec>
__global__ void convert_bf16_f32_kernel(const bf16* x, float* y, int64_t n) {
  if (kVec) {
    for (int64_t i = global_tid() * 8; i < n; i += grid_stride() * 8) {
      float f[8];
      load8(x + i, f);
      *reinterpret_cast<float4*>(y + i) = make_float4(f[0], f[1], f[2], f[3]);
      *reinterpret_cast<float4*>(y + i + 4) = make_float4(f[4], f[5], f[6], f[7]);
    }
  } else {
    for (int64_t i = global_tid(); i < n; i += grid_stride()) y[i] = __bfloat162float(x[i]);
  }
}

template <typename T>
__global__ void fill_kernel(T* x, T value, int64_t n) {
  for (int64_t i = global_tid(); i < n; i += grid_stride()) x[i] = value;
}

// out (n) = a (n) + b[i % nb].
template <bool kVec>
__global__ void add_kernel(const bf16* a, const bf16* b, bf16* out, int64_t n, int64_t nb) {
  if (kVec) {
    for (int64_t i = global_tid() * 8; i < n; i += grid_stride() * 8) {
      float fa[8], fb[8];
      load8(a + i, fa);
      load8(b + i % nb, fb);
#pragma unroll
      for (int j = 0; j < 8; ++j) fa[j] += fb[j];
      store8(out + i, fa);
    }
  } else {
    for (int64_t i = global_tid(); i < n; i += grid_stride())
      out[i] = __float2bfloat16(__bfloat162float(a[i]) + __bfloat162float(b[i % nb]));
  }
}

// The same in fp32.
__global__ void add_f32_kernel(const float* a, const float* b, float* out, int64_t n, int64_t nb) {
  for (int64_t i = global_tid(); i < n; i += grid_stride()) out[i] = a[i] + b[i % nb];
}

// out (n) = (a (n) + b (n)) + c (n), c optional.
template <bool kVec>
__global__ void add3_kernel(const bf16* a, const bf16* b, const bf16* c, bf16* out, int64_t n) {
  if (kVec) {
    for (int64_t i = global_tid() * 8; i < n; i += grid_stride() * 8) {
      float fa[8], fb[8], fc[8];
      load8(a + i, fa);
      load8(b + i, fb);
#pragma unroll
      for (int j = 0; j < 8; ++j) fa[j] += fb[j];
      if (c) {
        load8(c + i, fc);
#pragma unroll
        for (int j = 0; j < 8; ++j) fa[j] += fc[j];
      }
      store8(out + i, fa);
    }
  } else {
    for (int64_t i = global_tid(); i < n; i += grid_stride()) {
      float v = __bfloat162float(a[i]) + __bfloat162float(b[i]);
      if (c) v += __bfloat162float(c[i]);
      out[i] = __float2bfloat16(v);
    }
  }
}

template <typename T>
__device__ __forceinline__ float to_f32(T x) { return static_cast<float>(x); }
template <>
__device__ __forceinline__ float to_f32<bf16>(bf16 x) { return __bfloat162float(x); }

// dst (n) += src (n).
template <typename T>
__global__ void accumulate_kernel(float* dst, const T* src, int64_t n) {
  for (int64_t i = global_tid(); i < n; i += grid_stride()) dst[i] += to_f32(src[i]);
}

// base[dst[i] + j] += rows[i, j]; rows[i, j] = 0   rows (m, n), dst (m)
// distinct row destinations; blockIdx.y strides over the rows.
__global__ void accumulate_rows_kernel(float* base, const int64_t* dst, float* rows, int64_t m,
                                       int64_t n) {
  for (int64_t i = blockIdx.y; i < m; i += gridDim.y) {
    float* d = base + dst[i];
    float* r = rows + i * n;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      d[j] += r[j];
      r[j] = 0.f;
    }
  }
}

// Column sums, stage 1. Block (32 column groups of 8 columns) x (8 row
// lanes); blockIdx.y is a chunk of rows. partial (chunks, N) = the chunk's
// column sums, each summed sequentially per row lane then over the 8 lanes
// in order: deterministic.
template <bool kVec>
__global__ void column_sum_partial_kernel(const bf16* x, float* partial, int64_t m, int64_t n,
                                          int64_t rows_per_chunk) {
  __shared__ float sums[8][32 * 8 + 1];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t col0 = (static_cast<int64_t>(blockIdx.x) * 32 + tx) * 8;
  const int64_t row_begin = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t row_end = min(m, row_begin + rows_per_chunk);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (col0 < n) {
    for (int64_t r = row_begin + ty; r < row_end; r += 8) {
      const bf16* row = x + r * n + col0;
      if (kVec) {
        float f[8];
        load8(row, f);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] += f[j];
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j)
          if (col0 + j < n) acc[j] += __bfloat162float(row[j]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) sums[ty][tx * 8 + j] = acc[j];
  __syncthreads();
  // 256 threads, one column each.
  const int c = threadIdx.x;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 256 + c;
  if (col < n) {
    float s = 0.f;
#pragma unroll
    for (int l = 0; l < 8; ++l) s += sums[l][c];
    partial[static_cast<int64_t>(blockIdx.y) * n + col] = s;
  }
}

// Column sums, stage 2: y (N) += sum over chunks of partial (chunks, N), in
// chunk order.
__global__ void column_sum_final_kernel(const float* partial, float* y, int64_t chunks, int64_t n) {
  const int64_t col = global_tid();
  if (col >= n) return;
  float s = 0.f;
  for (int64_t c = 0; c < chunks; ++c) s += partial[c * n + col];
  y[col] += s;
}

// out (n) = (resid ? resid : 0) + (keep ? x * scale : 0), element i hashed
// at global index base + (i / chunk) * stride + i % chunk: a contiguous
// tensor is one row (chunk = n, stride 0, base = its offset); a
// tensor-parallel slice is (outer, chunk) rows of a global
// (outer, parts, chunk) tensor (stride = parts * chunk, base = index *
// chunk). The vector path needs chunk % 8 == 0 (no vector spans two rows).
// kRows = false: one row (no division), the contiguous case.
template <bool kVec, bool kRows>
__global__ void dropout_kernel(const bf16* x, const bf16* resid, bf16* out, int64_t n, float p,
                               float scale, uint64_t stream, uint64_t base, int64_t chunk,
                               uint64_t stride) {
  if (kVec) {
    for (int64_t i = global_tid() * 8; i < n; i += grid_stride() * 8) {
      float f[8], r[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      load8(x + i, f);
      if (resid) load8(resid + i, r);
      const uint64_t g = kRows ? base + static_cast<uint64_t>(i / chunk) * stride +
                                     static_cast<uint64_t>(i % chunk)
                               : base + static_cast<uint64_t>(i);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        bool keep = dropout_keep(stream, g + static_cast<uint64_t>(j), p);
        f[j] = r[j] + (keep ? f[j] * scale : 0.f);
      }
      store8(out + i, f);
    }
  } else {
    for (int64_t i = global_tid(); i < n; i += grid_stride()) {
      const uint64_t g = kRows ? base + static_cast<uint64_t>(i / chunk) * stride +
                                     static_cast<uint64_t>(i % chunk)
                               : base + static_cast<uint64_t>(i);
      bool keep = dropout_keep(stream, g, p);
      float r = resid ? __bfloat162float(resid[i]) : 0.f;
      out[i] = __float2bfloat16(r + (keep ? __bfloat162float(x[i]) * scale : 0.f));
    }
  }
}

}  // namespace

void convert(Context& ctx, const float* x, bf16* y, int64_t n) {
  if (n <= 0) return;
  bool vec = n % 8 == 0 && aligned16(x) && aligned16(y);
  unsigned grid = grid_for(ctx, vec ? n / 8 : n, kThreads);
  if (vec)
    convert_f32_bf16_kernel<true><<<grid, kThreads, 0, ctx.stream>>>(x, y, n);
  else
    convert_f32_bf16_kernel<false><<<grid, kThreads, 0, ctx.stream>>>(x, y, n);
  MTC_LAUNCH_CHECK("convert_f32_bf16_kernel");
}

void convert(Context& ctx, const bf16* x, float* y, int64_t n) {
  if (n <= 0) return;
  bool vec = n % 8 == 0 && aligned16(x) && aligned16(y);
  unsigned grid = grid_for(ctx, vec ? n / 8 : n, kThreads);
  if (vec)
    convert_bf16_f32_kernel<true><<<grid, kThreads, 0, ctx.stream>>>(x, y, n);
  else
    convert_bf16_f32_kernel<false><<<grid, kThreads, 0, ctx.stream>>>(x, y, n);
  MTC_LAUNCH_CHECK("convert_bf16_f32_kernel");
}

void fill(Context& ctx, float* x, float value, int64_t n) {
  if (n <= 0) return;
  fill_kernel<float><<<grid_for(ctx, n, kThreads), kThreads, 0, ctx.stream>>>(x, value, n);
  MTC_LAUNCH_CHECK("fill_kernel<float>");
}

void fill(Context& ctx, bf16* x, float value, int64_t n) {
  if (n <= 0) return;
  fill_kernel<bf16><<<grid_for(ctx, n, kThreads), kThreads, 0, ctx.stream>>>(
      x, __float2bfloat16(value), n);
  MTC_LAUNCH_CHECK("fill_kernel<bf16>");
}

void add(Context& ctx, const bf16* a, const bf16* b, bf16* out, int64_t n, int64_t nb) {
  if (n <= 0) return;
  require(nb > 0 && n % nb == 0, "add: nb must divide n");
  bool vec = n % 8 == 0 && nb % 8 == 0 && aligned16(a) && aligned16(b) && aligned16(out);
  unsigned grid = grid_for(ctx, vec ? n / 8 : n, kThreads);
  if (vec)
    add_kernel<true><<<grid, kThreads, 0, ctx.stream>>>(a, b, out, n, nb);
  else
    add_kernel<false><<<grid, kThreads, 0, ctx.stream>>>(a, b, out, n, nb);
  MTC_LAUNCH_CHECK("add_kernel");
}

void add(Context& ctx, const float* a, const float* b, float* out, int64_t n, int64_t nb) {
  if (n <= 0) return;
  require(nb > 0 && n % nb == 0, "add: nb must divide n");
  add_f32_kernel<<<grid_for(ctx, n, kThreads), kThreads, 0, ctx.stream>>>(a, b, out, n, nb);
  MTC_LAUNCH_CHECK("add_f32_kernel");
}

void add3_on(cudaStream_t stream, int sm_count, const bf16* a, const bf16* b, const bf16* c,
             bf16* out, int64_t n) {
  if (n <= 0) return;
  bool vec = n % 8 == 0 && aligned16(a) && aligned16(b) && (!c || aligned16(c)) && aligned16(out);
  unsigned grid = grid_for(sm_count, vec ? n / 8 : n, kThreads);
  if (vec)
    add3_kernel<true><<<grid, kThreads, 0, stream>>>(a, b, c, out, n);
  else
    add3_kernel<false><<<grid, kThreads, 0, stream>>>(a, b, c, out, n);
  MTC_LAUNCH_CHECK("add3_kernel");
}

void accumulate(Context& ctx, float* dst, const bf16* src, int64_t n) {
  if (n <= 0) return;
  accumulate_kernel<bf16><<<grid_for(ctx, n, kThreads), kThreads, 0, ctx.stream>>>(dst, src, n);
  MTC_LAUNCH_CHECK("accumulate_kernel<bf16>");
}

void accumulate(Context& ctx, float* dst, const float* src, int64_t n) {
  if (n <= 0) return;
  accumulate_kernel<float><<<grid_for(ctx, n, kThreads), kThreads, 0, ctx.stream>>>(dst, src, n);
  MTC_LAUNCH_CHECK("accumulate_kernel<float>");
}

void accumulate_rows(Context& ctx, float* base, const int64_t* dst, float* rows, int64_t m,
                     int64_t n) {
  if (m <= 0 || n <= 0) return;
  const unsigned x = static_cast<unsigned>(std::min<int64_t>(ceil_div(n, kThreads), 8));
  const unsigned y = static_cast<unsigned>(std::min<int64_t>(m, 65535));
  accumulate_rows_kernel<<<dim3(x, y), kThreads, 0, ctx.stream>>>(base, dst, rows, m, n);
  MTC_LAUNCH_CHECK("accumulate_rows_kernel");
}

void reduce_rows_accumulate(Context& ctx, const bf16* x, float* y, int64_t m, int64_t n) {
  if (m <= 0 || n <= 0) return;
  const bool vec = n % 8 == 0 && aligned16(x);
  const int64_t col_blocks = ceil_div(n, 256);
  // About two blocks per SM, each chunk at least 64 rows.
  int64_t chunks = ceil_div(2 * ctx.sm_count, col_blocks);
  chunks = std::max<int64_t>(1, std::min(chunks, ceil_div(m, 64)));
  chunks = std::min<int64_t>(chunks, 65535);
  const int64_t rows_per_chunk = ceil_div(m, chunks);
  chunks = ceil_div(m, rows_per_chunk);
  float* partial = static_cast<float*>(ctx.scratch(sizeof(float) * chunks * n));  // (chunks, N)
  dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(chunks));
  if (vec)
    column_sum_partial_kernel<true><<<grid, 256, 0, ctx.stream>>>(x, partial, m, n, rows_per_chunk);
  else
    column_sum_partial_kernel<false><<<grid, 256, 0, ctx.stream>>>(x, partial, m, n, rows_per_chunk);
  MTC_LAUNCH_CHECK("column_sum_partial_kernel");
  column_sum_final_kernel<<<static_cast<unsigned>(ceil_div(n, 256)), 256, 0, ctx.stream>>>(
      partial, y, chunks, n);
  MTC_LAUNCH_CHECK("column_sum_final_kernel");
}

namespace {

// Element (o, c) of the (n / chunk, chunk) input at global index
// base + o * stride + c.
void launch_dropout(Context& ctx, const bf16* x, const bf16* resid, bf16* out, int64_t n, float p,
                    uint64_t seed, uint64_t key, int64_t base, int64_t chunk, int64_t stride) {
  if (n <= 0) return;
  require(chunk > 0 && n % chunk == 0, "dropout: the row length must divide the element count");
  // p <= 0 keeps everything (scale 1); p >= 1 drops everything (scale 0 with
  // keep never true, since uniform < 1 <= p).
  const float pe = p <= 0.f ? 0.f : p;
  const float scale = pe >= 1.f ? 0.f : 1.f / (1.f - pe);
  const uint64_t stream = dropout_stream(seed, key);
  bool vec = n % 8 == 0 && chunk % 8 == 0 && aligned16(x) && aligned16(out) &&
             (!resid || aligned16(resid));
  unsigned grid = grid_for(ctx, vec ? n / 8 : n, kThreads);
  const auto b = static_cast<uint64_t>(base);
  const auto st = static_cast<uint64_t>(stride);
  const bool rows = chunk != n;
  if (vec && rows)
    dropout_kernel<true, true><<<grid, kThreads, 0, ctx.stream>>>(x, resid, out, n, pe, scale,
                                                                  stream, b, chunk, st);
  else if (vec)
    dropout_kernel<true, false><<<grid, kThreads, 0, ctx.stream>>>(x, resid, out, n, pe, scale,
                                                                   stream, b, chunk, st);
  else if (rows)
    dropout_kernel<false, true><<<grid, kThreads, 0, ctx.stream>>>(x, resid, out, n, pe, scale,
                                                                   stream, b, chunk, st);
  else
    dropout_kernel<false, false><<<grid, kThreads, 0, ctx.stream>>>(x, resid, out, n, pe, scale,
                                                                    stream, b, chunk, st);
  MTC_LAUNCH_CHECK("dropout_kernel");
}

}  // namespace

void dropout(Context& ctx, const bf16* x, bf16* y, int64_t n, float p, uint64_t seed,
             uint64_t key, int64_t offset) {
  launch_dropout(ctx, x, nullptr, y, n, p, seed, key, offset, n > 0 ? n : 1, 0);
}

void dropout_slice(Context& ctx, const bf16* x, bf16* y, int64_t outer, int64_t chunk,
                   int64_t parts, int64_t index, float p, uint64_t seed, uint64_t key) {
  require(outer >= 0 && chunk > 0 && parts > 0 && index >= 0 && index < parts,
          "dropout_slice: needs outer >= 0, chunk > 0 and 0 <= index < parts");
  launch_dropout(ctx, x, nullptr, y, outer * chunk, p, seed, key, index * chunk, chunk,
                 parts * chunk);
}

void dropout_add(Context& ctx, const bf16* x, const bf16* resid, bf16* out, int64_t n, float p,
                 uint64_t seed, uint64_t key, int64_t offset) {
  launch_dropout(ctx, x, resid, out, n, p, seed, key, offset, n > 0 ? n : 1, 0);
}

}  // namespace mtc::rt::cuda
