// Host-side helpers private to the CUDA backend (plain C++: included by the
// .cpp and the .cu files alike).
#pragma once

#include <cstdint>
#include <string>

#include "mtc/rt/cuda_kernels.h"

namespace mtc::rt::cuda {

// Throws CudaError naming the current op when `ok` is false: the
// preconditions of an op (shapes, alignment) are checked before any launch.
void require(bool ok, const std::string& what);

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Checks B, S, H, KV, Dh of an attention op (attention_fwd.cu).
void check_attention_args(const char* op, int64_t b, int64_t s, int64_t h, int64_t kv,
                          int64_t dh);

// Frees the cuBLASLt plans of a context (gemm.cu).
void destroy_gemm_cache(GemmCache* cache);

// Frees the host copies of MoE expert counts of a context (moe.cu).
void destroy_moe_counts(MoeCounts* counts);

// Frees the cuDNN handle and attention plans of a context (attention_cudnn.cpp).
void destroy_cudnn_state(CudnnState* state);

// Attention through cuDNN (attention_cudnn.cpp): runs the call and returns
// true, or returns false when the cuDNN path does not apply (library
// missing, padding mask, head_dim, no engine, own kernels selected); the caller
// then runs its own kernel. Throws when the cuDNN backend is forced and
// cannot run the call.
bool cudnn_attention_forward(Context& ctx, const bf16* qkv, const int32_t* mask, bf16* out,
                             float* lse, int64_t b, int64_t s, int64_t h, int64_t kv, int64_t dh,
                             bool causal, float scale);
bool cudnn_attention_backward(Context& ctx, const bf16* qkv, const int32_t* mask, const bf16* out,
                              const float* lse, const bf16* dout, bf16* dqkv, int64_t b, int64_t s,
                              int64_t h, int64_t kv, int64_t dh, bool causal, float scale);

}  // namespace mtc::rt::cuda
