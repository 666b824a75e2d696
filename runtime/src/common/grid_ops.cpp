// Gather/slice along a tensor dimension and the gradient mean, on top of
// GridComm (see grid_ops.h for the layouts).
#include "mtc/rt/grid_ops.h"

#include "mtc/rt/grid_comm.h"

#include <algorithm>
#include <cstring>
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

void all_reduce_divide(GridComm& comm, int axis, float* data, int64_t n,
                       int64_t divisor) {
  comm.all_reduce_sum(axis, data, n);
  const float scale = 1.0f / static_cast<float>(divisor);
  for (int64_t i = 0; i < n; ++i) data[i] *= scale;
}

void moe_exchange_counts(GridComm& comm, int axis, const int32_t* counts,
                         int32_t* received, int32_t* local_counts, int64_t e) {
  static_assert(sizeof(float) == sizeof(int32_t));
  const int64_t p = comm.size(axis), l = e / p, me = comm.index(axis);
  std::vector<float> mine(static_cast<size_t>(e)), all(static_cast<size_t>(p * e));
  std::memcpy(mine.data(), counts, static_cast<size_t>(e) * sizeof(int32_t));
  comm.all_gather(axis, mine.data(), all.data(), e);  // raw 4-byte words
  std::vector<int32_t> words(all.size());
  std::memcpy(words.data(), all.data(), all.size() * sizeof(int32_t));
  std::fill(local_counts, local_counts + l, 0);
  for (int64_t s = 0; s < p; ++s)
    for (int64_t j = 0; j < l; ++j) {
      received[s * l + j] = words[static_cast<size_t>(s * e + me * l + j)];
      local_counts[j] += received[s * l + j];
    }
}

namespace {
// The exchange's geometry, in rows: what this rank sends to member j (a
// contiguous block of its permuted rows: member j's experts), and where
// member s's rows for local expert k land in the experts' layout.
struct Exchange {
  int64_t p = 1, l = 1;
  std::vector<int64_t> send_begin, send_rows;  // (P)
  std::vector<int64_t> recv_rows;              // (P): total from member s
  std::vector<int64_t> place;                  // (P, L): row in the experts' layout
};

Exchange exchange_of(const GridComm& comm, int axis, const int32_t* counts,
                     const int32_t* received, int64_t e) {
  Exchange x;
  x.p = comm.size(axis);
  x.l = e / x.p;
  x.send_begin.assign(static_cast<size_t>(x.p), 0);
  x.send_rows.assign(static_cast<size_t>(x.p), 0);
  x.recv_rows.assign(static_cast<size_t>(x.p), 0);
  x.place.assign(static_cast<size_t>(x.p * x.l), 0);
  int64_t row = 0;
  for (int64_t j = 0; j < x.p; ++j) {
    x.send_begin[static_cast<size_t>(j)] = row;
    for (int64_t k = 0; k < x.l; ++k) row += counts[j * x.l + k];
    x.send_rows[static_cast<size_t>(j)] = row - x.send_begin[static_cast<size_t>(j)];
  }
  int64_t at = 0;
  for (int64_t k = 0; k < x.l; ++k)
    for (int64_t s = 0; s < x.p; ++s) {
      x.place[static_cast<size_t>(s * x.l + k)] = at;
      at += received[s * x.l + k];
    }
  for (int64_t s = 0; s < x.p; ++s)
    for (int64_t k = 0; k < x.l; ++k) x.recv_rows[static_cast<size_t>(s)] += received[s * x.l + k];
  return x;
}

// Member s's block (its rows for this rank's experts, local expert by
// local expert) <-> the experts' layout.
void scatter_block(const Exchange& x, const int32_t* received, int64_t s, const float* block,
                   float* experts, int64_t d) {
  for (int64_t k = 0; k < x.l; ++k) {
    const int64_t rows = received[s * x.l + k];
    std::copy(block, block + rows * d, experts + x.place[static_cast<size_t>(s * x.l + k)] * d);
    block += rows * d;
  }
}
void gather_block(const Exchange& x, const int32_t* received, int64_t s, const float* experts,
                  float* block, int64_t d) {
  for (int64_t k = 0; k < x.l; ++k) {
    const int64_t rows = received[s * x.l + k];
    const float* src = experts + x.place[static_cast<size_t>(s * x.l + k)] * d;
    std::copy(src, src + rows * d, block);
    block += rows * d;
  }
}
}  // namespace

void moe_dispatch(GridComm& comm, int axis, const float* in, const int32_t* counts,
                  const int32_t* received, float* out, int64_t n, int64_t d, int64_t e) {
  const Exchange x = exchange_of(comm, axis, counts, received, e);
  const int64_t me = comm.index(axis);
  std::vector<std::vector<float>> blocks(static_cast<size_t>(x.p));
  std::vector<P2PTransfer> ops;
  for (int64_t j = 0; j < x.p; ++j) {
    const size_t uj = static_cast<size_t>(j);
    if (j == me) continue;
    if (x.send_rows[uj] > 0)
      ops.push_back({true, const_cast<float*>(in + x.send_begin[uj] * d), x.send_rows[uj] * d, j});
    if (x.recv_rows[uj] > 0) {
      blocks[uj].resize(static_cast<size_t>(x.recv_rows[uj] * d));
      ops.push_back({false, blocks[uj].data(), x.recv_rows[uj] * d, j});
    }
  }
  if (!ops.empty()) comm.p2p(axis, ops.data(), static_cast<int>(ops.size()));
  std::fill(out, out + x.p * n * d, 0.0f);
  for (int64_t s = 0; s < x.p; ++s) {
    const float* block = s == me ? in + x.send_begin[static_cast<size_t>(me)] * d
                                 : blocks[static_cast<size_t>(s)].data();
    scatter_block(x, received, s, block, out, d);
  }
}

void moe_combine(GridComm& comm, int axis, const float* in, const int32_t* counts,
                 const int32_t* received, float* out, int64_t n, int64_t d, int64_t e) {
  (void)n;
  const Exchange x = exchange_of(comm, axis, counts, received, e);
  const int64_t me = comm.index(axis);
  std::vector<std::vector<float>> blocks(static_cast<size_t>(x.p));
  std::vector<P2PTransfer> ops;
  for (int64_t s = 0; s < x.p; ++s) {
    const size_t us = static_cast<size_t>(s);
    if (s == me) {
      gather_block(x, received, s, in, out + x.send_begin[us] * d, d);
      continue;
    }
    if (x.recv_rows[us] > 0) {  // back to member s: its rows for my experts
      blocks[us].resize(static_cast<size_t>(x.recv_rows[us] * d));
      gather_block(x, received, s, in, blocks[us].data(), d);
      ops.push_back({true, blocks[us].data(), x.recv_rows[us] * d, s});
    }
    if (x.send_rows[us] > 0)  // mine from member s, where they left
      ops.push_back({false, out + x.send_begin[us] * d, x.send_rows[us] * d, s});
  }
  if (!ops.empty()) comm.p2p(axis, ops.data(), static_cast<int>(ops.size()));
}

}  // namespace mtc::rt::grid
