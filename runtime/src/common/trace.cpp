// Trace events and their Chrome trace JSON (trace.h).
#include "mtc/rt/trace.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <limits>

namespace mtc::rt {

double trace_clock() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void trace_record(HostState& st, char kind, int32_t microbatch, int32_t chunk, double t0) {
  if (st.trace == nullptr) return;
  if (st.trace->sync != nullptr) st.trace->sync();
  st.trace->events.push_back({kind, microbatch, chunk, t0, trace_clock()});
}

namespace {
const char* kind_name(char k) {
  switch (k) {
    case 'F': return "forward";
    case 'B': return "backward";
    case 'W': return "weight";
    case 'E': return "eval";
    case 'P': return "transfer";
    case 'S': return "step";
    case 'O': return "optimizer";
    case 'M': return "microbatch";
    default: return "other";
  }
}
}  // namespace

std::string chrome_trace_json(const std::vector<std::vector<TraceEvent>>& per_rank) {
  double origin = std::numeric_limits<double>::infinity();
  for (const auto& events : per_rank)
    for (const TraceEvent& e : events) origin = std::min(origin, e.t0);
  std::string out = "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n";
  bool first = true;
  char buf[256];
  for (size_t r = 0; r < per_rank.size(); ++r) {
    std::snprintf(buf, sizeof(buf),
                  "%s{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": %zu, "
                  "\"args\": {\"name\": \"rank %zu\"}}",
                  first ? "" : ",\n", r, r);
    out += buf;
    first = false;
    for (const TraceEvent& e : per_rank[r]) {
      std::string name = e.kind == 'S' ? "step" : e.kind == 'O' ? "optimizer"
                         : e.kind == 'M' ? "microbatch "
                         : e.kind == 'P' ? "p2p"
                                         : std::string(1, e.kind);
      if (e.microbatch >= 0 && e.kind != 'S' && e.kind != 'O' && e.kind != 'P')
        name += std::to_string(e.microbatch);
      if (e.chunk >= 0 && e.kind != 'S' && e.kind != 'O') name += ".c" + std::to_string(e.chunk);
      std::snprintf(buf, sizeof(buf),
                    ",\n{\"name\": \"%s\", \"cat\": \"%s\", \"ph\": \"X\", \"pid\": 0, \"tid\": "
                    "%zu, \"ts\": %.3f, \"dur\": %.3f, \"args\": {\"microbatch\": %d, "
                    "\"chunk\": %d}}",
                    name.c_str(), kind_name(e.kind), r, (e.t0 - origin) * 1e6,
                    (e.t1 - e.t0) * 1e6, e.microbatch, e.chunk);
      out += buf;
    }
  }
  out += "\n]}\n";
  return out;
}

std::vector<double> measured_idle(const std::vector<std::vector<TraceEvent>>& per_rank) {
  std::vector<double> idle;
  for (const auto& events : per_rank) {
    double busy = 0, total = 0;
    int steps = 0;
    for (const TraceEvent& s : events) {
      if (s.kind != 'S') continue;
      if (steps++ == 0) continue;  // the first step warms up
      total += s.t1 - s.t0;
      for (const TraceEvent& e : events)
        if ((e.kind == 'F' || e.kind == 'B' || e.kind == 'W' || e.kind == 'M') && e.t0 >= s.t0 &&
            e.t1 <= s.t1)
          busy += e.t1 - e.t0;
    }
    idle.push_back(total > 0 ? 1.0 - busy / total : 0.0);
  }
  return idle;
}

}  // namespace mtc::rt
