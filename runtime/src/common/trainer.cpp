// train_main: the training loop around a generated program.
//
// Order of work (nothing large is allocated before every check passed):
//   1. parse and cross-check flags; validate the ProgramDesc;
//   2. open and validate the data, build the split, find and validate the
//      checkpoint to resume from (names, shapes, dtypes), check the lr
//      schedule; print the plan summary;
//   3. create the program's context (ProgramDesc::create_context, CUDA);
//      check that the plan fits in the backend's free memory (when the
//      backend knows it); allocate params, grads, AdamW moments, the compute
//      copy, the arena and the batch buffers through the backend (zeroed);
//      initialize (seeded, per parameter name) or load the checkpoint on the
//      host and upload; sync_compute_params;
//   4. per step s = start+1 .. steps:
//        grads = 0
//        for microbatch i: fetch batch (Megatron order, loader.h) on the
//          host; check its ids (backends other than the host's); upload;
//          state.step = s, state.microbatch = i;
//          loss_i = forward_backward(state, tokens_i, targets_i)
//        loss = mean_i loss_i
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
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <new>
#include <optional>

#include "mtc/rt/checkpoint.h"
#include "mtc/rt/io.h"
#include "mtc/rt/loader.h"
#include "mtc/rt/lr_schedule.h"
#include "mtc/rt/metrics.h"
#include "mtc/rt/safetensors.h"
#include "mtc/rt/trainer.h"

namespace mtc::rt {

namespace {

using Clock = std::chrono::steady_clock;

// One allocation of program memory (zeroed by the backend), released on
// destruction. Release must not throw (backends ignore errors there).
class ProgramBuffer {
 public:
  ProgramBuffer() = default;
  ProgramBuffer(const Backend& backend, size_t bytes, const char* what)
      : backend_(&backend), bytes_(bytes), ptr_(backend.alloc(bytes, what)) {}
  ~ProgramBuffer() { reset(); }
  ProgramBuffer(ProgramBuffer&& o) noexcept
      : backend_(o.backend_), bytes_(o.bytes_), ptr_(o.ptr_) {
    o.ptr_ = nullptr;
  }
  ProgramBuffer& operator=(ProgramBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      backend_ = o.backend_;
      bytes_ = o.bytes_;
      ptr_ = o.ptr_;
      o.ptr_ = nullptr;
    }
    return *this;
  }
  ProgramBuffer(const ProgramBuffer&) = delete;
  ProgramBuffer& operator=(const ProgramBuffer&) = delete;

  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void reset() {
    if (ptr_ != nullptr) backend_->release(ptr_);
    ptr_ = nullptr;
  }
  const Backend* backend_ = nullptr;
  size_t bytes_ = 0;
  void* ptr_ = nullptr;
};

// The program's context (ProgramDesc::create_context), destroyed with
// ProgramDesc::destroy_context after every ProgramBuffer (declared before
// them in Trainer).
class ContextGuard {
 public:
  ContextGuard() = default;
  ~ContextGuard() {
    if (ctx_ != nullptr && destroy_ != nullptr) destroy_(ctx_);
  }
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
    else where += ", optimizer";
    throw Error(where + ": " + e.what());
  }
}

class Trainer {
 public:
  Trainer(const ProgramDesc& program, const TrainOptions& opts);
  int run();

 private:
  void print_plan() const;
  void allocate();
  int64_t initialize_or_load(int64_t* consumed);
  std::vector<float> download_floats(const float* src) const;
  void upload_microbatch(int64_t mb, int64_t step, const char* phase,
                         const int32_t** tokens, const int32_t** targets);
  void check_loss(float loss, int64_t step, int64_t mb, const char* phase);
  double evaluate(int64_t step);
  void save(int64_t step, int64_t consumed);
  void dump_grads(double loss, const std::vector<float>& mb_losses) const;

  const ProgramDesc& p_;
  const TrainConfig& t_;
  const Backend& backend_;
  const bool check_ids_;       // backend kernels only record bad ids
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
  ProgramBuffer params_, grads_, exp_avg_, exp_avg_sq_, compute_params_, arena_;
  ProgramBuffer tokens_dev_, targets_dev_;  // (num_microbatches * micro_batch, S) int32
  HostState state_;
  // Host staging of the step's batch (kept whole for --dump-grads).
  std::vector<int32_t> tokens_, targets_;  // (num_microbatches * micro_batch, S)
};

Trainer::Trainer(const ProgramDesc& program, const TrainOptions& opts)
    : p_(program),
      t_(program.train),
      backend_(program_backend(program)),
      check_ids_(&backend_ != &host_backend()),
      o_(opts) {
  peak_flops_ = peak_flops_from_env();
  layout_.micro_batch = t_.micro_batch;
  layout_.num_microbatches = t_.num_microbatches;
  layout_.seq_length = t_.seq_length;
  layout_.dp_size = t_.global_batch / (t_.micro_batch * t_.num_microbatches);
  if (layout_.dp_size != 1)
    throw Error("global_batch " + std::to_string(t_.global_batch) +
                " = micro_batch " + std::to_string(t_.micro_batch) + " x " +
                std::to_string(t_.num_microbatches) + " microbatches x dp " +
                std::to_string(layout_.dp_size) +
                ", but this trainer runs a single data-parallel rank (dp = 1)");

  resuming_ = o_.resume || !o_.load.empty();
  if (resuming_ && o_.load.empty() && !checkpoint_exists(o_.save)) {
    // As Megatron: a job that always passes --resume starts fresh the first time.
    std::printf("note: --resume: no checkpoint in %s yet; starting from step 0\n",
                o_.save.c_str());
    resuming_ = false;
  }
  if (resuming_) {
    resume_dir_ = resolve_checkpoint(o_.load.empty() ? o_.save : o_.load);
    resume_state_ = inspect_checkpoint(resume_dir_, p_);
    if (!o_.seed_given) o_.seed = resume_state_.seed;
    else if (o_.seed != resume_state_.seed)
      std::printf("note: --seed %llu differs from the checkpoint's seed %llu: data "
                  "order and dropout will not continue the original run\n",
                  static_cast<unsigned long long>(o_.seed),
                  static_cast<unsigned long long>(resume_state_.seed));
    if (resume_state_.seq_length != t_.seq_length ||
        resume_state_.global_batch != t_.global_batch)
      std::printf("note: the checkpoint was trained with seq_length %lld, global "
                  "batch %lld; this program uses %lld, %lld (the data position "
                  "is kept as a sample count)\n",
                  static_cast<long long>(resume_state_.seq_length),
                  static_cast<long long>(resume_state_.global_batch),
                  static_cast<long long>(t_.seq_length),
                  static_cast<long long>(t_.global_batch));
  }

  schedule_.lr = o_.lr;
  schedule_.min_lr = o_.min_lr;
  schedule_.warmup_steps = t_.warmup_steps;
  schedule_.decay_steps = t_.decay_steps > 0 ? t_.decay_steps : o_.steps;
  schedule_.decay = t_.decay;
  if (std::string why = check_lr_schedule(schedule_); !why.empty())
    throw Error("learning-rate schedule: " + why +
                (t_.decay_steps > 0 ? " (the program's decay_steps)"
                                    : " (the program's decay_steps is 0, so decay ends at "
                                      "--steps: give more --steps than warm-up steps)"));

  if (o_.init_only.empty()) {
    source_ = open_token_source(o_.data);
    ranges_ = split_source(*source_, parse_split(o_.split));
    train_.emplace(*source_, ranges_[0], t_.seq_length, o_.seed, 0,
                   "train split (--split " + o_.split + ")");
    if (o_.eval_interval > 0) {
      if (ranges_.size() < 2 || ranges_[1].doc_end == ranges_[1].doc_begin)
        throw Error("--eval-interval: the validation split of --split " + o_.split +
                    " is empty (give it a weight, e.g. --split 98,2)");
      valid_.emplace(*source_, ranges_[1], t_.seq_length, o_.seed, 1,
                     "validation split (--split " + o_.split + ")");
    }
  }
  print_plan();
}

void Trainer::print_plan() const {
  std::printf("mtc train: model %s (target %s)\n", p_.model_name.c_str(),
              p_.target.c_str());
  std::printf("  parameters  %s in %zu tensors\n",
              with_commas(p_.num_param_elems).c_str(), p_.params.size());
  std::printf("  memory      %s (%s memory)\n", format_plan_bytes(plan_bytes(p_)).c_str(),
              backend_.name);
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

void Trainer::check_loss(float loss, int64_t step, int64_t mb, const char* phase) {
  if (!state_.error.empty())
    throw Error(std::string(phase) + " step " + std::to_string(step) +
                ", microbatch " + std::to_string(mb) + ": " + state_.error);
  if (!std::isfinite(loss))
    throw Error(std::string(phase) + " step " + std::to_string(step) + ": loss is " +
                (std::isnan(loss) ? "NaN" : "Inf") + " at microbatch " +
                std::to_string(mb) + "; stopping (lower --lr or check the data)");
}

double Trainer::evaluate(int64_t step) {
  double sum = 0;
  int64_t count = 0;
  const int64_t rows = t_.micro_batch * t_.seq_length;
  for (int64_t it = 0; it < o_.eval_iters; ++it) {
    for (int64_t i = 0; i < t_.num_microbatches; ++i) {
      fill_validation_microbatch(*valid_, layout_, it * layout_.global_batch(), i,
                                 tokens_.data() + i * rows, targets_.data() + i * rows);
      const int32_t *tok = nullptr, *tgt = nullptr;
      upload_microbatch(i, step, "validation at", &tok, &tgt);
      state_.microbatch = i;
      float l = p_.forward_loss(state_, tok, tgt);
      check_loss(l, step, i, "validation at");
      sum += l;
      ++count;
    }
  }
  return sum / static_cast<double>(count);
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
  const std::string& dir = o_.init_only.empty() ? o_.save : o_.init_only;
  const std::vector<float> params = download_floats(state_.params);
  const std::vector<float> exp_avg = download_floats(state_.exp_avg);
  const std::vector<float> exp_avg_sq = download_floats(state_.exp_avg_sq);
  std::string written =
      save_checkpoint(dir, p_, s, params.data(), exp_avg.data(), exp_avg_sq.data());
  std::printf("saved checkpoint %s\n", written.c_str());
  std::fflush(stdout);
}

void Trainer::dump_grads(double loss, const std::vector<float>& mb_losses) const {
  // Gradients of the global-batch mean loss: the accumulated sum of the
  // microbatch means divided by the number of microbatches (x dp ranks).
  const float scale = 1.0f / static_cast<float>(t_.num_microbatches * layout_.dp_size);
  std::vector<float> g = download_floats(state_.grads);
  for (float& x : g) x *= scale;
  std::vector<TensorRef> tensors;
  for (const ParamDesc& d : p_.params) {
    if (d.name == "batch.tokens" || d.name == "batch.targets")
      throw Error("--dump-grads: parameter name \"" + d.name +
                  "\" collides with the batch tensors of the dump");
    tensors.push_back({d.name, d.shape, g.data() + d.offset, "F32"});
  }
  const std::vector<int64_t> bshape = {t_.num_microbatches * t_.micro_batch,
                                       t_.seq_length};
  tensors.push_back({"batch.tokens", bshape, tokens_.data(), "I32"});
  tensors.push_back({"batch.targets", bshape, targets_.data(), "I32"});
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", loss);
  std::string losses = "[";
  for (size_t i = 0; i < mb_losses.size(); ++i) {
    char b[32];
    std::snprintf(b, sizeof b, "%.9g", static_cast<double>(mb_losses[i]));
    losses += (i ? ", " : "") + std::string(b);
  }
  losses += "]";
  std::map<std::string, std::string> meta = {
      {"format", "mtc-dump-grads"},
      {"mtc.model", p_.model_name},
      {"mtc.step", std::to_string(state_.step)},
      {"mtc.seed", std::to_string(o_.seed)},
      {"mtc.loss", buf},
      {"mtc.microbatch_losses", losses},
      {"mtc.micro_batch", std::to_string(t_.micro_batch)},
      {"mtc.num_microbatches", std::to_string(t_.num_microbatches)},
      {"mtc.seq_length", std::to_string(t_.seq_length)},
      {"mtc.grad_scale", "gradients of the mean loss over the global batch"}};
  write_safetensors(o_.dump_grads, tensors, meta);
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
  if (total_bytes > 0) {
    std::printf("  device      %s: %s free of %s; the plan takes %s\n", backend_.name,
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
  exp_avg_ = ProgramBuffer(backend_, pbytes, "the AdamW first moments");
  exp_avg_sq_ = ProgramBuffer(backend_, pbytes, "the AdamW second moments");
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
                                      exp_avg_sq.data());
      backend_.upload(state_.exp_avg, exp_avg.data(), pbytes);
      backend_.upload(state_.exp_avg_sq, exp_avg_sq.data(), pbytes);
      step = resume_state_.step;
      *consumed = resume_state_.consumed_samples;
      if (!resume_state_.has_optimizer)
        std::printf("note: %s has no optimizer state; AdamW moments start at zero\n",
                    resume_dir_.c_str());
    } else {
      init_params(p_, o_.seed, params.data());
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

// Microbatch `mb` of the host staging (tokens_, targets_), checked on the
// host when the backend's kernels only record bad ids, copied to the batch
// buffers of program memory; *tokens/*targets point at it there.
void Trainer::upload_microbatch(int64_t mb, int64_t step, const char* phase,
                                const int32_t** tokens, const int32_t** targets) {
  const int64_t rows = t_.micro_batch * t_.seq_length;
  const int32_t* tok = tokens_.data() + mb * rows;
  const int32_t* tgt = targets_.data() + mb * rows;
  if (check_ids_) {
    std::string why = check_ids(tok, t_.micro_batch, t_.seq_length, t_.vocab_size, "token");
    if (why.empty())
      why = check_ids(tgt, t_.micro_batch, t_.seq_length, t_.vocab_size, "target");
    if (!why.empty())
      throw Error(std::string(phase) + " step " + std::to_string(step) + ", microbatch " +
                  std::to_string(mb) + ": " + why);
  }
  int32_t* dtok = static_cast<int32_t*>(tokens_dev_.get()) + mb * rows;
  int32_t* dtgt = static_cast<int32_t*>(targets_dev_.get()) + mb * rows;
  backend_.upload(dtok, tok, static_cast<size_t>(rows) * sizeof(int32_t));
  backend_.upload(dtgt, tgt, static_cast<size_t>(rows) * sizeof(int32_t));
  *tokens = dtok;
  *targets = dtgt;
}

int Trainer::run() {
  allocate();
  int64_t consumed = 0;
  int64_t step = initialize_or_load(&consumed);
  const int64_t rows = t_.micro_batch * t_.seq_length;
  tokens_.assign(static_cast<size_t>(t_.num_microbatches * rows), 0);
  targets_.assign(tokens_.size(), 0);
  if (!o_.init_only.empty()) {
    save(0, 0);
    return 0;
  }
  if (step >= o_.steps && o_.dump_grads.empty()) {
    std::printf("checkpoint is at step %lld, --steps is %lld: nothing to train\n",
                static_cast<long long>(step), static_cast<long long>(o_.steps));
    return 0;
  }

  MetricsWriter metrics;
  if (!o_.metrics.empty()) metrics = MetricsWriter(o_.metrics, resuming_ ? step : -1);
  const int64_t tokens_per_step = t_.global_batch * t_.seq_length;

  const Clock::time_point run_start = Clock::now();
  Clock::time_point interval_start = run_start;
  const int64_t first_step = step + 1;
  double interval_loss = 0;
  int64_t interval_steps = 0;
  std::vector<float> mb_losses(static_cast<size_t>(t_.num_microbatches));

  while (step < o_.steps) {
    ++step;
    const Clock::time_point step_start = Clock::now();
    backend_.zero(state_.grads, grads_.bytes());
    state_.step = step;
    double loss_sum = 0;
    for (int64_t i = 0; i < t_.num_microbatches; ++i) {
      fill_microbatch(*train_, layout_, consumed, i, tokens_.data() + i * rows,
                      targets_.data() + i * rows);
      const int32_t *tok = nullptr, *tgt = nullptr;
      upload_microbatch(i, step, "training", &tok, &tgt);
      state_.microbatch = i;
      float l = at_step(step, i, [&] { return p_.forward_backward(state_, tok, tgt); });
      check_loss(l, step, i, "training");
      mb_losses[i] = l;
      loss_sum += l;
    }
    const double loss = loss_sum / static_cast<double>(t_.num_microbatches);
    if (!o_.dump_grads.empty()) {
      dump_grads(loss, mb_losses);
      return 0;
    }
    const double lr = lr_at(schedule_, step);
    const double grad_norm =
        at_step(step, -1, [&] { return p_.optimizer_step(state_, static_cast<float>(lr), step); });
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
    m.peak_flops = peak_flops_;
    m.val_loss = val_loss;
    metrics.write(m);

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
      std::printf("%s\n", format_log_line(line).c_str());
      interval_loss = 0;
      interval_steps = 0;
      interval_start = Clock::now();
    }
    if (val_loss) std::printf("%s\n", format_validation_line(step, *val_loss).c_str());
    std::fflush(stdout);

    const bool exiting = o_.exit_interval > 0 && step % o_.exit_interval == 0 && !last;
    if (!o_.save.empty() &&
        (last || exiting || (o_.save_interval > 0 && step % o_.save_interval == 0)))
      save(step, consumed);
    if (exiting) {
      std::printf("exiting after step %lld (--exit-interval %lld)\n",
                  static_cast<long long>(step), static_cast<long long>(o_.exit_interval));
      return 0;
    }
  }
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
    Trainer trainer(program, opts);
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
