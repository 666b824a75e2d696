// The NCCL backend: fp32 / bf16 / fp64 device buffers, collectives enqueued on the
// caller's stream (the mtc::rt::Communicator interface in mtc/rt/comm.h).
//
// Setup (nccl_comm_factory): the rank selects device LOCAL_RANK; the
// group's rank 0 creates an ncclUniqueId and publishes it in the rendezvous
// store under "nccl/<group label>"; every member reads it and calls
// ncclCommInitRank(group size, id, rank in group). The init is registered
// with the watchdog, since it blocks until every member has called it.
//
// Collectives map one to one onto NCCL (all_reduce -> ncclAllReduce,
// all_gather -> ncclAllGather, reduce_scatter -> ncclReduceScatter,
// broadcast -> ncclBroadcast, send/recv/send_recv -> ncclSend/ncclRecv in one
// group, all_to_all -> a grouped ncclSend/ncclRecv to every member);
// reductions happen in the buffer's type (bf16 stays bf16, as in NCCL; the
// trainer keeps fp32 gradient buffers where it needs fp32 sums). In-place
// use follows NCCL: all_reduce and broadcast are in place; all_gather may
// pass send = recv + r*n and reduce_scatter recv = send + r*n; other
// overlaps are refused.
//
// Completion: NCCL calls return once enqueued. After each one an event is
// recorded on the stream and handed to the watchdog as a probe
// (cudaEventQuery, plus ncclCommGetAsyncError so that a failed communicator
// is reported as such); the watchdog thread polls it, so a collective that
// never completes on the device ends the process with the usual report.
// Events come from a per-communicator pool shared with the probes through a
// shared_ptr, so a probe may finish after its communicator is gone.
//
// barrier() all-reduces one float on the communicator's own stream and
// waits for it (NCCL has no barrier).
//
// Destruction: ncclCommDestroy, or ncclCommAbort while an exception is
// unwinding (a peer may have failed with a collective still queued).
//
// The environment reaches NCCL untouched (NCCL_NVLS_ENABLE=0, NCCL_DEBUG,
// NCCL_SOCKET_IFNAME, ...): nothing here sets or unsets a variable.
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <vector>

#include "mtc/rt/comm.h"
#include "mtc/rt/cuda_check.h"
#include "mtc/rt/cuda_profile.h"
#include "mtc/rt/watchdog.h"

#define MTC_NCCL_CHECK(comm, call)                                                               \
  do {                                                                                           \
    ncclResult_t mtc_nr_ = (call);                                                               \
    if (mtc_nr_ != ncclSuccess) {                                                                \
      std::string mtc_msg_ = ncclGetErrorString(mtc_nr_);                                        \
      const char* mtc_last_ = ncclGetLastError(comm);                                            \
      if (mtc_last_ != nullptr && *mtc_last_ != '\0') mtc_msg_ += std::string(": ") + mtc_last_; \
      ::mtc::rt::cuda::throw_error("nccl", #call, mtc_msg_, __FILE__, __LINE__);                 \
    }                                                                                            \
  } while (0)

namespace mtc::rt {

namespace {

ncclDataType_t nccl_type(DType d) {
  return d == DType::f64 ? ncclFloat64 : d == DType::f32 ? ncclFloat32 : ncclBfloat16;
}
ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::sum ? ncclSum : ncclMax; }
cudaStream_t as_stream(Stream s) { return static_cast<cudaStream_t>(s); }

// What the probes share with their communicator.
struct NcclState {
  std::mutex mu;
  ncclComm_t comm = nullptr;
  int device = 0;
  bool alive = true;
  std::vector<cudaEvent_t> free_events;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(GroupDesc group, Watchdog& watchdog, int device, ncclComm_t comm)
      : Communicator(std::move(group), watchdog), state_(std::make_shared<NcclState>()) {
    state_->comm = comm;
    state_->device = device;
    MTC_CUDA_CHECK(cudaSetDevice(device));
    MTC_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    MTC_CUDA_CHECK(cudaMalloc(&scratch_, sizeof(float)));  // (1,) for barrier
  }

  ~NcclCommunicator() override {
    cudaSetDevice(state_->device);
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->alive = false;
    // Unwinding from an error, a collective may still be queued with a peer
    // that is gone: abort it rather than let ncclCommDestroy wait for it.
    if (std::uncaught_exceptions() > 0)
      ncclCommAbort(state_->comm);
    else
      ncclCommDestroy(state_->comm);
    for (cudaEvent_t e : state_->free_events) cudaEventDestroy(e);
    state_->free_events.clear();
    cudaFree(scratch_);
    cudaStreamDestroy(stream_);
  }

  const char* backend() const override { return "nccl"; }

 protected:
  void check_backend_args(const char*, DType, Stream) const override {}

  void do_all_reduce(void* buf, int64_t n, DType dt, ReduceOp op, Stream s) override {
    guard("all_reduce", [&] {
      check_device("all_reduce", buf);
      cuda::profile::CommSpan span("all_reduce", dtype_size(dt), n, as_stream(s));
      MTC_NCCL_CHECK(comm(), ncclAllReduce(buf, buf, static_cast<size_t>(n), nccl_type(dt),
                                           nccl_op(op), comm(), as_stream(s)));
    });
  }

  void do_all_gather(const void* send, void* recv, int64_t n, DType dt, Stream s) override {
    guard("all_gather", [&] {
      check_device("all_gather", send);
      check_device("all_gather", recv);
      const size_t chunk = static_cast<size_t>(n) * dtype_size(dt);
      check_overlap("all_gather", send, chunk, recv, chunk * size(),
                    static_cast<const char*>(recv) + rank() * chunk);
      cuda::profile::CommSpan span("all_gather", dtype_size(dt), n * size(), as_stream(s));
      MTC_NCCL_CHECK(comm(), ncclAllGather(send, recv, static_cast<size_t>(n), nccl_type(dt),
                                           comm(), as_stream(s)));
    });
  }

  void do_reduce_scatter(const void* send, void* recv, int64_t n, DType dt, ReduceOp op,
                         Stream s) override {
    guard("reduce_scatter", [&] {
      check_device("reduce_scatter", send);
      check_device("reduce_scatter", recv);
      const size_t chunk = static_cast<size_t>(n) * dtype_size(dt);
      check_overlap("reduce_scatter", recv, chunk, send, chunk * size(),
                    static_cast<const char*>(send) + rank() * chunk);
      cuda::profile::CommSpan span("reduce_scatter", dtype_size(dt), n * size(), as_stream(s));
      MTC_NCCL_CHECK(comm(), ncclReduceScatter(send, recv, static_cast<size_t>(n), nccl_type(dt),
                                               nccl_op(op), comm(), as_stream(s)));
    });
  }

  void do_broadcast(void* buf, int64_t n, DType dt, int64_t root, Stream s) override {
    guard("broadcast", [&] {
      check_device("broadcast", buf);
      MTC_NCCL_CHECK(comm(), ncclBroadcast(buf, buf, static_cast<size_t>(n), nccl_type(dt),
                                           static_cast<int>(root), comm(), as_stream(s)));
    });
  }

  void do_all_to_all(const void* send, void* recv, int64_t n, DType dt, Stream s) override {
    guard("all_to_all", [&] {
      check_device("all_to_all", send);
      check_device("all_to_all", recv);
      const size_t chunk = static_cast<size_t>(n) * dtype_size(dt);
      check_overlap("all_to_all", send, chunk * size(), recv, chunk * size(), nullptr);
      MTC_NCCL_CHECK(comm(), ncclGroupStart());
      for (int64_t j = 0; j < size(); ++j) {
        MTC_NCCL_CHECK(comm(),
                       ncclSend(static_cast<const char*>(send) + j * chunk, static_cast<size_t>(n),
                                nccl_type(dt), static_cast<int>(j), comm(), as_stream(s)));
        MTC_NCCL_CHECK(comm(),
                       ncclRecv(static_cast<char*>(recv) + j * chunk, static_cast<size_t>(n),
                                nccl_type(dt), static_cast<int>(j), comm(), as_stream(s)));
      }
      MTC_NCCL_CHECK(comm(), ncclGroupEnd());
    });
  }

  void do_send_recv(const void* send_buf, int64_t send_n, int64_t send_peer, void* recv_buf,
                    int64_t recv_n, int64_t recv_peer, DType dt, Stream s) override {
    const char* name = send_buf && recv_buf ? "send_recv" : send_buf ? "send" : "recv";
    guard(name, [&] {
      if (send_buf) check_device(name, send_buf);
      if (recv_buf) check_device(name, recv_buf);
      MTC_NCCL_CHECK(comm(), ncclGroupStart());
      if (send_buf)
        MTC_NCCL_CHECK(comm(), ncclSend(send_buf, static_cast<size_t>(send_n), nccl_type(dt),
                                        static_cast<int>(send_peer), comm(), as_stream(s)));
      if (recv_buf)
        MTC_NCCL_CHECK(comm(), ncclRecv(recv_buf, static_cast<size_t>(recv_n), nccl_type(dt),
                                        static_cast<int>(recv_peer), comm(), as_stream(s)));
      MTC_NCCL_CHECK(comm(), ncclGroupEnd());
    });
  }

  void do_p2p(const P2PTransfer* ops, int count, DType dt, Stream s) override {
    guard("p2p", [&] {
      for (int i = 0; i < count; ++i) check_device("p2p", ops[i].buf);
      MTC_NCCL_CHECK(comm(), ncclGroupStart());
      for (int i = 0; i < count; ++i) {
        const P2PTransfer& t = ops[i];
        if (t.send)
          MTC_NCCL_CHECK(comm(), ncclSend(t.buf, static_cast<size_t>(t.n), nccl_type(dt),
                                          static_cast<int>(t.peer), comm(), as_stream(s)));
        else
          MTC_NCCL_CHECK(comm(), ncclRecv(t.buf, static_cast<size_t>(t.n), nccl_type(dt),
                                          static_cast<int>(t.peer), comm(), as_stream(s)));
      }
      MTC_NCCL_CHECK(comm(), ncclGroupEnd());
    });
  }

  void do_barrier() override {
    guard("barrier", [&] {
      MTC_CUDA_CHECK(cudaSetDevice(state_->device));
      MTC_NCCL_CHECK(comm(),
                     ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm(), stream_));
      MTC_CUDA_CHECK(cudaStreamSynchronize(stream_));
    });
    barrier_done_ = true;
  }

  void complete(uint64_t watch_id, Stream s) override {
    if (barrier_done_) {  // already waited for on the host
      barrier_done_ = false;
      watchdog().end(watch_id);
      return;
    }
    cudaEvent_t ev = take_event();
    MTC_CUDA_CHECK(cudaEventRecord(ev, as_stream(s)));
    std::shared_ptr<NcclState> st = state_;
    watchdog().end_when(watch_id, [st, ev](std::string* error) -> bool {
      cudaSetDevice(st->device);
      cudaError_t e = cudaEventQuery(ev);
      if (e == cudaSuccess) {
        std::lock_guard<std::mutex> lock(st->mu);
        if (st->alive)
          st->free_events.push_back(ev);
        else
          cudaEventDestroy(ev);
        return true;
      }
      if (e != cudaErrorNotReady) {
        *error = std::string("CUDA error while waiting for it: ") + cudaGetErrorString(e);
        return false;
      }
      std::lock_guard<std::mutex> lock(st->mu);
      if (!st->alive) return true;
      ncclResult_t async = ncclSuccess;
      if (ncclCommGetAsyncError(st->comm, &async) == ncclSuccess && async != ncclSuccess &&
          async != ncclInProgress) {
        *error = std::string("the NCCL communicator failed: ") + ncclGetErrorString(async);
        const char* last = ncclGetLastError(st->comm);
        if (last != nullptr && *last != '\0') *error += std::string(" (") + last + ")";
        return false;
      }
      return false;
    });
  }

 private:
  ncclComm_t comm() const { return state_->comm; }

  cudaEvent_t take_event() {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (!state_->free_events.empty()) {
        cudaEvent_t e = state_->free_events.back();
        state_->free_events.pop_back();
        return e;
      }
    }
    cudaEvent_t e;
    MTC_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }

  void check_device(const char* collective, const void* p) const {
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
      cudaGetLastError();  // clear the (non-sticky) error it left
      throw CommError(where(collective) + ": buffer " + ptr_text(p) +
                      " is not CUDA memory (the NCCL backend takes device buffers)");
    }
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
      throw CommError(where(collective) + ": buffer " + ptr_text(p) +
                      " is host memory; the NCCL backend takes device buffers");
  }

  // Refuses overlapping a/b unless a starts exactly at `in_place` (NCCL's
  // in-place layouts).
  void check_overlap(const char* collective, const void* a, size_t an, const void* b, size_t bn,
                     const void* in_place) const {
    auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
    bool overlap = pa < pb + bn && pb < pa + an;
    if (overlap && a != in_place)
      throw CommError(where(collective) +
                      ": send and recv buffers overlap in a way NCCL does not support "
                      "(only the in-place layouts described in comm_nccl.cpp)");
  }

  static std::string ptr_text(const void* p) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%p", p);
    return buf;
  }

  template <typename Fn>
  void guard(const char* collective, Fn&& fn) {
    try {
      fn();
    } catch (const CommError&) {
      throw;
    } catch (const std::exception& e) {
      throw CommError(where(collective) + " failed: " + e.what());
    }
  }

  std::shared_ptr<NcclState> state_;
  cudaStream_t stream_ = nullptr;  // barrier only
  float* scratch_ = nullptr;       // (1,) barrier operand
  bool barrier_done_ = false;
};

}  // namespace

CommFactory nccl_comm_factory() {
  return [](const GroupDesc& group, Store& store, Watchdog& watchdog,
            const LaunchEnv& env) -> std::unique_ptr<Communicator> {
    int count = 0;
    MTC_CUDA_CHECK(cudaGetDeviceCount(&count));
    if (env.local_rank >= count)
      throw CommError("rank " + std::to_string(env.rank) +
                      ": LOCAL_RANK=" + std::to_string(env.local_rank) + " but this node has " +
                      std::to_string(count) +
                      " visible GPU(s) (CUDA_VISIBLE_DEVICES?): start at most that many ranks "
                      "per node");
    const int device = static_cast<int>(env.local_rank);
    MTC_CUDA_CHECK(cudaSetDevice(device));

    ncclUniqueId id;
    const std::string key = "nccl/" + group.label();
    if (group.rank == 0) {
      MTC_NCCL_CHECK(nullptr, ncclGetUniqueId(&id));
      store.set(key, std::string(id.internal, NCCL_UNIQUE_ID_BYTES));
    } else {
      std::string v = store.get(key);
      if (v.size() != NCCL_UNIQUE_ID_BYTES)
        throw CommError("rank " + std::to_string(env.rank) + ": the NCCL id of group " +
                        group.str() + " in the " + store.describe() + " has " +
                        std::to_string(v.size()) + " bytes, not " +
                        std::to_string(NCCL_UNIQUE_ID_BYTES));
      std::memcpy(id.internal, v.data(), NCCL_UNIQUE_ID_BYTES);
    }

    ncclComm_t comm = nullptr;
    uint64_t watch = watchdog.begin("ncclCommInitRank", group.str());
    try {
      MTC_NCCL_CHECK(nullptr, ncclCommInitRank(&comm, static_cast<int>(group.size()), id,
                                               static_cast<int>(group.rank)));
    } catch (const std::exception& e) {
      watchdog.end(watch);
      throw CommError("rank " + std::to_string(env.rank) + ": creating the NCCL communicator of " +
                      group.str() + " failed: " + e.what());
    }
    watchdog.end(watch);
    return std::make_unique<NcclCommunicator>(group, watchdog, device, comm);
  };
}

}  // namespace mtc::rt
