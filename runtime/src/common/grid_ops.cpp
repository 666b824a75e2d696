// Gather/slice along a tensor dimension and the gradient mean, on top of
// GridComm (see grid_ops.h for the layouts).
#include "mtc/rt/grid_ops.h"

#include <algorithm>
#include <vector>

namespace mtc::rt::grid {

void all_gather_dim(GridComm& comm, int axis, const float* in, float* out,
                    int64_t outer, int64_t chunk) {
  const int64_t parts = comm.size(axis);
  if (outer == 1) {  // contiguous: gather straight into place
    comm.all_gather(axis, in, out, chunk);
    return;
  }
  std::vector<float> tmp(static_cast<size_t>(parts * outer * chunk));  // (parts, outer, chunk)
  comm.all_gather(axis, in, tmp.data(), outer * chunk);
  for (int64_t r = 0; r < parts; ++r)
    for (int64_t o = 0; o < outer; ++o) {
      const float* src = tmp.data() + (r * outer + o) * chunk;
      std::copy(src, src + chunk, out + (o * parts + r) * chunk);
    }
}

void slice_dim(const GridComm& comm, int axis, const float* in, float* out,
               int64_t outer, int64_t chunk) {
  const int64_t parts = comm.size(axis), r = comm.index(axis);
  for (int64_t o = 0; o < outer; ++o) {
    const float* src = in + (o * parts + r) * chunk;
    std::copy(src, src + chunk, out + o * chunk);
  }
}

void reduce_scatter_dim(GridComm& comm, int axis, const float* in, float* out,
                        int64_t outer, int64_t chunk) {
  const int64_t n = outer * comm.size(axis) * chunk;
  std::vector<float> sum(in, in + n);  // (outer, parts, chunk)
  comm.all_reduce_sum(axis, sum.data(), n);
  slice_dim(comm, axis, sum.data(), out, outer, chunk);
}

void all_reduce_mean(GridComm& comm, int axis, float* data, int64_t n) {
  comm.all_reduce_sum(axis, data, n);
  const float scale = 1.0f / static_cast<float>(comm.size(axis));
  for (int64_t i = 0; i < n; ++i) data[i] *= scale;
}

}  // namespace mtc::rt::grid
