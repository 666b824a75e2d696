// The "pool" backend of the backend tests (backend_test.cpp,
// backend_multirank_test.cpp): a Backend other than the host's, on the CPU,
// standing in for device memory. Each allocation is its own mmap'd region
// that is PROT_NONE except while a backend function, a pool communicator or
// a program entry point runs, so a trainer access to program memory that
// does not go through the backend faults instead of passing silently.
//
// The program is a hand-written one (the tiny program of
// train_test_support.h, or the SPMD program of multirank_test_support.h)
// wrapped by wrap(): every entry point checks that it got pool pointers, the
// context and an up-to-date compute copy, and ids inside the vocabulary.
//
// Backend::comm_factory is Gloo on pool memory: a PoolComm checks that each
// buffer lies in the pool, opens the pool while Gloo reads and writes it and
// counts the collectives, as NCCL on device memory would serve a CUDA
// program. A contract breach is recorded in g().violations (and a
// communicator call with a non-pool buffer throws CommError).
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "mtc/rt/comm.h"
#include "mtc/rt/io.h"
#include "mtc/rt/program.h"
#include "train_test_support.h"

namespace mtc::rt::testing::pool {

struct Region {
  char* base = nullptr;
  size_t bytes = 0;   // requested
  size_t mapped = 0;  // page multiple
};

struct Pool {
  std::vector<Region> regions;
  int open_depth = 0;
  size_t free_bytes = 0, total_bytes = 0;  // what memory_info reports
  int64_t allocs = 0, uploads = 0, downloads = 0, zeros = 0, syncs = 0;
  int64_t collectives = 0, all_reduces = 0;  // through the pool's communicators
  std::vector<std::string> violations;       // contract breaches seen
};

inline Pool& g() {
  static Pool pool;
  return pool;
}

inline void reset(size_t free_bytes = 0, size_t total_bytes = 0) {
  Pool& p = g();
  p = Pool();
  p.free_bytes = free_bytes;
  p.total_bytes = total_bytes;
}

inline void protect(int prot) {
  for (const Region& r : g().regions)
    if (mprotect(r.base, r.mapped, prot) != 0) std::abort();
}

// Program memory readable and writable while alive (nested scopes allowed).
struct Open {
  Open() {
    if (g().open_depth++ == 0) protect(PROT_READ | PROT_WRITE);
  }
  ~Open() {
    if (--g().open_depth == 0) protect(PROT_NONE);
  }
};

// True if [p, p + bytes) lies in one pool allocation.
inline bool in_pool(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (const Region& r : g().regions)
    if (c >= r.base && c + bytes <= r.base + r.bytes) return true;
  return false;
}

inline bool overlaps_pool(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (const Region& r : g().regions)
    if (c < r.base + r.mapped && c + bytes > r.base) return true;
  return false;
}

inline void* alloc(size_t bytes, const char* what) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t mapped = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
  void* p = mmap(nullptr, mapped, g().open_depth > 0 ? PROT_READ | PROT_WRITE : PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw Error(std::string("pool: cannot map ") + what);
  g().regions.push_back({static_cast<char*>(p), bytes, mapped});
  ++g().allocs;
  return p;  // anonymous mappings are zero-filled
}

inline void release(void* p) {
  auto& rs = g().regions;
  for (size_t i = 0; i < rs.size(); ++i)
    if (rs[i].base == p) {
      munmap(rs[i].base, rs[i].mapped);
      rs.erase(rs.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
  g().violations.push_back("release of a pointer the pool did not allocate");
}

inline void upload(void* dst, const void* src, size_t bytes) {
  ++g().uploads;
  if (!in_pool(dst, bytes) || overlaps_pool(src, bytes)) {
    g().violations.push_back("upload: destination not in the pool or source in it");
    return;
  }
  Open open;
  std::memcpy(dst, src, bytes);
}

inline void download(void* dst, const void* src, size_t bytes) {
  ++g().downloads;
  if (!in_pool(src, bytes) || overlaps_pool(dst, bytes)) {
    g().violations.push_back("download: source not in the pool or destination in it");
    return;
  }
  Open open;
  std::memcpy(dst, src, bytes);
}

inline void zero(void* dst, size_t bytes) {
  ++g().zeros;
  if (!in_pool(dst, bytes)) {
    g().violations.push_back("zero: destination not in the pool");
    return;
  }
  Open open;
  std::memset(dst, 0, bytes);
}

inline void synchronize() { ++g().syncs; }

inline void memory_info(size_t* free_bytes, size_t* total_bytes) {
  *free_bytes = g().free_bytes;
  *total_bytes = g().total_bytes;
}

// ---------------------------------------------------------------------------
// The pool's communicators: Gloo on pool memory

class PoolComm final : public Communicator {
 public:
  PoolComm(GroupDesc group, Watchdog& watchdog, std::unique_ptr<Communicator> gloo)
      : Communicator(std::move(group), watchdog), gloo_(std::move(gloo)) {}
  const char* backend() const override { return "pool-gloo"; }

 protected:
  // What a device backend's generated code passes: f32 on the default stream.
  void check_backend_args(const char* collective, DType dtype, Stream stream) const override {
    if (dtype != DType::f32 || stream != nullptr)
      throw CommError(where(collective) + ": the pool takes f32 buffers on the default stream");
  }
  void do_all_reduce(void* buf, int64_t n, DType dt, ReduceOp op, Stream s) override {
    need("all_reduce", buf, n, dt);
    Open open;
    ++g().all_reduces;
    gloo_->all_reduce(buf, n, dt, op, s);
  }
  void do_all_gather(const void* send, void* recv, int64_t n, DType dt, Stream s) override {
    need("all_gather", send, n, dt);
    need("all_gather", recv, n * size(), dt);
    Open open;
    gloo_->all_gather(send, recv, n, dt, s);
  }
  void do_reduce_scatter(const void* send, void* recv, int64_t n, DType dt, ReduceOp op,
                         Stream s) override {
    need("reduce_scatter", send, n * size(), dt);
    need("reduce_scatter", recv, n, dt);
    Open open;
    gloo_->reduce_scatter(send, recv, n, dt, op, s);
  }
  void do_broadcast(void* buf, int64_t n, DType dt, int64_t root, Stream s) override {
    need("broadcast", buf, n, dt);
    Open open;
    gloo_->broadcast(buf, n, dt, root, s);
  }
  void do_all_to_all(const void* send, void* recv, int64_t n, DType dt, Stream s) override {
    need("all_to_all", send, n * size(), dt);
    need("all_to_all", recv, n * size(), dt);
    Open open;
    gloo_->all_to_all(send, recv, n, dt, s);
  }
  void do_send_recv(const void* send_buf, int64_t send_n, int64_t send_peer, void* recv_buf,
                    int64_t recv_n, int64_t recv_peer, DType dt, Stream s) override {
    if (send_buf != nullptr) need("send", send_buf, send_n, dt);
    if (recv_buf != nullptr) need("recv", recv_buf, recv_n, dt);
    Open open;
    gloo_->send_recv(send_buf, send_buf ? send_n : 0, send_peer, recv_buf,
                     recv_buf ? recv_n : 0, recv_peer, dt, s);
  }
  void do_barrier() override { gloo_->barrier(); }

 private:
  // Counts every collective; a buffer outside the pool is a breach.
  void need(const char* collective, const void* p, int64_t n, DType dt) {
    ++g().collectives;
    if (in_pool(p, static_cast<size_t>(n) * dtype_size(dt))) return;
    g().violations.push_back(std::string(collective) + ": a buffer is not pool memory");
    throw CommError(where(collective) + ": a buffer is not pool memory");
  }

  std::unique_ptr<Communicator> gloo_;
};

// A fresh Gloo factory (its own TCP device) per group: nothing is made
// before the ranks are forked.
inline const CommFactory kCommFactory = [](const GroupDesc& group, Store& store,
                                           Watchdog& watchdog,
                                           const LaunchEnv& env) -> std::unique_ptr<Communicator> {
  return std::make_unique<PoolComm>(group, watchdog,
                                    gloo_comm_factory()(group, store, watchdog, env));
};

inline const Backend kBackend = {"pool", &alloc,       &release,     &upload,       &download,
                                 &zero,  &synchronize, &memory_info, &kCommFactory};

// ---------------------------------------------------------------------------
// The wrapped program

// The program's "context": counts creations and destructions.
struct Context {
  int64_t created = 0, destroyed = 0, syncs_of_compute_copy = 0;
};
inline Context g_context;

inline void* create_context() {
  ++g_context.created;
  return &g_context;
}
inline void destroy_context(void* ctx) {
  if (ctx != &g_context) g().violations.push_back("destroy_context: not the context");
  ++g_context.destroyed;
}

// Both wrapped programs have the tiny program's layout and sizes.
inline constexpr size_t kParamBytes = tiny::kNumParams * sizeof(float);

// The compute copy is an fp32 copy of the parameters (a stand-in for
// CUDA's bf16 copy): refreshed by sync_compute_params and by the optimizer
// step, and required to equal the parameters whenever a forward runs.
inline void sync_compute_params(HostState& s) {
  ++g_context.syncs_of_compute_copy;
  if (!in_pool(s.compute_params, kParamBytes) || !in_pool(s.params, kParamBytes)) {
    g().violations.push_back("sync_compute_params: pointers not in the pool");
    return;
  }
  Open open;
  std::memcpy(s.compute_params, s.params, kParamBytes);
}

inline void check_state(const HostState& s, const int32_t* tok, const int32_t* tgt,
                        const char* entry) {
  const size_t batch = tiny::kT * sizeof(int32_t);
  const bool ok = in_pool(s.params, kParamBytes) && in_pool(s.grads, kParamBytes) &&
                  in_pool(s.exp_avg, kParamBytes) && in_pool(s.exp_avg_sq, kParamBytes) &&
                  in_pool(s.compute_params, kParamBytes) &&
                  in_pool(s.arena, tiny::kT * tiny::kV * sizeof(float)) &&
                  (tok == nullptr || (in_pool(tok, batch) && in_pool(tgt, batch)));
  if (!ok) {
    g().violations.push_back(std::string(entry) + ": a pointer is not in the pool");
    return;
  }
  if (s.context != &g_context)
    g().violations.push_back(std::string(entry) + ": state.context is not the context");
  Open open;
  if (std::memcmp(s.compute_params, s.params, kParamBytes) != 0)
    g().violations.push_back(std::string(entry) + ": the compute copy is stale");
  if (tok != nullptr)
    for (int64_t i = 0; i < tiny::kT; ++i)
      if (tok[i] < 0 || tok[i] >= tiny::kV || tgt[i] < 0 || tgt[i] >= tiny::kV) {
        g().violations.push_back(std::string(entry) + ": called with a bad id");
        break;
      }
}

// The program wrap() wrapped last: its entry points run inside the pool's.
inline ProgramDesc g_inner;

inline float forward_loss(HostState& s, const int32_t* tok, const int32_t* tgt) {
  check_state(s, tok, tgt, "forward_loss");
  Open open;
  return g_inner.forward_loss(s, tok, tgt);
}

inline float forward_backward(HostState& s, const int32_t* tok, const int32_t* tgt) {
  check_state(s, tok, tgt, "forward_backward");
  Open open;
  return g_inner.forward_backward(s, tok, tgt);
}

inline double optimizer_step(HostState& s, float lr, int64_t step) {
  check_state(s, nullptr, nullptr, "optimizer_step");
  Open open;
  double norm = g_inner.optimizer_step(s, lr, step);
  std::memcpy(s.compute_params, s.params, kParamBytes);
  return norm;
}

// `inner` (a host program with the tiny program's layout) through the pool:
// same model name and grid, so dumps and checkpoints compare byte for byte.
inline ProgramDesc wrap(const ProgramDesc& inner) {
  g_inner = inner;
  ProgramDesc p = inner;
  p.target = "pool";
  p.backend = &kBackend;
  p.compute_param_bytes = static_cast<int64_t>(kParamBytes);
  p.forward_loss = &forward_loss;
  p.forward_backward = &forward_backward;
  p.optimizer_step = &optimizer_step;
  p.create_context = &create_context;
  p.destroy_context = &destroy_context;
  p.sync_compute_params = &sync_compute_params;
  return p;
}

inline ProgramDesc program() { return wrap(tiny::program()); }

}  // namespace mtc::rt::testing::pool
