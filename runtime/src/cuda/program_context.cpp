// The generated CUDA programs' shared state and helpers (contract and the
// stream/event protocol in mtc/rt/cuda_program.h). This is the code the
// CUDA code generator used to print into every program; the programs now
// call it, and only their ProgramConfig differs.
#include "mtc/rt/cuda_program.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <utility>

#include "mtc/rt/cuda_check.h"
#include "mtc/rt/cuda_tp_kernels.h"
#include "mtc/rt/io.h"

namespace mtc::rt::cuda {
namespace {

constexpr size_t kCublasWorkspace = 32u << 20;

// The half-batch lanes' stream priorities: lane 0 (the compute stream) just
// below the collectives' streams, lane 1 below it, so that lane 0 runs ahead
// and lane 1 fills the GPU while lane 0 waits for its all-reduces. With both
// lanes on the compute stream: the default priority.
int lane_priority(const ProgramConfig& c, int lane) {
  if (!c.lanes || !c.lanes_two_streams) return 0;
  int least = 0, greatest = 0;
  MTC_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  return lane == 0 ? std::min(greatest + 1, least) : least;
}

std::unique_ptr<Context> lane1_context(const ProgramConfig& c) {
  if (!c.lanes || !c.lanes_two_streams) return nullptr;
  return std::make_unique<Context>(local_device(), kCublasWorkspace, lane_priority(c, 1));
}

cudaEvent_t new_event() {
  cudaEvent_t e = nullptr;
  MTC_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

// tp = 2: the early tp all-reduces go through the copy engines when the
// config allows it and the two GPUs can map each other's memory (both
// ranks decide together at the first call), else NCCL (null).
PeerAllReduce* tp_peer(ProgramContext& pc, HostState& st) {
  if (!pc.peer_decided) {
    pc.peer_decided = true;
    Communicator& comm = axis_comm(st, 2);
    if (pc.config.tp_copy_engines && comm.size() == 2) {
      std::string why;
      pc.peer = PeerAllReduce::create(comm, pc.ctx.device, st.arena, pc.config.arena_bytes,
                                      pc.config.peer_max_elements, pc.axis_stream[2], &why);
      if (comm.rank() == 0 && pc.peer)
        std::fprintf(stderr,
                     "note: tp all-reduces through the copy engines "
                     "(mtc compile --tp-allreduce=nccl: NCCL)\n");
      else if (comm.rank() == 0)
        std::fprintf(stderr, "note: tp all-reduces on NCCL: %s\n", why.c_str());
    }
  }
  return pc.peer.get();
}

}  // namespace

int local_device() {
  int count = 0;
  MTC_CUDA_CHECK(cudaGetDeviceCount(&count));
  const char* local = std::getenv("LOCAL_RANK");
  return local && count > 0 ? std::atoi(local) % count : 0;
}

ProgramContext::ProgramContext(const ProgramConfig& c)
    : config(c),
      ctx(local_device(), kCublasWorkspace, lane_priority(c, 0)),
      ctx1_owned(lane1_context(c)),
      ctx1(ctx1_owned ? *ctx1_owned : ctx) {
  MTC_CUDA_CHECK(cudaMalloc(&grad_sumsq, sizeof(double)));
  MTC_CUDA_CHECK(cudaMallocHost(&loss_host, sizeof(float)));
  if (ctx1_owned) {
    lane_fork_ev = new_event();
    lane_join_ev = new_event();
  }
  int least = 0, greatest = 0;
  MTC_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  const size_t num_slots[3] = {0, c.dp_buckets, c.tp_slots};
  if (c.tp_context) ctx_tp = std::make_unique<Context>(local_device(), 1u << 20, greatest);
  for (int a = 0; a < 3; ++a) {
    if (c.grid[a] == 1) continue;
    if (a == 2 && ctx_tp)
      axis_stream[a] = ctx_tp->stream;
    else
      MTC_CUDA_CHECK(
          cudaStreamCreateWithPriority(&axis_stream[a], cudaStreamNonBlocking, greatest));
    fork[a] = new_event();
    joined[a] = new_event();
    slots[a].resize(num_slots[a]);
    for (cudaEvent_t& e : slots[a]) e = new_event();
  }
  if (c.tp_scratch > 0) MTC_CUDA_CHECK(cudaMalloc(&tp_scratch, c.tp_scratch * sizeof(bf16)));
  if (c.tp_partial > 0) {
    MTC_CUDA_CHECK(cudaMalloc(&tp_partial, c.tp_partial * sizeof(float)));
    MTC_CUDA_CHECK(cudaMemset(tp_partial, 0, c.tp_partial * sizeof(float)));
  }
  if (c.ce_rows > 0) {
    MTC_CUDA_CHECK(cudaMalloc(&ce_stats, c.ce_rows * 3 * sizeof(float)));
    MTC_CUDA_CHECK(cudaMalloc(&ce_all_stats, c.ce_rows * 3 * sizeof(float) * c.grid[2]));
  }
  if (c.pipeline_microbatches > 0) {
    const size_t bytes = static_cast<size_t>(c.pipeline_microbatches) * sizeof(float);
    MTC_CUDA_CHECK(cudaMalloc(&pipeline_losses, bytes));
    MTC_CUDA_CHECK(cudaMallocHost(&pipeline_losses_host, bytes));
    MTC_CUDA_CHECK(cudaMalloc(&loss_scratch, sizeof(float)));
  }
  if (c.pp_zeros > 0) MTC_CUDA_CHECK(cudaMalloc(&pp_zeros, c.pp_zeros * sizeof(float)));
}

ProgramContext::~ProgramContext() {
  if (lane_fork_ev) cudaEventDestroy(lane_fork_ev);
  if (lane_join_ev) cudaEventDestroy(lane_join_ev);
  cudaFree(grad_sumsq);
  cudaFreeHost(loss_host);
  if (ctx_tp) axis_stream[2] = nullptr;  // ctx_tp's
  for (int a = 0; a < 3; ++a) {
    for (cudaEvent_t e : slots[a]) cudaEventDestroy(e);
    if (fork[a]) cudaEventDestroy(fork[a]);
    if (joined[a]) cudaEventDestroy(joined[a]);
    if (axis_stream[a]) cudaStreamDestroy(axis_stream[a]);
  }
  cudaFree(tp_scratch);
  cudaFree(tp_partial);
  cudaFree(tp_partial_dst);
  cudaFree(pipeline_losses);
  cudaFreeHost(pipeline_losses_host);
  cudaFree(loss_scratch);
  cudaFree(pp_zeros);
  cudaFree(ce_stats);
  cudaFree(ce_all_stats);
}

ProgramContext& program_context(HostState& st) { return *static_cast<ProgramContext*>(st.context); }

Communicator& axis_comm(HostState& st, int axis) {
  Communicator* c = st.comm ? st.comm->program_comm(axis) : nullptr;
  if (c == nullptr)
    throw Error("grid axis " + std::to_string(axis) +
                " has no device communicator (the program needs NCCL and its ranks "
                "started by mtc-launch or torchrun)");
  return *c;
}

void build_optimizer_plans(ProgramContext& pc, const ParamRow* rows, size_t num_rows,
                           int64_t lo, int64_t hi, bool sharded) {
  std::vector<AdamWTensor> tensors;
  std::vector<std::pair<int64_t, int64_t>> split, whole;
  for (size_t i = 0; i < num_rows; ++i) {
    const ParamRow& r = rows[i];
    const int64_t a = std::max(r.offset, lo), b = std::min(r.offset + r.numel, hi);
    if (a >= b) continue;
    AdamWTensor t;
    t.offset = a;
    t.numel = b - a;
    t.weight_decay = r.decay;
    t.state_offset = sharded ? a - lo : -1;
    tensors.push_back(t);
    if (r.counted) (r.split ? split : whole).emplace_back(a, b - a);
  }
  pc.adamw = std::make_unique<AdamWPlan>(pc.ctx, tensors);
  pc.sq_split = std::make_unique<SumSquaresPlan>(pc.ctx, split);
  pc.sq_whole = std::make_unique<SumSquaresPlan>(pc.ctx, whole);
}

void axis_begin(ProgramContext& pc, int a, cudaStream_t s) {
  MTC_CUDA_CHECK(cudaEventRecord(pc.fork[a], s ? s : pc.ctx.stream));
  MTC_CUDA_CHECK(cudaStreamWaitEvent(pc.axis_stream[a], pc.fork[a], 0));
}

void axis_join(ProgramContext& pc, int a) {
  MTC_CUDA_CHECK(cudaEventRecord(pc.joined[a], pc.axis_stream[a]));
  MTC_CUDA_CHECK(cudaStreamWaitEvent(pc.ctx.stream, pc.joined[a], 0));
}

void axis_mark(ProgramContext& pc, int a, int slot, cudaStream_t) {
  MTC_CUDA_CHECK(cudaEventRecord(pc.slots[a][slot], pc.axis_stream[a]));
}

void axis_wait(ProgramContext& pc, int a, int slot, cudaStream_t s) {
  MTC_CUDA_CHECK(cudaStreamWaitEvent(s ? s : pc.ctx.stream, pc.slots[a][slot], 0));
}

void tp_all_reduce(ProgramContext& pc, HostState& st, bf16* data, int64_t n) {
  PeerAllReduce* peer = tp_peer(pc, st);
  if (peer && peer->covers(data, n))
    peer->all_reduce(data, n, pc.axis_stream[2]);
  else
    axis_comm(st, 2).all_reduce(data, n, DType::bf16, ReduceOp::sum, pc.axis_stream[2]);
}

void tp_all_reduce_then(ProgramContext& pc, HostState& st, bf16* data, bf16* out, int64_t n,
                        const PeerAllReduce::HalfWork& then) {
  PeerAllReduce* peer = tp_peer(pc, st);
  if (peer && peer->covers(data, n) && peer->covers(out, n)) {
    peer->all_reduce_then(data, out, n, pc.axis_stream[2], then);
    return;
  }
  Communicator& comm = axis_comm(st, 2);
  const int64_t h = n / 2, begin = comm.rank() == 0 ? 0 : h;
  comm.reduce_scatter(data, data + begin, h, DType::bf16, ReduceOp::sum, pc.axis_stream[2]);
  then(begin, h);
  comm.all_gather(out + begin, out, h, DType::bf16, pc.axis_stream[2]);
}

void tp_all_reduce_add(ProgramContext& pc, HostState& st, bf16* data, const bf16* residual,
                       bf16* out, int64_t n) {
  PeerAllReduce* peer = tp_peer(pc, st);
  if (peer && peer->covers(data, n) && peer->covers(out, n)) {
    peer->all_reduce_add(data, residual, out, n, pc.axis_stream[2]);
    return;
  }
  axis_comm(st, 2).all_reduce(data, n, DType::bf16, ReduceOp::sum, pc.axis_stream[2]);
  add3_on(pc.axis_stream[2], pc.ctx.sm_count, data, residual, nullptr, out, n);
}

void tp_partial_flush(ProgramContext& pc, HostState& st, const int64_t* dst, size_t rows,
                      int64_t width) {
  set_current_op("shard.all_reduce of the norms' partial weight gradients (tp)");
  axis_begin(pc, 2);
  axis_comm(st, 2).all_reduce(pc.tp_partial, static_cast<int64_t>(rows) * width, DType::f32,
                              ReduceOp::sum, pc.axis_stream[2]);
  axis_join(pc, 2);
  if (!pc.tp_partial_dst) {
    MTC_CUDA_CHECK(cudaMalloc(&pc.tp_partial_dst, rows * sizeof(int64_t)));
    MTC_CUDA_CHECK(cudaMemcpyAsync(pc.tp_partial_dst, dst, rows * sizeof(int64_t),
                                   cudaMemcpyHostToDevice, pc.ctx.stream));
    MTC_CUDA_CHECK(cudaStreamSynchronize(pc.ctx.stream));
  }
  accumulate_rows(pc.ctx, st.grads, pc.tp_partial_dst, pc.tp_partial,
                  static_cast<int64_t>(rows), width);
}

void lane_fork(ProgramContext& pc) {
  if (!pc.ctx1_owned) return;
  MTC_CUDA_CHECK(cudaEventRecord(pc.lane_fork_ev, pc.ctx.stream));
  MTC_CUDA_CHECK(cudaStreamWaitEvent(pc.ctx1.stream, pc.lane_fork_ev, 0));
}

void lane_join(ProgramContext& pc) {
  if (!pc.ctx1_owned) return;
  MTC_CUDA_CHECK(cudaEventRecord(pc.lane_join_ev, pc.ctx1.stream));
  MTC_CUDA_CHECK(cudaStreamWaitEvent(pc.ctx.stream, pc.lane_join_ev, 0));
}

void launch_grad_bucket(ProgramContext& pc, HostState& st, int b, int64_t begin, int64_t size) {
  MTC_CUDA_CHECK(cudaEventRecord(pc.slots[1][b], pc.ctx.stream));
  MTC_CUDA_CHECK(cudaStreamWaitEvent(pc.axis_stream[1], pc.slots[1][b], 0));
  axis_comm(st, 1).all_reduce(st.grads + begin, size, DType::f32, ReduceOp::sum,
                              pc.axis_stream[1]);
}

void finish_grad_buckets(ProgramContext& pc) {
  set_current_op("shard.all_reduce of the gradient of the dp buckets (data parallelism)");
  axis_join(pc, 1);
}

void pipeline_loss(ProgramContext& pc, int64_t mb, const float* loss) {
  MTC_CUDA_CHECK(cudaMemcpyAsync(pc.pipeline_losses + mb, loss, sizeof(float),
                                 cudaMemcpyDeviceToDevice, pc.ctx.stream));
}

void finish_pipeline_step(HostState& st, float* losses, int64_t n) {
  ProgramContext& pc = program_context(st);
  set_current_op("end of the pipeline step");
  axis_join(pc, 0);
  if (n > 0)
    MTC_CUDA_CHECK(cudaMemcpyAsync(pc.pipeline_losses_host, pc.pipeline_losses,
                                   static_cast<size_t>(n) * sizeof(float),
                                   cudaMemcpyDeviceToHost, pc.ctx.stream));
  std::string error = pc.ctx.take_data_error();  // synchronizes
  if (!error.empty()) {
    data_error(st, error);
    return;
  }
  std::copy(pc.pipeline_losses_host, pc.pipeline_losses_host + n, losses);
}

float data_error(HostState& st, const std::string& message) {
  st.error = message;
  return std::numeric_limits<float>::quiet_NaN();
}

float finish_loss(HostState& st, const float* loss) {
  ProgramContext& pc = program_context(st);
  set_current_op("loss");
  MTC_CUDA_CHECK(cudaMemcpyAsync(pc.loss_host, loss, sizeof(float), cudaMemcpyDeviceToHost,
                                 pc.ctx.stream));
  std::string error = pc.ctx.take_data_error();  // synchronizes
  if (!error.empty()) return data_error(st, error);
  return *pc.loss_host;
}

void sync_compute_params(HostState& st, int64_t num_params) {
  ProgramContext& pc = program_context(st);
  set_current_op("sync_compute_params");
  convert(pc.ctx, st.params, static_cast<bf16*>(st.compute_params), num_params);
  pc.ctx.synchronize();
}

}  // namespace mtc::rt::cuda
