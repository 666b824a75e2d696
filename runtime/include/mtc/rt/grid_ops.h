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

}  // namespace mtc::rt::grid
