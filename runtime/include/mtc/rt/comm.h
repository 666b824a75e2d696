// mtc runtime communicators: the process grid, its groups, and the
// collectives generated code and the trainer call on them.
//
// Rank layout. A program compiled for a grid of pp x dp x tp ranks runs as
// WORLD_SIZE = pp*dp*tp processes. Megatron's order: tp fastest, then dp,
// then pp,
//
//   rank = tp_rank + tp * (dp_rank + dp * pp_rank)
//
// so the ranks of one tensor-parallel group are adjacent (one node's NVLink
// domain) and pipeline stages are furthest apart. A group of a kind holds the
// ranks that differ only in that kind's axes; its members are listed by
// increasing global rank, and a rank's position in that list is its rank in
// the group. Groups of a kind are numbered by the remaining coordinates, tp
// fastest (the order below).
//
// Worked example, as in Megatron's initialize_model_parallel: 16 GPUs
// g0 ... g15, tp=2, pp=4, so dp = 16 / (2*4) = 2:
//
//   8 tensor model-parallel groups (GroupKind::tp):
//     [g0, g1], [g2, g3], [g4, g5], [g6, g7], [g8, g9], [g10, g11],
//     [g12, g13], [g14, g15]
//   8 data-parallel groups (GroupKind::dp):
//     [g0, g2], [g1, g3], [g4, g6], [g5, g7], [g8, g10], [g9, g11],
//     [g12, g14], [g13, g15]
//   4 pipeline model-parallel groups (GroupKind::pp):
//     [g0, g4, g8, g12], [g1, g5, g9, g13], [g2, g6, g10, g14],
//     [g3, g7, g11, g15]
//   4 tensor x data groups (GroupKind::tp_dp, the distributed optimizer's
//   shards when it spans tp as well):
//     [g0, g1, g2, g3], [g4, g5, g6, g7], [g8, g9, g10, g11],
//     [g12, g13, g14, g15]
//   2 model-parallel groups (GroupKind::tp_pp, e.g. the gradient norm):
//     [g0, g1, g4, g5, g8, g9, g12, g13], [g2, g3, g6, g7, g10, g11, g14, g15]
//   1 world group: [g0 ... g15]
//
//   g6 = tp_rank 0 + 2 * (dp_rank 1 + 2 * pp_rank 1): rank 0 of tp[3],
//   rank 1 of dp[2], rank 1 of pp[2] (g6 is the second stage of its pipeline).
//
// Collectives. A Communicator serves one group; every member calls each of
// its collectives in the same order with the same counts (as in NCCL and
// Gloo). Buffers are host memory for the Gloo backend (fp32 only) and device
// memory for the NCCL backend (fp32 or bf16, enqueued on the given stream,
// reductions in the buffer's type as NCCL does them). With S the group size,
// r this rank's position in the group and x_j the buffer of member j:
//
//   all_reduce(buf, n)             buf[i] = sum_j x_j[i] (or max_j), in place
//   all_gather(send, recv, n)      send (n,), recv (S*n,): recv[j*n + i] = send_j[i]
//   reduce_scatter(send, recv, n)  send (S*n,), recv (n,):
//                                  recv[i] = sum_j send_j[r*n + i]
//   broadcast(buf, n, root)        buf[i] = x_root[i]
//   all_to_all(send, recv, n)      send (S*n,), recv (S*n,):
//                                  recv[j*n + i] = send_j[r*n + i]
//   send(buf, n, peer) / recv(buf, n, peer)   point to point within the group;
//                                  messages between two ranks arrive in order
//   send_recv(...)                 a send and a recv posted together (the
//                                  pipeline's exchange with both neighbours,
//                                  which would deadlock as two blocking calls)
//   barrier()                      returns once every member has entered it
//
// Every collective registers with the World's Watchdog (watchdog.h) for the
// time it runs, so one that never completes ends the process with a message
// naming rank, collective, group and step instead of hanging.
//
// Setup. World (below) reads the launcher's environment (launch.h), checks
// that WORLD_SIZE matches the compiled grid, meets the other ranks through a
// Store and builds one Communicator per group kind. No global state: the
// World is created once by the program's main and passed to whoever needs
// it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mtc/rt/io.h"
#include "mtc/rt/launch.h"
#include "mtc/rt/program.h"

namespace mtc::rt {

class Watchdog;
class CommAlias;

// A setup error (grid, environment, rendezvous) or a failed collective. It is
// an Error, so the trainer prints it and exits non-zero.
class CommError : public Error {
 public:
  using Error::Error;
};

// ---------------------------------------------------------------------------
// Grid and rank layout

struct GridSpec {
  int64_t pp = 1, dp = 1, tp = 1;
  // Expert parallelism, carved out of dp (Megatron's expert rank order):
  // dp_rank = ep_rank + ep * edp_rank, so an ep group is ep consecutive dp
  // ranks and an expert-data-parallel (edp) group the dp ranks with the same
  // ep_rank. Divides dp; the world size does not change.
  int64_t ep = 1;
  int64_t world_size() const { return pp * dp * tp; }
};

// "tp=2 x dp=2 = 4 ranks" (axes of size 1 left out; "1 rank" when all are).
std::string describe_grid(const GridSpec& grid);

// Throws CommError unless every axis is >= 1.
void check_grid(const GridSpec& grid);

struct GridCoord {
  int64_t tp = 0, dp = 0, pp = 0;
};

// rank -> (tp_rank, dp_rank, pp_rank) and back; rank in [0, world_size).
GridCoord grid_coord(const GridSpec& grid, int64_t rank);
int64_t grid_rank(const GridSpec& grid, const GridCoord& coord);
inline int64_t tp_rank(const GridSpec& grid, int64_t rank) { return grid_coord(grid, rank).tp; }
inline int64_t dp_rank(const GridSpec& grid, int64_t rank) { return grid_coord(grid, rank).dp; }
inline int64_t pp_rank(const GridSpec& grid, int64_t rank) { return grid_coord(grid, rank).pp; }

// The group kinds a World builds; each spans the named axes.
// ep and edp split the dp axis (GridSpec::ep); with ep = 1 the ep groups
// are single ranks and the edp groups the dp groups.
enum class GroupKind { world, tp, dp, pp, tp_dp, tp_pp, ep, edp };
inline constexpr GroupKind kAllGroupKinds[] = {GroupKind::world, GroupKind::tp,
                                               GroupKind::dp,    GroupKind::pp,
                                               GroupKind::tp_dp, GroupKind::tp_pp,
                                               GroupKind::ep,    GroupKind::edp};
const char* group_kind_name(GroupKind kind);  // "world", "tp", ..., "tp_pp"

// One group as one of its members sees it.
struct GroupDesc {
  GroupKind kind = GroupKind::world;
  int64_t index = 0;             // which group of its kind (order above)
  std::vector<int64_t> members;  // global ranks, increasing
  int64_t rank = 0;              // this member's position in `members`

  int64_t size() const { return static_cast<int64_t>(members.size()); }
  std::string label() const;  // "tp[3]"
  std::string str() const;    // "tp[3] (ranks 6,7)"
};

// The group of kind `kind` that global rank `rank` belongs to.
GroupDesc group_of(const GridSpec& grid, GroupKind kind, int64_t rank);
// Every group of a kind, by index; each lists its members as in GroupDesc.
std::vector<std::vector<int64_t>> all_groups(const GridSpec& grid, GroupKind kind);

// ---------------------------------------------------------------------------
// Rendezvous store

// A key-value store the ranks meet through while building communicators
// (Gloo's addresses, NCCL's unique ids). Keys are written once.
class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::string& value) = 0;
  // The value of `key`, waiting until some rank sets it. Throws CommError
  // naming the key and the store after the store's timeout.
  virtual std::string get(const std::string& key) = 0;
  virtual std::string describe() const = 0;  // "file store /tmp/x"
};

// Files in `dir` (created if missing), one per key, written atomically. For
// one node (mtc-launch makes a fresh directory per run) or several nodes
// sharing a filesystem (a fresh, empty directory per job).
std::unique_ptr<Store> make_file_store(const std::string& dir, double timeout_s);
// A TCP store at addr:port served by the process that passes serve=true
// (global rank 0) from a background thread, for as long as the returned
// object lives. Clients retry connecting until the timeout. Every client
// presents `token` (MTC_RDZV_TOKEN) and the server admits only those whose
// token equals its own. "" is allowed only when addr is a loopback address
// (the server then listens on 127.0.0.1 alone); a token has
// kRdzvTokenMinBytes to kRdzvTokenMaxBytes bytes. The server drops a client
// silent for timeout_s; docs/security.md lists its other limits.
constexpr size_t kRdzvTokenMinBytes = 16;
constexpr size_t kRdzvTokenMaxBytes = 256;
std::unique_ptr<Store> make_tcp_store(const std::string& addr, int port, bool serve,
                                      double timeout_s, const std::string& token);
// A map in this process (a world of one rank).
std::unique_ptr<Store> make_memory_store();
// The store the launch environment asks for: one rank -> memory; MTC_RDZV_DIR
// set -> file store; else MASTER_ADDR:MASTER_PORT -> TCP store served by
// rank 0, with MTC_RDZV_TOKEN as its token; else CommError saying what to set.
std::unique_ptr<Store> make_store(const LaunchEnv& env, double timeout_s);

// MTC_RDZV_TIMEOUT in seconds (default 300); throws CommError if malformed.
double rendezvous_timeout_from_env();

// ---------------------------------------------------------------------------
// Communicators

enum class DType { f32, bf16, f64 };
enum class ReduceOp { sum, max };
size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);

// A cudaStream_t for the NCCL backend; nullptr (the only value allowed) for
// Gloo. Opaque here so that this header needs no CUDA.
using Stream = void*;

class Communicator {
 public:
  Communicator(GroupDesc group, Watchdog& watchdog);
  virtual ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  const GroupDesc& group() const { return group_; }
  int64_t rank() const { return group_.rank; }
  int64_t size() const { return group_.size(); }
  virtual const char* backend() const = 0;  // "gloo", "nccl"

  // fp32 host buffers (the Gloo backend; the host target is fp32 throughout).
  void all_reduce(float* buf, int64_t n, ReduceOp op = ReduceOp::sum) {
    all_reduce(buf, n, DType::f32, op, nullptr);
  }
  void all_gather(const float* send, float* recv, int64_t n) {
    all_gather(send, recv, n, DType::f32, nullptr);
  }
  void reduce_scatter(const float* send, float* recv, int64_t n, ReduceOp op = ReduceOp::sum) {
    reduce_scatter(send, recv, n, DType::f32, op, nullptr);
  }
  void broadcast(float* buf, int64_t n, int64_t root) {
    broadcast(buf, n, DType::f32, root, nullptr);
  }
  void all_to_all(const float* send, float* recv, int64_t n) {
    all_to_all(send, recv, n, DType::f32, nullptr);
  }
  void send(const float* buf, int64_t n, int64_t peer) { send(buf, n, DType::f32, peer, nullptr); }
  void recv(float* buf, int64_t n, int64_t peer) { recv(buf, n, DType::f32, peer, nullptr); }
  void send_recv(const float* send_buf, int64_t send_n, int64_t send_peer, float* recv_buf,
                 int64_t recv_n, int64_t recv_peer) {
    send_recv(send_buf, send_n, send_peer, recv_buf, recv_n, recv_peer, DType::f32, nullptr);
  }

  // Any dtype and stream (the NCCL backend: device buffers, enqueued on
  // `stream`). Counts are elements per rank as in the table above; peers and
  // roots are ranks within the group. Arguments are checked before anything
  // is sent: a bad one throws CommError naming the collective and group.
  void all_reduce(void* buf, int64_t n, DType dtype, ReduceOp op, Stream stream);
  void all_gather(const void* send, void* recv, int64_t n, DType dtype, Stream stream);
  void reduce_scatter(const void* send, void* recv, int64_t n, DType dtype, ReduceOp op,
                      Stream stream);
  void broadcast(void* buf, int64_t n, DType dtype, int64_t root, Stream stream);
  void all_to_all(const void* send, void* recv, int64_t n, DType dtype, Stream stream);
  void send(const void* buf, int64_t n, DType dtype, int64_t peer, Stream stream);
  void recv(void* buf, int64_t n, DType dtype, int64_t peer, Stream stream);
  void send_recv(const void* send_buf, int64_t send_n, int64_t send_peer, void* recv_buf,
                 int64_t recv_n, int64_t recv_peer, DType dtype, Stream stream);
  // A group of sends and receives posted together, complete together
  // (pipeline parallelism: mtc.p2p). Peers are ranks within the group.
  void p2p(const P2PTransfer* ops, int count, DType dtype, Stream stream);
  // Blocks the calling thread until every member has entered the barrier
  // (the NCCL backend also waits for its own stream).
  void barrier();

  // A collective implemented outside the backend on this group's memory
  // (cuda::PeerAllReduce): runs `enqueue` under the watchdog like the
  // backend's own collectives, so that one that never completes is
  // reported as "<collective> on group ... at step N". A device backend
  // keeps the entry open until the work enqueued on `stream` is done.
  void watched(const char* collective, Stream stream, const std::function<void()>& enqueue);

 protected:
  // The backend's collectives, called after the checks with n > 0 (barrier
  // always). A host backend returns when the operation is complete; a device
  // backend when it is enqueued.
  virtual void do_all_reduce(void* buf, int64_t n, DType dtype, ReduceOp op, Stream stream) = 0;
  virtual void do_all_gather(const void* send, void* recv, int64_t n, DType dtype,
                             Stream stream) = 0;
  virtual void do_reduce_scatter(const void* send, void* recv, int64_t n, DType dtype, ReduceOp op,
                                 Stream stream) = 0;
  virtual void do_broadcast(void* buf, int64_t n, DType dtype, int64_t root, Stream stream) = 0;
  virtual void do_all_to_all(const void* send, void* recv, int64_t n, DType dtype,
                             Stream stream) = 0;
  // Either buffer may be null (count 0): a lone send or recv.
  virtual void do_send_recv(const void* send_buf, int64_t send_n, int64_t send_peer, void* recv_buf,
                            int64_t recv_n, int64_t recv_peer, DType dtype, Stream stream) = 0;
  virtual void do_barrier() = 0;
  // Called with count > 0 and every n > 0. The default posts groups of at
  // most one send and one receive through do_send_recv and refuses larger
  // ones; Gloo and NCCL post any group.
  virtual void do_p2p(const P2PTransfer* ops, int count, DType dtype, Stream stream);
  // Throws CommError when the backend cannot take `dtype` or `stream`.
  virtual void check_backend_args(const char* collective, DType dtype, Stream stream) const = 0;
  // Called once the backend call returned: the collective registered as
  // `watch_id` is complete (host backends: the default ends it now) or will
  // be (device backends hand the watchdog a completion probe).
  virtual void complete(uint64_t watch_id, Stream stream);

  // "all_reduce on group tp[0] (ranks 0,1) at step 7" for messages.
  std::string where(const char* collective) const;
  Watchdog& watchdog() { return watchdog_; }

 private:
  friend class CommAlias;  // a second name for a communicator (World, comm.cpp)

  template <typename Fn>
  void run(const char* collective, Stream stream, Fn&& fn);
  void check_count(const char* collective, int64_t n, const void* a, const void* b) const;
  void check_peer(const char* collective, const char* what, int64_t peer, bool allow_self) const;

  GroupDesc group_;
  std::string group_str_;
  Watchdog& watchdog_;
};

// Builds the Communicator of one group. Every member of the group calls it
// for that group at the same point of the World's setup; the store is the
// one all ranks share.
using CommFactory = std::function<std::unique_ptr<Communicator>(
    const GroupDesc& group, Store& store, Watchdog& watchdog, const LaunchEnv& env)>;

// Gloo over TCP (comm_gloo.cpp). The ranks listen on GLOO_SOCKET_IFNAME's
// address when set, else on 127.0.0.1 when all ranks are on one node
// (LOCAL_WORLD_SIZE == WORLD_SIZE), else on this host's name.
CommFactory gloo_comm_factory();
// NCCL on device LOCAL_RANK (comm_nccl.cpp; defined only in
// mtc_runtime_cuda, which a CUDA program links).
CommFactory nccl_comm_factory();

// ---------------------------------------------------------------------------
// World

struct WorldOptions {
  GridSpec grid;
  // Seconds; a negative value reads MTC_COLLECTIVE_TIMEOUT (default 300) and
  // MTC_RDZV_TIMEOUT (default 300).
  double collective_timeout_s = -1;
  double rendezvous_timeout_s = -1;
  // The group kinds to build (all by default). Kinds whose groups coincide
  // on this grid (tp_dp and dp when tp=1, say) share one connection; each
  // kind's Communicator still carries its own GroupDesc (label "tp_dp[0]").
  std::vector<GroupKind> groups{std::begin(kAllGroupKinds), std::end(kAllGroupKinds)};
};

class World {
 public:
  // Checks WORLD_SIZE == grid.world_size() (else CommError: "the program was
  // compiled for tp=2 x dp=2 = 4 ranks but WORLD_SIZE is 3 ..."), starts the
  // watchdog, meets the other ranks through make_store(env) and builds the
  // communicators in a fixed order, then waits until every rank has built
  // its own (so rank 0's TCP store is no longer needed). One World per run:
  // store keys are written once, so a second World needs a fresh
  // MTC_RDZV_DIR or MASTER_PORT. Destroying it closes the connections
  // without a barrier: call comm(GroupKind::world).barrier() first when
  // other ranks may still be inside a collective with this one.
  World(const LaunchEnv& env, const WorldOptions& options, const CommFactory& factory);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  // read_launch_env() + the constructor with default timeouts.
  static std::unique_ptr<World> from_env(const GridSpec& grid, const CommFactory& factory);

  int64_t rank() const { return env_.rank; }
  int64_t world_size() const { return env_.world_size; }
  int64_t local_rank() const { return env_.local_rank; }
  const LaunchEnv& env() const { return env_; }
  const GridSpec& grid() const { return grid_; }
  GridCoord coord() const { return grid_coord(grid_, env_.rank); }

  // This rank's communicator for a group kind; CommError if the kind was not
  // in WorldOptions::groups.
  Communicator& comm(GroupKind kind);

  Watchdog& watchdog() { return *watchdog_; }
  // The training step that watchdog reports name (the trainer sets it).
  void set_step(int64_t step);

 private:
  LaunchEnv env_;
  GridSpec grid_;
  std::unique_ptr<Watchdog> watchdog_;
  std::vector<std::shared_ptr<Communicator>> comms_;  // by GroupKind, null if not built
};

}  // namespace mtc::rt
