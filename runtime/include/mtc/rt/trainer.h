// The trainer around a generated program: flags, program checks, parameter
// initialization, the host backend and the program's memory plan.
// train_main (program.h) is the entry point; the pieces here are exposed for
// tests and for other drivers.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "mtc/rt/program.h"

namespace mtc::rt {

// Command-line options of a training binary. Defaults come from the
// program's TrainConfig; `--help` prints train_usage().
struct TrainOptions {
  std::string data;            // --data: indexed dataset prefix or .tokens file
  int64_t steps = 0;           // --steps: total optimizer steps of the run
  double lr = 0;               // --lr: peak learning rate
  bool lr_given = false;
  double min_lr = 0;           // --min-lr
  bool min_lr_given = false;
  uint64_t seed = 0;           // --seed
  bool seed_given = false;
  int64_t log_interval = 1;    // --log-interval
  int64_t eval_interval = 0;   // --eval-interval (0: no validation)
  int64_t eval_iters = 10;     // --eval-iters: global batches per validation
  std::string save;            // --save DIR
  int64_t save_interval = 0;   // --save-interval (0: only at the end)
  bool resume = false;         // --resume: from --load DIR, else from --save DIR
  bool override_lr_schedule = false;  // --override-lr-schedule
  std::string load;            // --load DIR (root with `latest`, or a step dir)
  std::string metrics;         // --metrics FILE.jsonl
  std::string split = "98,2";  // --split train,valid[,test]
  std::string dump_grads;      // --dump-grads FILE.safetensors
  std::string trace;           // --trace FILE.json (Chrome trace of every rank)
  std::string init_only;       // --init-only DIR
  int64_t exit_interval = 0;   // --exit-interval N: stop after steps % N == 0
  bool help = false;           // --help
};

// Parses argv[1..argc). Throws Error naming the flag on an unknown flag, a
// missing or malformed value, or an inconsistent combination. Flags take
// "--flag value" or "--flag=value".
TrainOptions parse_train_options(int argc, char** argv, const TrainConfig& defaults);
std::string train_usage(const std::string& program_name);

// Checks the ProgramDesc the compiler emitted (entry points present, grid
// axes >= 1, parameters named uniquely, split_dim / split_axis either both
// -1 or a dimension of the shape that divides evenly over the data (1) or
// tensor (2) parallel axis, numel = product of the shape / the ranks it is
// split over, offsets inside num_param_elems without overlap, batch
// configuration consistent: global_batch = micro_batch x num_microbatches x
// grid dp). Throws Error naming the offending parameter or field.
void validate_program(const ProgramDesc& program);

// The ProgramDesc pipeline rank `pp_rank` runs: the stage's parameters,
// sizes and entry points (ProgramDesc::pipeline) in place of the model's.
// `program` without stages is returned as it is.
ProgramDesc pipeline_stage_program(const ProgramDesc& program, int64_t pp_rank);

// Initializes every parameter this rank holds: zeros, ones, or
// normal(0, init_std) where element g of the GLOBAL tensor `name` is a pure
// function of (seed, name, g) (detail::normal_at on stream (seed,
// fnv1a(name))); the rank at `at` in the grid gets its slice of that global
// tensor (grid_comm.h). Independent of the parameters' order, offsets and of
// how a tensor is sharded: every layout initializes the same global model.
void init_params(const ProgramDesc& program, uint64_t seed, float* params,
                 const std::array<int64_t, 5>& at = {0, 0, 0, 0, 0});

// The program's parameters at their global shapes, unsplit, packed in
// program order (offset = running sum of the global sizes), num_param_elems
// their total: the layout of checkpoints, --init-only and --dump-grads. The
// rest of the ProgramDesc is copied. The identity (up to offsets) for a
// program without split parameters.
ProgramDesc global_layout(const ProgramDesc& program);

// The backend of programs whose ProgramDesc::backend is nullptr: program
// memory is host memory (64-byte aligned, zeroed), upload/download are
// memcpy, synchronize does nothing, memory_info reports 0 / 0 (unknown).
const Backend& host_backend();

// ProgramDesc::backend, or host_backend() when it is nullptr.
const Backend& program_backend(const ProgramDesc& program);

// One allocation of program memory through a Backend (zeroed by it),
// released on destruction; movable, not copyable. Release must not throw
// (backends ignore errors there).
class ProgramBuffer {
 public:
  ProgramBuffer() = default;
  // backend.alloc(bytes, what): throws Error naming `what` when it fails.
  ProgramBuffer(const Backend& backend, size_t bytes, const char* what);
  ~ProgramBuffer() { reset(); }
  ProgramBuffer(ProgramBuffer&& o) noexcept;
  ProgramBuffer& operator=(ProgramBuffer&& o) noexcept;
  ProgramBuffer(const ProgramBuffer&) = delete;
  ProgramBuffer& operator=(const ProgramBuffer&) = delete;

  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void reset();
  const Backend* backend_ = nullptr;
  size_t bytes_ = 0;
  void* ptr_ = nullptr;
};

// The program's context (ProgramDesc::create_context), destroyed with
// ProgramDesc::destroy_context on destruction (declare it before the
// ProgramBuffers, so that it outlives them).
class ContextGuard {
 public:
  ContextGuard() = default;
  ~ContextGuard();
  void reset(void* ctx, void (*destroy)(void*)) {
    ctx_ = ctx;
    destroy_ = destroy;
  }
  ContextGuard(const ContextGuard&) = delete;
  ContextGuard& operator=(const ContextGuard&) = delete;

 private:
  void* ctx_ = nullptr;
  void (*destroy_)(void*) = nullptr;
};

// Bytes of program memory the trainer allocates for a program:
//   params, grads        4 * num_param_elems each (fp32)
//   optimizer            8 * moment_elems (AdamW exp_avg + exp_avg_sq)
//   compute_copy         compute_param_bytes (bf16 copy of params on CUDA)
//   activations          4 * arena_floats
//   batch                2 * 4 * num_microbatches * micro_batch * seq_length
//                        (int32 tokens and targets of every microbatch)
struct PlanBytes {
  double params = 0, grads = 0, optimizer = 0, compute_copy = 0,
         activations = 0, batch = 0;
  double total() const {
    return params + grads + optimizer + compute_copy + activations + batch;
  }
};
PlanBytes plan_bytes(const ProgramDesc& program);

// Elements of each AdamW moment buffer on one rank: the distributed
// optimizer's shares (optimizer_shard_elems, plus
// expert_optimizer_shard_elems with expert parallelism), else
// num_param_elems.
int64_t moment_elems(const ProgramDesc& program);

// "params 1.0 MiB + grads 1.0 MiB + AdamW moments 2.0 MiB [+ compute copy
// 512.0 KiB] + activations 3.0 MiB + batch 2.0 KiB = 7.5 MiB".
std::string format_plan_bytes(const PlanBytes& bytes);

// "1.5 GiB" (binary units, one decimal; bytes without one).
std::string human_bytes(double bytes);

// The "does it fit" check before allocation: when `total_bytes` > 0 (the
// backend knows its memory), the plan plus an allocation slack of 2 MiB per
// buffer (CUDA's allocation granularity) must not exceed `free_bytes`.
// Throws Error listing the plan's bytes by kind and the free memory.
void check_plan_fits(const ProgramDesc& program, const char* backend_name,
                     size_t free_bytes, size_t total_bytes);

// Peak FLOP/s of the accelerator from the environment variable
// MTC_PEAK_TFLOPS (TFLOP/s, e.g. 989 for an H100 SXM in dense bf16), for
// model FLOPs utilization; 0 when unset or empty. Throws Error naming the
// variable when it is not a positive number.
double peak_flops_from_env();

}  // namespace mtc::rt
