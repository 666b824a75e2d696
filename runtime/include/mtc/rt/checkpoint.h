// Training checkpoints that do not depend on the parallel layout, and the
// --dump-grads file (the same tensors' gradients plus the batch).
//
// Layout of a checkpoint directory DIR (--save DIR):
//   DIR/step_000100/model.safetensors      every parameter, F32, keyed by
//                                          its ParamDesc name (the IR's
//                                          global name), global shape
//   DIR/step_000100/optimizer.safetensors  "<name>.exp_avg" and
//                                          "<name>.exp_avg_sq" (AdamW's
//                                          first and second moments)
//   DIR/step_000100/state.json             step, consumed samples, data
//                                          position, seed, config summary,
//                                          format version
//   DIR/latest                             "step_000100\n": the last
//                                          complete checkpoint
// A step directory is written as a new DIR/.step_000100.tmp.<pid>[.<n>] and
// renamed into place once every file is complete and fsync'd; `latest` is
// then replaced atomically. A crash leaves the previous checkpoint and
// `latest` intact; a failed save removes its temporary directory. A save
// writes only into a new or empty DIR or one holding mtc checkpoints, and
// replaces an existing step directory only if it holds nothing but
// checkpoint files (else Error: it never removes what it did not write).
//
// Loading validates every name, dtype and shape against the ProgramDesc
// before anything is read, and reports the first mismatch by tensor name
// plus the lists of missing and unexpected names. Because names and shapes
// are global, a checkpoint saved under one parallel plan loads under any
// other: a multi-rank run gathers its split tensors to the global shape
// before saving (one rank writes), and each rank keeps its slice on load.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "mtc/rt/lr_schedule.h"
#include "mtc/rt/program.h"

namespace mtc::rt {

inline constexpr int64_t kCheckpointFormatVersion = 1;

// Contents of state.json (besides the config summary, which is written from
// the ProgramDesc and read back only for messages).
struct CheckpointState {
  int64_t step = 0;               // optimizer steps completed
  int64_t consumed_samples = 0;   // global training samples consumed
  int64_t epoch = 0;              // position of the next sample: epoch and
  int64_t epoch_index = 0;        //   index within it (derived, informative)
  uint64_t seed = 0;              // run seed (data order, dropout, init)
  std::string data;               // --data of the run
  std::string split;              // --split of the run
  int64_t seq_length = 0;
  int64_t global_batch = 0;
  int64_t train_steps = 0;        // --steps of the run
  int64_t decay_steps = 0;        // lr decay horizon used
  bool has_optimizer = true;      // optimizer.safetensors present
  // The run's learning-rate schedule ("schedule" in state.json); absent
  // from checkpoints written before it was stored.
  bool has_schedule = false;
  LrSchedule schedule;
};

// "step_000100".
std::string checkpoint_step_name(int64_t step);

// Writes DIR/step_NNNNNN and points DIR/latest at it. `program` must be in
// the global layout (every numel = the product of its shape; global_layout
// in trainer.h) with params/exp_avg/exp_avg_sq holding the global tensors at
// its offsets; a split parameter throws Error. exp_avg/exp_avg_sq may both
// be null (no optimizer state to save). Returns the step directory.
std::string save_checkpoint(const std::string& dir, const ProgramDesc& program,
                            const CheckpointState& state, const float* params,
                            const float* exp_avg, const float* exp_avg_sq);

// A directory save_checkpoint may write into: new, empty, or already
// holding mtc checkpoints (`latest` or a step_NNNNNN directory). Anything
// else is someone else's directory, which a save would write into and
// whose `latest` it would replace: Error naming one of its entries.
void check_checkpoint_dir(const std::string& dir);

// True if `path` holds `latest` or state.json (resolve_checkpoint may still
// find it broken).
bool checkpoint_exists(const std::string& path);

// `path` is a checkpoint root (holding `latest`) or a step directory
// (holding state.json). Returns the step directory; throws Error otherwise.
std::string resolve_checkpoint(const std::string& path);

// Reads state.json and checks every tensor of the step directory against
// the program without reading tensor data. Throws Error on any mismatch.
CheckpointState inspect_checkpoint(const std::string& step_dir,
                                   const ProgramDesc& program);

// inspect_checkpoint + copies the tensors into `params` (and the moments,
// when non-null and the checkpoint has them) at the program's offsets. For a
// parameter split over the grid (ParamDesc::split_dim), only the slice of
// the rank at `at` (pp, dp, tp index; grid_comm.h) is kept: each such tensor
// is read whole into a scratch buffer, one at a time. `model`, when given,
// is the whole model the file must match (a pipeline stage's program holds
// part of it: global_layout of the emitted ProgramDesc).
CheckpointState load_checkpoint(const std::string& step_dir,
                                const ProgramDesc& program, float* params,
                                float* exp_avg, float* exp_avg_sq,
                                const std::array<int64_t, 5>& at = {0, 0, 0, 0, 0},
                                const ProgramDesc* model = nullptr);

// What a --dump-grads file records besides the tensors (its metadata).
struct GradDumpInfo {
  std::string model;
  int64_t step = 0;
  uint64_t seed = 0;
  double loss = 0;                       // mean microbatch loss of the global batch
  std::vector<float> microbatch_losses;  // in the global batch's order
  int64_t micro_batch = 0;               // rows per microbatch
  int64_t num_microbatches = 0;          // microbatches in the global batch (all dp ranks)
  int64_t seq_length = 0;
};

// Writes a --dump-grads file: every parameter's gradient (F32, global shape,
// `grads` at the offsets of `program`, which must be in the global layout),
// "batch.tokens" and "batch.targets" (I32, (num_microbatches x micro_batch,
// seq_length)) and the metadata format "mtc-dump-grads", mtc.model,
// mtc.step, mtc.seed, mtc.loss (%.17g), mtc.microbatch_losses (JSON list),
// mtc.micro_batch, mtc.num_microbatches, mtc.seq_length, mtc.grad_scale.
// Throws Error when a parameter is named like a batch tensor or on I/O.
void write_grad_dump(const std::string& path, const ProgramDesc& program, const float* grads,
                     const int32_t* tokens, const int32_t* targets, const GradDumpInfo& info);

}  // namespace mtc::rt
