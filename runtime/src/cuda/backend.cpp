// The CUDA target's Backend: device memory of the current device,
// synchronous copies in and out of it, and NCCL communicators for
// multi-rank programs (contract in mtc/rt/cuda_backend.h).
//
// Ordering: generated code queues its kernels on the Context's stream, which
// is created non-blocking, so the legacy default stream used by cudaMemcpy /
// cudaMemset does not wait for it, and it does not wait for them. Every copy
// and fill here therefore synchronizes the device before (the program's
// kernels that read or write the buffer are done) and after (the data is in
// place before the program's next kernel). The trainer calls these a few
// times per microbatch, next to entry points that synchronize anyway to
// return a loss, so the cost is a few microseconds per call.
//
// Communicators: Backend::comm_factory is nccl_comm_factory() (NCCL on
// device LOCAL_RANK, comm_nccl.cpp) when the runtime is built with NCCL.
// CMake leaves comm_nccl.cpp out when it finds no NCCL beside the toolkit;
// nccl.h is looked for here in the same include directories, and without it
// comm_factory stays null (the trainer then refuses multi-rank programs).
#include "mtc/rt/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "mtc/rt/comm.h"
#include "mtc/rt/cuda_check.h"
#include "mtc/rt/cuda_profile.h"
#include "mtc/rt/io.h"
#include "mtc/rt/trainer.h"

namespace mtc::rt::cuda {

namespace {

// Waits for all work queued on the device. A failure here is a fault of an
// earlier kernel of the program (reported with the label below).
// `label` names the wait in errors and in MTC_PROFILE's report.
void synchronize_device(const char* label) {
  OpScope scope(label);
  profile::before_sync();
  MTC_CUDA_CHECK(cudaDeviceSynchronize());
  profile::after_sync();
}

void wait_for_program() {
  synchronize_device("the program's queued GPU work (before a trainer copy)");
}

void* cuda_alloc(size_t bytes, const char* what) {
  OpScope scope("cuda backend: allocation");
  void* p = nullptr;
  // cudaMalloc(0) gives no pointer; a small buffer keeps every pointer valid
  // and distinct.
  const size_t request = std::max<size_t>(bytes, 256);
  cudaError_t err = cudaMalloc(&p, request);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // allocation errors are not sticky; clear it
    size_t free_bytes = 0, total_bytes = 0;
    std::string mem;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess)
      mem = "; the device has " + human_bytes(double(free_bytes)) + " free of " +
            human_bytes(double(total_bytes));
    (void)cudaGetLastError();
    throw Error("cannot allocate " + human_bytes(double(request)) + " (" +
                std::to_string(request) + " bytes) of GPU memory for " + what +
                ": cudaMalloc failed: " + cudaGetErrorString(err) + mem);
  }
  // Zeroed as the contract asks; synchronized because the memset runs on the
  // legacy default stream and the program's stream does not wait for it.
  err = cudaMemset(p, 0, request);
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    cudaFree(p);
    throw_error("cuda", "cudaMemset(ptr, 0, bytes) of a new allocation",
                cudaGetErrorString(err), __FILE__, __LINE__);
  }
  return p;
}

// Errors are ignored: release runs while unwinding from an earlier error,
// when the device may already be unusable.
void cuda_release(void* p) {
  if (p != nullptr) (void)cudaFree(p);
  (void)cudaGetLastError();
}

// dst (device)[0, bytes) = src (host)[0, bytes).
void cuda_upload(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  wait_for_program();
  OpScope scope("cuda backend: upload (host -> device)");
  MTC_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
  MTC_CUDA_CHECK(cudaDeviceSynchronize());
}

// dst (host)[0, bytes) = src (device)[0, bytes).
void cuda_download(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  wait_for_program();
  OpScope scope("cuda backend: download (device -> host)");
  MTC_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

// dst (device)[0, bytes) = 0.
void cuda_zero(void* dst, size_t bytes) {
  if (bytes == 0) return;
  wait_for_program();
  OpScope scope("cuda backend: zero");
  MTC_CUDA_CHECK(cudaMemset(dst, 0, bytes));
  MTC_CUDA_CHECK(cudaDeviceSynchronize());
}

void cuda_synchronize() { synchronize_device("the program's queued GPU work (synchronize)"); }

void cuda_memory_info(size_t* free_bytes, size_t* total_bytes) {
  OpScope scope("cuda backend: memory info");
  *free_bytes = 0;
  *total_bytes = 0;
  MTC_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}

#if __has_include(<nccl.h>)
// Built before main (a lambda, no CUDA call); the backend holds its address.
const CommFactory kCommFactory = nccl_comm_factory();
constexpr const void* kCommFactoryAddress = &kCommFactory;
#else
constexpr const void* kCommFactoryAddress = nullptr;
#endif

const Backend kCudaBackend = {
    "cuda",     &cuda_alloc,        &cuda_release,     &cuda_upload, &cuda_download,
    &cuda_zero, &cuda_synchronize, &cuda_memory_info, kCommFactoryAddress,
};

}  // namespace

const Backend& cuda_backend() { return kCudaBackend; }

}  // namespace mtc::rt::cuda
