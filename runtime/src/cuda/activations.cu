// Activation kernels: GELU (tanh approximation or exact erf), SwiGLU and
// squared ReLU, forward and backward, bf16 in/out, fp32 math (formulas of host
// activations.cpp):
//   gelu_tanh(x) = x/2 (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   gelu_erf(x)  = x Phi(x)
//   swiglu(g, u) = silu(g) u,  dgate = dy u s (1 + g (1 - s)),  dup = dy silu(g)
//   squared_relu(x) = max(x, 0)^2,  dx = dy 2 max(x, 0)
//
// Design: grid-stride loops, 8 values per 16-byte access when pointers are
// aligned and n % 8 == 0 (else one value per iteration).
#include "cuda/common.cuh"

namespace mtc::rt::cuda {
namespace {

constexpr int kThreads = 256;
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;
constexpr float kGeluCoeff = 0.044715f;

__device__ __forceinline__ float gelu(float x, bool tanh_approx) {
  if (tanh_approx) return 0.5f * x * (1.f + tanhf(kSqrt2OverPi * (x + kGeluCoeff * x * x * x)));
  return 0.5f * x * (1.f + erff(x * kInvSqrt2));
}

__device__ __forceinline__ float gelu_grad(float x, bool tanh_approx) {
  if (tanh_approx) {
    float th = tanhf(kSqrt2OverPi * (x + kGeluCoeff * x * x * x));
    return 0.5f * (1.f + th) +
           0.5f * x * (1.f - th * th) * kSqrt2OverPi * (1.f + 3.f * kGeluCoeff * x * x);
  }
  return 0.5f * (1.f + erff(x * kInvSqrt2)) + x * expf(-0.5f * x * x) * kInvSqrt2Pi;
}

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// One kernel for all the ops: kOp selects the math on (a, b, c) inputs.
enum Op { kGeluFwd, kGeluBwd, kSwigluFwd, kSwigluBwd, kSquaredReluFwd, kSquaredReluBwd };

struct Args {
  const bf16* in0;  // x or gate
  const bf16* in1;  // dy (gelu, squared_relu bwd) or up (swiglu)
  const bf16* in2;  // dy (swiglu bwd)
  bf16* out0;       // y, dx or dgate
  bf16* out1;       // dup
  int64_t n;
  bool tanh_approx;
};

template <Op kOp>
__device__ __forceinline__ void apply(const Args& a, float x0, float x1, float x2, float& y0,
                                      float& y1) {
  if (kOp == kGeluFwd) {
    y0 = gelu(x0, a.tanh_approx);
  } else if (kOp == kGeluBwd) {
    y0 = x1 * gelu_grad(x0, a.tanh_approx);
  } else if (kOp == kSwigluFwd) {
    y0 = x0 * sigmoid(x0) * x1;
  } else if (kOp == kSquaredReluFwd) {
    float r = fmaxf(x0, 0.f);
    y0 = r * r;
  } else if (kOp == kSquaredReluBwd) {
    y0 = x1 * 2.f * fmaxf(x0, 0.f);
  } else {
    float s = sigmoid(x0);
    y0 = x2 * x1 * s * (1.f + x0 * (1.f - s));
    y1 = x2 * x0 * s;
  }
}

template <Op kOp, bool kVec>
__global__ void activation_kernel(Args a) {
  constexpr bool kTwoIn = kOp != kGeluFwd && kOp != kSquaredReluFwd;
  constexpr bool kThreeIn = kOp == kSwigluBwd;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if (kVec) {
    for (int64_t i = tid * 8; i < a.n; i += stride * 8) {
      float x0[8], x1[8] = {}, x2[8] = {}, y0[8], y1[8];
      load8(a.in0 + i, x0);
      if (kTwoIn) load8(a.in1 + i, x1);
      if (kThreeIn) load8(a.in2 + i, x2);
#pragma unroll
      for (int j = 0; j < 8; ++j) apply<kOp>(a, x0[j], x1[j], x2[j], y0[j], y1[j]);
      store8(a.out0 + i, y0);
      if (kThreeIn) store8(a.out1 + i, y1);
    }
  } else {
    for (int64_t i = tid; i < a.n; i += stride) {
      float x0 = __bfloat162float(a.in0[i]);
      float x1 = kTwoIn ? __bfloat162float(a.in1[i]) : 0.f;
      float x2 = kThreeIn ? __bfloat162float(a.in2[i]) : 0.f;
      float y0, y1 = 0.f;
      apply<kOp>(a, x0, x1, x2, y0, y1);
      a.out0[i] = __float2bfloat16(y0);
      if (kThreeIn) a.out1[i] = __float2bfloat16(y1);
    }
  }
}

template <Op kOp>
void launch(Context& ctx, const Args& a, const char* name) {
  if (a.n <= 0) return;
  bool vec = a.n % 8 == 0 && aligned16(a.in0) && aligned16(a.out0) &&
             (!a.in1 || aligned16(a.in1)) && (!a.in2 || aligned16(a.in2)) &&
             (!a.out1 || aligned16(a.out1));
  unsigned grid = grid_for(ctx, vec ? a.n / 8 : a.n, kThreads);
  if (vec)
    activation_kernel<kOp, true><<<grid, kThreads, 0, ctx.stream>>>(a);
  else
    activation_kernel<kOp, false><<<grid, kThreads, 0, ctx.stream>>>(a);
  MTC_LAUNCH_CHECK(name);
}

}  // namespace

void gelu_forward(Context& ctx, const bf16* x, bf16* y, int64_t n, bool tanh_approx) {
  launch<kGeluFwd>(ctx, Args{x, nullptr, nullptr, y, nullptr, n, tanh_approx}, "gelu_forward");
}

void gelu_backward(Context& ctx, const bf16* x, const bf16* dy, bf16* dx, int64_t n,
                   bool tanh_approx) {
  launch<kGeluBwd>(ctx, Args{x, dy, nullptr, dx, nullptr, n, tanh_approx}, "gelu_backward");
}

void swiglu_forward(Context& ctx, const bf16* gate, const bf16* up, bf16* y, int64_t n) {
  launch<kSwigluFwd>(ctx, Args{gate, up, nullptr, y, nullptr, n, false}, "swiglu_forward");
}

void swiglu_backward(Context& ctx, const bf16* gate, const bf16* up, const bf16* dy, bf16* dgate,
                     bf16* dup, int64_t n) {
  launch<kSwigluBwd>(ctx, Args{gate, up, dy, dgate, dup, n, false}, "swiglu_backward");
}

void squared_relu_forward(Context& ctx, const bf16* x, bf16* y, int64_t n) {
  launch<kSquaredReluFwd>(ctx, Args{x, nullptr, nullptr, y, nullptr, n, false},
                          "squared_relu_forward");
}

void squared_relu_backward(Context& ctx, const bf16* x, const bf16* dy, bf16* dx, int64_t n) {
  launch<kSquaredReluBwd>(ctx, Args{x, dy, nullptr, dx, nullptr, n, false},
                          "squared_relu_backward");
}

}  // namespace mtc::rt::cuda
