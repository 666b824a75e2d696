// What every generated CUDA program shares: the device state its functions
// keep besides HostState (the ProgramContext) and the helpers its code
// calls around the kernels: collectives on the grid axes' streams ordered
// by events, tensor parallelism's early all-reduces (copy engines or NCCL),
// the half-batch lanes, data parallelism's gradient buckets, the optimizer's
// tables, the loss. The generated program holds only what is specific to
// its model: a ProgramConfig literal, the parameter table and one call per
// IR op (compiler/lib/Codegen/CudaEmitter.cpp); all the fixed code is here,
// compiled and tested once.
//
// Streams and events (one stream per grid axis, high priority):
//   axis_begin(pc, a[, s])   axis a's stream waits for stream s's work so far
//                            (default: the compute stream)
//   axis_join(pc, a)         the compute stream waits for axis a's stream
//   axis_mark(pc, a, slot)   slot event `slot` marks axis a's stream so far
//   axis_wait(pc, a, slot)   stream s (default compute) waits for that mark
// Every collective of an axis runs on that axis's stream, in program order,
// so each communicator is used from one stream only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mtc/rt/comm.h"
#include "mtc/rt/cuda_kernels.h"
#include "mtc/rt/cuda_peer.h"
#include "mtc/rt/program.h"

namespace mtc::rt::cuda {

// What a program's code needs of the context, fixed at compile time (the
// generated program's kProgramConfig).
struct ProgramConfig {
  int64_t grid[3] = {1, 1, 1};  // pp, dp, tp sizes (rank order tp fastest)
  size_t dp_buckets = 0;        // dp gradient buckets (slot events on dp)
  size_t tp_slots = 0;          // early tp all-reduces' slot events
  bool lanes = false;           // the forward pass runs in two half-batch lanes
  // Lane 1 on its own stream (the default), or both lanes on the compute
  // stream, staggered (mtc compile --tp-lanes=one-stream).
  bool lanes_two_streams = true;
  // tp = 2: the early tp all-reduces through the copy engines when the GPUs
  // can map each other's memory (mtc compile --tp-allreduce=auto), or
  // always NCCL (--tp-allreduce=nccl).
  bool tp_copy_engines = true;
  bool tp_context = false;        // kernels run inside tp collectives (ctx_tp)
  int64_t tp_scratch = 0;         // bf16 elements: reorderings around gathers
  int64_t tp_partial = 0;         // fp32 elements: partial norm/bias gradients
  int64_t ce_rows = 0;            // rows of the vocabulary-parallel loss
  int64_t arena_bytes = 0;        // activation arena (the copy engines map it)
  int64_t peer_max_elements = 0;  // the largest early bf16 tp all-reduce
  // Pipeline programs: slot events of the step's p2p groups on the pp
  // stream, microbatches per step (the losses kept on the device), fp32
  // elements of the zeros a rank without a tied parameter sums over pp.
  size_t pp_slots = 0;
  int64_t pipeline_microbatches = 0;
  int64_t pp_zeros = 0;
};

// One parameter of the flat buffer: where it is, whether it decays, whether
// it is split over tp (its squared norm is then summed over tp).
struct ParamRow {
  int64_t offset, numel;
  bool decay, split;
  // In the gradient norm; false for a pipeline rank's copy of a tied
  // parameter that another pipeline rank counts.
  bool counted = true;
};

// One GPU per rank: LOCAL_RANK (set by mtc-launch, torchrun, Slurm) picks it
// among the visible devices.
int local_device();

struct ProgramContext {
  explicit ProgramContext(const ProgramConfig& config);
  ~ProgramContext();
  ProgramContext(const ProgramContext&) = delete;
  ProgramContext& operator=(const ProgramContext&) = delete;

  const ProgramConfig config;
  Context ctx;
  // Lane 1's context (half the batch) when the program has lanes on two
  // streams; else lane 1 runs on ctx.
  std::unique_ptr<Context> ctx1_owned;
  Context& ctx1;
  cudaEvent_t lane_fork_ev = nullptr, lane_join_ev = nullptr;
  // Built at the first optimizer step, over [lo, hi) of the flat buffer
  // (this rank's shard with the distributed optimizer).
  std::unique_ptr<AdamWPlan> adamw;
  std::unique_ptr<SumSquaresPlan> sq_split, sq_whole;
  double* grad_sumsq = nullptr;  // (1) device
  float* loss_host = nullptr;    // (1) pinned
  cudaStream_t axis_stream[3] = {nullptr, nullptr, nullptr};
  cudaEvent_t fork[3] = {nullptr, nullptr, nullptr};
  cudaEvent_t joined[3] = {nullptr, nullptr, nullptr};
  std::vector<cudaEvent_t> slots[3];
  // tp = 2 on the copy engines: set up at the first early all-reduce (null:
  // NCCL).
  std::unique_ptr<PeerAllReduce> peer;
  bool peer_decided = false;
  bf16* tp_scratch = nullptr;       // (config.tp_scratch)
  // Norm weight and row-parallel bias gradients summed over half the rows
  // inside a tp all-reduce, (config.tp_partial) fp32, summed over tp at the
  // step's end, then added to their gradients (tp_partial_flush).
  float* tp_partial = nullptr;
  int64_t* tp_partial_dst = nullptr;  // each row's offset in grads (device)
  // The tp axis's stream's context, for kernels run inside its collectives
  // (null when none do).
  std::unique_ptr<Context> ctx_tp;
  float* ce_stats = nullptr;      // (ce_rows, 3)
  float* ce_all_stats = nullptr;  // (tp, ce_rows, 3)
  // Pipeline programs (config.pipeline_microbatches > 0).
  float* pipeline_losses = nullptr;       // (M) device: each microbatch's loss
  float* pipeline_losses_host = nullptr;  // (M) pinned
  float* loss_scratch = nullptr;          // (1) device: a backward piece's
                                          // recomputed loss, unused
  float* pp_zeros = nullptr;              // (config.pp_zeros) device
};

ProgramContext& program_context(HostState& st);

// The communicator of a grid axis on device memory (NCCL).
Communicator& axis_comm(HostState& st, int axis);

// The optimizer's tables over [lo, hi) of the flat buffer: AdamW tensors
// (moments indexed from lo when `sharded`) and the squared-norm ranges,
// split over tp or not.
void build_optimizer_plans(ProgramContext& pc, const ParamRow* rows, size_t num_rows,
                           int64_t lo, int64_t hi, bool sharded);

void axis_begin(ProgramContext& pc, int a, cudaStream_t s = nullptr);
void axis_join(ProgramContext& pc, int a);
void axis_mark(ProgramContext& pc, int a, int slot, cudaStream_t s = nullptr);
void axis_wait(ProgramContext& pc, int a, int slot, cudaStream_t s = nullptr);

// A tp all-reduce (sum) of bf16 started early, on the tp stream: the copy
// engines when the config allows and they cover the buffer, else NCCL.
void tp_all_reduce(ProgramContext& pc, HostState& st, bf16* data, int64_t n);
// A tp all-reduce whose sum only feeds row-wise work: this rank's half of
// the rows is summed, then(begin, count) reads it and writes that part of
// out, and out's halves are exchanged (a reduce-scatter, the work, an
// all-gather; on NCCL the same three).
void tp_all_reduce_then(ProgramContext& pc, HostState& st, bf16* data, bf16* out, int64_t n,
                        const PeerAllReduce::HalfWork& then);
// tp_all_reduce adding the replicated residual: out = sum + residual (data
// keeps partial sums). The copy engines' sum pass adds it; on NCCL an add
// on the tp stream follows the in-place all-reduce.
void tp_all_reduce_add(ProgramContext& pc, HostState& st, bf16* data, const bf16* residual,
                       bf16* out, int64_t n);
// On the step's last microbatch: tp_partial summed over tp, each of its
// `rows` rows (`width` fp32) added to the gradient at grads + dst[row] in one
// launch, the rows cleared. `dst` goes to the GPU at the first call.
void tp_partial_flush(ProgramContext& pc, HostState& st, const int64_t* dst, size_t rows,
                      int64_t width);

// The half-batch lanes: lane 1 starts after the compute stream's work so
// far (fork) and the compute stream waits for lane 1 (join). No-ops when
// both lanes run on the compute stream.
void lane_fork(ProgramContext& pc);
void lane_join(ProgramContext& pc);

// Data parallelism: at the point where the backward pass completed bucket
// `b` of the gradient buffer, its all-reduce (sum) over dp starts on the dp
// stream; at the backward pass's end the compute stream waits for them all.
void launch_grad_bucket(ProgramContext& pc, HostState& st, int b, int64_t begin, int64_t size);
void finish_grad_buckets(ProgramContext& pc);

// Pipeline steps: microbatch `mb`'s loss (one fp32 on the device) kept in
// pc.pipeline_losses until the step's end.
void pipeline_loss(ProgramContext& pc, int64_t mb, const float* loss);
// The end of a pipeline step: the compute stream waits for the pp stream's
// transfers, the `n` losses kept (0 on ranks without the loss) are
// downloaded into `losses` (host), recorded data errors are reported. The
// step's one host synchronization.
void finish_pipeline_step(HostState& st, float* losses, int64_t n);

// Records a data error for the trainer and returns NaN (the step's loss).
float data_error(HostState& st, const std::string& message);
// Copies the (1) fp32 loss to the host; reports recorded data errors.
float finish_loss(HostState& st, const float* loss);
// The bf16 compute copy of the fp32 parameters.
void sync_compute_params(HostState& st, int64_t num_params);

}  // namespace mtc::rt::cuda
