// All-reduce of a tensor-parallel pair through the GPUs' copy engines.
//
// NCCL's all-reduce runs as kernels: while it overlaps a GEMM, the two
// share the SMs, and on the 1.3B GPT at tp = 2 what overlap hides the
// slower GEMMs give back (docs/performance.md). Between two GPUs of one
// host that can reach each other's memory (NVLink or PCIe peer access),
// the sum can instead be moved by the copy engines, which use no SMs:
//   1. each rank copies the half of its partial sums that the peer reduces
//      into the peer's staging buffer;
//   2. each rank adds the received half into its own half (one small
//      elementwise kernel, the only SM work; all_reduce_add adds a
//      replicated residual in the same pass);
//   3. each rank copies its reduced half to the same place in the peer's
//      buffer (all_reduce_then: what it computed from that half, e.g. a
//      norm's input gradient, making the pair a reduce-scatter, work on
//      half the rows, an all-gather).
// Ordering across the two processes is by flags in device memory: a rank
// writes the peer's flag after each copy (a stream memory operation,
// fenced behind the copy) and its stream waits on its own flags, so the
// GPUs synchronize without the hosts. The buffers must lie in a region
// (the program's activation arena) allocated with cudaMalloc, of the same
// size and at the same offsets on both ranks, which is what one compiled
// program running on both ranks gives.
//
// Each call is watched like the pair's NCCL collectives (an entry in the
// collective watchdog until the stream has passed it): one that never
// completes ends the rank with "all_reduce (copy engines) on group tp[..]
// ... at step N".
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "mtc/rt/comm.h"
#include "mtc/rt/cuda_kernels.h"

namespace mtc::rt::cuda {

class PeerAllReduce {
 public:
  // Collective over `comm` (a group of 2 ranks on NCCL): maps the peer's
  // `region` of `region_bytes` and a staging buffer for n <= max_elements.
  // Returns nullptr on both ranks, with the reason in *why, when either
  // rank cannot map the other's memory (then use the communicator).
  static std::unique_ptr<PeerAllReduce> create(Communicator& comm, int device, void* region,
                                               size_t region_bytes, int64_t max_elements,
                                               cudaStream_t stream, std::string* why);
  ~PeerAllReduce();
  PeerAllReduce(const PeerAllReduce&) = delete;
  PeerAllReduce& operator=(const PeerAllReduce&) = delete;

  // Whether buf[0, n) lies in the region and fits the staging buffer.
  bool covers(const void* buf, int64_t n) const;
  // buf[i] = sum over both ranks, in place, enqueued on `stream` (every
  // call on the same stream, in the same order on both ranks).
  void all_reduce(bf16* buf, int64_t n, cudaStream_t stream);
  // out[i] = (sum over both ranks of buf[i]) + addend[i], where addend is
  // the same on both ranks (a replicated residual stream): step 2's kernel
  // adds it, step 3 copies out's reduced half, so the residual add costs
  // each rank half a pass and no extra traffic. buf keeps partial sums
  // (half of it reduced); out must lie in the region (covers).
  void all_reduce_add(bf16* buf, const bf16* addend, bf16* out, int64_t n, cudaStream_t stream);
  // A reduce-scatter, work on this rank's half, an all-gather: after step
  // 2, `then(begin, count)` enqueues on `stream` work that reads the
  // reduced buf[begin, begin + count) (this rank's half: rank 0 [0, n/2),
  // rank 1 the rest) and writes out[begin, begin + count); step 3 copies
  // that part of out to the peer. Row-wise work on the reduced sum (a
  // norm's backward) is done once per row instead of on both ranks.
  using HalfWork = std::function<void(int64_t begin, int64_t count)>;
  void all_reduce_then(bf16* buf, bf16* out, int64_t n, cudaStream_t stream,
                       const HalfWork& then);

 private:
  PeerAllReduce() = default;
  // One call: partial sums in buf; step 2 writes buf + peer's (+ addend)
  // into sum; `then` runs on the half; step 3 copies that half of `copy`.
  struct Pass {
    bf16* buf;
    const bf16* addend;
    bf16* sum;
    const HalfWork* then;
    bf16* copy;
  };
  void run(const Pass& p, int64_t n, cudaStream_t stream);
  void enqueue(const Pass& p, int64_t n, cudaStream_t stream);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mtc::rt::cuda
