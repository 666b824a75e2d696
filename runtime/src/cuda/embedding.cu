// Token (+ position) embedding lookup and its gradient.
//
// Math:
//   forward   out[t, :] = table[tokens[t], :] (+ pos[t % S, :])
//   backward  dtable[tokens[t], :] += dout[t, :]   (fp32)
// The gradient of `pos` is the column sum of dout viewed as (B, S*D):
// reduce_rows_accumulate, not this file.
//
// Design: one thread per 8 values of a row (16-byte loads) when D % 8 == 0
// and the pointers are aligned, else one per value. A token outside [0, V)
// writes a zero row and atomicMin's its row index into
// ctx.data_error_slots[0] (reported by Context::take_data_error); the
// backward skips such rows. The backward adds with fp32 atomics (4-wide on
// sm_90 when dtable is 16-byte aligned): repeated tokens are summed in a
// run-dependent order.
#include "cuda/common.cuh"
#include "mtc/rt/cuda_tp_kernels.h"

namespace mtc::rt::cuda {
namespace {

template <bool kVec>
__global__ void embedding_forward_kernel(const int32_t* tokens, const bf16* table, const bf16* pos,
                                         bf16* out, int64_t t, int64_t v, int64_t d, int64_t s,
                                         unsigned long long* bad_row) {
  constexpr int kW = kVec ? 8 : 1;
  const int64_t per_row = d / kW;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < t * per_row;
       i += stride) {
    const int64_t row = i / per_row, c = (i % per_row) * kW;
    const int32_t tok = tokens[row];
    const bool ok = tok >= 0 && tok < v;
    if (!ok && c == 0) atomicMin(bad_row, static_cast<unsigned long long>(row));
    float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (ok) {
      if (kVec) {
        load8(table + static_cast<int64_t>(tok) * d + c, f);
        if (pos) {
          float p[8];
          load8(pos + (row % s) * d + c, p);
#pragma unroll
          for (int j = 0; j < 8; ++j) f[j] += p[j];
        }
      } else {
        f[0] = __bfloat162float(table[static_cast<int64_t>(tok) * d + c]);
        if (pos) f[0] += __bfloat162float(pos[(row % s) * d + c]);
      }
    }
    if (kVec)
      store8(out + row * d + c, f);
    else
      out[row * d + c] = __float2bfloat16(f[0]);
  }
}

}  // namespace

void embedding_forward(Context& ctx, const int32_t* tokens, const bf16* table, const bf16* pos,
                       bf16* out, int64_t t, int64_t v, int64_t d, int64_t s) {
  if (t <= 0 || d <= 0) return;
  require(v > 0, "embedding_forward: V must be positive");
  require(!pos || (s > 0 && t % s == 0),
          "embedding_forward: T must be a multiple of S when a position table is given");
  if (s <= 0) s = 1;
  const bool vec = d % 8 == 0 && aligned16(table) && aligned16(out) && (!pos || aligned16(pos));
  const int64_t items = vec ? t * d / 8 : t * d;
  unsigned grid = grid_for(ctx, items, 256);
  if (vec)
    embedding_forward_kernel<true><<<grid, 256, 0, ctx.stream>>>(tokens, table, pos, out, t, v, d,
                                                                 s, ctx.data_error_slots);
  else
    embedding_forward_kernel<false><<<grid, 256, 0, ctx.stream>>>(tokens, table, pos, out, t, v, d,
                                                                  s, ctx.data_error_slots);
  MTC_LAUNCH_CHECK("embedding_forward_kernel");
}

// The whole table is the one shard that starts at row 0
// (tensor_parallel.cu).
void embedding_backward(Context& ctx, const int32_t* tokens, const bf16* dout, float* dtable,
                        int64_t t, int64_t v, int64_t d) {
  embedding_backward_shard(ctx, tokens, dout, dtable, t, v, d, 0);
}

}  // namespace mtc::rt::cuda
