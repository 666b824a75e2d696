// Gather/slice along a tensor dimension and the gradient mean, on top of
// GridComm (see grid_ops.h for the layouts).
#include "mtc/rt/grid_ops.h"

#include "mtc/rt/grid_comm.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace mtc::rt::grid {

// A (outer, parts, chunk) tensor is a split parameter's global layout
// (grid_comm.h), so gathering and slicing along a dimension are the
// trainer's gather_slices and take_slice.
namespace {
ParamSlice slice_of(const GridComm& comm, int axis, int64_t outer, int64_t chunk) {
  return ParamSlice{outer, comm.size(axis), chunk, comm.index(axis)};
}
}  // namespace

void all_gather_dim(GridComm& comm, int axis, const float* in, float* out,
                    int64_t outer, int64_t chunk) {
  gather_slices(comm, axis, slice_of(comm, axis, outer, chunk), in, out);
}

void slice_dim(const GridComm& comm, int axis, const float* in, float* out,
               int64_t outer, int64_t chunk) {
  take_slice(slice_of(comm, axis, outer, chunk), in, out);
}

void reduce_scatter_dim(GridComm& comm, int axis, const float* in, float* out,
                        int64_t outer, int64_t chunk) {
  const int64_t n = outer * comm.size(axis) * chunk;
  std::vector<float> sum(in, in + n);  // (outer, parts, chunk)
  comm.all_reduce_sum(axis, sum.data(), n);
  slice_dim(comm, axis, sum.data(), out, outer, chunk);
}

namespace {
// Per row: the global max M and sum of exp(logit - M) over valid classes.
// The max is completed with an all_gather of the ranks' row maxima (GridComm
// has no max-reduction), the sum with an all_reduce.
void softmax_stats(GridComm& comm, int axis, const float* logits, int64_t t,
                   int64_t v, int64_t start, int64_t valid,
                   std::vector<float>& max, std::vector<float>& sum) {
  const int64_t parts = comm.size(axis);
  const int64_t cols = std::clamp<int64_t>(valid - start, 0, v);  // valid local columns
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> local_max(static_cast<size_t>(t), neg_inf);  // (T)
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < cols; ++j)
      local_max[i] = std::max(local_max[i], logits[i * v + j]);
  std::vector<float> all(static_cast<size_t>(parts * t));  // (parts, T)
  comm.all_gather(axis, local_max.data(), all.data(), t);
  max.assign(static_cast<size_t>(t), neg_inf);
  for (int64_t r = 0; r < parts; ++r)
    for (int64_t i = 0; i < t; ++i) max[i] = std::max(max[i], all[r * t + i]);
  sum.assign(static_cast<size_t>(t), 0.0f);
  for (int64_t i = 0; i < t; ++i) {
    double s = 0;
    for (int64_t j = 0; j < cols; ++j) s += std::exp(double(logits[i * v + j]) - max[i]);
    sum[i] = static_cast<float>(s);
  }
  comm.all_reduce_sum(axis, sum.data(), t);
}

bool counted(int32_t target, int64_t valid, int32_t ignore_index) {
  return target != ignore_index && target >= 0 && target < valid;
}
}  // namespace

bool vocab_parallel_cross_entropy_forward(GridComm& comm, int axis,
                                          const float* logits,
                                          const int32_t* targets, float* loss,
                                          int64_t t, int64_t v, int64_t start,
                                          int64_t valid, int32_t ignore_index) {
  for (int64_t i = 0; i < t; ++i)
    if (targets[i] != ignore_index && (targets[i] < 0 || targets[i] >= valid)) return false;
  std::vector<float> max, sum;
  softmax_stats(comm, axis, logits, t, v, start, valid, max, sum);
  std::vector<float> target_logit(static_cast<size_t>(t), 0.0f);  // (T), from the owner
  for (int64_t i = 0; i < t; ++i) {
    int64_t local = int64_t(targets[i]) - start;
    if (counted(targets[i], valid, ignore_index) && local >= 0 && local < v)
      target_logit[i] = logits[i * v + local];
  }
  comm.all_reduce_sum(axis, target_logit.data(), t);
  double total = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < t; ++i) {
    if (!counted(targets[i], valid, ignore_index)) continue;
    total += std::log(double(sum[i])) + max[i] - target_logit[i];
    ++count;
  }
  *loss = count > 0 ? static_cast<float>(total / double(count)) : 0.0f;
  return true;
}

void vocab_parallel_cross_entropy_backward(GridComm& comm, int axis,
                                           const float* logits,
                                           const int32_t* targets, float dloss,
                                           float* dlogits, int64_t t,
                                           int64_t v, int64_t start,
                                           int64_t valid, int32_t ignore_index) {
  std::vector<float> max, sum;
  softmax_stats(comm, axis, logits, t, v, start, valid, max, sum);
  int64_t count = 0;
  for (int64_t i = 0; i < t; ++i) count += counted(targets[i], valid, ignore_index);
  const double coeff = count > 0 ? double(dloss) / double(count) : 0.0;
  const int64_t cols = std::clamp<int64_t>(valid - start, 0, v);
  for (int64_t i = 0; i < t; ++i) {
    float* d = dlogits + i * v;
    std::fill(d, d + v, 0.0f);
    if (!counted(targets[i], valid, ignore_index)) continue;
    const double lse = std::log(double(sum[i])) + max[i];
    for (int64_t j = 0; j < cols; ++j)
      d[j] = static_cast<float>(coeff * std::exp(double(logits[i * v + j]) - lse));
    int64_t local = int64_t(targets[i]) - start;
    if (local >= 0 && local < cols) d[local] -= static_cast<float>(coeff);
  }
}

void all_reduce_mean(GridComm& comm, int axis, float* data, int64_t n) {
  comm.all_reduce_sum(axis, data, n);
  const float scale = 1.0f / static_cast<float>(comm.size(axis));
  for (int64_t i = 0; i < n; ++i) data[i] *= scale;
}

}  // namespace mtc::rt::grid
