// Where the GPU time goes, without a profiler: MTC_PROFILE=<file> (or "-"
// for stderr) makes the CUDA runtime time every op of the generated program
// and every NCCL collective, and write a report when the process exits.
//
// How: the generated code calls set_current_op(label) before each op; with
// the profile on, that also records a CUDA event on the compute stream (the
// stream of the program's Context). The GPU time between two consecutive
// events belongs to the first label: the op's kernels, or, for a
// collective's wait (`shard.all_reduce ...` without "(started)"), the time
// the compute stream stood still waiting for the communication, i.e. the
// communication that overlap did not hide. Each NCCL collective is
// bracketed by two events on its own stream (busy time and bandwidth). The
// intervals are folded in after each synchronization of the compute stream
// (once per microbatch and at the end of each optimizer step); the first
// MTC_PROFILE_SKIP steps (default 2: cuDNN and cuBLASLt plans, NCCL's
// connections) are warm-up and left out, the rest averaged per step. The time
// from a synchronization to the next op is the host's (the GPU idle,
// waiting for work) and is reported on its own line.
//
// Costs one event record per op (a few microseconds of host time, hidden
// while the host runs ahead of the GPU). One compute stream per process.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace mtc::rt::cuda::profile {

// MTC_PROFILE is set (read once).
bool enabled();

// The stream that set_current_op marks (the Context's stream).
void attach(cudaStream_t stream);
void detach(cudaStream_t stream);

// set_current_op's hook: an event on the attached stream, labelled.
void mark(const char* label);

// Before and after synchronizing the attached stream: the last event of
// the work so far, then every completed interval folded into the totals
// (end_of_step: the optimizer step's synchronization, which counts steps).
void before_sync();
void after_sync(bool end_of_step = false);

// How the report groups an op label: kind (the op's name, "(start)" or
// "(wait)" for a collective, "... of gradients (wait)" for a parameter
// gradient's collective) and name (its location, layer index as '*';
// empty for the runtime's own labels).
struct LabelParts {
  std::string kind, name;
};
LabelParts split_label(const std::string& label);

// One NCCL collective of `bytes` (the buffer each rank contributes) on
// `stream`: events recorded by the constructor and the destructor.
class CommSpan {
 public:
  CommSpan(const char* collective, int dtype_bytes, int64_t elements, cudaStream_t stream);
  ~CommSpan();
  CommSpan(const CommSpan&) = delete;
  CommSpan& operator=(const CommSpan&) = delete;

 private:
  const char* collective_;
  int64_t bytes_;
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr;
};

}  // namespace mtc::rt::cuda::profile
