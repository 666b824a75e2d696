// train_main: the training loop around a generated program.
//
// Order of work (nothing large is allocated before every check passed):
//   1. parse and cross-check flags; validate the ProgramDesc; for a program
//      compiled for more than one rank (ProgramDesc::grid), build the World
//      from the launch environment (WORLD_SIZE must match the grid) with
//      Gloo communicators, the trainer's GridComm over it, and the
//      program's GridComm (state.comm): the same one for the host backend,
//      else one over the backend's own communicators (NCCL on CUDA), built
//      alongside the World (grid_comm.h: ProgramComms);
//   2. find and validate the checkpoint to resume from (names, shapes,
//      dtypes) and the --save directory (checkpoint.h); take the lr
//      schedule from the checkpoint (refusing a conflicting one) or the
//      flags, check it and the sample count's range; open and validate the
//      data, build the split; print the plan summary;
//   3. create the program's context (ProgramDesc::create_context, CUDA);
//      check that the plan fits in the backend's free memory (when the
//      backend knows it); allocate params, grads, AdamW moments, the compute
//      copy, the arena and the batch buffers through the backend (zeroed);
//      initialize (seeded, per parameter name) or load the checkpoint on the
//      host and upload; sync_compute_params;
//   4. per step s = start+1 .. steps:
//        grads = 0
//        for microbatch i: fetch batch (Megatron order, loader.h) on the
//          host, every id checked against the vocabulary; upload;
//          state.step = s, state.microbatch = i;
//          loss_i = forward_backward(state, tokens_i, targets_i)
//        loss = mean_i loss_i (and the mean over the data-parallel ranks)
//        lr = lr_at(schedule, s); grad_norm = optimizer_step(state, lr, s)
//        consumed_samples += global_batch
//        log / validate / write metrics / checkpoint as the flags ask.
//   A NaN/Inf loss or grad norm, a bad id, or state.error set by the
//   generated code stops the run with an error naming the step (and
//   microbatch).
// Program memory (every HostState pointer, and the tokens/targets handed to
// the entry points) lives in the program's Backend (program.h): the trainer
// only reaches it through alloc/upload/download/zero, so the same loop runs
// host and CUDA programs. Checkpoints, --init-only and --dump-grads download
// to host staging buffers.
// Resume is exact: params, moments, step and consumed samples come back
// from the checkpoint, and everything else is a function of them and the
// seed.
//
// Several ranks (SPMD: every rank runs this loop). Data-parallel rank d takes
// its rows of each global batch (loader.h); the tensor-parallel ranks of one
// data-parallel rank read the same rows. Parameters are initialized as
// slices of the one global model (init_params) or cut from the global
// tensors of a checkpoint. Only global rank 0 prints, writes metrics,
// checkpoints and dumps (split tensors gathered to it first); the others
// print errors only. Errors that one rank may see alone (bad data, a
// NaN loss, a failed checkpoint write) are agreed on through one small
// all_gather over the world at the end of the step or save, so every rank
// stops with an error instead of waiting in a collective (a rank that
// failed still runs the step's microbatches, whose collectives the others
// wait for). The loss logged
// is the mean over the data-parallel ranks; tokens/s counts the global
// batch, TFLOP/s and MFU are per rank (flops_per_step is one rank's
// program). Ranks meet at a barrier before a successful exit.
// Two GridComms: the program's (state.comm) takes program memory; the
// trainer's own collectives (checkpoint and dump gathers, the dp average of
// --dump-grads, error agreement, loss sums) run on host copies that it
// downloaded through the backend, over the Gloo World. For the host backend
// they are one object. Multi-rank programs of a backend without
// communicators (Backend::comm_factory) are refused at start.
// Pipeline parallelism (pp > 1): each rank runs its stage of the program
// (pipeline_stage_program); a step fetches the whole batch and calls the
// stage's pipeline_step once (the schedule, with its transfers, is the
// generated code's); the losses come from the last pipeline rank.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <new>
#include <optional>

#include "mtc/rt/checkpoint.h"
#include "mtc/rt/comm.h"
#include "mtc/rt/grid_comm.h"
#include "mtc/rt/io.h"
#include "mtc/rt/loader.h"
#include "mtc/rt/lr_schedule.h"
#include "mtc/rt/metrics.h"
#include "mtc/rt/safetensors.h"
#include "mtc/rt/trace.h"
#include "mtc/rt/trainer.h"

namespace mtc::rt {

namespace {

using Clock = std::chrono::steady_clock;

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > (v < 0 ? 1 : 0); i -= 3)
    s.insert(static_cast<size_t>(i), ",");
  return s;
}

// Runs one entry point of the program; a target error (e.g. a CUDA error,
// which names the op) is reported with the step and microbatch it happened in.
template <typename F>
auto at_step(int64_t step, int64_t microbatch, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    std::string where = "training step " + std::to_string(step);
    if (microbatch >= 0) where += ", microbatch " + std::to_string(microbatch);
    else if (microbatch == -2) where += ", pipeline schedule";
    else where += ", optimizer";
    throw Error(where + ": " + e.what());
  }
}

class Trainer {
 public:
  // `program` is this rank's (pipeline_stage_program), `model` the one the
  // compiler emitted (the checkpoint layout comes from it).
  Trainer(const ProgramDesc& program, const ProgramDesc& model, const TrainOptions& opts,
          const RunComms& comms);
  int run();

 private:
  void say(const char* format, ...) const __attribute__((format(printf, 2, 3)));
  void print_plan() const;
  void agree_on_resume(const std::string& failure);
  void resume_schedule();
  void check_sample_range() const;
  void allocate();
  int64_t initialize_or_load(int64_t* consumed);
  std::vector<float> download_floats(const float* src) const;
  std::string fetch_microbatch(GptSamples& samples, bool validation, int64_t base, int64_t mb,
                               int64_t step, const int32_t** tokens, const int32_t** targets);
  std::string loss_problem(float loss, int64_t step, int64_t mb, const char* phase);
  double settle(const std::string& failure, double value, const std::string& where);
  double evaluate(int64_t step);
  void save(int64_t step, int64_t consumed);
  void dump_grads(double loss, const std::vector<float>& mb_losses);
  void write_dump(double loss, const std::vector<float>& grads,
                  const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets,
                  const std::vector<float>& mb_losses) const;
  void finish();

  const ProgramDesc& p_;
  const TrainConfig& t_;
  const Backend& backend_;
  World* const world_;         // nullptr: one rank
  GridComm* const host_comm_;  // the trainer's, on host buffers (nullptr: one rank)
  GridComm* const comm_;       // state.comm, on program memory (nullptr: one rank)
  const std::string comm_text_;  // RunComms::describe()
  const GridIndex at_;         // this rank's (pp, dp, tp) index
  const bool root_;            // global rank 0: prints and writes
  const int64_t dp_;           // data-parallel ranks
  const ProgramDesc global_;   // the checkpoint layout (global_layout)
  TrainOptions o_;
  double peak_flops_ = 0;      // MTC_PEAK_TFLOPS * 1e12 (0: no MFU)
  BatchLayout layout_;
  LrSchedule schedule_;
  bool resuming_ = false;
  std::string resume_dir_;
  CheckpointState resume_state_;
  std::unique_ptr<TokenSource> source_;
  std::vector<DocRange> ranges_;
  std::optional<GptSamples> train_, valid_;

  // Program memory; context_ first so that it is destroyed last.
  ContextGuard context_;
  // Device memory as the backend reports it (0 when it does not know):
  // in use before the program allocated (the CUDA context), and the least
  // free seen after a step, for the measured peak printed at the end.
  size_t total_mem_ = 0, used_at_start_ = 0, min_free_ = SIZE_MAX;
  void sample_memory();
  ProgramBuffer params_, grads_, exp_avg_, exp_avg_sq_, compute_params_, arena_;
  ProgramBuffer tokens_dev_, targets_dev_;  // (num_microbatches * micro_batch, S) int32
  HostState state_;
  TraceLog trace_log_;         // --trace
  void write_trace();
  // Host staging of the step's batch (kept whole for --dump-grads).
  std::vector<int32_t> tokens_, targets_;  // (num_microbatches * micro_batch, S)
};

Trainer::Trainer(const ProgramDesc& program, const ProgramDesc& model, const TrainOptions& opts,
                 const RunComms& comms)
    : p_(program),
      t_(program.train),
      backend_(program_backend(program)),
      world_(comms.world.get()),
      host_comm_(comms.host.get()),
      comm_(comms.program()),
      comm_text_(comms.describe()),
      at_(grid_index(host_comm_)),
      root_(world_ == nullptr || world_->rank() == 0),
      dp_(program.grid[1]),
      global_(global_layout(model)),
      o_(opts) {
  peak_flops_ = peak_flops_from_env();
  layout_.micro_batch = t_.micro_batch;
  layout_.num_microbatches = t_.num_microbatches;
  layout_.seq_length = t_.seq_length;
  layout_.dp_rank = at_[1];
  layout_.dp_size = dp_;  // validate_program: global_batch = micro x microbatches x dp

  resuming_ = o_.resume || !o_.load.empty();
  if (resuming_ && o_.load.empty() && !checkpoint_exists(o_.save)) {
    // As Megatron: a job that always passes --resume starts fresh the first time.
    say("note: --resume: no checkpoint in %s yet; starting from step 0\n", o_.save.c_str());
    resuming_ = false;
  }
  std::string failure;
  try {
    if (resuming_) {
      resume_dir_ = resolve_checkpoint(o_.load.empty() ? o_.save : o_.load);
      // Against the whole model (a pipeline stage holds part of it).
      resume_state_ = inspect_checkpoint(resume_dir_, global_);
    }
    // Rank 0 writes the checkpoints: a directory it may not write into is
    // refused now, not after training.
    if (root_ && !o_.save.empty()) check_checkpoint_dir(o_.save);
    if (root_ && !o_.init_only.empty()) check_checkpoint_dir(o_.init_only);
  } catch (const Error& e) {
    failure = e.what();
  }
  agree_on_resume(failure);
  if (resuming_) {
    if (!o_.seed_given) o_.seed = resume_state_.seed;
    else if (o_.seed != resume_state_.seed)
      say("note: --seed %llu differs from the checkpoint's seed %llu: data "
          "order and dropout will not continue the original run\n",
          static_cast<unsigned long long>(o_.seed),
          static_cast<unsigned long long>(resume_state_.seed));
    if (resume_state_.seq_length != t_.seq_length ||
        resume_state_.global_batch != t_.global_batch)
      say("note: the checkpoint was trained with seq_length %lld, global "
          "batch %lld; this program uses %lld, %lld (the data position "
          "is kept as a sample count)\n",
          static_cast<long long>(resume_state_.seq_length),
          static_cast<long long>(resume_state_.global_batch),
          static_cast<long long>(t_.seq_length), static_cast<long long>(t_.global_batch));
  }

  schedule_.lr = o_.lr;
  schedule_.min_lr = o_.min_lr;
  schedule_.warmup_steps = t_.warmup_steps;
  schedule_.decay_steps = t_.decay_steps > 0 ? t_.decay_steps : o_.steps;
  schedule_.decay = t_.decay;
  // (A --dump-grads run takes no optimizer step: its schedule is unused.)
  if (resuming_ && resume_state_.has_schedule && !o_.override_lr_schedule &&
      o_.dump_grads.empty())
    resume_schedule();
  if (std::string why = check_lr_schedule(schedule_); !why.empty())
    throw Error("learning-rate schedule: " + why +
                (t_.decay_steps > 0 ? " (the program's decay_steps)"
                                    : " (the program's decay_steps is 0, so decay ends at "
                                      "--steps: give more --steps than warm-up steps)"));
  if (resuming_) check_sample_range();

  if (o_.init_only.empty()) {
    source_ = open_token_source(o_.data);
    ranges_ = split_source(*source_, parse_split(o_.split));
    train_.emplace(*source_, ranges_[0], t_.seq_length, o_.seed, 0,
                   "train split (--split " + o_.split + ")", t_.vocab_size);
    if (o_.eval_interval > 0) {
      if (ranges_.size() < 2 || ranges_[1].doc_end == ranges_[1].doc_begin)
        throw Error("--eval-interval: the validation split of --split " + o_.split +
                    " is empty (give it a weight, e.g. --split 98,2)");
      valid_.emplace(*source_, ranges_[1], t_.seq_length, o_.seed, 1,
                     "validation split (--split " + o_.split + ")", t_.vocab_size);
    }
  }
  print_plan();
}

// Prints on global rank 0 only.
void Trainer::say(const char* format, ...) const {
  if (!root_) return;
  va_list args;
  va_start(args, format);
  std::vprintf(format, args);
  va_end(args);
}

void Trainer::print_plan() const {
  if (!root_) return;
  std::printf("mtc train: model %s (target %s)\n", p_.model_name.c_str(),
              p_.target.c_str());
  std::printf("  parameters  %s in %zu tensors", with_commas(global_.num_param_elems).c_str(),
              p_.params.size());
  if (global_.num_param_elems != p_.num_param_elems)
    std::printf(" (%s on each rank)", with_commas(p_.num_param_elems).c_str());
  std::printf("\n");
  if (world_ != nullptr)
    std::printf("  grid        %s (%s); ranks meet through %s\n",
                describe_grid(world_->grid()).c_str(), comm_text_.c_str(),
                world_->env().rdzv_dir.empty() ? "MASTER_ADDR:MASTER_PORT" : "MTC_RDZV_DIR");
  std::printf("  memory      %s (%s memory%s)\n", format_plan_bytes(plan_bytes(p_)).c_str(),
              backend_.name, world_ != nullptr ? ", each rank" : "");
  std::printf("  batch       global %lld = micro %lld x %lld microbatches x dp %lld;"
              " seq_length %lld; %s tokens/step\n",
              static_cast<long long>(t_.global_batch),
              static_cast<long long>(t_.micro_batch),
              static_cast<long long>(t_.num_microbatches),
              static_cast<long long>(layout_.dp_size),
              static_cast<long long>(t_.seq_length),
              with_commas(t_.global_batch * t_.seq_length).c_str());
  std::printf("  schedule    %lld steps; lr %.2e -> %.2e %s, warm-up %lld, decay "
              "until step %lld; AdamW b1 %g b2 %g eps %g wd %g clip %g; seed %llu\n",
              static_cast<long long>(o_.steps), schedule_.lr, schedule_.min_lr,
              lr_decay_name(schedule_.decay),
              static_cast<long long>(schedule_.warmup_steps),
              static_cast<long long>(schedule_.decay_steps), t_.beta1, t_.beta2,
              t_.eps, t_.weight_decay, t_.grad_clip,
              static_cast<unsigned long long>(o_.seed));
  if (p_.flops_per_step > 0)
    std::printf("  flops       %.3e model FLOPs per step\n", p_.flops_per_step);
  if (peak_flops_ > 0)
    std::printf("  peak        %g TFLOP/s (MTC_PEAK_TFLOPS)%s\n", peak_flops_ / 1e12,
                p_.flops_per_step > 0 ? ": MFU on the log lines and in the metrics"
                                      : ", but the program does not know its FLOPs "
                                        "per step: no MFU");
  if (train_) {
    std::printf("  data        %s: train %s docs, %s tokens, %s samples/epoch",
                source_->name().c_str(), with_commas(train_->num_docs()).c_str(),
                with_commas(train_->num_tokens()).c_str(),
                with_commas(train_->samples_per_epoch()).c_str());
    if (valid_)
      std::printf("; validation %s docs, %s samples",
                  with_commas(valid_->num_docs()).c_str(),
                  with_commas(valid_->samples_per_epoch()).c_str());
    std::printf("\n");
  }
  if (resuming_)
    std::printf("  resume      %s (step %lld, %s samples consumed)\n",
                resume_dir_.c_str(), static_cast<long long>(resume_state_.step),
                with_commas(resume_state_.consumed_samples).c_str());
  std::fflush(stdout);
}

// `failure`: this rank's error finding or checking the checkpoint, or
// checking the --save directory ("" if none). Several ranks must resume
// from the same checkpoint step (or all start fresh): a rank that sees
// another directory (no shared filesystem) would train a different model
// in lockstep with the others.
void Trainer::agree_on_resume(const std::string& failure) {
  if (world_ == nullptr) {
    if (!failure.empty()) throw Error(failure);
    return;
  }
  const double mine = resuming_ ? static_cast<double>(resume_state_.step) : -1.0;
  const Agreement a = agree(*world_, !failure.empty(), mine);
  if (!failure.empty()) throw Error(failure);
  if (!a.failed_ranks.empty())
    throw Error("the checkpoint directories: stopping because " + a.describe_failed());
  const std::vector<double>& all = a.values;
  bool same = true;
  for (double v : all) same &= v == all[0];
  if (same) return;
  std::string seen;
  for (size_t r = 0; r < all.size(); ++r)
    seen += (r ? ", rank " : "rank ") + std::to_string(r) + ": " +
            (all[r] < 0 ? std::string("no checkpoint")
                        : "step " + std::to_string(static_cast<int64_t>(all[r])));
  throw Error("the ranks do not see the same checkpoint to resume from (" + seen +
              "): --save/--load must name a directory every rank shares");
}

// A resumed run continues the checkpoint's learning-rate schedule, as
// Megatron's OptimizerParamScheduler does by default: values not given as
// flags come from the checkpoint, and a flag or compiled value that differs
// from it is refused (the decay horizon of a program whose decay follows
// --steps is the checkpoint's; a different --steps only moves the end).
// --override-lr-schedule (Megatron's --override-opt_param-scheduler) skips
// this: the run's own schedule applies.
void Trainer::resume_schedule() {
  const LrSchedule& saved = resume_state_.schedule;
  std::string conflicts;
  auto conflict = [&](const std::string& what, const std::string& mine,
                      const std::string& theirs) {
    conflicts += "\n  " + what + " " + mine + ", the checkpoint's " + theirs;
  };
  auto num = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return std::string(buf);
  };
  if (o_.lr_given && o_.lr != saved.lr) conflict("--lr", num(o_.lr), num(saved.lr));
  if (o_.min_lr_given && o_.min_lr != saved.min_lr)
    conflict("--min-lr", num(o_.min_lr), num(saved.min_lr));
  if (t_.warmup_steps != saved.warmup_steps)
    conflict("the program's warmup_steps", std::to_string(t_.warmup_steps),
             std::to_string(saved.warmup_steps));
  if (t_.decay != saved.decay)
    conflict("the program's lr decay", lr_decay_name(t_.decay), lr_decay_name(saved.decay));
  if (t_.decay_steps > 0 && t_.decay_steps != saved.decay_steps)
    conflict("the program's decay_steps", std::to_string(t_.decay_steps),
             std::to_string(saved.decay_steps));
  if (!conflicts.empty())
    throw Error(resume_dir_ + "/state.json: the run's learning-rate schedule differs from the "
                "checkpoint's:" + conflicts + "\nA resumed run continues the checkpoint's "
                "schedule: drop those flags, or add --override-lr-schedule to train on with "
                "this run's schedule");
  if (t_.decay_steps == 0 && saved.decay_steps != o_.steps)
    say("note: the learning-rate decay ends at step %lld, as in the checkpoint's run "
        "(--steps %lld only moves the end of this run)\n",
        static_cast<long long>(saved.decay_steps), static_cast<long long>(o_.steps));
  schedule_ = saved;
}

// The sample count after the last step of this run must stay an int64
// (a checkpoint's consumed_samples is only checked to be >= 0 when read).
void Trainer::check_sample_range() const {
  const int64_t left = std::max<int64_t>(o_.steps - resume_state_.step, 1);
  int64_t need = 0, last = 0;
  if (__builtin_mul_overflow(left, t_.global_batch, &need) ||
      __builtin_add_overflow(resume_state_.consumed_samples, need, &last))
    throw Error(resume_dir_ + "/state.json: consumed_samples " +
                std::to_string(resume_state_.consumed_samples) + " plus " +
                std::to_string(left) + " steps of " + std::to_string(t_.global_batch) +
                " samples does not fit a 64-bit sample count (corrupt checkpoint?)");
}

// "" or why `loss` of microbatch `mb` stops the run (a data error the
// generated code reported in state.error, or a NaN/Inf loss).
std::string Trainer::loss_problem(float loss, int64_t step, int64_t mb, const char* phase) {
  if (!state_.error.empty())
    return std::string(phase) + " step " + std::to_string(step) + ", microbatch " +
           std::to_string(mb) + ": " + state_.error;
  if (!std::isfinite(loss))
    return std::string(phase) + " step " + std::to_string(step) + ": loss is " +
           (std::isnan(loss) ? "NaN" : "Inf") + " at microbatch " + std::to_string(mb) +
           "; stopping (lower --lr or check the data)";
  return "";
}

// The end of a phase that one rank may fail alone. One rank: throws
// `failure` if set, else returns `value`. Several (agree, grid_comm.h): each
// failing rank throws its own message, the others one naming the failing
// ranks; else every rank gets the same sum of `value` over the ranks with
// tp index 0 (one per data-parallel rank).
double Trainer::settle(const std::string& failure, double value, const std::string& where) {
  if (world_ == nullptr) {
    if (!failure.empty()) throw Error(failure);
    return value;
  }
  const Agreement a = agree(*world_, !failure.empty(), value);
  if (!failure.empty()) throw Error(failure);
  if (!a.failed_ranks.empty()) throw Error(where + ": stopping because " + a.describe_failed());
  return a.sum_tp0;
}

// Mean loss over eval_iters global batches of the validation split (each
// data-parallel rank its rows, averaged over the ranks).
double Trainer::evaluate(int64_t step) {
  double sum = 0;
  int64_t count = 0;
  std::string failure;
  if (p_.pipeline_eval != nullptr) {
    std::vector<float> losses(static_cast<size_t>(t_.num_microbatches));
    for (int64_t it = 0; it < o_.eval_iters; ++it) {
      // Every rank runs every batch (the pipeline's transfers must meet).
      for (int64_t i = 0; i < t_.num_microbatches; ++i) {
        const int32_t *tok = nullptr, *tgt = nullptr;
        std::string bad =
            fetch_microbatch(*valid_, true, it * layout_.global_batch(), i, step, &tok, &tgt);
        if (failure.empty()) failure = bad;
      }
      std::fill(losses.begin(), losses.end(), 0.0f);
      at_step(step, -2, [&] {
        p_.pipeline_eval(state_, static_cast<const int32_t*>(tokens_dev_.get()),
                         static_cast<const int32_t*>(targets_dev_.get()), losses.data());
        return 0;
      });
      for (int64_t i = 0; i < t_.num_microbatches; ++i) {
        if (at_[0] == p_.grid[0] - 1 && failure.empty()) {
          failure = loss_problem(losses[i], step, i, "validation at");
          sum += losses[i];
        }
        ++count;
      }
    }
    sum = settle(failure, sum, "validation at step " + std::to_string(step));
    return sum / static_cast<double>(count * dp_);
  }
  for (int64_t it = 0; it < o_.eval_iters && failure.empty(); ++it) {
    for (int64_t i = 0; i < t_.num_microbatches; ++i) {
      const int32_t *tok = nullptr, *tgt = nullptr;
      failure = fetch_microbatch(*valid_, true, it * layout_.global_batch(), i, step, &tok, &tgt);
      if (!failure.empty()) break;
      state_.microbatch = i;
      state_.global_microbatch = i * dp_ + at_[1];
      float l = p_.forward_loss(state_, tok, tgt);
      failure = loss_problem(l, step, i, "validation at");
      if (!failure.empty()) break;
      sum += l;
      ++count;
    }
  }
  sum = settle(failure, sum, "validation at step " + std::to_string(step));
  return sum / static_cast<double>(count * dp_);
}

void Trainer::save(int64_t step, int64_t consumed) {
  CheckpointState s;
  s.step = step;
  s.consumed_samples = consumed;
  if (train_) {
    s.epoch = consumed / train_->samples_per_epoch();
    s.epoch_index = consumed % train_->samples_per_epoch();
  }
  s.seed = o_.seed;
  s.data = o_.data;
  s.split = o_.split;
  s.seq_length = t_.seq_length;
  s.global_batch = t_.global_batch;
  s.train_steps = o_.steps;
  s.decay_steps = schedule_.decay_steps;
  s.has_schedule = true;
  s.schedule = schedule_;
  const std::string& dir = o_.init_only.empty() ? o_.save : o_.init_only;
  // One rank: the program's own buffers. Several: the global tensors,
  // gathered from host copies to rank 0 (empty elsewhere).
  auto to_global = [&](const std::vector<float>& local) {
    if (world_ == nullptr) return local;
    return gather_params_to_root(host_comm_, p_, global_, local.data());
  };
  auto global = [&](const float* src) { return to_global(download_floats(src)); };
  // Distributed optimizer: each region's group (dp; the experts' over edp)
  // first puts its moment shares together into the parameters' layout.
  auto global_moments = [&](const float* src) {
    if (p_.optimizer_shard_elems == 0) return global(src);
    std::vector<float> mine(static_cast<size_t>(moment_elems(p_)));
    backend_.download(mine.data(), src, mine.size() * sizeof(float));
    std::vector<float> all(static_cast<size_t>(p_.num_param_elems));
    gather_moment_shares(host_comm_, p_, mine.data(), all.data());
    return to_global(all);
  };
  const std::vector<float> params = global(state_.params);
  const std::vector<float> exp_avg = global_moments(state_.exp_avg);
  const std::vector<float> exp_avg_sq = global_moments(state_.exp_avg_sq);
  std::string failure;
  if (root_) {
    try {
      std::string written = save_checkpoint(dir, world_ ? global_ : p_, s, params.data(),
                                            exp_avg.data(), exp_avg_sq.data());
      std::printf("saved checkpoint %s\n", written.c_str());
      std::fflush(stdout);
    } catch (const Error& e) {
      if (world_ == nullptr) throw;
      failure = e.what();
    }
  }
  settle(failure, 0, "checkpoint at step " + std::to_string(step));
}

// Gradients of the global-batch mean loss (step `state_.step`) with that
// batch, written by rank 0 in the global layout. The program reduces over
// the data-parallel ranks only inside optimizer_step (or, with
// grads_summed_in_backward, already summed them), so here the accumulated
// sums are averaged over them first:
//   g = (sum over dp ranks of grads) / dp / num_microbatches.
// The batch rows are put in the global batch's sample order (rank d's
// microbatch i row j is global row (i * dp + d) * micro_batch + j), so the
// dump equals a one-rank run's over the same global batch with
// num_microbatches x dp microbatches.
void Trainer::dump_grads(double loss, const std::vector<float>& mb_losses) {
  std::vector<float> g = download_floats(state_.grads);
  if (dp_ > 1) {
    if (p_.grads_summed_in_backward) {
    } else if (p_.grid[3] > 1) {
      // Expert parallelism: each rank holds its experts' gradients, summed
      // over the ranks holding the same experts (edp); the rest over dp.
      for (const ParamDesc& d : p_.params)
        host_comm_->all_reduce_sum(d.split_axis == 3 ? 4 : 1, g.data() + d.offset, d.numel);
    } else {
      host_comm_->all_reduce_sum(1, g.data(), static_cast<int64_t>(g.size()));
    }
    const float inv_dp = 1.0f / static_cast<float>(dp_);
    for (float& x : g) x *= inv_dp;
  }
  const float scale = 1.0f / static_cast<float>(t_.num_microbatches);
  for (float& x : g) x *= scale;
  if (world_ != nullptr)
    g = gather_params_to_root(host_comm_, p_, global_, g.data(), /*sum_copies=*/true);

  // Batch and microbatch losses of every data-parallel rank, gathered over
  // the dp group of rank 0 (tp index 0); int32 ids travel as raw 4-byte words.
  const int64_t mbs = t_.num_microbatches, rows = t_.micro_batch * t_.seq_length;
  std::vector<int32_t> tokens = tokens_, targets = targets_;  // (dp * mbs * B, S)
  std::vector<float> losses_all = mb_losses;                  // (dp * mbs)
  // Pipeline: the losses are the last pipeline rank's; the others add 0.
  if (p_.grid[0] > 1) {
    if (at_[0] != p_.grid[0] - 1) std::fill(losses_all.begin(), losses_all.end(), 0.0f);
    host_comm_->all_reduce_sum(0, losses_all.data(), static_cast<int64_t>(losses_all.size()));
  }
  if (dp_ > 1 && at_[0] == 0 && at_[2] == 0) {
    tokens = gather_over_dp(*host_comm_, tokens_, mbs, rows);
    targets = gather_over_dp(*host_comm_, targets_, mbs, rows);
    losses_all = gather_over_dp(*host_comm_, losses_all, mbs, 1);
  }
  std::string failure;
  if (root_) {
    try {
      write_dump(loss, g, tokens, targets, losses_all);
    } catch (const Error& e) {
      if (world_ == nullptr) throw;
      failure = e.what();
    }
  }
  settle(failure, 0, "--dump-grads");
}

// The --dump-grads file: grads in the checkpoint layout (the program's own
// for one rank), the global batch (dp * num_microbatches * micro_batch, S).
void Trainer::write_dump(double loss, const std::vector<float>& grads,
                         const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets,
                         const std::vector<float>& mb_losses) const {
  GradDumpInfo info;
  info.model = p_.model_name;
  info.step = state_.step;
  info.seed = o_.seed;
  info.loss = loss;
  info.microbatch_losses = mb_losses;
  info.micro_batch = t_.micro_batch;
  info.num_microbatches = t_.num_microbatches * dp_;  // of micro_batch rows each
  info.seq_length = t_.seq_length;
  write_grad_dump(o_.dump_grads, world_ != nullptr ? global_ : p_, grads.data(), tokens.data(),
                  targets.data(), info);
  std::printf("wrote gradients of step %lld (loss %.6f) to %s\n",
              static_cast<long long>(state_.step), loss, o_.dump_grads.c_str());
}

// Context, the "does it fit" check, then every buffer of program memory.
void Trainer::allocate() {
  if (p_.create_context != nullptr) {
    state_.context = p_.create_context();
    context_.reset(state_.context, p_.destroy_context);
  }
  size_t free_bytes = 0, total_bytes = 0;
  backend_.memory_info(&free_bytes, &total_bytes);
  total_mem_ = total_bytes;
  used_at_start_ = total_bytes - free_bytes;
  if (total_bytes > 0) {
    say("  device      %s: %s free of %s; the plan takes %s\n", backend_.name,
        human_bytes(static_cast<double>(free_bytes)).c_str(),
        human_bytes(static_cast<double>(total_bytes)).c_str(),
        human_bytes(plan_bytes(p_).total()).c_str());
    std::fflush(stdout);
  }
  check_plan_fits(p_, backend_.name, free_bytes, total_bytes);

  const size_t pbytes = static_cast<size_t>(p_.num_param_elems) * sizeof(float);
  const size_t batch_bytes = static_cast<size_t>(t_.num_microbatches * t_.micro_batch *
                                                 t_.seq_length) * sizeof(int32_t);
  params_ = ProgramBuffer(backend_, pbytes, "the parameters");
  grads_ = ProgramBuffer(backend_, pbytes, "the gradients");
  // Distributed optimizer: moments for this dp rank's shard only.
  const size_t mbytes = static_cast<size_t>(moment_elems(p_)) * sizeof(float);
  exp_avg_ = ProgramBuffer(backend_, mbytes, "the AdamW first moments");
  exp_avg_sq_ = ProgramBuffer(backend_, mbytes, "the AdamW second moments");
  if (p_.compute_param_bytes > 0)
    compute_params_ = ProgramBuffer(backend_, static_cast<size_t>(p_.compute_param_bytes),
                                    "the compute copy of the parameters");
  arena_ = ProgramBuffer(backend_, static_cast<size_t>(p_.arena_floats) * sizeof(float),
                         "the activation arena");
  tokens_dev_ = ProgramBuffer(backend_, batch_bytes, "the batch's tokens");
  targets_dev_ = ProgramBuffer(backend_, batch_bytes, "the batch's targets");
  state_.params = static_cast<float*>(params_.get());
  state_.grads = static_cast<float*>(grads_.get());
  state_.exp_avg = static_cast<float*>(exp_avg_.get());
  state_.exp_avg_sq = static_cast<float*>(exp_avg_sq_.get());
  state_.compute_params = compute_params_.get();
  state_.arena = static_cast<float*>(arena_.get());
  state_.seed = o_.seed;
  state_.comm = comm_;
}

// Parameters (and moments) on the host: seeded initialization or the
// checkpoint; uploaded, then the compute copy refreshed. Returns the step
// reached (0 when fresh) and sets *consumed.
int64_t Trainer::initialize_or_load(int64_t* consumed) {
  const size_t n = static_cast<size_t>(p_.num_param_elems);
  const size_t pbytes = n * sizeof(float);
  int64_t step = 0;
  *consumed = 0;
  {
    std::vector<float> params(n, 0.0f);
    if (resuming_) {
      // Moments stay zero when the checkpoint has none.
      std::vector<float> exp_avg(n, 0.0f), exp_avg_sq(n, 0.0f);
      resume_state_ = load_checkpoint(resume_dir_, p_, params.data(), exp_avg.data(),
                                      exp_avg_sq.data(), at_, &global_);
      // Distributed optimizer: this rank's shares of the moments.
      std::vector<float> mine(static_cast<size_t>(moment_elems(p_)));
      const size_t mbytes = mine.size() * sizeof(float);
      take_moment_shares(p_, at_, exp_avg.data(), mine.data());
      backend_.upload(state_.exp_avg, mine.data(), mbytes);
      take_moment_shares(p_, at_, exp_avg_sq.data(), mine.data());
      backend_.upload(state_.exp_avg_sq, mine.data(), mbytes);
      step = resume_state_.step;
      *consumed = resume_state_.consumed_samples;
      if (!resume_state_.has_optimizer)
        say("note: %s has no optimizer state; AdamW moments start at zero\n",
            resume_dir_.c_str());
    } else {
      init_params(p_, o_.seed, params.data(), at_);
    }
    backend_.upload(state_.params, params.data(), pbytes);
  }
  if (p_.sync_compute_params != nullptr) p_.sync_compute_params(state_);
  return step;
}

// A parameter-shaped fp32 buffer of program memory, copied to the host.
std::vector<float> Trainer::download_floats(const float* src) const {
  std::vector<float> out(static_cast<size_t>(p_.num_param_elems));
  backend_.download(out.data(), src, out.size() * sizeof(float));
  return out;
}

// Microbatch `mb` of the step starting at sample `base` (or of validation
// batch `base`) into the host staging (tokens_, targets_), then into the
// batch buffers of program memory; *tokens/*targets point at it there. The
// loader checks every id (GptSamples::sample). Returns "" or the data error,
// named with the step; then the microbatch is uploaded as token and target
// 0 everywhere, so that the program can still run it, and its collectives.
std::string Trainer::fetch_microbatch(GptSamples& samples, bool validation, int64_t base,
                                      int64_t mb, int64_t step, const int32_t** tokens,
                                      const int32_t** targets) {
  const int64_t rows = t_.micro_batch * t_.seq_length;
  int32_t* tok = tokens_.data() + mb * rows;
  int32_t* tgt = targets_.data() + mb * rows;
  std::string bad;
  try {
    if (validation) fill_validation_microbatch(samples, layout_, base, mb, tok, tgt);
    else fill_microbatch(samples, layout_, base, mb, tok, tgt);
  } catch (const Error& e) {
    bad = std::string(validation ? "validation at" : "training") + " step " +
          std::to_string(step) + ", microbatch " + std::to_string(mb) + ": " + e.what();
    std::fill_n(tok, rows, 0);
    std::fill_n(tgt, rows, 0);
  }
  int32_t* dtok = static_cast<int32_t*>(tokens_dev_.get()) + mb * rows;
  int32_t* dtgt = static_cast<int32_t*>(targets_dev_.get()) + mb * rows;
  backend_.upload(dtok, tok, static_cast<size_t>(rows) * sizeof(int32_t));
  backend_.upload(dtgt, tgt, static_cast<size_t>(rows) * sizeof(int32_t));
  *tokens = dtok;
  *targets = dtgt;
  return bad;
}

// --trace: every rank's events to rank 0 (as doubles, padded to the longest
// log), which writes the Chrome trace and prints each rank's measured idle
// fraction of the steps.
void Trainer::write_trace() {
  std::vector<std::vector<TraceEvent>> all;
  if (world_ == nullptr) {
    all.push_back(trace_log_.events);
  } else {
    const std::vector<double> counts =
        all_gather_doubles(*world_, {static_cast<double>(trace_log_.events.size())});
    size_t longest = 0;
    for (double c : counts) longest = std::max(longest, static_cast<size_t>(c));
    std::vector<double> mine(5 * longest, 0.0);
    for (size_t i = 0; i < trace_log_.events.size(); ++i) {
      const TraceEvent& e = trace_log_.events[i];
      mine[5 * i] = e.kind;
      mine[5 * i + 1] = e.microbatch;
      mine[5 * i + 2] = e.chunk;
      mine[5 * i + 3] = e.t0;
      mine[5 * i + 4] = e.t1;
    }
    const std::vector<double> got =
        longest > 0 ? all_gather_doubles(*world_, mine) : std::vector<double>();
    all.resize(counts.size());
    for (size_t r = 0; r < counts.size(); ++r)
      for (size_t i = 0; i < static_cast<size_t>(counts[r]); ++i) {
        const double* e = got.data() + 5 * (r * longest + i);
        all[r].push_back({static_cast<char>(e[0]), static_cast<int32_t>(e[1]),
                          static_cast<int32_t>(e[2]), e[3], e[4]});
      }
  }
  if (!root_) return;
  write_file_atomic(o_.trace, chrome_trace_json(all));
  const std::vector<double> idle = measured_idle(all);
  std::string line = "trace: wrote " + o_.trace + "; idle fraction of the steps per rank:";
  char buf[32];
  for (double f : idle) {
    std::snprintf(buf, sizeof(buf), " %.3f", f);
    line += buf;
  }
  say("%s\n", line.c_str());
}

// A successful exit: every rank has finished its collectives (one rank:
// nothing to wait for).
// Memory in use now: device-wide, so it counts what the runtime allocates
// beside the plan (workspaces, scratch, NCCL) and the CUDA context.
void Trainer::sample_memory() {
  if (total_mem_ == 0) return;
  size_t free_bytes = 0, total_bytes = 0;
  backend_.memory_info(&free_bytes, &total_bytes);
  min_free_ = std::min(min_free_, free_bytes);
}

void Trainer::finish() {
  if (!o_.trace.empty()) write_trace();
  if (total_mem_ > 0 && min_free_ != SIZE_MAX)
    say("  memory      measured peak %s in use on the %s device (%s of it before the "
        "program allocated: context and libraries); the plan's buffers %s\n",
        human_bytes(static_cast<double>(total_mem_ - min_free_)).c_str(), backend_.name,
        human_bytes(static_cast<double>(used_at_start_)).c_str(),
        human_bytes(plan_bytes(p_).total()).c_str());
  std::fflush(stdout);
  if (world_ != nullptr) world_->comm(GroupKind::world).barrier();
}

int Trainer::run() {
  allocate();
  if (!o_.trace.empty()) {
    if (&backend_ != &host_backend()) trace_log_.sync = backend_.synchronize;
    state_.trace = &trace_log_;
  }
  int64_t consumed = 0;
  int64_t step = initialize_or_load(&consumed);
  const int64_t rows = t_.micro_batch * t_.seq_length;
  tokens_.assign(static_cast<size_t>(t_.num_microbatches * rows), 0);
  targets_.assign(tokens_.size(), 0);
  if (!o_.init_only.empty()) {
    save(0, 0);
    finish();
    return 0;
  }
  if (step >= o_.steps && o_.dump_grads.empty()) {
    say("checkpoint is at step %lld, --steps is %lld: nothing to train\n",
        static_cast<long long>(step), static_cast<long long>(o_.steps));
    finish();
    return 0;
  }

  MetricsWriter metrics;  // rank 0's
  if (!o_.metrics.empty() && root_) metrics = MetricsWriter(o_.metrics, resuming_ ? step : -1);
  const int64_t tokens_per_step = t_.global_batch * t_.seq_length;

  const Clock::time_point run_start = Clock::now();
  Clock::time_point interval_start = run_start;
  const int64_t first_step = step + 1;
  double interval_loss = 0;
  int64_t interval_steps = 0;
  std::vector<float> mb_losses(static_cast<size_t>(t_.num_microbatches));

  while (step < o_.steps) {
    ++step;
    if (world_ != nullptr) world_->set_step(step);
    const Clock::time_point step_start = Clock::now();
    backend_.zero(state_.grads, grads_.bytes());
    state_.step = step;
    const double step_t0 = trace_now(state_);
    double loss_sum = 0;
    std::string failure;  // this rank's first data error or bad loss
    // Every rank runs every microbatch of the step even after a failure, so
    // that the collectives inside (tensor-parallel ones, the data-parallel
    // gradient buckets of the last microbatch) stay matched across ranks
    // whose data differ; a microbatch with bad ids computes on token 0
    // instead, and the failure stops every rank at the end of the step.
    if (p_.pipeline_step != nullptr) {
      // Pipeline: the whole step's batch, then one call runs the schedule;
      // the losses come from the last pipeline rank.
      for (int64_t i = 0; i < t_.num_microbatches; ++i) {
        const int32_t *tok = nullptr, *tgt = nullptr;
        std::string bad = fetch_microbatch(*train_, false, consumed, i, step, &tok, &tgt);
        if (failure.empty()) failure = bad;
      }
      std::fill(mb_losses.begin(), mb_losses.end(), 0.0f);
      at_step(step, -2, [&] {
        p_.pipeline_step(state_, static_cast<const int32_t*>(tokens_dev_.get()),
                         static_cast<const int32_t*>(targets_dev_.get()), mb_losses.data());
        return 0;
      });
      if (failure.empty() && !state_.error.empty())
        failure = "training step " + std::to_string(step) + ": " + state_.error;
      if (at_[0] == p_.grid[0] - 1)
        for (int64_t i = 0; i < t_.num_microbatches && failure.empty(); ++i) {
          failure = loss_problem(mb_losses[i], step, i, "training");
          loss_sum += mb_losses[i];
        }
    } else {
      for (int64_t i = 0; i < t_.num_microbatches; ++i) {
        const int32_t *tok = nullptr, *tgt = nullptr;
        std::string bad = fetch_microbatch(*train_, false, consumed, i, step, &tok, &tgt);
        if (failure.empty()) failure = bad;
        state_.microbatch = i;
        state_.global_microbatch = i * dp_ + at_[1];
        const double mb_t0 = trace_now(state_);
        float l = at_step(step, i, [&] { return p_.forward_backward(state_, tok, tgt); });
        trace_record(state_, 'M', static_cast<int32_t>(i), -1, mb_t0);
        if (!failure.empty()) continue;
        failure = loss_problem(l, step, i, "training");
        if (!failure.empty()) continue;
        mb_losses[i] = l;
        loss_sum += l;
      }
    }
    // The mean microbatch loss over the global batch (all dp ranks).
    loss_sum = settle(failure, loss_sum, "training step " + std::to_string(step));
    const double loss = loss_sum / static_cast<double>(t_.num_microbatches * dp_);
    if (!o_.dump_grads.empty()) {
      dump_grads(loss, mb_losses);
      finish();
      return 0;
    }
    trace_record(state_, 'S', -1, -1, step_t0);
    const double lr = lr_at(schedule_, step);
    const double opt_t0 = trace_now(state_);
    const double grad_norm =
        at_step(step, -1, [&] { return p_.optimizer_step(state_, static_cast<float>(lr), step); });
    trace_record(state_, 'O', -1, -1, opt_t0);
    if (!state_.error.empty())
      throw Error("training step " + std::to_string(step) + ", optimizer: " + state_.error);
    if (!std::isfinite(grad_norm))
      throw Error("training step " + std::to_string(step) + ": gradient norm is " +
                  (std::isnan(grad_norm) ? "NaN" : "Inf") + "; stopping");
    consumed += t_.global_batch;
    backend_.synchronize();  // the step's work is done before it is timed
    const Clock::time_point now = Clock::now();
    const double step_time = std::chrono::duration<double>(now - step_start).count();
    interval_loss += loss;
    ++interval_steps;

    const bool last = step == o_.steps;
    std::optional<double> val_loss;
    if (valid_ && (step % o_.eval_interval == 0 || last)) val_loss = evaluate(step);

    StepMetrics m;
    m.step = step;
    m.loss = loss;
    m.lr = lr;
    m.grad_norm = grad_norm;
    m.consumed_samples = consumed;
    m.tokens = tokens_per_step;
    m.step_time_s = step_time;
    m.flops = p_.flops_per_step;
    m.peak_flops = peak_flops_;  // flops_per_step is one rank's: MFU per rank
    m.val_loss = val_loss;
    metrics.write(m);
    sample_memory();

    if (step % o_.log_interval == 0 || last) {
      const double interval_s = std::chrono::duration<double>(now - interval_start).count();
      const double elapsed = std::chrono::duration<double>(now - run_start).count();
      LogLine line;
      line.step = step;
      line.total_steps = o_.steps;
      line.loss = interval_loss / static_cast<double>(interval_steps);
      line.lr = lr;
      line.grad_norm = grad_norm;
      line.tokens_per_s = interval_s > 0
                              ? static_cast<double>(interval_steps * tokens_per_step) / interval_s
                              : 0;
      line.tflops = interval_s > 0 ? p_.flops_per_step * interval_steps / interval_s / 1e12 : 0;
      line.mfu = peak_flops_ > 0 ? line.tflops * 1e12 / peak_flops_ : 0;
      line.elapsed_s = elapsed;
      line.eta_s = elapsed / static_cast<double>(step - first_step + 1) *
                   static_cast<double>(o_.steps - step);
      say("%s\n", format_log_line(line).c_str());
      interval_loss = 0;
      interval_steps = 0;
      interval_start = Clock::now();
    }
    if (val_loss) say("%s\n", format_validation_line(step, *val_loss).c_str());
    std::fflush(stdout);

    const bool exiting = o_.exit_interval > 0 && step % o_.exit_interval == 0 && !last;
    if (!o_.save.empty() &&
        (last || exiting || (o_.save_interval > 0 && step % o_.save_interval == 0)))
      save(step, consumed);
    if (exiting) {
      say("exiting after step %lld (--exit-interval %lld)\n", static_cast<long long>(step),
          static_cast<long long>(o_.exit_interval));
      finish();
      return 0;
    }
  }
  finish();
  return 0;
}

}  // namespace

int train_main(int argc, char** argv, const ProgramDesc& program) {
  std::string name = argc > 0 && argv[0] != nullptr ? argv[0] : "train";
  if (size_t slash = name.rfind('/'); slash != std::string::npos) name = name.substr(slash + 1);
  TrainOptions opts;
  try {
    opts = parse_train_options(argc, argv, program.train);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s: error: %s\n(run %s --help for the flags)\n",
                 name.c_str(), e.what(), name.c_str());
    return 2;
  }
  if (opts.help) {
    std::fputs(train_usage(name).c_str(), stdout);
    return 0;
  }
  try {
    validate_program(program);
    // Destroyed in reverse: the trainer before the communicators.
    RunComms comms = start_run_comms(program);
    // Pipeline parallelism: this rank's stage of the program.
    const ProgramDesc stage = pipeline_stage_program(program, grid_index(comms.host.get())[0]);
    if (!program.pipeline.empty()) validate_program(stage);
    Trainer trainer(stage, program, opts, comms);
    return trainer.run();
  } catch (const Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: error: %s\n", name.c_str(), e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: error: out of memory\n", name.c_str());
    return 1;
  } catch (const std::exception& e) {
    // Target errors, e.g. mtc::rt::cuda::CudaError from a kernel or a copy.
    std::fflush(stdout);
    std::fprintf(stderr, "%s: error: %s\n", name.c_str(), e.what());
    return 1;
  }
}

}  // namespace mtc::rt
