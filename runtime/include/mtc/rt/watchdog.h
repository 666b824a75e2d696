// The collective watchdog: a collective that does not finish in time ends
// the process with a message, never a silent hang.
//
// Every collective registers before it starts (begin: rank, collective name,
// group, the current step) and is cleared when it completes (end, or for a
// device backend end_when: a probe the watchdog thread polls, e.g. a CUDA
// event query). A background thread checks the open entries every
// min(timeout/10, 100 ms); the first one older than the timeout is reported
// on stderr as
//
//   mtc watchdog: rank 1: all_reduce on group tp[0] (ranks 0,1) at step 7 has
//   not completed after 300 s (MTC_COLLECTIVE_TIMEOUT=300). ...
//
// and the process exits at once with kWatchdogExitCode (other threads may be
// stuck inside a collective, so nothing is unwound). A probe that reports an
// error (an NCCL communicator failure) ends the process the same way. The
// launcher then stops the other ranks.
//
// The timeout is MTC_COLLECTIVE_TIMEOUT seconds (default 300). It must
// exceed the longest legitimate wait inside a collective: with pipeline
// parallelism a rank may wait on its neighbour for a whole stage's compute.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace mtc::rt {

// Exit status of a process the watchdog ended (the trainer uses 1 and 2).
inline constexpr int kWatchdogExitCode = 3;

// MTC_COLLECTIVE_TIMEOUT in seconds (> 0, default 300); throws CommError if
// it is malformed.
double collective_timeout_from_env();

class Watchdog {
 public:
  // `rank` is the global rank named in reports.
  Watchdog(int64_t rank, double timeout_s);
  ~Watchdog();  // stops the thread; open entries are dropped
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  double timeout_s() const { return timeout_s_; }
  void set_step(int64_t step) { step_.store(step, std::memory_order_relaxed); }
  int64_t step() const { return step_.load(std::memory_order_relaxed); }

  // Opens an entry; `collective` must outlive it (a literal), `group` is a
  // description such as "tp[0] (ranks 0,1)". Returns its id.
  uint64_t begin(const char* collective, const std::string& group);
  // Clears an entry (unknown ids are ignored).
  void end(uint64_t id);
  // Returns true once the operation completed; on failure sets *error to a
  // description and returns false.
  using Probe = std::function<bool(std::string* error)>;
  // Keeps the entry open until `probe` returns true (polled by the watchdog
  // thread, which must be allowed to call whatever the probe calls).
  void end_when(uint64_t id, Probe probe);
  // Open entries (for tests and diagnostics).
  size_t open_entries() const;

 private:
  struct Entry {
    const char* collective;
    std::string group;
    int64_t step;
    std::chrono::steady_clock::time_point start;
    Probe probe;  // empty for an entry that end() clears
  };

  void loop();
  [[noreturn]] void fire(const Entry& entry, const std::string& why);

  const int64_t rank_;
  const double timeout_s_;
  std::atomic<int64_t> step_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  uint64_t next_id_ = 1;
  std::map<uint64_t, Entry> entries_;
  std::thread thread_;
};

}  // namespace mtc::rt
