// MTC_PROFILE: GPU time per op and per collective from CUDA events (see
// mtc/rt/cuda_profile.h for what is measured and how).
#include "mtc/rt/cuda_profile.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "mtc/rt/cuda_check.h"
#include "mtc/rt/io.h"

namespace mtc::rt::cuda::profile {
namespace {

// One row for every layer: "layers.12.mlp" -> "layers.*.mlp".
std::string star_layer(std::string name) {
  const std::string layers = "layers.";
  size_t at = name.find(layers);
  if (at != std::string::npos) {
    size_t d = at + layers.size(), e = d;
    while (e < name.size() && name[e] >= '0' && name[e] <= '9') ++e;
    if (e > d) name.replace(d, e - d, "*");
  }
  return name;
}

struct Total {
  double ms = 0, host_ms = 0;
  int64_t calls = 0;
  Total& operator+=(const Total& o) {
    ms += o.ms;
    host_ms += o.host_ms;
    calls += o.calls;
    return *this;
  }
};

// A table's rows, most time first.
std::vector<std::pair<std::string, Total>> by_time(const std::map<std::string, Total>& m) {
  std::vector<std::pair<std::string, Total>> rows(m.begin(), m.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  return rows;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct CommTotal {
  double ms = 0;
  int64_t calls = 0;
  double bytes = 0;
};

const char* const kHostGap = "(GPU idle: the host synchronized, then enqueued the next op)";

struct Profiler {
  std::mutex mu;
  cudaStream_t stream = nullptr;
  std::vector<cudaEvent_t> free_events;
  struct Mark {
    cudaEvent_t ev;
    std::string label;
    double host;  // when the host recorded it (ms)
  };
  std::vector<Mark> marks;  // since the last fold; marks[0] opens the next interval
  struct Span {
    const char* collective;
    int64_t bytes;
    cudaEvent_t a, b;
  };
  std::vector<Span> spans;
  int skip = 2, steps = 0;
  bool host_gap = false;  // the next interval starts at a synchronization
  std::map<std::string, Total> by_label;
  std::map<std::string, CommTotal> comm;
  double window_ms = 0, host_ms = 0;

  Profiler() {
    if (const char* s = std::getenv("MTC_PROFILE_SKIP")) skip = std::max(0, std::atoi(s));
  }

  cudaEvent_t take() {
    if (!free_events.empty()) {
      cudaEvent_t e = free_events.back();
      free_events.pop_back();
      return e;
    }
    cudaEvent_t e;
    MTC_CUDA_CHECK(cudaEventCreate(&e));
    return e;
  }

  // Folds every completed interval (the stream was just synchronized, so
  // all marks are complete; a collective's span is folded once it ended).
  void fold() {
    const bool count = steps >= skip;
    for (size_t i = 0; i + 1 < marks.size(); ++i) {
      float ms = 0;
      MTC_CUDA_CHECK(cudaEventElapsedTime(&ms, marks[i].ev, marks[i + 1].ev));
      if (count) {
        window_ms += ms;
        if (i == 0 && host_gap) {
          host_ms += ms;
        } else {
          Total& t = by_label[marks[i].label];
          t.ms += ms;
          t.host_ms += marks[i + 1].host - marks[i].host;
          t.calls += 1;
        }
      }
      free_events.push_back(marks[i].ev);
    }
    if (marks.size() > 1) marks.erase(marks.begin(), marks.end() - 1);
    std::vector<Span> pending;
    for (const Span& s : spans) {
      if (cudaEventQuery(s.b) != cudaSuccess) {
        (void)cudaGetLastError();
        pending.push_back(s);
        continue;
      }
      float ms = 0;
      MTC_CUDA_CHECK(cudaEventElapsedTime(&ms, s.a, s.b));
      if (count) {
        CommTotal& t = comm[std::string(s.collective) + " " + std::to_string(s.bytes) + " B"];
        t.ms += ms;
        t.calls += 1;
        t.bytes += double(s.bytes);
      }
      free_events.push_back(s.a);
      free_events.push_back(s.b);
    }
    spans.swap(pending);
  }

  void report() {
    const char* path = std::getenv("MTC_PROFILE");
    const int counted = steps - skip;
    if (!path || counted <= 0) return;
    std::string file = path;
    // A file is formatted in memory, then written through OutputFile (io.h):
    // it never replaces what is not a regular file.
    FILE* out = stderr;
    char* text = nullptr;
    size_t size = 0;
    if (file != "-") {
      const char* rank = std::getenv("RANK");
      const char* world = std::getenv("WORLD_SIZE");
      if (rank && world && std::atoi(world) > 1) file += ".rank" + std::string(rank);
      out = ::open_memstream(&text, &size);
      if (!out) {
        std::fprintf(stderr, "MTC_PROFILE: out of memory formatting %s\n", file.c_str());
        return;
      }
    }
    const double n = counted;
    std::fprintf(out,
                 "# mtc profile (MTC_PROFILE): GPU time on the compute stream between the ops'\n"
                 "# markers, per training step, averaged over %d steps after the first %d\n"
                 "# (MTC_PROFILE_SKIP). A collective's \"(wait)\" is communication that overlap\n"
                 "# did not hide; \"(start)\" only enqueues it. host ms: the host's time between\n"
                 "# the same markers (about the GPU's when the host is the bottleneck).\n",
                 counted, skip);
    std::fprintf(out, "compute stream: %.2f ms per step, of which %.2f ms GPU idle at the host\n",
                 window_ms / n, host_ms / n);
    std::map<std::string, Total> kinds;
    std::map<std::string, Total> ops;
    for (const auto& [label, t] : by_label) {
      LabelParts p = split_label(label);
      kinds[p.kind] += t;
      ops[p.name.empty() ? p.kind : p.kind + "  " + p.name] += t;
    }
    const auto kind_rows = by_time(kinds), rows = by_time(ops);
    double waits = 0;
    for (const auto& [k, t] : kind_rows)
      if (k.size() > 7 && k.compare(k.size() - 7, 7, " (wait)") == 0) waits += t.ms;
    std::fprintf(out, "communication not hidden (the collectives' waits): %.2f ms per step\n", waits / n);
    std::fprintf(out, "\nby kind                                        ms/step      %%  calls/step  host ms\n");
    for (const auto& [k, t] : kind_rows)
      std::fprintf(out, "  %-44s %8.3f %6.1f %8.1f %8.3f\n", k.c_str(), t.ms / n,
                   100.0 * t.ms / std::max(window_ms, 1e-9), t.calls / n, t.host_ms / n);
    std::fprintf(out, "  %-44s %8.3f %6.1f\n", kHostGap, host_ms / n,
                 100.0 * host_ms / std::max(window_ms, 1e-9));
    std::fprintf(out, "\nby op (layers summed)                                            ms/step      %%  calls/step  host ms\n");
    for (const auto& [k, t] : rows)
      std::fprintf(out, "  %-62s %8.3f %6.1f %8.1f %8.3f\n", k.c_str(), t.ms / n,
                   100.0 * t.ms / std::max(window_ms, 1e-9), t.calls / n, t.host_ms / n);
    if (!comm.empty()) {
      double busy = 0;
      for (const auto& [k, t] : comm) busy += t.ms;
      std::fprintf(out,
                   "\nNCCL collectives (own streams, start to end, overlapped or not): %.2f ms per "
                   "step\n  collective and bytes per rank            ms/step  calls/step  "
                   "GB/s (bytes / time)\n",
                   busy / n);
      for (const auto& [k, t] : comm)
        std::fprintf(out, "  %-40s %8.3f %10.1f %10.1f\n", k.c_str(), t.ms / n, t.calls / n,
                     t.ms > 0 ? t.bytes / (t.ms * 1e-3) / 1e9 : 0.0);
    }
    if (out != stderr) {
      std::fclose(out);
      try {
        write_file_atomic(file, std::string_view(text, size));
        std::fprintf(stderr, "MTC_PROFILE: wrote %s\n", file.c_str());
      } catch (const Error& e) {  // at exit: report, never throw
        std::fprintf(stderr, "MTC_PROFILE: %s\n", e.what());
      }
      std::free(text);
    }
  }

  ~Profiler() { report(); }  // host formatting only: no CUDA call at exit
};

Profiler& profiler() {
  static Profiler p;
  return p;
}

}  // namespace

LabelParts split_label(const std::string& label) {
  LabelParts p;
  size_t loc = label.find(" loc(\"");
  if (loc == std::string::npos) {
    // "shard.all_reduce of the gradient of P (...)": waited for at once.
    const std::string of_grad = " of the gradient of ";
    size_t of = label.find(of_grad);
    if (label.rfind("shard.", 0) == 0 && of != std::string::npos) {
      p.kind = label.substr(0, of) + " of gradients (wait)";
      p.name = star_layer(label.substr(of + of_grad.size()));
      return p;
    }
    p.kind = label;
    return p;
  }
  p.kind = label.substr(0, loc);
  size_t begin = loc + 6, end = label.find('"', begin);
  p.name = star_layer(
      label.substr(begin, end == std::string::npos ? std::string::npos : end - begin));
  const std::string started = " (started)";
  if (label.size() >= started.size() &&
      label.compare(label.size() - started.size(), started.size(), started) == 0)
    p.kind += " (start)";
  else if (p.kind.rfind("shard.", 0) == 0)
    p.kind += " (wait)";
  return p;
}

bool enabled() {
  static const bool on = [] {
    const char* e = std::getenv("MTC_PROFILE");
    return e && e[0] != '\0';
  }();
  return on;
}

void attach(cudaStream_t stream) {
  if (!enabled()) return;
  Profiler& p = profiler();
  std::lock_guard<std::mutex> lock(p.mu);
  if (p.stream == nullptr) p.stream = stream;
}

void detach(cudaStream_t stream) {
  if (!enabled()) return;
  Profiler& p = profiler();
  std::lock_guard<std::mutex> lock(p.mu);
  if (p.stream != stream) return;
  // The stream is synchronized by the caller: fold what is left.
  p.fold();
  p.marks.clear();
  p.stream = nullptr;
}

void mark(const char* label) {
  if (!enabled()) return;
  Profiler& p = profiler();
  std::lock_guard<std::mutex> lock(p.mu);
  if (p.stream == nullptr) return;
  cudaEvent_t e = p.take();
  MTC_CUDA_CHECK(cudaEventRecord(e, p.stream));
  p.marks.push_back({e, label ? label : "", now_ms()});
}

void before_sync() {
  if (!enabled()) return;
  mark("(synchronize)");
}

void after_sync(bool end_of_step) {
  if (!enabled()) return;
  Profiler& p = profiler();
  std::lock_guard<std::mutex> lock(p.mu);
  if (p.stream == nullptr) return;
  // The "(synchronize)" mark closes the GPU's work; the interval it opens
  // runs until the host enqueues the next op.
  p.fold();
  p.host_gap = true;
  if (end_of_step) ++p.steps;
}

CommSpan::CommSpan(const char* collective, int dtype_bytes, int64_t elements, cudaStream_t stream)
    : collective_(collective), bytes_(int64_t(dtype_bytes) * elements), stream_(stream) {
  if (!enabled()) return;
  Profiler& p = profiler();
  std::lock_guard<std::mutex> lock(p.mu);
  if (p.stream == nullptr) return;
  start_ = p.take();
  MTC_CUDA_CHECK(cudaEventRecord(start_, stream_));
}

CommSpan::~CommSpan() {
  if (start_ == nullptr) return;
  Profiler& p = profiler();
  std::lock_guard<std::mutex> lock(p.mu);
  cudaEvent_t end = p.take();
  if (cudaEventRecord(end, stream_) != cudaSuccess) {
    (void)cudaGetLastError();
    return;
  }
  p.spans.push_back({collective_, bytes_, start_, end});
}

}  // namespace mtc::rt::cuda::profile
