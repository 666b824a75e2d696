// mtc CUDA error checking: one macro per library (CUDA runtime, cuBLAS /
// cuBLASLt) and one after every kernel launch, all reporting
//
//   mtc cuda error in op 'layers.3.attn.core (loc("gpt.json":12:3))':
//     cudaMemsetAsync(...) failed: out of memory (runtime/src/cuda/x.cu:42)
//
// The op label is a thread_local "current op" that generated code sets before
// each op (set_current_op / OpScope), so an error says which op of the model
// failed, not only which runtime line. Kernel launches are asynchronous: a
// fault inside a kernel is reported by the next checked call, usually the
// launch check of a later op or a synchronize. Set MTC_CUDA_SYNC_CHECK=1 in
// the environment to synchronize after every launch check; the report then
// names the op whose kernel faulted (slow; for debugging).
//
// A failed check throws mtc::rt::cuda::CudaError (a std::runtime_error): the
// trainer catches it, prints the message and exits non-zero. The device state
// after a kernel fault is unusable; nothing should be retried.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace mtc::rt::cuda {

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Label of the op being executed on this thread ("" when none). The pointer
// must stay valid until the next call (generated code passes literals).
void set_current_op(const char* label);
const char* current_op();

// Sets the current op for a scope and restores the previous label after it.
class OpScope {
 public:
  explicit OpScope(const char* label) : prev_(current_op()) { set_current_op(label); }
  ~OpScope() { set_current_op(prev_); }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  const char* prev_;
};

// Throws CudaError with the op label, the failing call, its error string and
// the source position.
[[noreturn]] void throw_error(const char* library, const char* call,
                              const std::string& error, const char* file,
                              int line);

// The cuBLAS status name (defined in context.cpp, which links cuBLAS), so
// that this header needs only cuda_runtime.h.
std::string cublas_status_string(int status);

// After a launch: cudaGetLastError, and with MTC_CUDA_SYNC_CHECK=1 also a
// device synchronize.
void check_launch(const char* kernel, const char* file, int line);

}  // namespace mtc::rt::cuda

#define MTC_CUDA_CHECK(call)                                                  \
  do {                                                                        \
    cudaError_t mtc_err_ = (call);                                            \
    if (mtc_err_ != cudaSuccess)                                              \
      ::mtc::rt::cuda::throw_error("cuda", #call,                             \
                                   cudaGetErrorString(mtc_err_), __FILE__,    \
                                   __LINE__);                                 \
  } while (0)

// For cublas* and cublasLt* calls (both return cublasStatus_t).
#define MTC_CUBLAS_CHECK(call)                                                \
  do {                                                                        \
    int mtc_st_ = static_cast<int>(call);                                     \
    if (mtc_st_ != 0)                                                         \
      ::mtc::rt::cuda::throw_error(                                           \
          "cublas", #call, ::mtc::rt::cuda::cublas_status_string(mtc_st_),    \
          __FILE__, __LINE__);                                                \
  } while (0)

// Right after `kernel<<<grid, block, smem, stream>>>(...)`.
#define MTC_LAUNCH_CHECK(kernel_name) \
  ::mtc::rt::cuda::check_launch(kernel_name, __FILE__, __LINE__)
