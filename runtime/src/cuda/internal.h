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

}  // namespace mtc::rt::cuda
