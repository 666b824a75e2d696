// Rotary position embedding on the grouped fused-QKV layout (host_kernels.h):
// every q head and the k head of each KV group is rotated, v is copied.
//
// Math (rotate-half): for the pair (c, c + Dh/2), c < Dh/2, of a head at
// position pos = s (token row t = b * S + s),
//   theta = pos * base^(-2c/Dh)           (double, as the host kernel)
//   (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin),   sin negated if inverse.
//
// Design: one thread per (token, c) computes cos/sin once (double sincos)
// and applies them to that pair of every q and k head of the token, so the
// trigonometry costs T * Dh/2 evaluations, not T * (H + KV) * Dh/2.
// In-place (out == qkv) is safe: a thread reads both values of a pair
// before writing them, and pairs are disjoint.
#include "cuda/common.cuh"

namespace mtc::rt::cuda {
namespace {

__global__ void rope_kernel(const bf16* qkv, bf16* out, int64_t t, int64_t s, int64_t r,
                            int64_t kv, int64_t dh, double log2_base, bool inverse) {
  const int64_t half = dh / 2;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= t * half) return;
  const int64_t row = i / half, c = i % half;
  const int64_t pos = row % s;
  const double inv_freq = exp2(-2.0 * static_cast<double>(c) / static_cast<double>(dh) * log2_base);
  double sn, cs;
  sincos(static_cast<double>(pos) * inv_freq, &sn, &cs);
  const float fc = static_cast<float>(cs);
  const float fs = static_cast<float>(inverse ? -sn : sn);
  const int64_t width = (r + 2) * kv * dh;
  const bf16* x = qkv + row * width;
  bf16* y = out + row * width;
  for (int64_t g = 0; g < kv; ++g) {
    const int64_t base = g * (r + 2) * dh;
    for (int64_t head = 0; head <= r; ++head) {  // R query heads, then k
      const int64_t o = base + head * dh + c;
      float x1 = __bfloat162float(x[o]), x2 = __bfloat162float(x[o + half]);
      y[o] = __float2bfloat16(x1 * fc - x2 * fs);
      y[o + half] = __float2bfloat16(x2 * fc + x1 * fs);
    }
    if (x != y) {
      const int64_t o = base + (r + 1) * dh + c;  // v
      y[o] = x[o];
      y[o + half] = x[o + half];
    }
  }
}

}  // namespace

void rope(Context& ctx, const bf16* qkv, bf16* out, int64_t b, int64_t s, int64_t h, int64_t kv,
          int64_t dh, float base, bool inverse) {
  if (b <= 0 || s <= 0) return;
  require(kv > 0 && h % kv == 0, "rope: H must be a multiple of KV");
  require(dh > 0 && dh % 2 == 0, "rope: Dh must be even");
  require(base > 0.f, "rope: base must be positive");
  const int64_t n = b * s * (dh / 2);
  rope_kernel<<<static_cast<unsigned>(ceil_div(n, 256)), 256, 0, ctx.stream>>>(
      qkv, out, b * s, s, h / kv, kv, dh, std::log2(static_cast<double>(base)), inverse);
  MTC_LAUNCH_CHECK("rope_kernel");
}

}  // namespace mtc::rt::cuda
