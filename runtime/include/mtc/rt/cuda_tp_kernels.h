// mtc CUDA kernels for tensor (Megatron-style) parallelism: the
// vocabulary-parallel embedding and cross-entropy, and the layout permutation
// around NCCL collectives along a non-leading dimension.
//
// Conventions are cuda_kernels.h's (bf16 activations, fp32 math and
// parameter gradients, ACCUMULATED parameter gradients, everything on
// ctx.stream, device pointers). None of these functions communicates: the
// caller runs the NCCL collective between the phases that need one.
//
// Vocabulary parallelism: the global (V_total, D) embedding / LM-head table
// is split by rows over P ranks; rank r holds rows
// [vocab_start, vocab_start + V_local), vocab_start = r * V_local. The
// global vocabulary may be padded (V = P * V_local >= valid): classes
// >= valid are padding, outside the softmax, zero gradient. Host references:
// host::embedding_forward_shard / embedding_backward_shard (host_kernels.h)
// and grid::vocab_parallel_cross_entropy_* (grid_ops.h).
#pragma once

#include <cstdint>

#include "mtc/rt/cuda_kernels.h"

namespace mtc::rt::cuda {

// ---------------------------------------------------------------------------
// Vocabulary-parallel embedding
// ---------------------------------------------------------------------------

// out[i, :] = table[tokens[i] - vocab_start, :] when tokens[i] lies in
// [vocab_start, vocab_start + V_local) (and in [0, V_total)), else 0.
//   tokens (T) int32, table (V_local, D) bf16 (this rank's rows), out (T, D).
// Summing out over the ranks (all-reduce) gives the full lookup. A token
// outside [0, V_total) gives a zero row and is recorded for
// ctx.take_data_error() (the token slot, as embedding_forward).
void embedding_forward_shard(Context& ctx, const int32_t* tokens,
                             const bf16* table, bf16* out, int64_t t,
                             int64_t v_local, int64_t d, int64_t vocab_start,
                             int64_t v_total);

// dtable[tokens[i] - vocab_start, :] += dout[i, :] for the rows i whose
// token lies in [vocab_start, vocab_start + V_local); other rows skipped.
//   dout (T, D) bf16 (the full, replicated gradient), dtable (V_local, D)
//   fp32, accumulated. fp32 atomics: repeated tokens are summed in a
//   run-dependent order (last-bit differences), as embedding_backward.
// Token ids are validated by the forward (a token in [V_total,
// vocab_start + V_local) would add into a padding row of the last shard).
void embedding_backward_shard(Context& ctx, const int32_t* tokens,
                              const bf16* dout, float* dtable, int64_t t,
                              int64_t v_local, int64_t d, int64_t vocab_start);

// ---------------------------------------------------------------------------
// Vocabulary-parallel fused cross-entropy (two phases around an all-gather)
// ---------------------------------------------------------------------------
//
// Each rank holds logits (T, V_local) bf16: columns j are the global classes
// vocab_start + j. A row i is "counted" when targets[i] != ignore_index and
// targets[i] lies in [0, valid). Sequence on every rank:
//   vp_cross_entropy_stats(ctx, logits, targets, stats, ...)      (T, 3)
//   ncclAllGather(stats -> all_stats, 3 T floats)                 (P, T, 3)
//   vp_cross_entropy_finish(ctx, logits, targets, all_stats, P, loss, dlogits, ...)
// The loss is computed from all_stats alone, in a fixed order, so every rank
// gets the bit-identical loss. stats and all_stats are the caller's buffers
// (not ctx's scratch, which finish uses).

// Per row i, over this rank's valid columns j (vocab_start + j < valid):
//   stats[i, 0] = m_i = max_j logits[i, j]                 (-inf if none)
//   stats[i, 1] = s_i = sum_j exp(logits[i, j] - m_i)      (0 if none)
//   stats[i, 2] = logits[i, targets[i] - vocab_start] when row i is counted
//                 and its target is a valid class of this shard, else 0.
//   logits (T, V_local) bf16, targets (T) int32, stats (T, 3) fp32.
// One read of the logits (online max / sum per thread), fp32, deterministic.
void vp_cross_entropy_stats(Context& ctx, const bf16* logits,
                            const int32_t* targets, float* stats, int64_t t,
                            int64_t v_local, int64_t vocab_start,
                            int64_t valid, int32_t ignore_index);

// From all_stats (P, T, 3) (every rank's stats in rank order), per row i:
//   M_i = max_r m_ri and S_i = sum_r s_ri exp(m_ri - M_i) over the ranks
//   with s_ri > 0; lse_i = log S_i + M_i; y_i = sum_r all_stats[r, i, 2]
//   (double precision).
//   loss (1) fp32 device = (1 / count) sum_{counted i} (lse_i - y_i)
//     (0 if count == 0), summed by one block in a fixed order;
//   dlogits (T, V_local) bf16 = dloss / count * (exp(logits[i, j] - lse_i)
//     - [vocab_start + j == targets[i]]) for counted rows and valid columns,
//     0 for padding columns (vocab_start + j >= valid) and uncounted rows.
//     May alias logits; nullptr computes the loss only (logits not read).
// A target outside [0, valid) other than ignore_index is treated as ignored
// and recorded for ctx.take_data_error() (the target slot, as
// cross_entropy). Uses 256 + 4 T bytes of ctx's scratch.
void vp_cross_entropy_finish(Context& ctx, const bf16* logits,
                             const int32_t* targets, const float* all_stats,
                             int64_t parts, float* loss, bf16* dlogits,
                             int64_t t, int64_t v_local, int64_t vocab_start,
                             int64_t valid, int32_t ignore_index, float dloss);

// ---------------------------------------------------------------------------
// Layout permutation around collectives along a non-leading dimension
// ---------------------------------------------------------------------------

// to_parts_major:  out (parts, outer, chunk)[p, o, c] = in (outer, parts, chunk)[o, p, c]
// else (inverse):  out (outer, parts, chunk)[o, p, c] = in (parts, outer, chunk)[p, o, c]
// E.g. an all_gather along the last dimension of (T, D) split in P parts of
// D / P: NCCL gathers (P, T, D/P); permute_parts(outer = T, parts = P,
// chunk = D/P, to_parts_major = false) gives (T, D). Exact copy; out must
// not overlap in. 16-byte accesses when chunk % 8 == 0 and both pointers
// are 16-byte aligned.
void permute_parts(Context& ctx, const bf16* in, bf16* out, int64_t outer,
                   int64_t parts, int64_t chunk, bool to_parts_major);

}  // namespace mtc::rt::cuda
