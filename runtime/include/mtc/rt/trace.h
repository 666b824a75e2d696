// Tracing a training run as a Chrome trace (chrome://tracing, Perfetto):
// `train --trace FILE` records, on every rank, each pipeline piece
// (forward, backward, weight gradient of one microbatch and chunk), each
// transfer group and each step, and rank 0 writes them all to FILE, one
// track per rank.
//
// The generated code calls trace_now before and trace_record after a piece
// or transfer; with tracing off (HostState::trace null) both cost a branch.
// On a device backend a record first waits for the device (TraceLog::sync),
// so durations are the work's own but tracing serializes what would
// overlap: use it to see the schedule, and nsys for overlap.
// Times are the steady clock of the node; ranks on several nodes are not
// aligned.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mtc::rt {

struct HostState;

struct TraceEvent {
  char kind;           // 'F' forward, 'B' backward, 'W' weight gradient,
                       // 'E' eval, 'P' transfer group, 'S' step, 'O' optimizer,
                       // 'M' a whole microbatch (programs without a pipeline)
  int32_t microbatch;  // -1 where none
  int32_t chunk;       // -1 where none
  double t0, t1;       // seconds on the steady clock
};

struct TraceLog {
  std::vector<TraceEvent> events;
  void (*sync)() = nullptr;  // the backend's synchronize (device backends)
};

double trace_clock();

// Seconds on the steady clock when tracing, else 0.
inline double trace_now(const HostState& st);
// Records [t0, now) when tracing.
void trace_record(HostState& st, char kind, int32_t microbatch, int32_t chunk, double t0);

// The Chrome trace JSON of every rank's events (rank r's as tid r), times
// relative to the earliest event.
std::string chrome_trace_json(const std::vector<std::vector<TraceEvent>>& per_rank);

// Per rank and step: 1 - (time in pieces) / (the step's time): the idle
// fraction the schedule left (the bubble), averaged over the steps after
// the first. One entry per rank.
std::vector<double> measured_idle(const std::vector<std::vector<TraceEvent>>& per_rank);

}  // namespace mtc::rt

#include "mtc/rt/program.h"

namespace mtc::rt {
inline double trace_now(const HostState& st) {
  return st.trace == nullptr ? 0.0 : trace_clock();
}
}  // namespace mtc::rt
