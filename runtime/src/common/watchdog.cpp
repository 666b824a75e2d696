// The collective watchdog (see mtc/rt/watchdog.h): a thread that ends the
// process when a registered collective outlives MTC_COLLECTIVE_TIMEOUT.
//
// Entries live in a map under one mutex. Only the watchdog thread erases
// entries that carry a probe, and a probe is set once (end_when) before the
// thread can see it, so the thread calls probes outside the lock through
// pointers into the map (std::map never moves its nodes).
#include "mtc/rt/watchdog.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "mtc/rt/comm.h"

namespace mtc::rt {

double collective_timeout_from_env() {
  const char* v = std::getenv("MTC_COLLECTIVE_TIMEOUT");
  if (v == nullptr || *v == '\0') return 300.0;
  char* end = nullptr;
  double t = std::strtod(v, &end);
  if (end == v || *end != '\0' || !std::isfinite(t) || t <= 0)
    throw CommError(std::string("MTC_COLLECTIVE_TIMEOUT='") + v +
                    "' is not a positive number of seconds");
  return t;
}

Watchdog::Watchdog(int64_t rank, double timeout_s) : rank_(rank), timeout_s_(timeout_s) {
  if (!(timeout_s > 0) || !std::isfinite(timeout_s))
    throw CommError("the collective timeout must be a positive number of seconds, got " +
                    std::to_string(timeout_s));
  thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

uint64_t Watchdog::begin(const char* collective, const std::string& group) {
  Entry e{collective, group, step(), std::chrono::steady_clock::now(), {}};
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t id = next_id_++;
  entries_.emplace(id, std::move(e));
  return id;
}

void Watchdog::end(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it != entries_.end() && !it->second.probe) entries_.erase(it);
}

void Watchdog::end_when(uint64_t id, Probe probe) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it != entries_.end() && !it->second.probe) it->second.probe = std::move(probe);
}

size_t Watchdog::open_entries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

void Watchdog::loop() {
  using clock = std::chrono::steady_clock;
  const auto timeout = std::chrono::duration<double>(timeout_s_);
  const auto period = std::chrono::duration<double>(std::min(timeout_s_ / 10.0, 0.1));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, period, [this] { return stop_; });
    if (stop_) break;

    // Poll the probes outside the lock.
    std::vector<std::pair<uint64_t, const Entry*>> probed;
    for (const auto& [id, e] : entries_)
      if (e.probe) probed.emplace_back(id, &e);
    if (!probed.empty()) {
      std::vector<uint64_t> done;
      lock.unlock();
      for (const auto& [id, e] : probed) {
        std::string error;
        if (e->probe(&error)) {
          done.push_back(id);
        } else if (!error.empty()) {
          fire(*e, "failed: " + error);
        }
      }
      lock.lock();
      for (uint64_t id : done) entries_.erase(id);
    }

    auto now = clock::now();
    for (const auto& [id, e] : entries_) {
      if (now - e.start < timeout) continue;
      char secs[32];
      std::snprintf(secs, sizeof secs, "%g", timeout_s_);
      fire(e, std::string("has not completed after ") + secs +
                  " s (MTC_COLLECTIVE_TIMEOUT=" + secs +
                  "): a rank of the group never joined it (it failed, hangs, or took another "
                  "code path), or the timeout is shorter than a legitimate wait");
    }
  }
}

void Watchdog::fire(const Entry& e, const std::string& why) {
  std::string msg = "mtc watchdog: rank " + std::to_string(rank_) + ": " + e.collective +
                    " on group " + e.group + " at step " + std::to_string(e.step) + " " + why +
                    ". Aborting the process (exit code " + std::to_string(kWatchdogExitCode) +
                    ").\n";
  // One write, so ranks sharing a terminal do not interleave mid-line.
  ssize_t ignored = ::write(STDERR_FILENO, msg.data(), msg.size());
  (void)ignored;
  std::fflush(stdout);
  std::_Exit(kWatchdogExitCode);
}

}  // namespace mtc::rt
