// A minimal fork-join helper for the host kernels.
//
// parallel_for(n, grain, fn) splits [0, n) into at most num_threads()
// contiguous chunks of at least `grain` items and calls fn(begin, end) on
// each, the first on the calling thread. Work items must be independent (no
// two chunks write the same memory); results that need a reduction are
// written per item or per chunk and reduced by the caller in a fixed order,
// so every kernel is deterministic whatever the thread count.
//
// The thread count is MTC_NUM_THREADS if set (>= 1), else the hardware
// concurrency. Threads are started per call: the host target is the
// numerical reference, not the fast path, and this keeps it free of global
// pools.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace mtc::rt::host {

// Threads a kernel may use (read once from MTC_NUM_THREADS).
int num_threads();

template <typename Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t chunks = std::min<int64_t>(num_threads(), (n + grain - 1) / grain);
  if (chunks <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(chunks - 1));
  for (int64_t c = 1; c < chunks; ++c) {
    int64_t begin = n * c / chunks, end = n * (c + 1) / chunks;
    workers.emplace_back([&fn, begin, end] { fn(begin, end); });
  }
  fn(int64_t{0}, n / chunks);
  for (auto& w : workers) w.join();
}

}  // namespace mtc::rt::host
