// mtc host kernels: the fp32 CPU implementation of every mtc op and of its
// gradient. This is the numerical reference of the project: the CUDA kernels
// are tested against these, and these are tested against finite differences
// and against an independent PyTorch model.
//
// Conventions (shared by every kernel in this file):
// - All tensors are dense, row-major, fp32 unless stated; token ids are int32.
// - Every kernel OVERWRITES its outputs (no hidden accumulation). Gradient
//   accumulation is the explicit `accumulate` kernel below.
// - Shapes are given as comments in the same order as the arguments.
// - Kernels never abort on user data: a token id outside the vocabulary is
//   reported through the returned/checked status (see embedding_forward).
// - Activations are flattened to rows: a (B, S, D) activation is (T = B*S, D).
#pragma once

#include <cstdint>
#include <string>

namespace mtc::rt::host {

// ---------------------------------------------------------------------------
// Linear algebra
// ---------------------------------------------------------------------------

// C = op(A) · op(B) (+ bias broadcast over rows).
//   op(A) is (M, K): A is stored (M, K), or (K, M) when trans_a.
//   op(B) is (K, N): B is stored (K, N), or (N, K) when trans_b.
//   bias (N) or nullptr.  C (M, N).
// Implemented with a BLAS sgemm (OpenBLAS).
void matmul(const float* a, const float* b, const float* bias, float* c,
            int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b);

// y[n] = sum_m x[m, n]      x (M, N), y (N). The bias gradient.
void reduce_rows(const float* x, float* y, int64_t m, int64_t n);

// out[i] = a[i] + b[i % nb]   a, out (n), b (nb); nb divides n.
// Residual add (nb == n) and broadcast add of a (S, D) table over B (nb < n).
void add(const float* a, const float* b, float* out, int64_t n, int64_t nb);

// dst[i] += src[i]   (n). Gradient accumulation.
void accumulate(float* dst, const float* src, int64_t n);

// dst[i] = value   (n).
void fill(float* dst, float value, int64_t n);

// y[j] = sum_i x[i*nb + j]  x (n), y (nb), nb divides n: gradient of the
// broadcast operand of `add`.
void reduce_broadcast(const float* x, float* y, int64_t n, int64_t nb);

// ---------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------

// out[t, :] = table[tokens[t], :]     tokens (T), table (V, D), out (T, D).
// Returns false (and writes nothing) if some token is outside [0, V); the
// caller reports it with the token's position.
bool embedding_forward(const int32_t* tokens, const float* table, float* out,
                       int64_t t, int64_t v, int64_t d);

// dtable = 0; dtable[tokens[t], :] += dout[t, :]   dtable (V, D).
void embedding_backward(const int32_t* tokens, const float* dout,
                        float* dtable, int64_t t, int64_t v, int64_t d);

// Vocabulary-parallel embedding: the table is rows [start, start + V) of the
// global table. Forward: tokens outside the range give zero rows (the ranks'
// partial results sum to the full lookup). Backward: rows outside the range
// are skipped. Token ids are validated by the caller.
void embedding_forward_shard(const int32_t* tokens, const float* table,
                             float* out, int64_t t, int64_t v, int64_t d,
                             int64_t start);
void embedding_backward_shard(const int32_t* tokens, const float* dout,
                              float* dtable, int64_t t, int64_t v, int64_t d,
                              int64_t start);

// ---------------------------------------------------------------------------
// Normalization (statistics in fp32; recomputed in backward)
// ---------------------------------------------------------------------------

// y = (x - mean) / sqrt(var + eps) * gamma + beta, per row.
//   x, y (T, D); gamma, beta (D); beta may be nullptr (no bias).
void layer_norm_forward(const float* x, const float* gamma, const float* beta,
                        float* y, int64_t t, int64_t d, float eps);
// dx (T, D); dgamma, dbeta (D) overwritten; dbeta may be nullptr.
void layer_norm_backward(const float* x, const float* gamma, const float* dy,
                         float* dx, float* dgamma, float* dbeta, int64_t t,
                         int64_t d, float eps);

// y = x / sqrt(mean(x^2) + eps) * gamma, per row.   x, y (T, D); gamma (D).
void rms_norm_forward(const float* x, const float* gamma, float* y, int64_t t,
                      int64_t d, float eps);
void rms_norm_backward(const float* x, const float* gamma, const float* dy,
                       float* dx, float* dgamma, int64_t t, int64_t d,
                       float eps);

// ---------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------

// GELU; tanh approximation when `tanh_approx`, else the exact erf form.
void gelu_forward(const float* x, float* y, int64_t n, bool tanh_approx);
void gelu_backward(const float* x, const float* dy, float* dx, int64_t n,
                   bool tanh_approx);

// SwiGLU: y = silu(gate) * up.   gate, up, y (n).
void swiglu_forward(const float* gate, const float* up, float* y, int64_t n);
void swiglu_backward(const float* gate, const float* up, const float* dy,
                     float* dgate, float* dup, int64_t n);

// Squared ReLU: y = max(x, 0)^2, dx = dy * 2 max(x, 0).   x, y, dy, dx (n).
void squared_relu_forward(const float* x, float* y, int64_t n);
void squared_relu_backward(const float* x, const float* dy, float* dx,
                           int64_t n);

// Dropout with a counter-based RNG: element i of the *global* tensor is kept
// iff hash(seed, key, offset + i) >= p, and kept elements are scaled by
// 1/(1-p). The same (seed, key, offset) gives the same mask on every rank and
// in forward, backward and recomputation, so the gradient of dropout is this
// same kernel applied to dy. p == 0 copies.
void dropout(const float* x, float* y, int64_t n, float p, uint64_t seed,
             uint64_t key, int64_t offset);

// ---------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------
//
// Fused QKV layout (Megatron's, chosen so that a contiguous split of the last
// dimension by tp gives every rank whole KV groups): the last dimension of
// qkv is KV groups g = 0..KV-1, each holding [q heads g*R .. g*R+R-1, k_g,
// v_g] of head_dim each, R = H / KV. So qkv is (B, S, (H + 2*KV) * Dh).
// Query head h uses key/value group h / R. The output is (B, S, H * Dh),
// head-major. lse (B, H, S) is the log-sum-exp of each query's scaled scores
// (kept for backward). mask, if not nullptr, is (B, S) int32: key positions
// with mask == 0 are excluded (padding). causal excludes keys after the
// query. A query with no admissible key gets output 0 and lse = -inf.
void attention_forward(const float* qkv, const int32_t* mask, float* out,
                       float* lse, int64_t b, int64_t s, int64_t h,
                       int64_t kv, int64_t dh, bool causal, float scale);
// dqkv (B, S, (H + 2*KV) * Dh) overwritten.
void attention_backward(const float* qkv, const int32_t* mask,
                        const float* out, const float* lse, const float* dout,
                        float* dqkv, int64_t b, int64_t s, int64_t h,
                        int64_t kv, int64_t dh, bool causal, float scale);

// Rotary position embedding on the q and k parts of a fused qkv tensor
// (layout as above); v is copied unchanged. Position of token (b, s) is s.
// Rotate-half convention: for pair (i, i + Dh/2) with angle
// theta_i = pos * base^(-2i/Dh): (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
// inverse rotates by -theta (the gradient of the forward rotation).
void rope(const float* qkv, float* out, int64_t b, int64_t s, int64_t h,
          int64_t kv, int64_t dh, float base, bool inverse);

// ---------------------------------------------------------------------------
// Loss
// ---------------------------------------------------------------------------

// Mean softmax cross-entropy over the rows whose target != ignore_index.
//   logits (T, V), targets (T). Only classes [0, valid) take part (valid <=
//   V; the rest is vocabulary padding: outside the softmax, zero gradient).
// Returns the mean loss (0 if no row counts). Returns false if a target is
// outside [0, valid) and != ignore_index.
bool cross_entropy_forward(const float* logits, const int32_t* targets,
                           float* loss, int64_t t, int64_t v, int64_t valid,
                           int32_t ignore_index);
// dlogits = dloss * (softmax(logits) - onehot(target)) / count, 0 on ignored
// rows and on padding columns.
void cross_entropy_backward(const float* logits, const int32_t* targets,
                            float dloss, float* dlogits, int64_t t, int64_t v,
                            int64_t valid, int32_t ignore_index);

// ---------------------------------------------------------------------------
// Mixture of experts (runtime/src/host/moe.cpp; docs/moe.md)
// ---------------------------------------------------------------------------
// T tokens, E experts, k experts per token, D model width. The permuted
// buffer has N = T*k rows (dropless) or N = min(E*C, T*k) (capacity C),
// expert 0's first, each expert's rows in token order; counts (E) says how
// many rows each expert owns. A dropped assignment's position is -1.

// probs (T, E) = softmax(logits); indices (T, k) the k largest logits in
// decreasing order (ties: lower index first); weights (T, k) = scale *
// probs[indices] (softmax-then-top-k, no renormalization) or, with
// topk_softmax, scale * softmax over the k selected logits; aux_loss (1) =
// aux_coeff * E * sum_e f_e P_e (f_e = assignments to e / (T k), P_e =
// mean_t probs[t, e]) + z_coeff * mean_t logsumexp(logits[t])^2.
// With an expert bias (E; nullptr: none) the indices are the k largest of
// probs + bias (softmax-then-top-k) or logits + bias (topk_softmax), ties
// to the lower index; the weights use the unbiased probs or logits, and
// f_e counts the unbiased top-k of the logits. A program passes the bias
// only when its router has one (the kernel row, MtcMoe.cpp); likewise
// biased_selection below, only when true.
void moe_router_forward(const float* logits, float* probs, int32_t* indices,
                        float* weights, float* aux_loss, int64_t t, int64_t e,
                        int64_t k, bool topk_softmax, float scale,
                        float aux_coeff, float z_coeff, const float* bias = nullptr);
// dlogits (T, E) from dweights (T, k) and daux (1, or nullptr: the aux loss
// is not part of the loss); indices are constants. biased_selection: the
// forward had an expert bias, so f_e is recounted from the unbiased top-k
// of the logits rather than from the indices.
void moe_router_backward(const float* logits, const float* probs,
                         const int32_t* indices, const float* dweights,
                         const float* daux, float* dlogits, int64_t t,
                         int64_t e, int64_t k, bool topk_softmax, float scale,
                         float aux_coeff, float z_coeff, bool biased_selection = false);
// Aux-loss-free balancing (DeepSeek-V3's expert bias, Megatron's
// get_updated_expert_bias). load (E) += counts (E): a microbatch's rows
// per expert into the step's accumulator.
void moe_accumulate_load(const int32_t* counts, float* load, int64_t e);
// bias_e += rate * sign(mean_f load_f - load_e) (0 at equality, decided
// exactly: sum_f load_f against e * load_e in double), then load = 0.
void moe_update_expert_bias(float* load, float* bias, int64_t e, float rate);

// out[positions[t, j]] = x[t] for every assignment (t, j); counts (E).
//   x (T, D), indices (T, k) in [0, E), out (T*k, D), positions (T, k).
void moe_permute(const float* x, const int32_t* indices, float* out,
                 int32_t* positions, int32_t* counts, int64_t t, int64_t d,
                 int64_t e, int64_t k);
// moe_permute with token dropping: each expert keeps at most `capacity`
// (C >= 1) assignments, those of highest priority (T, k) (ties: the
// earlier assignment), or with priority nullptr the first C in token
// order; the others get position -1. out (min(E*C, T*k), D), the rows past
// the counts' total zero; counts (E) the kept rows.
void moe_permute_capacity(const float* x, const int32_t* indices, float* out,
                          int32_t* positions, int32_t* counts, int64_t t,
                          int64_t d, int64_t e, int64_t k,
                          const float* priority, int64_t capacity);
// y[t] = sum_j w[t, j] * h[positions[t, j]]   h (N, D), y (T, D), skipping
// positions -1; weights nullptr: w = 1 (the gradient of moe_permute).
void moe_unpermute(const float* h, const int32_t* positions,
                   const float* weights, float* y, int64_t t, int64_t d,
                   int64_t k);
// dh[positions[t, j]] = w[t, j] * dy[t];  dw[t, j] = dy[t] . h[positions[t, j]];
// a position -1: dw[t, j] = 0 and no row of dh.
void moe_unpermute_backward(const float* h, const int32_t* positions,
                            const float* weights, const float* dy, float* dh,
                            float* dweights, int64_t t, int64_t d, int64_t k);

// Grouped GEMM: for each expert e, its rows of x times op(w[e]) (+ bias[e]).
//   x (N, K), w (E, K, Nout) or (E, Nout, K) with trans_b, counts (E)
//   summing to at most N, bias (E, Nout) or nullptr, y (N, Nout), its rows
//   past the counts' total zero.
void grouped_matmul(const float* x, const float* w, const int32_t* counts,
                    const float* bias, float* y, int64_t rows, int64_t e,
                    int64_t n, int64_t k, bool trans_b);
// dw[e] = a_e^T · b_e   a (N, P), b (N, Q), dw (E, P, Q); zero for an
// expert without rows.
void grouped_matmul_wgrad(const float* a, const float* b,
                          const int32_t* counts, float* dw, int64_t rows,
                          int64_t e, int64_t p, int64_t q);
// db[e] = sum of expert e's rows of dy   dy (N, M), db (E, M).
void grouped_bias_grad(const float* dy, const int32_t* counts, float* db,
                       int64_t rows, int64_t e, int64_t m);

// ---------------------------------------------------------------------------
// Optimizer
// ---------------------------------------------------------------------------

// sum_i x[i]^2 in double.
double sum_squares(const float* x, int64_t n);

// One AdamW step (decoupled weight decay, PyTorch's torch.optim.AdamW):
//   g = grad * grad_scale            (grad_scale folds clipping and 1/accum)
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr * (m / (1-b1^step) / (sqrt(v / (1-b2^step)) + eps) + wd * p)
// step counts from 1.
void adamw(float* param, const float* grad, float* m, float* v, int64_t n,
           float lr, float beta1, float beta2, float eps, float weight_decay,
           int64_t step, float grad_scale);

}  // namespace mtc::rt::host
