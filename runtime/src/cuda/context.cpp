// The CUDA context (stream, cuBLASLt handle and workspace, scratch, data
// error slots) and the error reporting behind cuda_check.h.
//
// Assumes one Context per device and process, used from one host thread at a
// time; every op on it is ordered on ctx.stream.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "cuda/internal.h"
#include "mtc/rt/cuda_check.h"
#include "mtc/rt/cuda_kernels.h"
#include "mtc/rt/cuda_profile.h"

namespace mtc::rt::cuda {
namespace {

thread_local const char* g_current_op = "";

bool sync_check_enabled() {
  static const bool enabled = [] {
    const char* e = std::getenv("MTC_CUDA_SYNC_CHECK");
    return e && std::strcmp(e, "0") != 0 && e[0] != '\0';
  }();
  return enabled;
}

constexpr int kNumDataErrorSlots = 2;

}  // namespace

void set_current_op(const char* label) {
  g_current_op = label ? label : "";
  if (profile::enabled()) profile::mark(g_current_op);
}
const char* current_op() { return g_current_op; }

void throw_error(const char* library, const char* call, const std::string& error,
                 const char* file, int line) {
  std::ostringstream os;
  os << "mtc " << library << " error";
  if (g_current_op[0] != '\0') os << " in op '" << g_current_op << "'";
  os << ": " << call << " failed: " << error << " (" << file << ":" << line << ")";
  throw CudaError(os.str());
}

std::string cublas_status_string(int status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "cublas status " + std::to_string(status);
  }
}

void check_launch(const char* kernel, const char* file, int line) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw_error("cuda", (std::string("launch of ") + kernel).c_str(),
                cudaGetErrorString(err), file, line);
  if (sync_check_enabled()) {
    err = cudaDeviceSynchronize();
    if (err != cudaSuccess)
      throw_error("cuda", (std::string("kernel ") + kernel).c_str(),
                  cudaGetErrorString(err), file, line);
  }
}

void require(bool ok, const std::string& what) {
  if (ok) return;
  std::ostringstream os;
  os << "mtc cuda op";
  if (g_current_op[0] != '\0') os << " '" << g_current_op << "'";
  os << ": invalid arguments: " << what;
  throw CudaError(os.str());
}

Context::Context(int device_, size_t workspace_bytes, int stream_priority) : device(device_) {
  MTC_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp prop;
  MTC_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  sm_count = prop.multiProcessorCount;
  max_smem_per_block = prop.sharedMemPerBlockOptin;
  MTC_CUDA_CHECK(cudaStreamCreateWithPriority(&stream, cudaStreamNonBlocking, stream_priority));
  MTC_CUBLAS_CHECK(cublasLtCreate(&lt));
  cublas_workspace_bytes = workspace_bytes;
  MTC_CUDA_CHECK(cudaMalloc(&cublas_workspace, cublas_workspace_bytes));
  MTC_CUDA_CHECK(cudaMalloc(&data_error_slots,
                            kNumDataErrorSlots * sizeof(unsigned long long)));
  MTC_CUDA_CHECK(cudaMemsetAsync(data_error_slots, 0xff,
                                 kNumDataErrorSlots * sizeof(unsigned long long), stream));
  MTC_CUDA_CHECK(cudaStreamSynchronize(stream));
  profile::attach(stream);
}

Context::~Context() {
  // Destructors must not throw: errors here are ignored (the process is
  // usually exiting after a reported error).
  if (cudaStreamSynchronize(stream) == cudaSuccess) {
    try {
      profile::detach(stream);
    } catch (...) {
    }
  }
  destroy_gemm_cache(gemm_cache);
  destroy_cudnn_state(cudnn);
  destroy_moe_counts(moe_counts);
  if (scratch_) cudaFree(scratch_);
  cudaFree(data_error_slots);
  cudaFree(cublas_workspace);
  if (lt) cublasLtDestroy(lt);
  if (stream) cudaStreamDestroy(stream);
}

void* Context::scratch(size_t bytes) {
  if (bytes <= scratch_bytes_) return scratch_;
  // Grow by at least 1/4 to avoid reallocating for every slightly larger op.
  size_t grown = bytes + bytes / 4;
  grown = (grown + (1u << 20) - 1) & ~static_cast<size_t>((1u << 20) - 1);
  if (scratch_) MTC_CUDA_CHECK(cudaFreeAsync(scratch_, stream));
  scratch_ = nullptr;
  scratch_bytes_ = 0;
  MTC_CUDA_CHECK(cudaMallocAsync(&scratch_, grown, stream));
  scratch_bytes_ = grown;
  return scratch_;
}

void Context::synchronize(bool end_of_step) {
  profile::before_sync();
  MTC_CUDA_CHECK(cudaStreamSynchronize(stream));
  profile::after_sync(end_of_step);
}

std::string Context::take_data_error() {
  unsigned long long slots[kNumDataErrorSlots];
  MTC_CUDA_CHECK(cudaMemcpyAsync(slots, data_error_slots, sizeof(slots),
                                 cudaMemcpyDeviceToHost, stream));
  synchronize();
  std::ostringstream os;
  if (slots[0] != ULLONG_MAX)
    os << "token id out of the vocabulary at token row " << slots[0]
       << " (row = batch * seq_length + position)";
  if (slots[1] != ULLONG_MAX) {
    if (slots[0] != ULLONG_MAX) os << "; ";
    os << "target id out of the vocabulary (and not ignore_index) at row "
       << slots[1];
  }
  if (slots[0] != ULLONG_MAX || slots[1] != ULLONG_MAX)
    MTC_CUDA_CHECK(cudaMemsetAsync(data_error_slots, 0xff, sizeof(slots), stream));
  return os.str();
}

}  // namespace mtc::rt::cuda
