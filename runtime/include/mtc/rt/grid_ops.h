// Data movement around the grid's collectives for the host target: what
// generated code calls for upstream `shard` ops whose semantics are more
// than one GridComm call. Tensors are dense row-major fp32.
#pragma once

#include <cstdint>

#include "mtc/rt/program.h"

namespace mtc::rt::grid {

// shard.all_gather along a dimension: `in` is (outer, chunk) (the tensor's
// dimensions before the gathered one multiplied into `outer`, the gathered
// one and those after it into `chunk`); out (outer, parts * chunk) puts
// member r's chunk at column block r.
void all_gather_dim(GridComm& comm, int axis, const float* in, float* out,
                    int64_t outer, int64_t chunk);

// shard.all_slice along a dimension (no communication): in (outer, parts *
// chunk) -> out (outer, chunk), this rank's column block.
void slice_dim(const GridComm& comm, int axis, const float* in, float* out,
               int64_t outer, int64_t chunk);

// shard.reduce_scatter along a dimension: the sum over the group of every
// member's `in` (outer, parts * chunk), of which this rank keeps its column
// block: out (outer, chunk). Done as an all_reduce of a copy followed by a
// local slice (twice a reduce-scatter's traffic; GridComm has no
// reduce-scatter yet).
void reduce_scatter_dim(GridComm& comm, int axis, const float* in, float* out,
                        int64_t outer, int64_t chunk);

// Vocabulary-parallel softmax cross-entropy (Megatron's): logits (T, V) are
// this rank's columns [start, start + V) of the global (T, V * size) logits
// along `axis`; only global classes < valid take part. The row maxima, the
// sums of exponentials and the target logits are completed over the group,
// so loss (1) is the mean over rows whose target != ignore_index of the
// global cross-entropy, the same on every rank. Returns false (writing
// nothing) if a target is outside [0, valid) and != ignore_index.
bool vocab_parallel_cross_entropy_forward(GridComm& comm, int axis,
                                          const float* logits,
                                          const int32_t* targets, float* loss,
                                          int64_t t, int64_t v, int64_t start,
                                          int64_t valid, int32_t ignore_index);
// dlogits (T, V) = dloss / count * (softmax - onehot) on this rank's
// columns; zero on ignored rows and padding columns.
void vocab_parallel_cross_entropy_backward(GridComm& comm, int axis,
                                           const float* logits,
                                           const int32_t* targets, float dloss,
                                           float* dlogits, int64_t t,
                                           int64_t v, int64_t start,
                                           int64_t valid, int32_t ignore_index);

// data (n) = the mean of the group members' data (sum / size), in place.
void all_reduce_mean(GridComm& comm, int axis, float* data, int64_t n);
// data (n) = the sum of the group members' data divided by `divisor`, in
// place (expert parallelism: the experts' gradients, summed over the expert
// data-parallel group, divided by all dp ranks).
void all_reduce_divide(GridComm& comm, int axis, float* data, int64_t n,
                       int64_t divisor);

// Expert parallelism (mtc.moe_exchange_counts / moe_dispatch / moe_combine;
// docs/moe.md). Along `axis` there are P = comm.size(axis) members; E
// experts, L = E / P per member (member j holds experts j*L .. j*L+L-1).
// This rank's N permuted rows (D wide) are grouped by expert, `counts` (E)
// rows each.
//
// received (P, L) = rows member s sends for each of this rank's experts;
// local_counts (L) = their sum over s. One all-gather of the counts.
void moe_exchange_counts(GridComm& comm, int axis, const int32_t* counts,
                         int32_t* received, int32_t* local_counts, int64_t e);
// out (P * N, D): the rows of every member for this rank's experts, local
// expert by local expert, members in order within an expert; rows past
// their total are zero. Point-to-point exchanges posted together.
void moe_dispatch(GridComm& comm, int axis, const float* in, const int32_t* counts,
                  const int32_t* received, float* out, int64_t n, int64_t d, int64_t e);
// The inverse: in (P * N, D) in moe_dispatch's layout, out (N, D) this
// rank's rows back in their permuted order.
void moe_combine(GridComm& comm, int axis, const float* in, const int32_t* counts,
                 const int32_t* received, float* out, int64_t n, int64_t d, int64_t e);

}  // namespace mtc::rt::grid
