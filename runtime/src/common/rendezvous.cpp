// Choosing the rendezvous store from the launch environment, and the
// in-process store of a one-rank world (see Store in mtc/rt/comm.h).
//
//   WORLD_SIZE == 1     memory store (nothing to meet)
//   MTC_RDZV_DIR set    file store in that directory
//   MASTER_ADDR + PORT  TCP store, served by global rank 0 (MTC_RDZV_TOKEN)
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>

#include "mtc/rt/comm.h"

namespace mtc::rt {

namespace {

class MemoryStore final : public Store {
 public:
  void set(const std::string& key, const std::string& value) override {
    std::lock_guard<std::mutex> lock(mu_);
    values_[key] = value;
  }
  std::string get(const std::string& key) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = values_.find(key);
    // One rank sets every key before it reads it back; a missing key is a
    // bug in the caller, not something to wait for.
    if (it == values_.end()) throw CommError("memory store: key '" + key + "' was never set");
    return it->second;
  }
  std::string describe() const override { return "memory store"; }

 private:
  std::mutex mu_;
  std::map<std::string, std::string> values_;
};

}  // namespace

std::unique_ptr<Store> make_memory_store() { return std::make_unique<MemoryStore>(); }

double rendezvous_timeout_from_env() {
  const char* v = std::getenv("MTC_RDZV_TIMEOUT");
  if (v == nullptr || *v == '\0') return 300.0;
  char* end = nullptr;
  double t = std::strtod(v, &end);
  if (end == v || *end != '\0' || !std::isfinite(t) || t <= 0)
    throw CommError(std::string("MTC_RDZV_TIMEOUT='") + v +
                    "' is not a positive number of seconds");
  return t;
}

std::unique_ptr<Store> make_store(const LaunchEnv& env, double timeout_s) {
  if (env.world_size == 1) return make_memory_store();
  if (!env.rdzv_dir.empty()) return make_file_store(env.rdzv_dir, timeout_s);
  if (!env.master_addr.empty() && env.master_port != 0)
    return make_tcp_store(env.master_addr, env.master_port, env.rank == 0, timeout_s,
                          env.rdzv_token);
  throw CommError("rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
                  " (" + env.source +
                  ") has no way to meet the other ranks: set MASTER_ADDR and MASTER_PORT (rank "
                  "0 serves the rendezvous there) or MTC_RDZV_DIR (a directory all ranks "
                  "share), or start the program with mtc-launch");
}

}  // namespace mtc::rt
