// The program's memory as the trainer sees it: the owning buffer and
// context guard, bytes per kind of buffer, the "does it fit" check against
// the backend's free memory, the host-side id check for backends whose
// kernels only record bad ids, and the peak FLOP/s for MFU. Rules in
// mtc/rt/trainer.h.
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "mtc/rt/io.h"
#include "mtc/rt/trainer.h"

namespace mtc::rt {

namespace {

// CUDA hands out device memory in 2 MiB pages; each buffer may waste up to
// that much.
constexpr double kAllocationSlack = 2.0 * 1024 * 1024;

}  // namespace

ProgramBuffer::ProgramBuffer(const Backend& backend, size_t bytes, const char* what)
    : backend_(&backend), bytes_(bytes), ptr_(backend.alloc(bytes, what)) {}

ProgramBuffer::ProgramBuffer(ProgramBuffer&& o) noexcept
    : backend_(o.backend_), bytes_(o.bytes_), ptr_(o.ptr_) {
  o.ptr_ = nullptr;
}

ProgramBuffer& ProgramBuffer::operator=(ProgramBuffer&& o) noexcept {
  if (this != &o) {
    reset();
    backend_ = o.backend_;
    bytes_ = o.bytes_;
    ptr_ = o.ptr_;
    o.ptr_ = nullptr;
  }
  return *this;
}

void ProgramBuffer::reset() {
  if (ptr_ != nullptr) backend_->release(ptr_);
  ptr_ = nullptr;
}

ContextGuard::~ContextGuard() {
  if (ctx_ != nullptr && destroy_ != nullptr) destroy_(ctx_);
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

int64_t moment_elems(const ProgramDesc& p) {
  return p.optimizer_shard_elems > 0 ? p.optimizer_shard_elems + p.expert_optimizer_shard_elems
                                     : p.num_param_elems;
}

PlanBytes plan_bytes(const ProgramDesc& p) {
  const TrainConfig& t = p.train;
  PlanBytes b;
  b.params = 4.0 * static_cast<double>(p.num_param_elems);
  b.grads = b.params;
  b.optimizer = 2.0 * 4.0 * static_cast<double>(moment_elems(p));
  b.compute_copy = static_cast<double>(p.compute_param_bytes);
  b.activations = 4.0 * static_cast<double>(p.arena_floats);
  b.batch = 2.0 * 4.0 * static_cast<double>(t.num_microbatches) *
            static_cast<double>(t.micro_batch) * static_cast<double>(t.seq_length);
  return b;
}

std::string format_plan_bytes(const PlanBytes& b) {
  std::string s = "params " + human_bytes(b.params) + " + grads " + human_bytes(b.grads) +
                  " + AdamW moments " + human_bytes(b.optimizer);
  if (b.compute_copy > 0) s += " + compute copy " + human_bytes(b.compute_copy);
  s += " + activations " + human_bytes(b.activations) + " + batch " + human_bytes(b.batch) +
       " = " + human_bytes(b.total());
  return s;
}

void check_plan_fits(const ProgramDesc& p, const char* backend_name, size_t free_bytes,
                     size_t total_bytes) {
  if (total_bytes == 0) return;  // the backend does not know its memory
  const PlanBytes b = plan_bytes(p);
  // params, grads, two moments, arena, tokens, targets (+ compute copy).
  const int buffers = 7 + (b.compute_copy > 0 ? 1 : 0);
  const double need = b.total() + buffers * kAllocationSlack;
  if (need <= static_cast<double>(free_bytes)) return;
  throw Error(std::string("the plan does not fit in the memory of the ") + backend_name +
              " device: it needs " + format_plan_bytes(b) + " (plus up to " +
              human_bytes(buffers * kAllocationSlack) +
              " of allocation rounding), but the device has " +
              human_bytes(static_cast<double>(free_bytes)) + " free of " +
              human_bytes(static_cast<double>(total_bytes)) +
              "; the compiler's plan.txt adds the workspaces (cuBLASLt, attention scratch, "
              "NCCL, the CUDA context) to these (a smaller plan: mtc compile --recompute "
              "selective|full, or --recompute auto --memory-budget 0.9 to choose, more --tp or "
              "--pp, or a distributed optimizer with --dp; or lower the micro batch size or the sequence length in the spec, "
              "with more microbatches to keep the global batch, or use a smaller model)");
}

double peak_flops_from_env() {
  const char* text = std::getenv("MTC_PEAK_TFLOPS");
  if (text == nullptr || text[0] == '\0') return 0;
  errno = 0;
  char* end = nullptr;
  const double tflops = std::strtod(text, &end);
  if (*end != '\0' || errno == ERANGE || !std::isfinite(tflops) || !(tflops > 0))
    throw Error(std::string("MTC_PEAK_TFLOPS: expected the accelerator's peak TFLOP/s, "
                            "a positive number (e.g. 989 for an H100 SXM in dense bf16), "
                            "got \"") + text + "\"");
  return tflops * 1e12;
}

}  // namespace mtc::rt
