// mtc CUDA kernels: the bf16 mixed-precision implementation of every mtc op
// and of its gradient, the GPU twin of host_kernels.h (same ops, same
// layouts, same math; tested against it in test/cuda/).
//
// Conventions (shared by every kernel in this file):
// - Precision as in Megatron-LM: activations and the weights' compute copies
//   are bf16; arithmetic inside a kernel is fp32 (GEMMs accumulate in fp32,
//   softmax / norm statistics / loss in fp32); master weights, gradients of
//   parameters and the optimizer state are fp32.
// - Layouts are host_kernels.h's: dense, row-major; a (B, S, D) activation
//   is (T = B*S, D); attention uses the grouped fused-QKV layout described
//   there; token ids and masks are int32.
// - Outputs that are activations or activation gradients are OVERWRITTEN.
//   Outputs that are parameter gradients (fp32) are ACCUMULATED (+=), so
//   microbatches and tied weights add into one gradient buffer; a caller
//   zeroes the gradients (fill) before the first microbatch of a step.
// - Every op runs on ctx.stream, asynchronously; nothing synchronizes except
//   Context::take_data_error. Pointers are device pointers unless stated.
// - Ops check their preconditions (sizes, alignment) and throw CudaError with
//   the current op label (cuda_check.h) when one fails.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "mtc/rt/cuda_check.h"

namespace mtc::rt::cuda {

using bf16 = __nv_bfloat16;

struct GemmCache;   // cuBLASLt plans by shape (gemm.cu)
struct CudnnState;  // cuDNN handle and attention plans (attention_cudnn.cpp)
struct MoeCounts;   // host copies of MoE expert counts (moe.cu)

// ---------------------------------------------------------------------------
// Context: created once per device and process, before the first op.
// ---------------------------------------------------------------------------
//
// Holds the stream every op runs on, the cuBLASLt handle and workspace, the
// cached GEMM plans, a scratch buffer for the kernels' temporaries and the
// device-side record of data errors (token or target ids out of range).
struct Context {
  // stream_priority: the stream's CUDA priority (0 the default; lower is
  // more urgent, down to cudaDeviceGetStreamPriorityRange's greatest).
  explicit Context(int device = 0, size_t cublas_workspace_bytes = 32u << 20,
                   int stream_priority = 0);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int device = 0;
  int sm_count = 0;
  size_t max_smem_per_block = 0;   // opt-in limit (227 KB on H100)
  cudaStream_t stream = nullptr;   // owned, non-blocking
  cublasLtHandle_t lt = nullptr;
  void* cublas_workspace = nullptr;
  size_t cublas_workspace_bytes = 0;
  GemmCache* gemm_cache = nullptr;
  CudnnState* cudnn = nullptr;     // created at the first cuDNN attention call
  MoeCounts* moe_counts = nullptr; // created at the first MoE permute
  // SMs that the GEMMs enqueued from now on leave to work running beside
  // them on other streams (NCCL kernels of an overlapped collective): their
  // plans target sm_count - sm_margin SMs (cuBLASLt's SM count target), so
  // that none of their blocks waits for an SM the collective holds. 0: all.
  int sm_margin = 0;

  // Scratch memory of at least `bytes`, valid until the next op on this
  // context (ops use it for partial sums, attention's dq accumulators, ...).
  // Grows with stream-ordered allocation; call reserve_scratch with the
  // largest *_scratch_bytes() before capturing a CUDA graph.
  void* scratch(size_t bytes);
  void reserve_scratch(size_t bytes) { scratch(bytes); }
  size_t scratch_bytes() const { return scratch_bytes_; }

  // Data errors recorded by embedding_forward (token id outside [0, V)) and
  // cross_entropy (target outside [0, V) and != ignore_index): the position
  // of the first offending row of each kind. Synchronizes the stream; returns
  // "" when nothing was recorded since the last call, else a message naming
  // the row, and clears the record.
  std::string take_data_error();
  // Waits for the stream's work (and folds it into MTC_PROFILE's totals;
  // end_of_step: the optimizer step's, which counts the profile's steps).
  void synchronize(bool end_of_step = false);
  // Device slots written by the kernels: [0] token row, [1] target row
  // (UINT64_MAX = none; kernels atomicMin the row index in).
  unsigned long long* data_error_slots = nullptr;

 private:
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
};

// ---------------------------------------------------------------------------
// Conversion, fill, elementwise
// ---------------------------------------------------------------------------

// y[i] = bf16(x[i]) (round to nearest even), or y[i] = float(x[i]).   (n)
void convert(Context& ctx, const float* x, bf16* y, int64_t n);
void convert(Context& ctx, const bf16* x, float* y, int64_t n);

// x[i] = value   (n).
void fill(Context& ctx, float* x, float value, int64_t n);
void fill(Context& ctx, bf16* x, float value, int64_t n);

// out[i] = a[i] + b[i % nb]   a, out (n), b (nb), nb divides n.
// Residual add (nb == n) and broadcast add of an (S, D) table over B.
// out may alias a or b.
void add(Context& ctx, const bf16* a, const bf16* b, bf16* out, int64_t n,
         int64_t nb);
// The same in fp32 (the loss and the terms added to it, e.g. MoE aux losses).
void add(Context& ctx, const float* a, const float* b, float* out, int64_t n,
         int64_t nb);

// out[i] = (a[i] + b[i]) + c[i]   (n; without c when it is null), in fp32
// with one rounding, enqueued on `stream` (not a context's: a collective's,
// e.g. the tp all-reduce's sums) with a grid for sm_count SMs. out may alias
// a, b or c.
void add3_on(cudaStream_t stream, int sm_count, const bf16* a, const bf16* b,
             const bf16* c, bf16* out, int64_t n);

// dst[i] += src[i]   (n), fp32 accumulation of a bf16 or fp32 gradient.
void accumulate(Context& ctx, float* dst, const bf16* src, int64_t n);
void accumulate(Context& ctx, float* dst, const float* src, int64_t n);

// base[dst[i] + j] += rows[i, j], then rows[i, j] = 0   rows (M, N) fp32,
// dst (M) in device memory, each row's destination distinct and not
// overlapping another's. One launch for many small gradients summed
// elsewhere (the norms' partial weight gradients of tp).
void accumulate_rows(Context& ctx, float* base, const int64_t* dst, float* rows, int64_t m,
                     int64_t n);

// y[j] += sum_i x[i, j]   x (M, N) bf16, y (N) fp32; summed in fp32 in a
// fixed order (deterministic). The gradient of a bias, and of the broadcast
// operand of `add` (x viewed as (n / nb, nb)).
void reduce_rows_accumulate(Context& ctx, const bf16* x, float* y, int64_t m,
                            int64_t n);

// Dropout with mtc/rt/dropout_hash.h's counter-based hash, bit-identical
// masks to host::dropout: y[i] = keep(offset + i) ? x[i] / (1 - p) : 0 with
// keep(j) = dropout_uniform(dropout_stream(seed, key), j) >= p. p <= 0
// copies, p >= 1 zeroes. Its own gradient (apply to dy). y may alias x.
void dropout(Context& ctx, const bf16* x, bf16* y, int64_t n, float p,
             uint64_t seed, uint64_t key, int64_t offset);

// Dropout of a tensor-parallel slice: x, y (outer, chunk) are this rank's
// part [:, index, :] of a global (outer, parts, chunk) tensor, and element
// (o, c) draws the global tensor's mask at (o * parts + index) * chunk + c,
// so the slices of all ranks together draw the one-process mask.
void dropout_slice(Context& ctx, const bf16* x, bf16* y, int64_t outer,
                   int64_t chunk, int64_t parts, int64_t index, float p,
                   uint64_t seed, uint64_t key);

// out[i] = resid[i] + dropout(x)[i]   (n): the residual add after an
// attention or MLP block, dropout fused. out may alias resid or x.
void dropout_add(Context& ctx, const bf16* x, const bf16* resid, bf16* out,
                 int64_t n, float p, uint64_t seed, uint64_t key,
                 int64_t offset);

// ---------------------------------------------------------------------------
// GEMM (cuBLASLt; bf16 inputs, fp32 accumulation)
// ---------------------------------------------------------------------------
//
// Shapes as host::matmul: op(A) is (M, K): A is stored (M, K), or (K, M) when
// trans_a; op(B) is (K, N): B is stored (K, N), or (N, K) when trans_b.
// C is (M, N). Every pointer 16-byte aligned and N, K multiples of 8 give the
// fast kernels (other shapes work, slower). A plan per shape is chosen by
// cuBLASLt's heuristic at first use and cached in ctx.

// C (M, N) bf16 = op(A) op(B) [+ bias (N) on every row].
void matmul(Context& ctx, const bf16* a, const bf16* b, const bf16* bias,
            bf16* c, int64_t m, int64_t n, int64_t k, bool trans_a,
            bool trans_b);

// C = gelu_tanh(Z), Z = op(A) op(B) [+ bias]; Z is saved to `pre` (M, N)
// when non-null, for matmul_dgelu in backward.
void matmul_gelu(Context& ctx, const bf16* a, const bf16* b, const bf16* bias,
                 bf16* c, bf16* pre, int64_t m, int64_t n, int64_t k,
                 bool trans_a, bool trans_b);

// C (M, N) bf16 = (op(A) op(B)) * gelu_tanh'(pre)   pre (M, N) from
// matmul_gelu; dbias (N) fp32 += sum over rows of C when non-null.
void matmul_dgelu(Context& ctx, const bf16* a, const bf16* b, const bf16* pre,
                  bf16* c, float* dbias, int64_t m, int64_t n, int64_t k,
                  bool trans_a, bool trans_b);

// C (M, N) fp32 = op(A) op(B) (+ C when accumulate): weight gradients into
// the fp32 gradient buffer. dbias (M) fp32 += sum_k op(A)[:, k] when non-null
// (the bias gradient, from dY stored (K, M): requires trans_a).
void matmul_f32(Context& ctx, const bf16* a, const bf16* b, float* c,
                float* dbias, int64_t m, int64_t n, int64_t k, bool trans_a,
                bool trans_b, bool accumulate);

// Process-wide switch (default on) between cuBLASLt's fused epilogues and the
// unfused path (plain GEMM, then this library's gelu / reduction kernels;
// same math). The unfused path is also taken per shape when cuBLASLt has no
// algorithm for an epilogue. For tests and benchmarks.
void set_fused_gemm_epilogues(bool enabled);

// ---------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------

// out[t, :] = table[tokens[t], :] (+ pos[t % S, :] when pos != nullptr)
//   tokens (T), table (V, D), pos (S, D), out (T, D); T a multiple of S.
// A token outside [0, V) gives a zero row and is recorded for
// ctx.take_data_error().
void embedding_forward(Context& ctx, const int32_t* tokens, const bf16* table,
                       const bf16* pos, bf16* out, int64_t t, int64_t v,
                       int64_t d, int64_t s);

// dtable[tokens[t], :] += dout[t, :]   dout (T, D) bf16, dtable (V, D) fp32.
// Rows with an invalid token are skipped. fp32 atomics: the summation order
// of repeated tokens varies between runs (last-bit differences).
void embedding_backward(Context& ctx, const int32_t* tokens, const bf16* dout,
                        float* dtable, int64_t t, int64_t v, int64_t d);

// ---------------------------------------------------------------------------
// Normalization: one warp per row, statistics in fp32, recomputed in backward
// ---------------------------------------------------------------------------

// y = (x - mean) / sqrt(var + eps) * gamma + beta, per row.
//   x, y (T, D); gamma, beta (D); beta may be nullptr. D a multiple of 8.
void layer_norm_forward(Context& ctx, const bf16* x, const bf16* gamma,
                        const bf16* beta, bf16* y, int64_t t, int64_t d,
                        float eps);
// dx (T, D) = d/dx (overwritten, or added to when accumulate_dx: the
// residual stream's gradient); dgamma, dbeta (D) fp32 +=, dbeta may be
// nullptr. Deterministic.
void layer_norm_backward(Context& ctx, const bf16* x, const bf16* gamma,
                         const bf16* dy, bf16* dx, float* dgamma,
                         float* dbeta, int64_t t, int64_t d, float eps,
                         bool accumulate_dx = false);

// The same with dx (T, D) = base + d/dx, base (T, D) another tensor (the
// residual stream's gradient, left as it is; base may be dx).
void layer_norm_backward_add(Context& ctx, const bf16* x, const bf16* gamma,
                             const bf16* dy, const bf16* base, bf16* dx,
                             float* dgamma, float* dbeta, int64_t t, int64_t d,
                             float eps);

// y = x / sqrt(mean(x^2) + eps) * gamma.   x, y (T, D); gamma (D).
void rms_norm_forward(Context& ctx, const bf16* x, const bf16* gamma, bf16* y,
                      int64_t t, int64_t d, float eps);
void rms_norm_backward(Context& ctx, const bf16* x, const bf16* gamma,
                       const bf16* dy, bf16* dx, float* dgamma, int64_t t,
                       int64_t d, float eps, bool accumulate_dx = false);
void rms_norm_backward_add(Context& ctx, const bf16* x, const bf16* gamma,
                           const bf16* dy, const bf16* base, bf16* dx,
                           float* dgamma, int64_t t, int64_t d, float eps);

// ---------------------------------------------------------------------------
// Activations (math in host activations.cpp; here in fp32)
// ---------------------------------------------------------------------------

void gelu_forward(Context& ctx, const bf16* x, bf16* y, int64_t n,
                  bool tanh_approx);
void gelu_backward(Context& ctx, const bf16* x, const bf16* dy, bf16* dx,
                   int64_t n, bool tanh_approx);

// y = silu(gate) * up   gate, up, y (n).
void swiglu_forward(Context& ctx, const bf16* gate, const bf16* up, bf16* y,
                    int64_t n);
void swiglu_backward(Context& ctx, const bf16* gate, const bf16* up,
                     const bf16* dy, bf16* dgate, bf16* dup, int64_t n);

// y = max(x, 0)^2, dx = dy * 2 max(x, 0)   x, y, dy, dx (n).
void squared_relu_forward(Context& ctx, const bf16* x, bf16* y, int64_t n);
void squared_relu_backward(Context& ctx, const bf16* x, const bf16* dy,
                           bf16* dx, int64_t n);

// Rotary embedding on the q and k heads of a fused qkv (B, S, (H+2KV)*Dh),
// rotate-half convention, theta_c = pos * base^(-2c/Dh) (cos/sin in double,
// as the host kernel); v copied; inverse rotates by -theta (the
// gradient). out may alias qkv. Dh even.
void rope(Context& ctx, const bf16* qkv, bf16* out, int64_t b, int64_t s,
          int64_t h, int64_t kv, int64_t dh, float base, bool inverse);

// ---------------------------------------------------------------------------
// Attention core: cuDNN's fused flash attention where it applies, else the
// own FlashAttention-2 style tensor-core kernels (attention_fwd.cu,
// attention_bwd.cu, attention_cudnn.cpp; see AttentionBackend below)
// ---------------------------------------------------------------------------
//
// qkv (B, S, (H+2KV)*Dh) in the grouped fused layout, mask (B, S) int32 or
// nullptr (keys with mask == 0 excluded), out (B, S, H*Dh), lse (B, H, S)
// fp32. Same semantics as host::attention_forward, including out = 0 and
// lse = -inf for a query without admissible keys. Dh = 64 or 128.
void attention_forward(Context& ctx, const bf16* qkv, const int32_t* mask,
                       bf16* out, float* lse, int64_t b, int64_t s, int64_t h,
                       int64_t kv, int64_t dh, bool causal, float scale);

// dqkv (B, S, (H+2KV)*Dh) overwritten; P recomputed from lse. Uses
// attention_backward_scratch_bytes() of ctx's scratch (fp32 dq accumulators
// and the row terms D = rowsum(dout * out)), plus cuDNN's workspace (a few
// bytes to a few MB) on the cuDNN path, and with grouped KV heads
// (1 < KV < H) as much again for the packed q and dq it passes cuDNN.
void attention_backward(Context& ctx, const bf16* qkv, const int32_t* mask,
                        const bf16* out, const float* lse, const bf16* dout,
                        bf16* dqkv, int64_t b, int64_t s, int64_t h,
                        int64_t kv, int64_t dh, bool causal, float scale);
size_t attention_backward_scratch_bytes(int64_t b, int64_t s, int64_t h,
                                        int64_t dh);

// Which implementation attention_forward / attention_backward use:
//   automatic  cuDNN's fused flash-attention engines (loaded at run time,
//              libcudnn.so.9 or $MTC_CUDNN_LIB) where they apply: no padding
//              mask, Dh 64 or 128 (MHA, GQA and MQA), and an engine exists;
//              the own FlashAttention-2 style kernels otherwise (masks, other
//              head sizes, no cuDNN).
//   own        always the own kernels.
//   cudnn      always cuDNN; a call it cannot run throws CudaError.
// Process-wide; the default comes from $MTC_ATTENTION_BACKEND
// (auto | own | cudnn), else automatic. Forward and backward may use
// different implementations: both define lse the same way.
enum class AttentionBackend { automatic, own, cudnn };
void set_attention_backend(AttentionBackend backend);

// True when the cuDNN path can run attention of this shape in both
// directions (builds and caches the plans); else false with the reason.
bool cudnn_attention_supported(Context& ctx, int64_t b, int64_t s, int64_t h,
                               int64_t kv, int64_t dh, bool causal,
                               bool has_mask, std::string* why);

// ---------------------------------------------------------------------------
// Loss
// ---------------------------------------------------------------------------

// Fused softmax cross-entropy: one pass per row computes the row's loss and,
// from the same statistics, writes its gradient; no separate backward pass.
//   logits (T, V) bf16, targets (T) int32; only classes [0, valid) take part
//   (valid <= V; the rest is vocabulary padding: outside the softmax, zero
//   gradient). loss (1) fp32 device scalar = mean over the rows whose target
//   != ignore_index (0 if none); dlogits (T, V) bf16 = dloss / count *
//   (softmax(logits) - onehot(target)), zero on ignored rows and padding
//   columns; may alias logits; nullptr computes the loss only.
// A target outside [0, valid) other than ignore_index is treated as ignored
// and recorded for ctx.take_data_error().
void cross_entropy(Context& ctx, const bf16* logits, const int32_t* targets,
                   float* loss, bf16* dlogits, int64_t t, int64_t v,
                   int64_t valid, int32_t ignore_index, float dloss);

// ---------------------------------------------------------------------------
// Mixture of experts (moe.cu; the math of host_kernels.h's "Mixture of
// experts", which documents the layouts)
// ---------------------------------------------------------------------------
//
// The router's math is fp32: logits, probs, weights, the aux loss and the
// weights' gradient are fp32; the rows moved and the GEMMs are bf16.
//
// Token counts: an expert's rows start at the sum of the counts before it,
// and cuBLASLt takes the rows of a GEMM from the host. moe_permute therefore
// copies the counts it computes to the host (one stream synchronization per
// call) and keeps the copy in ctx, keyed by the counts' device address; the
// grouped GEMMs read that copy (or copy and synchronize themselves when no
// permute of this context wrote that address). Counts written at an
// address by anything else (an upload, a collective) must be declared with
// moe_counts_written before a grouped GEMM reads them.
void moe_counts_written(Context& ctx, const int32_t* counts);

// probs (T, E) = softmax(logits); indices, weights (T, K): the top K
// experts by logit (ties to the lower index) and their weights; aux_loss
// (1): load-balancing + z-loss (host::moe_router_forward). E <= 4096,
// K <= 32. Statistics summed in a fixed order (deterministic).
void moe_router_forward(Context& ctx, const float* logits, float* probs, int32_t* indices,
                        float* weights, float* aux_loss, int64_t t, int64_t e, int64_t k,
                        bool topk_softmax, float scale, float aux_coeff, float z_coeff);
// dlogits (T, E) from dweights (T, K) and daux (1, device; nullptr: 0).
void moe_router_backward(Context& ctx, const float* logits, const float* probs,
                         const int32_t* indices, const float* dweights, const float* daux,
                         bf16* dlogits, int64_t t, int64_t e, int64_t k, bool topk_softmax,
                         float scale, float aux_coeff, float z_coeff);
// out (T*K, D): x's rows grouped by expert, token order within an expert;
// positions (T, K) the row of each assignment; counts (E).
void moe_permute(Context& ctx, const bf16* x, const int32_t* indices, bf16* out,
                 int32_t* positions, int32_t* counts, int64_t t, int64_t d, int64_t e,
                 int64_t k);
// The same keeping at most `capacity` assignments per expert (by decreasing
// priority (T, K), ties to the earlier; by position when priority is null);
// dropped assignments get position -1; out has min(E * capacity, T * K) rows,
// those past the kept ones zero.
void moe_permute_capacity(Context& ctx, const bf16* x, const int32_t* indices, bf16* out,
                          int32_t* positions, int32_t* counts, int64_t t, int64_t d,
                          int64_t e, int64_t k, const float* priority, int64_t capacity);
// y (T, D) = sum_j weights[t, j] h[positions[t, j]] (weights null: 1;
// position -1: skipped). Summed in fp32.
void moe_unpermute(Context& ctx, const bf16* h, const int32_t* positions, const float* weights,
                   bf16* y, int64_t t, int64_t d, int64_t k);
// dh[positions[t, j]] = weights[t, j] dy[t]; dweights[t, j] = <dy[t], h[row]>
// (0 for dropped assignments, whose rows dh leaves as they are).
void moe_unpermute_backward(Context& ctx, const bf16* h, const int32_t* positions,
                            const float* weights, const bf16* dy, bf16* dh, float* dweights,
                            int64_t t, int64_t d, int64_t k);
// y (rows, N): expert i's rows x_i (m_i, K) times w_i ((N, K) when trans_b,
// else (K, N)) [+ bias_i (N)], one cuBLASLt GEMM per expert with rows;
// rows past the counted ones are zeroed.
void grouped_matmul(Context& ctx, const bf16* x, const bf16* w, const int32_t* counts,
                    const bf16* bias, bf16* y, int64_t rows, int64_t e, int64_t n, int64_t k,
                    bool trans_b);
// dw (E, P, Q) fp32 += a_i^T b_i per expert (a (rows, P), b (rows, Q)).
void grouped_matmul_wgrad(Context& ctx, const bf16* a, const bf16* b, const int32_t* counts,
                          float* dw, int64_t rows, int64_t e, int64_t p, int64_t q);
// db (E, M) fp32 += the sum of expert i's rows of dy (rows, M).
void grouped_bias_grad(Context& ctx, const bf16* dy, const int32_t* counts, float* db,
                       int64_t rows, int64_t e, int64_t m);

// ---------------------------------------------------------------------------
// Optimizer
// ---------------------------------------------------------------------------

// out (1, device, double) = sum_i x[i]^2 (n) (+ *out when accumulate);
// summed in double, deterministic.
void sum_squares(Context& ctx, const float* x, int64_t n, double* out,
                 bool accumulate);

// A set of element ranges [offset, offset + numel) of one fp32 buffer (e.g.
// the gradients of this rank's shard, or of the tensors that are not
// replicated), cut into fixed-size pieces whose table is uploaded once.
class SumSquaresPlan {
 public:
  // ranges: (offset, numel) pairs, offset >= 0, numel >= 0; may be empty.
  // Overlapping ranges are summed once per range.
  SumSquaresPlan(Context& ctx,
                 const std::vector<std::pair<int64_t, int64_t>>& ranges);
  ~SumSquaresPlan();
  SumSquaresPlan(const SumSquaresPlan&) = delete;
  SumSquaresPlan& operator=(const SumSquaresPlan&) = delete;

  int64_t num_pieces() const { return num_pieces_; }
  const void* pieces() const { return pieces_; }  // device table

 private:
  void* pieces_ = nullptr;
  int64_t num_pieces_ = 0;
};

// out (1, device, double) = sum over the plan's ranges r of
// sum_{i in r} x[i]^2 (+ *out when accumulate), in double. Two launches
// whatever the number of ranges (per-piece partials, then one block sums
// them in order): the same result on every run. An empty plan writes 0
// (leaves *out when accumulating). Uses 8 * num_pieces() bytes of ctx's
// scratch.
void sum_squares(Context& ctx, const SumSquaresPlan& plan, const float* x,
                 double* out, bool accumulate);

// One parameter tensor of the single parameter allocation.
struct AdamWTensor {
  int64_t offset = 0;   // element offset in params, grads, params_bf16
  int64_t numel = 0;
  bool weight_decay = true;
  // Element offset of this tensor's moments in adamw's m and v; -1: the
  // same as `offset` (m and v laid out as the parameters). A rank of a
  // sharded (ZeRO-1) optimizer lists the parts of the tensors inside its
  // shard [s0, s1) of the flat parameter buffer with
  // state_offset = offset - s0, so its m and v hold s1 - s0 elements.
  int64_t state_offset = -1;
};

// The tensors cut into fixed-size chunks (one thread block each), uploaded
// once; one launch then updates every parameter.
class AdamWPlan {
 public:
  AdamWPlan(Context& ctx, const std::vector<AdamWTensor>& tensors);
  ~AdamWPlan();
  AdamWPlan(const AdamWPlan&) = delete;
  AdamWPlan& operator=(const AdamWPlan&) = delete;

  int64_t num_chunks() const { return num_chunks_; }
  const void* chunks() const { return chunks_; }  // device table

 private:
  void* chunks_ = nullptr;
  int64_t num_chunks_ = 0;
};

struct AdamWHyper {
  float lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float weight_decay = 0;   // applied to tensors with weight_decay = true
  int64_t step = 1;         // from 1
  float grad_scale = 1;     // folds 1/microbatches (and a loss scale)
  float max_grad_norm = 0;  // clip threshold; 0 disables
};

// One AdamW step over every tensor of the plan, host::adamw's math with
//   g = grad * grad_scale * clip,
//   clip = min(1, max_grad_norm / (sqrt(*grad_sumsq) * grad_scale + 1e-6))
// (torch.nn.utils.clip_grad_norm_ on the scaled gradient; clip = 1 when
// grad_sumsq is nullptr or max_grad_norm == 0). grad_sumsq is a device
// double from sum_squares over the unscaled gradients, so clipping costs no
// host synchronization. params, grads, m, v: fp32, the plan's layout;
// params_bf16 (same layout) receives bf16(new param) in the same pass when
// non-null.
void adamw(Context& ctx, const AdamWPlan& plan, float* params,
           const float* grads, float* m, float* v, bf16* params_bf16,
           const AdamWHyper& hyper, const double* grad_sumsq);

}  // namespace mtc::rt::cuda
