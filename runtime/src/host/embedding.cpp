// Host token embedding: a table lookup and its scatter-add gradient.
//
// Token ids are validated in the forward pass (nothing is written if one is
// outside [0, V)); the backward pass runs on the same, already validated
// tokens and skips an out-of-range id rather than writing out of bounds.
#include "mtc/rt/host_kernels.h"

#include <algorithm>

#include "host/parallel.h"

namespace mtc::rt::host {

// out[t, :] = table[tokens[t], :]    tokens (T), table (V, D), out (T, D).
bool embedding_forward(const int32_t* tokens, const float* table, float* out,
                       int64_t t, int64_t v, int64_t d) {
  for (int64_t i = 0; i < t; ++i)
    if (tokens[i] < 0 || tokens[i] >= v) return false;
  parallel_for(t, std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1)),
               [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* row = table + static_cast<int64_t>(tokens[i]) * d;
      std::copy(row, row + d, out + i * d);
    }
  });
  return true;
}

// Rows [start, start + V) of the global table: tokens in that range read
// their row, other tokens give zero rows.
void embedding_forward_shard(const int32_t* tokens, const float* table,
                             float* out, int64_t t, int64_t v, int64_t d,
                             int64_t start) {
  parallel_for(t, std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1)),
               [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t local = static_cast<int64_t>(tokens[i]) - start;
      if (local < 0 || local >= v) {
        std::fill(out + i * d, out + (i + 1) * d, 0.0f);
        continue;
      }
      const float* row = table + local * d;
      std::copy(row, row + d, out + i * d);
    }
  });
}

// dtable (V, D) = 0; dtable[tokens[t], :] += dout[t, :] in token order.
// The columns are split across threads, so repeated tokens accumulate in the
// same order whatever the thread count.
void embedding_backward(const int32_t* tokens, const float* dout,
                        float* dtable, int64_t t, int64_t v, int64_t d) {
  embedding_backward_shard(tokens, dout, dtable, t, v, d, 0);
}

void embedding_backward_shard(const int32_t* tokens, const float* dout,
                              float* dtable, int64_t t, int64_t v, int64_t d,
                              int64_t start) {
  fill(dtable, 0.0f, v * d);
  parallel_for(d, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = 0; i < t; ++i) {
      int64_t tok = static_cast<int64_t>(tokens[i]) - start;
      if (tok < 0 || tok >= v) continue;
      float* dst = dtable + tok * d;
      const float* src = dout + i * d;
      for (int64_t j = begin; j < end; ++j) dst[j] += src[j];
    }
  });
}

}  // namespace mtc::rt::host
