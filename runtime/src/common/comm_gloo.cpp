// The Gloo backend: fp32 host buffers over TCP (the host target's
// communicators, and the reference the NCCL backend is compared against).
//
// One gloo::transport::tcp device per process (its event-loop thread), one
// gloo context per group, connected through the rendezvous store under the
// prefix "gloo/<group label>/". all_reduce, all_gather, broadcast,
// all_to_all and barrier are Gloo's algorithms; reduce_scatter is a ring on
// Gloo's point-to-point buffers (Gloo's own is a class-based
// halving-doubling with a different interface):
//
//   S ranks, acc = send (S, n). Step s = 0 .. S-2: rank r sends chunk
//   (r-s-1) mod S of acc to r+1 and adds the chunk it receives from r-1 into
//   chunk (r-s-2) mod S. After S-1 steps chunk r holds sum_j send_j[r*n + i].
//
// Point-to-point messages use slot (0x40 << 56) + (k << 8) for the k-th
// message between this rank and a peer in that direction, so messages between
// two ranks match in order and never meet Gloo's collective slots (prefixes
// 0x01-0x08).
//
// Timeouts: Gloo's own timeout is the watchdog's plus 10 s, so the watchdog
// reports a hang first; if Gloo times out or loses a peer, its exception
// becomes a CommError naming rank, collective, group and step.
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "mtc/rt/comm.h"
#include "mtc/rt/watchdog.h"

namespace mtc::rt {

namespace {

// Gloo's rendezvous interface on top of ours, with a key prefix per group.
class GlooStore final : public ::gloo::rendezvous::Store {
 public:
  GlooStore(mtc::rt::Store& store, std::string prefix)
      : store_(store), prefix_(std::move(prefix)) {}
  void set(const std::string& key, const std::vector<char>& data) override {
    store_.set(prefix_ + key, std::string(data.begin(), data.end()));
  }
  std::vector<char> get(const std::string& key) override {
    std::string v = store_.get(prefix_ + key);
    return std::vector<char>(v.begin(), v.end());
  }
  // Our store's get waits (with its own timeout, MTC_RDZV_TIMEOUT).
  void wait(const std::vector<std::string>& keys) override {
    for (const auto& k : keys) store_.get(prefix_ + k);
  }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) override {
    wait(keys);
  }

 private:
  mtc::rt::Store& store_;
  std::string prefix_;
};

bool overlaps(const void* a, size_t an, const void* b, size_t bn) {
  auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + bn && pb < pa + an;
}

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(GroupDesc group, Watchdog& watchdog, std::shared_ptr<::gloo::Context> ctx,
                   std::chrono::milliseconds timeout)
      : Communicator(std::move(group), watchdog),
        ctx_(std::move(ctx)),
        timeout_(timeout),
        send_seq_(size(), 0),
        recv_seq_(size(), 0) {}

  const char* backend() const override { return "gloo"; }

 protected:
  void check_backend_args(const char* collective, DType dtype, Stream stream) const override {
    if (dtype != DType::f32)
      throw CommError(where(collective) + ": the Gloo backend carries fp32 host buffers, not " +
                      dtype_name(dtype));
    if (stream != nullptr)
      throw CommError(where(collective) + ": the Gloo backend takes no stream (host buffers)");
  }

  void do_all_reduce(void* buf, int64_t n, DType, ReduceOp op, Stream) override {
    guard("all_reduce", [&] {
      ::gloo::AllreduceOptions opts(ctx_);
      opts.setOutput(static_cast<float*>(buf), static_cast<size_t>(n));
      opts.setReduceFunction(reduce_fn(op));
      opts.setTimeout(timeout_);
      ::gloo::allreduce(opts);
    });
  }

  void do_all_gather(const void* send, void* recv, int64_t n, DType, Stream) override {
    guard("all_gather", [&] {
      const size_t bytes = static_cast<size_t>(n) * 4;
      std::vector<float> copy;
      const float* in = static_cast<const float*>(send);
      if (overlaps(send, bytes, recv, bytes * size())) {
        copy.assign(in, in + n);
        in = copy.data();
      }
      ::gloo::AllgatherOptions opts(ctx_);
      opts.setInput(const_cast<float*>(in), static_cast<size_t>(n));
      opts.setOutput(static_cast<float*>(recv), static_cast<size_t>(n * size()));
      opts.setTimeout(timeout_);
      ::gloo::allgather(opts);
    });
  }

  void do_reduce_scatter(const void* send, void* recv, int64_t n, DType, ReduceOp op,
                         Stream) override {
    guard("reduce_scatter", [&] {
      const int64_t S = size(), r = rank();
      const float* in = static_cast<const float*>(send);
      std::vector<float> acc(in, in + S * n);  // (S, n)
      if (S > 1) {
        std::vector<float> tmp(static_cast<size_t>(n));  // (n,)
        auto fn = reduce_fn(op);
        const int64_t right = (r + 1) % S, left = (r + S - 1) % S;
        for (int64_t s = 0; s < S - 1; ++s) {
          int64_t send_chunk = ((r - s - 1) % S + S) % S;
          int64_t recv_chunk = ((r - s - 2) % S + S) % S;
          exchange(acc.data() + send_chunk * n, n, right, tmp.data(), n, left);
          float* dst = acc.data() + recv_chunk * n;
          fn(dst, dst, tmp.data(), static_cast<size_t>(n));
        }
      }
      std::memcpy(recv, acc.data() + r * n, static_cast<size_t>(n) * 4);
    });
  }

  void do_broadcast(void* buf, int64_t n, DType, int64_t root, Stream) override {
    guard("broadcast", [&] {
      ::gloo::BroadcastOptions opts(ctx_);
      opts.setOutput(static_cast<float*>(buf), static_cast<size_t>(n));
      opts.setRoot(static_cast<int>(root));
      opts.setTimeout(timeout_);
      ::gloo::broadcast(opts);
    });
  }

  void do_all_to_all(const void* send, void* recv, int64_t n, DType, Stream) override {
    guard("all_to_all", [&] {
      const size_t total = static_cast<size_t>(n * size());
      std::vector<float> copy;
      const float* in = static_cast<const float*>(send);
      if (overlaps(send, total * 4, recv, total * 4)) {
        copy.assign(in, in + total);
        in = copy.data();
      }
      ::gloo::AlltoallOptions opts(ctx_);
      opts.setInput(const_cast<float*>(in), total);
      opts.setOutput(static_cast<float*>(recv), total);
      opts.setTimeout(timeout_);
      ::gloo::alltoall(opts);
    });
  }

  void do_send_recv(const void* send_buf, int64_t send_n, int64_t send_peer, void* recv_buf,
                    int64_t recv_n, int64_t recv_peer, DType, Stream) override {
    const char* name = send_buf && recv_buf ? "send_recv" : send_buf ? "send" : "recv";
    guard(name, [&] { exchange(send_buf, send_n, send_peer, recv_buf, recv_n, recv_peer); });
  }

  void do_p2p(const P2PTransfer* ops, int count, DType, Stream) override {
    guard("p2p", [&] {
      // Post every send and receive, then wait for all of them.
      std::vector<std::unique_ptr<::gloo::transport::UnboundBuffer>> bufs;
      for (int i = 0; i < count; ++i) {
        const P2PTransfer& t = ops[i];
        bufs.push_back(ctx_->createUnboundBuffer(t.buf, static_cast<size_t>(t.n) * 4));
        if (t.send) bufs.back()->send(static_cast<int>(t.peer), p2p_slot(send_seq_[t.peer]++));
        else bufs.back()->recv(static_cast<int>(t.peer), p2p_slot(recv_seq_[t.peer]++));
      }
      for (int i = 0; i < count; ++i) {
        if (ops[i].send ? !bufs[i]->waitSend(timeout_) : !bufs[i]->waitRecv(timeout_))
          throw CommError(ops[i].send ? "a send was aborted" : "a recv was aborted");
      }
    });
  }

  void do_barrier() override {
    guard("barrier", [&] {
      ::gloo::BarrierOptions opts(ctx_);
      opts.setTimeout(timeout_);
      ::gloo::barrier(opts);
    });
  }

 private:
  static ::gloo::AllreduceOptions::Func reduce_fn(ReduceOp op) {
    using Fn = void (*)(void*, const void*, const void*, size_t);
    return op == ReduceOp::sum ? static_cast<Fn>(&::gloo::sum<float>)
                               : static_cast<Fn>(&::gloo::max<float>);
  }

  uint64_t p2p_slot(uint64_t seq) const { return (uint64_t{0x40} << 56) + (seq << 8); }

  // Posts the send (if any) and the recv (if any), then waits for both.
  void exchange(const void* send_buf, int64_t send_n, int64_t send_peer, void* recv_buf,
                int64_t recv_n, int64_t recv_peer) {
    std::unique_ptr<::gloo::transport::UnboundBuffer> sb, rb;
    if (send_buf != nullptr) {
      sb = ctx_->createUnboundBuffer(const_cast<void*>(send_buf), static_cast<size_t>(send_n) * 4);
      sb->send(static_cast<int>(send_peer), p2p_slot(send_seq_[send_peer]++));
    }
    if (recv_buf != nullptr) {
      rb = ctx_->createUnboundBuffer(recv_buf, static_cast<size_t>(recv_n) * 4);
      rb->recv(static_cast<int>(recv_peer), p2p_slot(recv_seq_[recv_peer]++));
    }
    if (sb && !sb->waitSend(timeout_)) throw CommError("the send was aborted");
    if (rb && !rb->waitRecv(timeout_)) throw CommError("the recv was aborted");
  }

  // Runs a Gloo call; its exceptions become CommErrors that say where.
  template <typename Fn>
  void guard(const char* collective, Fn&& fn) {
    try {
      fn();
    } catch (const CommError& e) {
      throw CommError(where(collective) + " failed: " + e.what());
    } catch (const std::exception& e) {
      throw CommError(where(collective) + " failed in Gloo: " + e.what() +
                      " (did a rank of the group exit?)");
    }
  }

  std::shared_ptr<::gloo::Context> ctx_;
  std::chrono::milliseconds timeout_;
  std::vector<uint64_t> send_seq_, recv_seq_;  // (S,) messages exchanged per peer
};

// The process's TCP device, made on the first group.
struct GlooFactoryState {
  std::mutex mu;
  std::shared_ptr<::gloo::transport::Device> device;
  std::string where;  // "127.0.0.1", "interface eth0", "host node12"
};

std::shared_ptr<::gloo::transport::Device> device_for(GlooFactoryState& st, const LaunchEnv& env) {
  std::lock_guard<std::mutex> lock(st.mu);
  if (st.device) return st.device;
  ::gloo::transport::tcp::attr attr;
  const char* iface = std::getenv("GLOO_SOCKET_IFNAME");
  if (iface != nullptr && *iface != '\0') {
    attr.iface = iface;
    st.where = std::string("interface ") + iface + " (GLOO_SOCKET_IFNAME)";
  } else if (env.local_world_size == env.world_size) {
    attr.hostname = "127.0.0.1";
    st.where = "127.0.0.1 (all ranks on one node)";
  } else {
    char host[256] = {0};
    ::gethostname(host, sizeof host - 1);
    attr.hostname = host;
    st.where = std::string("host ") + host + " (set GLOO_SOCKET_IFNAME to choose an interface)";
  }
  try {
    st.device = ::gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    throw CommError("rank " + std::to_string(env.rank) + ": cannot open a Gloo TCP device on " +
                    st.where + ": " + e.what());
  }
  return st.device;
}

}  // namespace

CommFactory gloo_comm_factory() {
  auto state = std::make_shared<GlooFactoryState>();
  return [state](const GroupDesc& group, Store& store, Watchdog& watchdog,
                 const LaunchEnv& env) -> std::unique_ptr<Communicator> {
    auto device = device_for(*state, env);
    auto timeout =
        std::chrono::milliseconds(static_cast<int64_t>((watchdog.timeout_s() + 10.0) * 1000.0));
    auto ctx = std::make_shared<::gloo::rendezvous::Context>(static_cast<int>(group.rank),
                                                             static_cast<int>(group.size()));
    ctx->setTimeout(timeout);
    GlooStore gstore(store, "gloo/" + group.label() + "/");
    try {
      ctx->connectFullMesh(gstore, device);
    } catch (const CommError& e) {
      throw CommError("rank " + std::to_string(env.rank) + ": connecting group " + group.str() +
                      ": " + e.what());
    } catch (const std::exception& e) {
      throw CommError("rank " + std::to_string(env.rank) + ": connecting group " + group.str() +
                      " over " + state->where + " failed in Gloo: " + e.what());
    }
    return std::make_unique<GlooCommunicator>(group, watchdog, std::move(ctx), timeout);
  };
}

}  // namespace mtc::rt
