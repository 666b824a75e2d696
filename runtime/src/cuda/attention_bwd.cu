// Attention backward, FlashAttention-2 style: P is recomputed from the saved
// lse, nothing of size S x S is stored; GQA through the grouped fused-QKV
// layout (the R query heads of a KV group accumulate into one dk, dv).
//
// Math (host attention.cpp's), per (b, h), query i, admissible key j:
//   P_ij = exp(scale q_i.k_j - lse_i),  dP_ij = dout_i . v_j,
//   D_i = dout_i . out_i,  dS_ij = P_ij (dP_ij - D_i),
//   dq_i = scale sum_j dS_ij k_j,  dk_j = scale sum_{h in group, i} dS_ij q_i,
//   dv_j = sum_{h in group, i} P_ij dout_i.
//
// Design (three launches):
//   1. attention_bwd_prep: D_i (B, H, S) fp32 from dout and out, one warp per
//      (token, head); the fp32 dq accumulator (B, S, H, Dh) is zeroed.
//   2. attention_bwd_kernel: one block per (key tile of kBc = 16 * kWarps
//      keys, b, KV group); warp w owns keys 16w..16w+15 and keeps their dk, dv
//      in fp32 registers while it walks the R heads x the query tiles (kBr =
//      64 queries) that can see them (from the diagonal on when causal). Per
//      query tile, with the tile's Q and dout double-buffered in shared
//      memory (cp.async): S^T = K Q^T, P^T = exp2(S^T scale log2e - lse log2e)
//      (masked to 0), dV += P^T dout, dP^T = V dout^T, dS^T = P^T (dP^T - D),
//      dK += dS^T Q, all from registers; dS^T goes to shared memory as bf16,
//      and each warp then computes 16 query rows of dS K and adds them to
//      the dq accumulator with 8-byte fp32 atomics (the only atomics).
//   3. attention_bwd_dq: dq = scale * accumulator, rounded to bf16 into the
//      q slots of dqkv. dk and dv were written by launch 2, so every element
//      of dqkv is written.
// Rows without admissible keys have lse = -inf and get P = 0 (no gradient),
// as do query rows past S (lse tile set to +inf).
#include "cuda/attention_common.cuh"

namespace mtc::rt::cuda {
namespace {

using namespace attn;

constexpr int kBr = 64;  // queries per tile

struct BwdParams {
  const bf16* qkv;       // (B, S, (H + 2KV) Dh)
  const int32_t* mask;   // (B, S) or nullptr
  const bf16* dout;      // (B, S, H Dh)
  const float* lse;      // (B, H, S)
  const float* dvec;     // (B, H, S)  D_i
  float* dq_accum;       // (B, S, H, Dh)
  bf16* dqkv;            // (B, S, (H + 2KV) Dh)
  int s, h, kv;
  QkvCols cols;
  float scale, scale_log2;
  bool causal;
};

// dvec (B, H, S) = rowsum(dout * out) for every (b, s, h).
__global__ void attention_bwd_prep_kernel(const bf16* dout, const bf16* out, float* dvec,
                                          int64_t rows, int s, int h, int dh) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // row = (b * S + pos) * H + head
  const bf16* a = dout + row * dh;
  const bf16* o = out + row * dh;
  float acc = 0.f;
  for (int c = lane * 2; c < dh; c += 64) {
    float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(a + c));
    float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(o + c));
    acc += x.x * y.x + x.y * y.y;
  }
  acc = warp_sum(acc);
  if (lane == 0) {
    const int64_t head = row % h, bs = row / h, pos = bs % s, bi = bs / s;
    dvec[(bi * h + head) * s + pos] = acc;
  }
}

// dqkv q slots = bf16(scale * dq_accum), 4 values per thread.
__global__ void attention_bwd_dq_kernel(const float* dq_accum, bf16* dqkv, int64_t n, int h,
                                        QkvCols cols, float scale) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (i >= n) return;  // i = ((b * S + pos) * H + head) * Dh + c
  const int c = static_cast<int>(i % cols.dh);
  const int64_t row = i / cols.dh;
  const int head = static_cast<int>(row % h);
  const int64_t token = row / h;
  const float4 v = *reinterpret_cast<const float4*>(dq_accum + i);
  __nv_bfloat162* dst =
      reinterpret_cast<__nv_bfloat162*>(dqkv + token * cols.ld + cols.q(head) + c);
  dst[0] = __floats2bfloat162_rn(v.x * scale, v.y * scale);
  dst[1] = __floats2bfloat162_rn(v.z * scale, v.w * scale);
}

template <int D, int kWarps>
__global__ void __launch_bounds__(kWarps * 32) attention_bwd_kernel(BwdParams p) {
  constexpr int kBc = 16 * kWarps;
  constexpr int kThreads = kWarps * 32;
  static_assert(kBc == kBr, "the dq step maps warps to 16-row query slices");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* ks = reinterpret_cast<bf16*>(smem_raw);  // [kBc][D]
  bf16* vs = ks + kBc * D;                        // [kBc][D]
  bf16* qs = vs + kBc * D;                        // [2][kBr][D]
  bf16* dos = qs + 2 * kBr * D;                   // [2][kBr][D]
  bf16* dss = dos + 2 * kBr * D;                  // [kBc][kBr]  dS^T
  float* lse_s = reinterpret_cast<float*>(dss + kBc * kBr);  // [2][kBr]  lse * log2e
  float* dvec_s = lse_s + 2 * kBr;                            // [2][kBr]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int b = blockIdx.y / p.kv, g = blockIdx.y % p.kv;
  const int k0 = blockIdx.x * kBc;
  const int r_heads = p.cols.r;
  const int64_t ld = p.cols.ld;
  const bf16* base = p.qkv + static_cast<int64_t>(b) * p.s * ld;
  const bf16* dout_b = p.dout + static_cast<int64_t>(b) * p.s * p.h * D;
  const int32_t* mask_b = p.mask ? p.mask + static_cast<int64_t>(b) * p.s : nullptr;

  const int qt_begin = p.causal ? k0 / kBr : 0;
  const int n_qt = (p.s + kBr - 1) / kBr - qt_begin;
  const int iters = r_heads * n_qt;

  // Loads the Q / dout tiles and the lse / D rows of iteration `it`.
  auto prefetch = [&](int it, int buf) {
    const int head = g * r_heads + it / n_qt;
    const int q0 = (qt_begin + it % n_qt) * kBr;
    load_tile_async<D, kBr, kThreads>(qs + buf * kBr * D, base + p.cols.q(head), ld, q0, p.s);
    load_tile_async<D, kBr, kThreads>(dos + buf * kBr * D, dout_b + head * D,
                                      static_cast<int64_t>(p.h) * D, q0, p.s);
    for (int i = threadIdx.x; i < kBr; i += kThreads) {
      const int q = q0 + i;
      float l2 = INFINITY, dv = 0.f;  // rows past S: P = exp2(-inf) = 0
      if (q < p.s) {
        const int64_t idx = (static_cast<int64_t>(b) * p.h + head) * p.s + q;
        const float l = p.lse[idx];
        l2 = l == -INFINITY ? INFINITY : l * kLog2e;  // no admissible key: P = 0
        dv = p.dvec[idx];
      }
      lse_s[buf * kBr + i] = l2;
      dvec_s[buf * kBr + i] = dv;
    }
  };

  load_tile_async<D, kBc, kThreads>(ks, base + p.cols.k(g), ld, k0, p.s);
  load_tile_async<D, kBc, kThreads>(vs, base + p.cols.v(g), ld, k0, p.s);
  if (iters > 0) prefetch(0, 0);
  cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  const int key_base = k0 + warp * 16 + (lane >> 2);  // keys key_base, key_base + 8

  for (int it = 0; it < iters; ++it) {
    const int buf = it & 1;
    const int head = g * r_heads + it / n_qt;
    const int q0 = (qt_begin + it % n_qt) * kBr;
    if (it + 1 < iters) {
      prefetch(it + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* qt = qs + buf * kBr * D;
    const bf16* dot = dos + buf * kBr * D;
    const float* lt = lse_s + buf * kBr;
    const float* dvt = dvec_s + buf * kBr;

    // S^T = K_w Q^T (16 keys x kBr queries).
    float st[kBr / 8][4];
#pragma unroll
    for (int i = 0; i < kBr / 8; ++i) st[i][0] = st[i][1] = st[i][2] = st[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      load_a<D>(a, ks, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < kBr / 16; ++np) {
        uint32_t bq[4];
        load_b_nk<D>(bq, qt, np * 16, kk * 16, lane);
        mma(st[2 * np], a, bq[0], bq[1]);
        mma(st[2 * np + 1], a, bq[2], bq[3]);
      }
    }
    // P^T, masked to 0.
    const bool need_mask = k0 + kBc > p.s || mask_b != nullptr || (p.causal && k0 + kBc - 1 > q0);
#pragma unroll
    for (int nt = 0; nt < kBr / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = nt * 8 + (lane & 3) * 2 + (e & 1);
        float pv = exp2f(st[nt][e] * p.scale_log2 - lt[qc]);
        if (need_mask) {
          const int key = key_base + (e >> 1) * 8;
          if (key >= p.s || (p.causal && key > q0 + qc) || (mask_b && mask_b[key] == 0)) pv = 0.f;
        }
        st[nt][e] = pv;
      }
    }
    // dV += P^T dout.
#pragma unroll
    for (int kk = 0; kk < kBr / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack_bf16(st[2 * kk][0], st[2 * kk][1]);
      a[1] = pack_bf16(st[2 * kk][2], st[2 * kk][3]);
      a[2] = pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]);
      a[3] = pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bo[4];
        load_b_kn<D>(bo, dot, dp * 16, kk * 16, lane);
        mma(dv[2 * dp], a, bo[0], bo[1]);
        mma(dv[2 * dp + 1], a, bo[2], bo[3]);
      }
    }
    // dP^T = V_w dout^T (16 keys x kBr queries).
    float dpt[kBr / 8][4];
#pragma unroll
    for (int i = 0; i < kBr / 8; ++i) dpt[i][0] = dpt[i][1] = dpt[i][2] = dpt[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      load_a<D>(a, vs, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < kBr / 16; ++np) {
        uint32_t bo[4];
        load_b_nk<D>(bo, dot, np * 16, kk * 16, lane);
        mma(dpt[2 * np], a, bo[0], bo[1]);
        mma(dpt[2 * np + 1], a, bo[2], bo[3]);
      }
    }
    // dS^T = P^T (dP^T - D), stored to shared memory for dq.
#pragma unroll
    for (int nt = 0; nt < kBr / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = nt * 8 + (lane & 3) * 2 + (e & 1);
        dpt[nt][e] = st[nt][e] * (dpt[nt][e] - dvt[qc]);
      }
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const int krow = warp * 16 + (lane >> 2) + rr * 8;
        *reinterpret_cast<uint32_t*>(dss + swz<kBr>(krow, nt * 8 + (lane & 3) * 2)) =
            pack_bf16(dpt[nt][2 * rr], dpt[nt][2 * rr + 1]);
      }
    }
    // dK += dS^T Q.
#pragma unroll
    for (int kk = 0; kk < kBr / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack_bf16(dpt[2 * kk][0], dpt[2 * kk][1]);
      a[1] = pack_bf16(dpt[2 * kk][2], dpt[2 * kk][3]);
      a[2] = pack_bf16(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
      a[3] = pack_bf16(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bq[4];
        load_b_kn<D>(bq, qt, dp * 16, kk * 16, lane);
        mma(dk[2 * dp], a, bq[0], bq[1]);
        mma(dk[2 * dp + 1], a, bq[2], bq[3]);
      }
    }
    __syncthreads();  // dS^T complete

    // dq rows [q0 + 16w, +16) += dS K_tile; warp w takes query slice w.
    {
      float dq[D / 8][4];
#pragma unroll
      for (int i = 0; i < D / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kBc / 16; ++kk) {
        uint32_t a[4];
        load_a_trans<kBr>(a, dss, warp * 16, kk * 16, lane);
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t bk[4];
          load_b_kn<D>(bk, ks, dp * 16, kk * 16, lane);
          mma(dq[2 * dp], a, bk[0], bk[1]);
          mma(dq[2 * dp + 1], a, bk[2], bk[3]);
        }
      }
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const int q = q0 + warp * 16 + (lane >> 2) + rr * 8;
        if (q >= p.s) continue;
        float* dst = p.dq_accum + ((static_cast<int64_t>(b) * p.s + q) * p.h + head) * D +
                     (lane & 3) * 2;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt)
          atomicAdd(reinterpret_cast<float2*>(dst + dt * 8),
                    make_float2(dq[dt][2 * rr], dq[dt][2 * rr + 1]));
      }
    }
    __syncthreads();  // buffers and dS^T free for the next iteration
  }
  cp_async_wait<0>();

  // Write dk (scaled) and dv for the warp's 16 keys.
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int key = key_base + rr * 8;
    if (key >= p.s) continue;
    bf16* row = p.dqkv + (static_cast<int64_t>(b) * p.s + key) * ld;
    bf16* dkr = row + p.cols.k(g) + (lane & 3) * 2;
    bf16* dvr = row + p.cols.v(g) + (lane & 3) * 2;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      *reinterpret_cast<__nv_bfloat162*>(dkr + dt * 8) =
          __floats2bfloat162_rn(dk[dt][2 * rr] * p.scale, dk[dt][2 * rr + 1] * p.scale);
      *reinterpret_cast<__nv_bfloat162*>(dvr + dt * 8) =
          __floats2bfloat162_rn(dv[dt][2 * rr], dv[dt][2 * rr + 1]);
    }
  }
}

template <int D, int kWarps>
void launch_bwd(Context& ctx, const BwdParams& p, int b) {
  constexpr int kBc = 16 * kWarps;
  const size_t smem = sizeof(bf16) * (2 * kBc * D + 4 * kBr * D + kBc * kBr) +
                      sizeof(float) * 4 * kBr;
  static bool configured = false;  // per instantiation, per process
  if (!configured) {
    MTC_CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_kernel<D, kWarps>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    configured = true;
  }
  dim3 grid(static_cast<unsigned>(ceil_div(p.s, kBc)), static_cast<unsigned>(b * p.kv));
  attention_bwd_kernel<D, kWarps><<<grid, kWarps * 32, smem, ctx.stream>>>(p);
  MTC_LAUNCH_CHECK("attention_bwd_kernel");
}

}  // namespace

size_t attention_backward_scratch_bytes(int64_t b, int64_t s, int64_t h, int64_t dh) {
  const size_t dq = sizeof(float) * static_cast<size_t>(b * s * h * dh);
  const size_t dvec = sizeof(float) * static_cast<size_t>(b * h * s);
  return ((dq + 255) / 256) * 256 + dvec;
}

void attention_backward(Context& ctx, const bf16* qkv, const int32_t* mask, const bf16* out,
                        const float* lse, const bf16* dout, bf16* dqkv, int64_t b, int64_t s,
                        int64_t h, int64_t kv, int64_t dh, bool causal, float scale) {
  check_attention_args("attention_backward", b, s, h, kv, dh);
  require(aligned16(qkv) && aligned16(out) && aligned16(dout) && aligned16(dqkv),
          "attention_backward: qkv, out, dout and dqkv must be 16-byte aligned");
  if (cudnn_attention_backward(ctx, qkv, mask, out, lse, dout, dqkv, b, s, h, kv, dh, causal,
                               scale))
    return;
  char* scratch = static_cast<char*>(ctx.scratch(attention_backward_scratch_bytes(b, s, h, dh)));
  float* dq_accum = reinterpret_cast<float*>(scratch);  // (B, S, H, Dh)
  const size_t dq_bytes = sizeof(float) * static_cast<size_t>(b * s * h * dh);
  float* dvec = reinterpret_cast<float*>(scratch + ((dq_bytes + 255) / 256) * 256);  // (B, H, S)

  MTC_CUDA_CHECK(cudaMemsetAsync(dq_accum, 0, dq_bytes, ctx.stream));
  const int64_t rows = b * s * h;
  attention_bwd_prep_kernel<<<static_cast<unsigned>(ceil_div(rows * 32, 256)), 256, 0,
                              ctx.stream>>>(dout, out, dvec, rows, static_cast<int>(s),
                                            static_cast<int>(h), static_cast<int>(dh));
  MTC_LAUNCH_CHECK("attention_bwd_prep_kernel");

  BwdParams p;
  p.qkv = qkv;
  p.mask = mask;
  p.dout = dout;
  p.lse = lse;
  p.dvec = dvec;
  p.dq_accum = dq_accum;
  p.dqkv = dqkv;
  p.s = static_cast<int>(s);
  p.h = static_cast<int>(h);
  p.kv = static_cast<int>(kv);
  p.cols = attn::QkvCols{(h + 2 * kv) * dh, static_cast<int>(h / kv), static_cast<int>(dh)};
  p.scale = scale;
  p.scale_log2 = scale * attn::kLog2e;
  p.causal = causal;
  if (dh == 64)
    launch_bwd<64, 4>(ctx, p, static_cast<int>(b));
  else
    launch_bwd<128, 4>(ctx, p, static_cast<int>(b));

  const int64_t n = rows * dh;
  attention_bwd_dq_kernel<<<static_cast<unsigned>(ceil_div(n / 4, 256)), 256, 0, ctx.stream>>>(
      dq_accum, dqkv, n, static_cast<int>(h), p.cols, scale);
  MTC_LAUNCH_CHECK("attention_bwd_dq_kernel");
}

}  // namespace mtc::rt::cuda
