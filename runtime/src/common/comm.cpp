// The backend-independent half of the communicators (mtc/rt/comm.h):
// argument checks and watchdog registration around every collective, and
// the World that builds one communicator per group kind.
//
// World setup, identical on every rank so that group members meet:
//   1. WORLD_SIZE == pp*dp*tp, else a CommError naming both.
//   2. Watchdog started; the rendezvous store opened (make_store).
//   3. For each requested kind in kAllGroupKinds order: its group; if an
//      earlier kind spans the same ranks (axes of size 1 do not count) a
//      CommAlias reuses its connection, else the factory builds one, meeting
//      the group's other members through the store.
//   4. Each rank sets "ready/<rank>"; rank 0 waits for all of them before
//      the store (and rank 0's TCP server) is closed.
#include "mtc/rt/comm.h"

#include <cstring>

#include "mtc/rt/watchdog.h"

namespace mtc::rt {

size_t dtype_size(DType dtype) {
  return dtype == DType::f64 ? 8 : dtype == DType::f32 ? 4 : 2;
}
const char* dtype_name(DType dtype) {
  return dtype == DType::f64 ? "f64" : dtype == DType::f32 ? "f32" : "bf16";
}

// ---------------------------------------------------------------------------
// Communicator

Communicator::Communicator(GroupDesc group, Watchdog& watchdog)
    : group_(std::move(group)), group_str_(group_.str()), watchdog_(watchdog) {}

Communicator::~Communicator() = default;

std::string Communicator::where(const char* collective) const {
  return std::string(collective) + " on group " + group_str_ + " at step " +
         std::to_string(watchdog_.step());
}

void Communicator::complete(uint64_t watch_id, Stream) { watchdog_.end(watch_id); }

template <typename Fn>
void Communicator::run(const char* collective, Stream stream, Fn&& fn) {
  uint64_t id = watchdog_.begin(collective, group_str_);
  try {
    fn();
  } catch (...) {
    watchdog_.end(id);
    throw;
  }
  complete(id, stream);
}

void Communicator::watched(const char* collective, Stream stream,
                           const std::function<void()>& enqueue) {
  run(collective, stream, enqueue);
}

void Communicator::check_count(const char* collective, int64_t n, const void* a,
                               const void* b) const {
  if (n < 0)
    throw CommError(where(collective) + ": element count " + std::to_string(n) + " is negative");
  if (n > 0 && (a == nullptr || b == nullptr))
    throw CommError(where(collective) + ": null buffer for " + std::to_string(n) + " elements");
}

void Communicator::check_peer(const char* collective, const char* what, int64_t peer,
                              bool allow_self) const {
  if (peer < 0 || peer >= size())
    throw CommError(where(collective) + ": " + what + " " + std::to_string(peer) +
                    " is not a rank of the group (0.." + std::to_string(size() - 1) + ")");
  if (!allow_self && peer == rank())
    throw CommError(where(collective) + ": " + what + " " + std::to_string(peer) +
                    " is this rank itself");
}

void Communicator::all_reduce(void* buf, int64_t n, DType dtype, ReduceOp op, Stream stream) {
  check_backend_args("all_reduce", dtype, stream);
  check_count("all_reduce", n, buf, buf);
  if (n == 0) return;
  run("all_reduce", stream, [&] { do_all_reduce(buf, n, dtype, op, stream); });
}

void Communicator::all_gather(const void* send, void* recv, int64_t n, DType dtype, Stream stream) {
  check_backend_args("all_gather", dtype, stream);
  check_count("all_gather", n, send, recv);
  if (n == 0) return;
  run("all_gather", stream, [&] { do_all_gather(send, recv, n, dtype, stream); });
}

void Communicator::reduce_scatter(const void* send, void* recv, int64_t n, DType dtype, ReduceOp op,
                                  Stream stream) {
  check_backend_args("reduce_scatter", dtype, stream);
  check_count("reduce_scatter", n, send, recv);
  if (n == 0) return;
  run("reduce_scatter", stream, [&] { do_reduce_scatter(send, recv, n, dtype, op, stream); });
}

void Communicator::broadcast(void* buf, int64_t n, DType dtype, int64_t root, Stream stream) {
  check_backend_args("broadcast", dtype, stream);
  check_count("broadcast", n, buf, buf);
  check_peer("broadcast", "root", root, true);
  if (n == 0) return;
  run("broadcast", stream, [&] { do_broadcast(buf, n, dtype, root, stream); });
}

void Communicator::all_to_all(const void* send, void* recv, int64_t n, DType dtype, Stream stream) {
  check_backend_args("all_to_all", dtype, stream);
  check_count("all_to_all", n, send, recv);
  if (n == 0) return;
  run("all_to_all", stream, [&] { do_all_to_all(send, recv, n, dtype, stream); });
}

void Communicator::send(const void* buf, int64_t n, DType dtype, int64_t peer, Stream stream) {
  check_backend_args("send", dtype, stream);
  check_count("send", n, buf, buf);
  check_peer("send", "peer", peer, false);
  if (n == 0) return;
  run("send", stream, [&] { do_send_recv(buf, n, peer, nullptr, 0, -1, dtype, stream); });
}

void Communicator::recv(void* buf, int64_t n, DType dtype, int64_t peer, Stream stream) {
  check_backend_args("recv", dtype, stream);
  check_count("recv", n, buf, buf);
  check_peer("recv", "peer", peer, false);
  if (n == 0) return;
  run("recv", stream, [&] { do_send_recv(nullptr, 0, -1, buf, n, peer, dtype, stream); });
}

void Communicator::send_recv(const void* send_buf, int64_t send_n, int64_t send_peer,
                             void* recv_buf, int64_t recv_n, int64_t recv_peer, DType dtype,
                             Stream stream) {
  check_backend_args("send_recv", dtype, stream);
  check_count("send_recv", send_n, send_buf, send_buf);
  check_count("send_recv", recv_n, recv_buf, recv_buf);
  if (send_n > 0) check_peer("send_recv", "send peer", send_peer, false);
  if (recv_n > 0) check_peer("send_recv", "recv peer", recv_peer, false);
  if (send_n == 0 && recv_n == 0) return;
  run("send_recv", stream, [&] {
    do_send_recv(send_n > 0 ? send_buf : nullptr, send_n, send_n > 0 ? send_peer : -1,
                 recv_n > 0 ? recv_buf : nullptr, recv_n, recv_n > 0 ? recv_peer : -1, dtype,
                 stream);
  });
}

void Communicator::p2p(const P2PTransfer* ops, int count, DType dtype, Stream stream) {
  check_backend_args("p2p", dtype, stream);
  std::vector<P2PTransfer> live;
  for (int i = 0; i < count; ++i) {
    const P2PTransfer& t = ops[i];
    check_count("p2p", t.n, t.buf, t.buf);
    check_peer("p2p", t.send ? "send peer" : "recv peer", t.peer, false);
    if (t.n > 0) live.push_back(t);
  }
  if (live.empty()) return;
  run("p2p", stream, [&] { do_p2p(live.data(), static_cast<int>(live.size()), dtype, stream); });
}

void Communicator::do_p2p(const P2PTransfer* ops, int count, DType dtype, Stream stream) {
  const P2PTransfer* send = nullptr;
  const P2PTransfer* recv = nullptr;
  for (int i = 0; i < count; ++i) {
    const P2PTransfer*& slot = ops[i].send ? send : recv;
    if (slot != nullptr)
      throw CommError(where("p2p") + ": backend " + backend() +
                      " posts at most one send and one receive together");
    slot = &ops[i];
  }
  do_send_recv(send ? send->buf : nullptr, send ? send->n : 0, send ? send->peer : -1,
               recv ? recv->buf : nullptr, recv ? recv->n : 0, recv ? recv->peer : -1, dtype,
               stream);
}

void Communicator::barrier() {
  run("barrier", nullptr, [&] { do_barrier(); });
}

// ---------------------------------------------------------------------------
// CommAlias: a group kind whose members equal an earlier kind's (an axis of
// size 1 between them) reuses that kind's connection under its own
// GroupDesc, so checks and watchdog reports name the kind the caller used.

class CommAlias final : public Communicator {
 public:
  CommAlias(GroupDesc group, Watchdog& watchdog, std::shared_ptr<Communicator> target)
      : Communicator(std::move(group), watchdog), target_(std::move(target)) {}
  const char* backend() const override { return target_->backend(); }

 protected:
  void do_all_reduce(void* buf, int64_t n, DType dt, ReduceOp op, Stream s) override {
    target_->do_all_reduce(buf, n, dt, op, s);
  }
  void do_all_gather(const void* send, void* recv, int64_t n, DType dt, Stream s) override {
    target_->do_all_gather(send, recv, n, dt, s);
  }
  void do_reduce_scatter(const void* send, void* recv, int64_t n, DType dt, ReduceOp op,
                         Stream s) override {
    target_->do_reduce_scatter(send, recv, n, dt, op, s);
  }
  void do_broadcast(void* buf, int64_t n, DType dt, int64_t root, Stream s) override {
    target_->do_broadcast(buf, n, dt, root, s);
  }
  void do_all_to_all(const void* send, void* recv, int64_t n, DType dt, Stream s) override {
    target_->do_all_to_all(send, recv, n, dt, s);
  }
  void do_p2p(const P2PTransfer* ops, int count, DType dt, Stream s) override {
    target_->do_p2p(ops, count, dt, s);
  }
  void do_send_recv(const void* send_buf, int64_t send_n, int64_t send_peer, void* recv_buf,
                    int64_t recv_n, int64_t recv_peer, DType dt, Stream s) override {
    target_->do_send_recv(send_buf, send_n, send_peer, recv_buf, recv_n, recv_peer, dt, s);
  }
  void do_barrier() override { target_->do_barrier(); }
  void check_backend_args(const char* collective, DType dt, Stream s) const override {
    target_->check_backend_args(collective, dt, s);
  }
  void complete(uint64_t watch_id, Stream s) override { target_->complete(watch_id, s); }

 private:
  std::shared_ptr<Communicator> target_;
};

// ---------------------------------------------------------------------------
// World

namespace {

// The axes a kind spans after dropping those of size 1 (bit 0 tp, 1 dp,
// 2 pp): kinds with equal masks have equal groups on this grid.
unsigned effective_axes(const GridSpec& g, GroupKind kind) {
  unsigned tp = g.tp > 1 ? 1u : 0u, dp = g.dp > 1 ? 2u : 0u, pp = g.pp > 1 ? 4u : 0u;
  switch (kind) {
    case GroupKind::world: return tp | dp | pp;
    case GroupKind::tp: return tp;
    case GroupKind::dp: return dp;
    case GroupKind::pp: return pp;
    case GroupKind::tp_dp: return tp | dp;
    case GroupKind::tp_pp: return tp | pp;
    // Parts of dp: the whole dp axis when the other part has size 1.
    case GroupKind::ep: return g.ep == 1 ? 0u : g.ep == g.dp ? dp : 8u;
    case GroupKind::edp: return g.ep == g.dp ? 0u : g.ep == 1 ? dp : 16u;
  }
  return tp | dp | pp;
}

}  // namespace

World::World(const LaunchEnv& env, const WorldOptions& options, const CommFactory& factory)
    : env_(env), grid_(options.grid) {
  check_grid(grid_);
  if (env_.world_size != grid_.world_size()) {
    std::string why = "the program was compiled for " + describe_grid(grid_) +
                      " but WORLD_SIZE is " + std::to_string(env_.world_size);
    if (env_.source != "RANK/WORLD_SIZE") why += " (" + env_.source + ")";
    throw CommError(why + "; start it with " + std::to_string(grid_.world_size()) +
                    (grid_.world_size() == 1 ? " process" : " processes") +
                    ", e.g. mtc-launch -n " + std::to_string(grid_.world_size()) + " PROGRAM ...");
  }
  double collective_timeout = options.collective_timeout_s > 0 ? options.collective_timeout_s
                                                               : collective_timeout_from_env();
  double rdzv_timeout = options.rendezvous_timeout_s > 0 ? options.rendezvous_timeout_s
                                                         : rendezvous_timeout_from_env();
  watchdog_ = std::make_unique<Watchdog>(env_.rank, collective_timeout);

  std::unique_ptr<Store> store = make_store(env_, rdzv_timeout);
  comms_.resize(std::size(kAllGroupKinds));
  std::vector<unsigned> built_masks(comms_.size(), ~0u);
  std::vector<std::shared_ptr<Communicator>> connections(comms_.size());  // built, not aliases
  for (GroupKind kind : kAllGroupKinds) {
    bool wanted = false;
    for (GroupKind k : options.groups) wanted |= (k == kind);
    if (!wanted) continue;
    size_t slot = static_cast<size_t>(kind);
    unsigned mask = effective_axes(grid_, kind);
    GroupDesc group = group_of(grid_, kind, env_.rank);
    for (size_t other = 0; other < comms_.size() && !comms_[slot]; ++other)
      if (connections[other] && built_masks[other] == mask)
        comms_[slot] = std::make_shared<CommAlias>(group, *watchdog_, connections[other]);
    if (!comms_[slot]) {
      connections[slot] = factory(group, *store, *watchdog_, env_);
      comms_[slot] = connections[slot];
    }
    built_masks[slot] = mask;
  }

  store->set("ready/" + std::to_string(env_.rank), "1");
  if (env_.rank == 0)
    for (int64_t r = 1; r < env_.world_size; ++r) store->get("ready/" + std::to_string(r));
}

World::~World() {
  comms_.clear();  // before the watchdog they report to
  watchdog_.reset();
}

std::unique_ptr<World> World::from_env(const GridSpec& grid, const CommFactory& factory) {
  WorldOptions options;
  options.grid = grid;
  return std::make_unique<World>(read_launch_env(), options, factory);
}

Communicator& World::comm(GroupKind kind) {
  auto& c = comms_[static_cast<size_t>(kind)];
  if (!c)
    throw CommError(std::string("no communicator was built for group kind '") +
                    group_kind_name(kind) + "' (WorldOptions::groups)");
  return *c;
}

void World::set_step(int64_t step) { watchdog_->set_step(step); }

}  // namespace mtc::rt
