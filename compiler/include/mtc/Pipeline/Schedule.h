// Pipeline-parallel schedules: which compute piece each pp rank runs in which
// order, with the point-to-point transfers between them, and a simulator that
// proves a schedule deadlock-free and dataflow-correct before any code is
// generated. No MLIR, no LLVM: the pipeline passes consume these orders.
//
// Words are Megatron-LM's: P pp ranks (stages), V virtual stages (model chunks
// per rank), m microbatches; warm-up / 1F1B steady state / cool-down.
//
// Chunk layout (Megatron's interleaved assignment). The model is cut into P*V
// chunks numbered 0..P*V-1 in model order; chunk c lives on rank c % P, so
// rank r holds chunks r, r+P, r+2P, ... and its local chunk index is c / P.
// With P = 4, V = 2: rank 0 holds chunks 0 and 4, rank 3 holds 3 and 7; the
// activation leaving chunk 3 (rank 3) goes to chunk 4 (rank 0).
//
// Schedules (the orders are checked against the published tables in
// test/unit/pipeline/ScheduleTest.cpp):
//   gpipe        all forwards in microbatch order, then all backwards in
//                microbatch order (Narayanan et al. 2021, Fig. 3).
//   1f1b         PipeDream-Flush (Narayanan et al. 2021, Fig. 4 top; Megatron's
//                forward_backward_pipelining_without_interleaving).
//   interleaved  interleaved 1F1B (Fig. 4 bottom; Megatron's
//                forward_backward_pipelining_with_interleaving), its
//                transfers in Megatron's lockstep: one group per step
//                (send_forward_backward_recv_forward_backward).
//   zb-h1        ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR
//                2024, Fig. 3 top): backward split into B (input gradient)
//                and W (weight gradient), W's delayed into 1F1B's bubble.
//
// Transfers follow NCCL semantics: a group of sends/receives is posted at once
// and completes when every one of them is matched; sends and receives between
// one ordered pair of ranks match in FIFO order (no tags).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace mtc::pipeline {

enum class ScheduleKind { GPipe, OneFOneB, Interleaved, ZeroBubbleH1 };
// "gpipe", "1f1b", "interleaved", "zb-h1".
bool parseScheduleKind(std::string_view s, ScheduleKind& out);
const char* scheduleKindName(ScheduleKind k);

// One unit of compute of one rank: the forward (F), backward (B: the whole
// backward pass of the chunk; under ZB-H1 only its input-gradient part) or
// weight-gradient (W, ZB-H1 only) piece of microbatch `microbatch` on model
// chunk `chunk` (a global chunk id, see the layout above).
enum class PieceKind { Forward, Backward, Weight };

// A point-to-point transfer: the activation leaving chunk c forward (to the
// rank of chunk c+1) or the gradient leaving chunk c backward (to the rank of
// chunk c-1). Tagged by (what, microbatch, chunk = the sending chunk) on both
// ends: a receive names what it expects.
enum class Payload { Activation, Gradient };
struct Transfer {
  bool isSend;
  Payload what;
  int microbatch;
  int chunk;
  int peer;
};

// One step of a rank: either one compute piece, or one group of transfers
// that are posted together and complete together (NCCL group semantics:
// Megatron's batched isend/irecv, e.g. send_forward_recv_backward).
struct Step {
  bool isCompute;
  PieceKind piece;
  int microbatch;
  int chunk;                        // when isCompute
  std::vector<Transfer> transfers;  // when !isCompute
};

struct ScheduleSpec {
  ScheduleKind kind;
  int stages;
  int virtualStages = 1;
  int microbatches;
};

struct Schedule {
  ScheduleSpec spec;
  std::vector<std::vector<Step>> ranks;  // [rank][step]
};

// Builds every rank's ordered steps with the sends/receives inserted (a rank
// never sends to itself: with P == 1 there are no transfers at all; with
// V > 1 consecutive chunks are on consecutive ranks, wrapping from rank P-1
// to 0). Returns false with a message for a spec the schedule does not
// support: stages < 1, microbatches < 1, virtualStages < 1; interleaved with
// virtualStages < 2 or microbatches % stages != 0 (as Megatron requires);
// virtualStages > 1 with any other kind.
bool buildSchedule(const ScheduleSpec& spec, Schedule& out, std::string& error);

// Per-chunk costs for simulation (arbitrary time units) and memory.
struct Costs {
  // Per chunk. Under the schedules without a split backward (all but zb-h1)
  // a Backward piece costs backward + weight.
  std::vector<double> forward, backward, weight;
  double transfer = 0;  // time of one matched transfer group
  // Per chunk: bytes held from its F until its B. Under zb-h1 the B frees
  // activationBytes - weightHeldBytes and the W frees the rest.
  std::vector<double> activationBytes;
  // Per chunk, zb-h1: the part of activationBytes still held between B and W
  // (may be 0). Ignored by the other schedules. Empty means all 0.
  std::vector<double> weightHeldBytes;
};
// f, b, w per chunk; transfer 0; activationBytes 1; weightHeldBytes 0.
Costs uniformCosts(int chunks, double f = 1, double b = 1, double w = 1);

struct Interval {
  double start, end;
  int stepIndex;
};

struct Simulation {
  bool ok = false;
  // Deadlock, transfer mismatch or dataflow violation: names the ranks, their
  // step indices and the transfers or pieces involved.
  std::string error;
  double makespan = 0;
  std::vector<double> busy;    // per rank: compute time
  std::vector<double> bubble;  // per rank: 1 - busy/makespan
  // Per rank: max number of (microbatch, chunk) forwards whose activations
  // are held (F done, B not yet done; under zb-h1 too, W aside).
  std::vector<int> peakInFlight;
  std::vector<double> peakActivationBytes;      // per rank, from Costs
  std::vector<std::vector<Interval>> timeline;  // per rank, one per step
};
// Runs the schedule under rendezvous semantics (see the header comment and
// Simulate.cpp for the exact rules). The schedule need not come from
// buildSchedule: hand-written or edited schedules are checked as strictly.
Simulation simulate(const Schedule& s, const Costs& c);

// Text table of the orders, one line per rank, e.g.
// "rank 0: F0 F1 F2 F3 B0 F4 B1 ..."; when V > 1 a piece is printed as
// F<microbatch>.<localChunk> (F0.1); weight pieces as W<microbatch>.
// Transfers are not printed.
std::string formatOrders(const Schedule& s);

// A standalone SVG of the simulated timeline: one row per rank, F/B/W boxes
// coloured by kind and labelled with the microbatch (and local chunk when
// V > 1), idle time hatched, the bubble fraction written per rank, a title
// with kind, P, V, m and the overall bubble fraction.
std::string renderSvg(const Schedule& s, const Simulation& sim);

}  // namespace mtc::pipeline
