// Optimizer kernels: the squared gradient norm (for clipping) and one fused,
// multi-tensor AdamW step over the single fp32 parameter allocation.
//
// Math: host optimizer.cpp's (PyTorch's torch.optim.AdamW), per element,
//   g  = grad * grad_scale * clip
//   p *= 1 - lr * wd                     (wd = 0 for tensors without decay)
//   m  = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
// with bc1 = 1 - b1^step, bc2 = 1 - b2^step computed in double on the host,
// and clip = min(1, max_norm / (||grad|| * grad_scale + 1e-6)) read from the
// device double that sum_squares wrote (no host synchronization).
//
// Design: AdamWPlan cuts every tensor into chunks of at most kChunk elements
// (one block each, table uploaded once), so one launch covers all tensors
// whatever their sizes, and each block knows its tensor's weight-decay flag
// without a search. Each chunk also carries the offset of its moments
// (state_offset), so a rank of a sharded optimizer keeps m and v for its
// shard only. The bf16 compute copy of each parameter is written in the same
// pass. sum_squares: per-block double partials, then one block sums them in
// order (deterministic); the multi-range form cuts the ranges into pieces of
// at most kSumPiece elements (one block each, table uploaded once by
// SumSquaresPlan) and sums the per-piece partials the same way.
#include <algorithm>
#include <cmath>

#include "cuda/common.cuh"

namespace mtc::rt::cuda {
namespace {

constexpr int64_t kChunk = 1 << 16;
constexpr int kAdamThreads = 256;
constexpr int kSumBlocksMax = 1024;

constexpr int64_t kSumPiece = 1 << 16;
constexpr int kSumThreads = 256;

struct Chunk {
  int64_t offset;        // first element in params, grads, params_bf16
  int64_t state_offset;  // first element in m, v
  int32_t numel;         // <= kChunk
  float decay_flag;      // 1 if the tensor decays, else 0
};

struct SumPiece {
  int64_t offset;  // first element
  int64_t numel;   // <= kSumPiece
};

// partial (gridDim.x) = per-block sums of x^2 (n) in double.
__global__ void sum_squares_partial_kernel(const float* x, int64_t n, bool vec, double* partial) {
  __shared__ double shared[32];
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double acc = 0.0;
  int64_t done = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = tid; i < n4; i += stride) {
      float4 f = reinterpret_cast<const float4*>(x)[i];
      acc += static_cast<double>(f.x) * f.x + static_cast<double>(f.y) * f.y +
             static_cast<double>(f.z) * f.z + static_cast<double>(f.w) * f.w;
    }
    done = n4 * 4;
  }
  for (int64_t i = done + tid; i < n; i += stride) acc += static_cast<double>(x[i]) * x[i];
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// partial (pieces) = per-piece sums of x^2 in double; one block per piece.
__global__ void __launch_bounds__(kSumThreads) sum_squares_pieces_kernel(const float* x,
                                                                       const SumPiece* pieces,
                                                                       double* partial) {
  __shared__ double shared[32];
  const SumPiece pc = pieces[blockIdx.x];
  const float* p = x + pc.offset;
  const int n = static_cast<int>(pc.numel);
  double acc = 0.0;
  int done = 0;
  if ((reinterpret_cast<uintptr_t>(p) & 15u) == 0) {
    const int n4 = n / 4;
    for (int i = threadIdx.x; i < n4; i += kSumThreads) {
      const float4 f = reinterpret_cast<const float4*>(p)[i];
      acc += static_cast<double>(f.x) * f.x + static_cast<double>(f.y) * f.y +
             static_cast<double>(f.z) * f.z + static_cast<double>(f.w) * f.w;
    }
    done = n4 * 4;
  }
  for (int i = done + threadIdx.x; i < n; i += kSumThreads) acc += static_cast<double>(p[i]) * p[i];
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// out (1) (+)= sum of partial (count), in order.
__global__ void sum_squares_final_kernel(const double* partial, int count, double* out,
                                         bool accumulate) {
  __shared__ double shared[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) *out = accumulate ? *out + acc : acc;
}

struct AdamWArgs {
  float* params;
  const float* grads;
  float* m;
  float* v;
  bf16* params_bf16;
  const Chunk* chunks;
  const double* grad_sumsq;
  float beta1, beta2, eps;
  float decay;      // 1 - lr * weight_decay (double on the host, as host::adamw)
  float step_size;  // lr / bc1
  float bc2_sqrt;   // sqrt(bc2)
  float grad_scale, max_grad_norm;
};

__device__ __forceinline__ void adamw_element(const AdamWArgs& a, float scale, float decay,
                                              float& p, float g, float& m, float& v) {
  g *= scale;
  p *= decay;
  m = a.beta1 * m + (1.0f - a.beta1) * g;
  v = a.beta2 * v + (1.0f - a.beta2) * g * g;
  p -= a.step_size * (m / (sqrtf(v) / a.bc2_sqrt + a.eps));
}

__global__ void __launch_bounds__(kAdamThreads) adamw_kernel(AdamWArgs a) {
  const Chunk ch = a.chunks[blockIdx.x];
  float clip = 1.f;
  if (a.grad_sumsq && a.max_grad_norm > 0.f) {
    const double norm = sqrt(*a.grad_sumsq) * static_cast<double>(a.grad_scale);
    clip = static_cast<float>(fmin(1.0, static_cast<double>(a.max_grad_norm) / (norm + 1e-6)));
  }
  const float scale = a.grad_scale * clip;
  const float decay = ch.decay_flag != 0.f ? a.decay : 1.f;
  const int64_t base = ch.offset, sbase = ch.state_offset;
  const bool vec = (base & 3) == 0 && (sbase & 3) == 0 && (ch.numel & 3) == 0;
  if (vec) {
    for (int i = threadIdx.x * 4; i < ch.numel; i += kAdamThreads * 4) {
      const int64_t e = base + i, se = sbase + i;
      float4 p = *reinterpret_cast<float4*>(a.params + e);
      float4 g = *reinterpret_cast<const float4*>(a.grads + e);
      float4 m = *reinterpret_cast<float4*>(a.m + se);
      float4 v = *reinterpret_cast<float4*>(a.v + se);
      adamw_element(a, scale, decay, p.x, g.x, m.x, v.x);
      adamw_element(a, scale, decay, p.y, g.y, m.y, v.y);
      adamw_element(a, scale, decay, p.z, g.z, m.z, v.z);
      adamw_element(a, scale, decay, p.w, g.w, m.w, v.w);
      *reinterpret_cast<float4*>(a.params + e) = p;
      *reinterpret_cast<float4*>(a.m + se) = m;
      *reinterpret_cast<float4*>(a.v + se) = v;
      if (a.params_bf16) {
        __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(a.params_bf16 + e);
        out[0] = __floats2bfloat162_rn(p.x, p.y);
        out[1] = __floats2bfloat162_rn(p.z, p.w);
      }
    }
  } else {
    for (int i = threadIdx.x; i < ch.numel; i += kAdamThreads) {
      const int64_t e = base + i, se = sbase + i;
      float p = a.params[e], m = a.m[se], v = a.v[se];
      adamw_element(a, scale, decay, p, a.grads[e], m, v);
      a.params[e] = p;
      a.m[se] = m;
      a.v[se] = v;
      if (a.params_bf16) a.params_bf16[e] = __float2bfloat16(p);
    }
  }
}

}  // namespace

void sum_squares(Context& ctx, const float* x, int64_t n, double* out, bool accumulate) {
  require(n >= 0, "sum_squares: n must be non-negative");
  const int blocks = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(kSumBlocksMax, ceil_div(n, 256 * 16))));
  double* partial = static_cast<double*>(ctx.scratch(sizeof(double) * blocks));
  const bool vec = (reinterpret_cast<uintptr_t>(x) & 15u) == 0;
  sum_squares_partial_kernel<<<blocks, 256, 0, ctx.stream>>>(x, n, vec, partial);
  MTC_LAUNCH_CHECK("sum_squares_partial_kernel");
  sum_squares_final_kernel<<<1, 1024, 0, ctx.stream>>>(partial, blocks, out, accumulate);
  MTC_LAUNCH_CHECK("sum_squares_final_kernel");
}

SumSquaresPlan::SumSquaresPlan(Context& ctx,
                               const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  std::vector<SumPiece> pieces;
  for (const auto& [offset, numel] : ranges) {
    require(offset >= 0 && numel >= 0,
            "SumSquaresPlan: negative offset or size (range " + std::to_string(offset) + ", " +
                std::to_string(numel) + ")");
    for (int64_t o = 0; o < numel; o += kSumPiece)
      pieces.push_back(SumPiece{offset + o, std::min(kSumPiece, numel - o)});
  }
  num_pieces_ = static_cast<int64_t>(pieces.size());
  require(num_pieces_ <= 0x7fffffff, "SumSquaresPlan: too many elements");
  if (num_pieces_ == 0) return;
  MTC_CUDA_CHECK(cudaSetDevice(ctx.device));
  MTC_CUDA_CHECK(cudaMalloc(&pieces_, sizeof(SumPiece) * pieces.size()));
  MTC_CUDA_CHECK(cudaMemcpyAsync(pieces_, pieces.data(), sizeof(SumPiece) * pieces.size(),
                                 cudaMemcpyHostToDevice, ctx.stream));
  MTC_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
}

SumSquaresPlan::~SumSquaresPlan() {
  if (pieces_) cudaFree(pieces_);
}

void sum_squares(Context& ctx, const SumSquaresPlan& plan, const float* x, double* out,
                 bool accumulate) {
  const int64_t pieces = plan.num_pieces();
  if (pieces == 0) {
    if (!accumulate) MTC_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), ctx.stream));
    return;
  }
  double* partial = static_cast<double*>(ctx.scratch(sizeof(double) * pieces));
  sum_squares_pieces_kernel<<<static_cast<unsigned>(pieces), kSumThreads, 0, ctx.stream>>>(
      x, static_cast<const SumPiece*>(plan.pieces()), partial);
  MTC_LAUNCH_CHECK("sum_squares_pieces_kernel");
  sum_squares_final_kernel<<<1, 1024, 0, ctx.stream>>>(partial, static_cast<int>(pieces), out,
                                                       accumulate);
  MTC_LAUNCH_CHECK("sum_squares_final_kernel");
}

AdamWPlan::AdamWPlan(Context& ctx, const std::vector<AdamWTensor>& tensors) {
  std::vector<Chunk> chunks;
  for (const AdamWTensor& t : tensors) {
    require(t.offset >= 0 && t.numel >= 0, "AdamWPlan: negative offset or size");
    require(t.state_offset >= -1,
            "AdamWPlan: state_offset must be -1 (same as offset) or non-negative, got " +
                std::to_string(t.state_offset));
    const int64_t state = t.state_offset < 0 ? t.offset : t.state_offset;
    for (int64_t o = 0; o < t.numel; o += kChunk)
      chunks.push_back(Chunk{t.offset + o, state + o,
                             static_cast<int32_t>(std::min(kChunk, t.numel - o)),
                             t.weight_decay ? 1.f : 0.f});
  }
  num_chunks_ = static_cast<int64_t>(chunks.size());
  require(num_chunks_ <= 0x7fffffff, "AdamWPlan: too many parameters");
  if (num_chunks_ == 0) return;
  MTC_CUDA_CHECK(cudaSetDevice(ctx.device));
  MTC_CUDA_CHECK(cudaMalloc(&chunks_, sizeof(Chunk) * chunks.size()));
  MTC_CUDA_CHECK(cudaMemcpyAsync(chunks_, chunks.data(), sizeof(Chunk) * chunks.size(),
                                 cudaMemcpyHostToDevice, ctx.stream));
  MTC_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
}

AdamWPlan::~AdamWPlan() {
  if (chunks_) cudaFree(chunks_);
}

void adamw(Context& ctx, const AdamWPlan& plan, float* params, const float* grads, float* m,
           float* v, bf16* params_bf16, const AdamWHyper& h, const double* grad_sumsq) {
  if (plan.num_chunks() == 0) return;
  require(h.step >= 1, "adamw: step counts from 1");
  require(aligned16(params) && aligned16(grads) && aligned16(m) && aligned16(v) &&
              (!params_bf16 || (reinterpret_cast<uintptr_t>(params_bf16) & 7u) == 0),
          "adamw: params, grads, m, v must be 16-byte aligned (params_bf16 8-byte)");
  const double bc1 = 1.0 - std::pow(static_cast<double>(h.beta1), static_cast<double>(h.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(h.beta2), static_cast<double>(h.step));
  AdamWArgs a;
  a.params = params;
  a.grads = grads;
  a.m = m;
  a.v = v;
  a.params_bf16 = params_bf16;
  a.chunks = static_cast<const Chunk*>(plan.chunks());
  a.grad_sumsq = grad_sumsq;
  a.beta1 = h.beta1;
  a.beta2 = h.beta2;
  a.eps = h.eps;
  a.decay = static_cast<float>(1.0 - static_cast<double>(h.lr) * h.weight_decay);
  a.step_size = static_cast<float>(static_cast<double>(h.lr) / bc1);
  a.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  a.grad_scale = h.grad_scale;
  a.max_grad_norm = h.max_grad_norm;
  adamw_kernel<<<static_cast<unsigned>(plan.num_chunks()), kAdamThreads, 0, ctx.stream>>>(a);
  MTC_LAUNCH_CHECK("adamw_kernel");
}

}  // namespace mtc::rt::cuda
