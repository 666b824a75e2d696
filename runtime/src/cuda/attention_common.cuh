// Building blocks of the FlashAttention-2 style kernels (attention_fwd.cu,
// attention_bwd.cu): bf16 tensor-core MMA (mma.sync m16n8k16), ldmatrix,
// cp.async, the swizzled shared-memory tile layout, and the fused-QKV
// column offsets.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16 inputs, fp32 accumulate;
// g = lane / 4, q = lane % 4):
//   A (16x16, row-major): a0 (g, 2q..2q+1), a1 (g+8, 2q..), a2 (g, 8+2q..),
//                         a3 (g+8, 8+2q..)
//   B (16x8, "col"):      b0 (k = 2q..2q+1, n = g), b1 (k = 8+2q.., n = g)
//   C (16x8 fp32):        c0,c1 (g, 2q..2q+1), c2,c3 (g+8, 2q..2q+1)
// The C layout of two adjacent n-tiles is the A layout of one 16-wide k-slice,
// which is how P (and dS) feed the next MMA straight from registers.
//
// Shared-memory tiles are row-major [rows][W] bf16 (W = 64 or 128) with the
// 16-byte chunks of row r XOR-swizzled by r % 8: the 8 rows an ldmatrix
// reads at one logical chunk land in 8 different bank groups.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "cuda/common.cuh"

namespace mtc::rt::cuda::attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Element offset of (row, col) in a swizzled [rows][W] tile; col % 8 is the
// position inside the 16-byte chunk.
template <int W>
__device__ __forceinline__ int swz(int row, int col) {
  return row * W + ((((col >> 3) ^ row) & 7) | ((col >> 3) & ~7)) * 8 + (col & 7);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)),
               "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// d += a * b for one 16x8x16 tile.
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// A fragment (16 rows x 16 cols at (row0, col0)) of a row-major swizzled tile.
template <int W>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16* tile, int row0, int col0,
                                       int lane) {
  ldmatrix_x4(a, tile + swz<W>(row0 + (lane & 15), col0 + (lane >> 4) * 8));
}

// A fragment of the TRANSPOSE of a stored tile: A(i, k) = tile[k][i] for
// i in [row0, row0+16) (stored columns), k in [col0, col0+16) (stored rows).
template <int W>
__device__ __forceinline__ void load_a_trans(uint32_t (&a)[4], const bf16* tile, int row0,
                                             int col0, int lane) {
  ldmatrix_x4_trans(a, tile + swz<W>(col0 + (lane & 7) + (lane >> 4) * 8,
                                     row0 + ((lane >> 3) & 1) * 8));
}

// B fragments of two n-tiles (n0..n0+7, n0+8..n0+15) x one k-slice
// (k0..k0+15) when B(k, n) = tile[n][k] (stored rows are n): {b[0], b[1]}
// for the first n-tile, {b[2], b[3]} for the second.
template <int W>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const bf16* tile, int n0, int k0,
                                          int lane) {
  ldmatrix_x4(b, tile + swz<W>(n0 + (lane & 7) + (lane >> 4) * 8, k0 + ((lane >> 3) & 1) * 8));
}

// The same two n-tiles x one k-slice when B(k, n) = tile[k][n] (stored rows
// are k).
template <int W>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const bf16* tile, int n0, int k0,
                                          int lane) {
  ldmatrix_x4_trans(b, tile + swz<W>(k0 + (lane & 7) + ((lane >> 3) & 1) * 8, n0 + (lane >> 4) * 8));
}

// Copies rows [row0, row0 + ROWS) of a (S, ld) matrix's W-column slice at
// `src` into a swizzled tile with cp.async; rows >= s are zero-filled.
template <int W, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* src, int64_t ld, int row0,
                                                int s) {
  constexpr int kChunks = W / 8;
#pragma unroll
  for (int i = threadIdx.x; i < ROWS * kChunks; i += THREADS) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    const int gr = row0 + r;
    const bool ok = gr < s;
    cp_async16(tile + swz<W>(r, c), src + static_cast<int64_t>(ok ? gr : 0) * ld + c, ok);
  }
}

// Column offsets of head h's q and group g's k and v in a fused qkv row.
struct QkvCols {
  int64_t ld;  // (H + 2 KV) * Dh
  int r;       // H / KV
  int dh;
  __device__ __forceinline__ int64_t q(int h) const {
    return static_cast<int64_t>(h / r) * (r + 2) * dh + static_cast<int64_t>(h % r) * dh;
  }
  __device__ __forceinline__ int64_t k(int g) const {
    return static_cast<int64_t>(g) * (r + 2) * dh + static_cast<int64_t>(r) * dh;
  }
  __device__ __forceinline__ int64_t v(int g) const { return k(g) + dh; }
};

}  // namespace mtc::rt::cuda::attn
