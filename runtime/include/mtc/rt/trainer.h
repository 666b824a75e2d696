// The trainer around a generated program: flags, program checks, parameter
// initialization. train_main (program.h) is the entry point; the
// pieces here are exposed for tests and for other drivers.
#pragma once

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
  double min_lr = 0;           // --min-lr
  uint64_t seed = 0;           // --seed
  bool seed_given = false;
  int64_t log_interval = 1;    // --log-interval
  int64_t eval_interval = 0;   // --eval-interval (0: no validation)
  int64_t eval_iters = 10;     // --eval-iters: global batches per validation
  std::string save;            // --save DIR
  int64_t save_interval = 0;   // --save-interval (0: only at the end)
  bool resume = false;         // --resume: from --load DIR, else from --save DIR
  std::string load;            // --load DIR (root with `latest`, or a step dir)
  std::string metrics;         // --metrics FILE.jsonl
  std::string split = "98,2";  // --split train,valid[,test]
  std::string dump_grads;      // --dump-grads FILE.safetensors
  std::string init_only;       // --init-only DIR
  int64_t exit_interval = 0;   // --exit-interval N: stop after steps % N == 0
  bool help = false;           // --help
};

// Parses argv[1..argc). Throws Error naming the flag on an unknown flag, a
// missing or malformed value, or an inconsistent combination. Flags take
// "--flag value" or "--flag=value".
TrainOptions parse_train_options(int argc, char** argv, const TrainConfig& defaults);
std::string train_usage(const std::string& program_name);

// Checks the ProgramDesc the compiler emitted (entry points present,
// parameters named uniquely, shapes matching numel, offsets inside
// num_param_elems without overlap, batch configuration consistent).
// Throws Error naming the offending parameter or field.
void validate_program(const ProgramDesc& program);

// Initializes every parameter: zeros, ones, or normal(0, init_std) where
// element i of parameter `name` is a pure function of (seed, name, i)
// (detail::normal_at on stream (seed, fnv1a(name))). Independent of the
// parameters' order, offsets and of how a tensor is sharded.
void init_params(const ProgramDesc& program, uint64_t seed, float* params);

}  // namespace mtc::rt
