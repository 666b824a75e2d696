// Attention forward, FlashAttention-2 style (Dao 2023), on the grouped
// fused-QKV layout: bf16 tensor cores (mma.sync), online softmax in fp32,
// the log-sum-exp of every query row saved for the backward.
//
// Math (host attention.cpp's), per (b, h) and query i with admissible keys
// A(i) (j <= i if causal, mask[b, j] != 0 if masked, j < S):
//   s_j = scale q_i . k_j,  lse_i = log sum_{A(i)} exp(s_j),
//   out_i = sum_{A(i)} exp(s_j - lse_i) v_j;  out_i = 0, lse_i = -inf if A(i) empty.
//
// Design: one block per query tile of kBr = 16 * kWarps rows and one (b, h);
// each warp owns 16 query rows, keeps its Q fragments in
// registers and walks the key tiles (kBc = 64 keys) that can be admissible
// (up to the diagonal when causal). K and V tiles are double-buffered in
// shared memory with cp.async. Scores are scaled into the log2 domain
// (exp2f), masked to -inf, and the running max m / sum l / output O are
// rescaled as in FA-2; P is rounded to bf16 and fed to P V from registers.
// A row whose running max is still -inf uses 0 as its reference so no
// inf - inf appears. Masks are only evaluated on tiles that need them
// (diagonal, sequence end, padding mask). Query tiles are scheduled longest
// (last, when causal) first.
#include "cuda/attention_common.cuh"

namespace mtc::rt::cuda {
namespace {

using namespace attn;

constexpr int kBc = 64;  // keys per tile

struct FwdParams {
  const bf16* qkv;        // (B, S, (H + 2KV) Dh)
  const int32_t* mask;    // (B, S) or nullptr
  bf16* out;              // (B, S, H Dh)
  float* lse;             // (B, H, S)
  int s, h;
  QkvCols cols;
  float scale_log2;       // scale * log2(e)
  bool causal;
};

template <int D, int kWarps>
__global__ void __launch_bounds__(kWarps * 32) attention_fwd_kernel(FwdParams p) {
  constexpr int kBr = 16 * kWarps;
  constexpr int kThreads = kWarps * 32;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* qs = reinterpret_cast<bf16*>(smem_raw);  // [kBr][D]
  bf16* ks = qs + kBr * D;                        // [2][kBc][D]
  bf16* vs = ks + 2 * kBc * D;                    // [2][kBc][D]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int b = blockIdx.y / p.h, h = blockIdx.y % p.h;
  const int g = h / p.cols.r;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kBr;
  const int64_t ld = p.cols.ld;
  const bf16* base = p.qkv + static_cast<int64_t>(b) * p.s * ld;
  const bf16* kbase = base + p.cols.k(g);
  const bf16* vbase = base + p.cols.v(g);
  const int kv_end = p.causal ? min(p.s, q0 + kBr) : p.s;
  const int n_tiles = (kv_end + kBc - 1) / kBc;

  load_tile_async<D, kBr, kThreads>(qs, base + p.cols.q(h), ld, q0, p.s);
  cp_async_commit();
  if (n_tiles > 0) {
    load_tile_async<D, kBc, kThreads>(ks, kbase, ld, 0, p.s);
    load_tile_async<D, kBc, kThreads>(vs, vbase, ld, 0, p.s);
  }
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) load_a<D>(qf[kk], qs, warp * 16, kk * 16, lane);

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int row_base = q0 + warp * 16 + (lane >> 2);  // rows row_base, row_base + 8
  const int32_t* mask_b = p.mask ? p.mask + static_cast<int64_t>(b) * p.s : nullptr;

  for (int j = 0; j < n_tiles; ++j) {
    const int buf = j & 1;
    if (j + 1 < n_tiles) {
      load_tile_async<D, kBc, kThreads>(ks + (buf ^ 1) * kBc * D, kbase, ld, (j + 1) * kBc, p.s);
      load_tile_async<D, kBc, kThreads>(vs + (buf ^ 1) * kBc * D, vbase, ld, (j + 1) * kBc, p.s);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* kt = ks + buf * kBc * D;
    const bf16* vt = vs + buf * kBc * D;

    // S = Q K^T (16 x kBc per warp).
    float s[kBc / 8][4];
#pragma unroll
    for (int i = 0; i < kBc / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kBc / 16; ++np) {
        uint32_t bk[4];
        load_b_nk<D>(bk, kt, np * 16, kk * 16, lane);
        mma(s[2 * np], qf[kk], bk[0], bk[1]);
        mma(s[2 * np + 1], qf[kk], bk[2], bk[3]);
      }
    }

    // Scale into the log2 domain and mask.
    const int k0 = j * kBc;
    const bool need_mask = k0 + kBc > p.s || mask_b != nullptr ||
                           (p.causal && k0 + kBc - 1 > q0 + warp * 16);
#pragma unroll
    for (int nt = 0; nt < kBc / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = s[nt][e] * p.scale_log2;
        if (need_mask) {
          const int col = k0 + nt * 8 + (lane & 3) * 2 + (e & 1);
          const int row = row_base + (e >> 1) * 8;
          if (col >= p.s || (p.causal && col > row) || (mask_b && mask_b[col] == 0)) v = -INFINITY;
        }
        s[nt][e] = v;
      }
    }

    // Online softmax for the thread's two rows.
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kBc / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * rr], s[nt][2 * rr + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[rr], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m[rr] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kBc / 8; ++nt) {
        s[nt][2 * rr] = exp2f(s[nt][2 * rr] - m_use);
        s[nt][2 * rr + 1] = exp2f(s[nt][2 * rr + 1] - m_use);
        sum += s[nt][2 * rr] + s[nt][2 * rr + 1];
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      l[rr] = l[rr] * alpha + sum;
      m[rr] = m_new;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        o[dt][2 * rr] *= alpha;
        o[dt][2 * rr + 1] *= alpha;
      }
    }

    // O += P V.
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
      a[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
      a[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bv[4];
        load_b_kn<D>(bv, vt, dp * 16, kk * 16, lane);
        mma(o[2 * dp], a, bv[0], bv[1]);
        mma(o[2 * dp + 1], a, bv[2], bv[3]);
      }
    }
    __syncthreads();  // everyone is done with this buffer before it is refilled
  }

  // Normalize and write O and lse.
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int row = row_base + rr * 8;
    if (row >= p.s) continue;
    const float inv = l[rr] > 0.f ? 1.f / l[rr] : 0.f;
    bf16* orow = p.out + (static_cast<int64_t>(b) * p.s + row) * p.h * D + h * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      *reinterpret_cast<__nv_bfloat162*>(orow + dt * 8 + (lane & 3) * 2) =
          __floats2bfloat162_rn(o[dt][2 * rr] * inv, o[dt][2 * rr + 1] * inv);
    }
    if ((lane & 3) == 0)
      p.lse[(static_cast<int64_t>(b) * p.h + h) * p.s + row] =
          l[rr] > 0.f ? m[rr] * kLn2 + logf(l[rr]) : -INFINITY;
  }
}

template <int D, int kWarps>
void launch_fwd(Context& ctx, const FwdParams& p, int b) {
  constexpr int kBr = 16 * kWarps;
  const size_t smem = sizeof(bf16) * (kBr * D + 4 * kBc * D);
  static bool configured = false;  // per instantiation, per process
  if (!configured) {
    MTC_CUDA_CHECK(cudaFuncSetAttribute(attention_fwd_kernel<D, kWarps>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    configured = true;
  }
  dim3 grid(static_cast<unsigned>(ceil_div(p.s, kBr)), static_cast<unsigned>(b * p.h));
  attention_fwd_kernel<D, kWarps><<<grid, kWarps * 32, smem, ctx.stream>>>(p);
  MTC_LAUNCH_CHECK("attention_fwd_kernel");
}

}  // namespace

void check_attention_args(const char* op, int64_t b, int64_t s, int64_t h, int64_t kv,
                          int64_t dh) {
  require(b > 0 && s > 0 && h > 0 && kv > 0, std::string(op) + ": B, S, H, KV must be positive");
  require(h % kv == 0, std::string(op) + ": H must be a multiple of KV");
  require(dh == 64 || dh == 128, std::string(op) + ": head_dim must be 64 or 128, got " +
                                     std::to_string(dh));
  require(s <= (1 << 30) && b * h <= 65535 && b * kv <= 65535,
          std::string(op) + ": B*H must be at most 65535");
}

void attention_forward(Context& ctx, const bf16* qkv, const int32_t* mask, bf16* out, float* lse,
                       int64_t b, int64_t s, int64_t h, int64_t kv, int64_t dh, bool causal,
                       float scale) {
  check_attention_args("attention_forward", b, s, h, kv, dh);
  require(aligned16(qkv) && aligned16(out), "attention_forward: qkv and out must be 16-byte aligned");
  if (cudnn_attention_forward(ctx, qkv, mask, out, lse, b, s, h, kv, dh, causal, scale)) return;
  FwdParams p;
  p.qkv = qkv;
  p.mask = mask;
  p.out = out;
  p.lse = lse;
  p.s = static_cast<int>(s);
  p.h = static_cast<int>(h);
  p.cols = attn::QkvCols{(h + 2 * kv) * dh, static_cast<int>(h / kv), static_cast<int>(dh)};
  p.scale_log2 = scale * attn::kLog2e;
  p.causal = causal;
  if (dh == 64)
    launch_fwd<64, 8>(ctx, p, static_cast<int>(b));
  else
    launch_fwd<128, 8>(ctx, p, static_cast<int>(b));
}

}  // namespace mtc::rt::cuda
