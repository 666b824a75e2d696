// Device helpers shared by the CUDA kernel files: 16-byte bf16 vectors,
// warp/block reductions, precondition checks and grid sizing.
//
// Assumes sm_80+ (bf16 arithmetic, cp.async); built for sm_90.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/internal.h"

namespace mtc::rt::cuda {

// Blocks for a grid-stride elementwise kernel over n items: enough to fill
// the GPU several times, never more than the items need.
inline unsigned grid_for(int sm_count, int64_t n, int threads) {
  int64_t need = ceil_div(n, threads);
  int64_t cap = static_cast<int64_t>(sm_count) * 16;
  if (need > cap) need = cap;
  return static_cast<unsigned>(need < 1 ? 1 : need);
}
inline unsigned grid_for(const Context& ctx, int64_t n, int threads) {
  return grid_for(ctx.sm_count, n, threads);
}

// Eight bf16 in one 16-byte access.
struct alignas(16) Bf16x8 {
  __nv_bfloat162 h[4];
};

__device__ __forceinline__ void load8(const bf16* p, float (&f)[8]) {
  Bf16x8 v = *reinterpret_cast<const Bf16x8*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 t = __bfloat1622float2(v.h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

__device__ __forceinline__ void store8(bf16* p, const float (&f)[8]) {
  Bf16x8 v;
#pragma unroll
  for (int i = 0; i < 4; ++i) v.h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  *reinterpret_cast<Bf16x8*>(p) = v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Value j (compile-time after unrolling) of a packed vector.
__device__ __forceinline__ float element(const Bf16x8& v, int j) {
  return __bfloat162float((j & 1) ? v.h[j >> 1].y : v.h[j >> 1].x);
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `shared` holds 32 values; callable repeatedly.
template <typename T>
__device__ __forceinline__ T block_sum(T x, T* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  x = warp_sum(x);
  __syncthreads();  // previous use of `shared` is finished
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  T r = lane < warps ? shared[lane] : T(0);
  return warp_sum(r);
}

__device__ __forceinline__ float block_max(float x, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  x = warp_max(x);
  __syncthreads();
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  float r = lane < warps ? shared[lane] : -INFINITY;
  return warp_max(r);
}

}  // namespace mtc::rt::cuda
