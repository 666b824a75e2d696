// The learning-rate schedule (Megatron's OptimizerParamScheduler.get_lr).
//
// For optimizer step s (counted from 1), peak lr, floor min_lr, W warm-up
// steps and decay horizon D (the step at which decay ends, D > W):
//   s <= W (W > 0):    lr = lr_peak * s / W          linear warm-up from 0
//   constant decay:    lr = lr_peak
//   s > D:             lr = min_lr                   constant after decay
//   otherwise:         r = (s - W) / (D - W)
//                      linear: c = 1 - r;  cosine: c = (cos(pi r) + 1) / 2
//                      lr = min_lr + c * (lr_peak - min_lr)
// Megatron evaluates this at the number of steps already taken, so its first
// step runs at lr 0 when W > 0; mtc evaluates it at the step being taken,
// so the first step already learns and step W runs at the peak.
#pragma once

#include <cstdint>
#include <string>

#include "mtc/rt/program.h"

namespace mtc::rt {

struct LrSchedule {
  double lr = 3e-4;
  double min_lr = 0;
  int64_t warmup_steps = 0;
  int64_t decay_steps = 1;  // D: decay ends at this step
  LrDecay decay = LrDecay::cosine;
};

double lr_at(const LrSchedule& schedule, int64_t step);

// Empty if valid, else what is wrong (lr > 0, 0 <= min_lr <= lr,
// warmup >= 0, and D > W unless the decay is constant).
std::string check_lr_schedule(const LrSchedule& schedule);

const char* lr_decay_name(LrDecay decay);
// The inverse of lr_decay_name; false if `name` is none of them.
bool parse_lr_decay(const std::string& name, LrDecay* decay);

}  // namespace mtc::rt
