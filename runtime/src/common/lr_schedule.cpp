// Learning-rate schedule; the formula is in mtc/rt/lr_schedule.h.
#include "mtc/rt/lr_schedule.h"

#include <cmath>

namespace mtc::rt {

double lr_at(const LrSchedule& s, int64_t step) {
  if (s.warmup_steps > 0 && step <= s.warmup_steps)
    return s.lr * static_cast<double>(step) / static_cast<double>(s.warmup_steps);
  if (s.decay == LrDecay::constant) return s.lr;
  if (step > s.decay_steps) return s.min_lr;
  double ratio = static_cast<double>(step - s.warmup_steps) /
                 static_cast<double>(s.decay_steps - s.warmup_steps);
  double coeff = s.decay == LrDecay::linear
                     ? 1.0 - ratio
                     : 0.5 * (std::cos(M_PI * ratio) + 1.0);
  return s.min_lr + coeff * (s.lr - s.min_lr);
}

std::string check_lr_schedule(const LrSchedule& s) {
  if (!(s.lr > 0) || !std::isfinite(s.lr))
    return "lr must be a positive number, got " + std::to_string(s.lr);
  if (!(s.min_lr >= 0) || s.min_lr > s.lr)
    return "min_lr must lie in [0, lr = " + std::to_string(s.lr) + "], got " +
           std::to_string(s.min_lr);
  if (s.warmup_steps < 0)
    return "warmup_steps must be >= 0, got " + std::to_string(s.warmup_steps);
  if (s.decay != LrDecay::constant && s.decay_steps <= s.warmup_steps)
    return "the decay horizon (" + std::to_string(s.decay_steps) +
           " steps) must exceed the warm-up (" + std::to_string(s.warmup_steps) +
           " steps)";
  return {};
}

const char* lr_decay_name(LrDecay decay) {
  switch (decay) {
    case LrDecay::constant: return "constant";
    case LrDecay::linear: return "linear";
    case LrDecay::cosine: return "cosine";
  }
  return "?";
}

bool parse_lr_decay(const std::string& name, LrDecay* decay) {
  for (LrDecay d : {LrDecay::constant, LrDecay::linear, LrDecay::cosine})
    if (name == lr_decay_name(d)) {
      *decay = d;
      return true;
    }
  return false;
}

}  // namespace mtc::rt
