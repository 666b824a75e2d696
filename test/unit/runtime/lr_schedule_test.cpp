// Tests the learning-rate schedule at known steps against values computed
// by hand from Megatron's formula (see mtc/rt/lr_schedule.h).
#include <gtest/gtest.h>

#include <cmath>

#include "mtc/rt/lr_schedule.h"

namespace mtc::rt {
namespace {

LrSchedule schedule(LrDecay decay) {
  LrSchedule s;
  s.lr = 1.0;
  s.min_lr = 0.1;
  s.warmup_steps = 10;
  s.decay_steps = 110;
  s.decay = decay;
  return s;
}

TEST(LrSchedule, WarmupIsLinearFromZero) {
  for (LrDecay d : {LrDecay::constant, LrDecay::linear, LrDecay::cosine}) {
    EXPECT_DOUBLE_EQ(lr_at(schedule(d), 1), 0.1);
    EXPECT_DOUBLE_EQ(lr_at(schedule(d), 5), 0.5);
    EXPECT_DOUBLE_EQ(lr_at(schedule(d), 10), 1.0);
  }
}

TEST(LrSchedule, CosineDecay) {
  LrSchedule s = schedule(LrDecay::cosine);
  // r = (35 - 10) / 100 = 0.25: 0.1 + 0.9 * (cos(pi/4) + 1) / 2
  EXPECT_NEAR(lr_at(s, 35), 0.1 + 0.45 * (1 + std::sqrt(0.5)), 1e-15);
  EXPECT_NEAR(lr_at(s, 60), 0.55, 1e-15);
  EXPECT_NEAR(lr_at(s, 110), 0.1, 1e-15);
  EXPECT_DOUBLE_EQ(lr_at(s, 111), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(s, 100000), 0.1);
}

TEST(LrSchedule, LinearDecay) {
  LrSchedule s = schedule(LrDecay::linear);
  EXPECT_NEAR(lr_at(s, 35), 0.775, 1e-15);
  EXPECT_NEAR(lr_at(s, 60), 0.55, 1e-15);
  EXPECT_NEAR(lr_at(s, 109), 0.109, 1e-15);
  EXPECT_DOUBLE_EQ(lr_at(s, 200), 0.1);
}

TEST(LrSchedule, ConstantAndNoWarmup) {
  EXPECT_DOUBLE_EQ(lr_at(schedule(LrDecay::constant), 500), 1.0);
  LrSchedule s = schedule(LrDecay::linear);
  s.warmup_steps = 0;
  s.decay_steps = 4;
  EXPECT_DOUBLE_EQ(lr_at(s, 1), 0.1 + 0.9 * 0.75);
  EXPECT_DOUBLE_EQ(lr_at(s, 4), 0.1);
}

TEST(LrSchedule, Checks) {
  EXPECT_EQ(check_lr_schedule(schedule(LrDecay::cosine)), "");
  LrSchedule s = schedule(LrDecay::cosine);
  s.decay_steps = 10;
  EXPECT_NE(check_lr_schedule(s).find("must exceed the warm-up"), std::string::npos);
  s.decay = LrDecay::constant;
  EXPECT_EQ(check_lr_schedule(s), "");
  s = schedule(LrDecay::linear);
  s.min_lr = 2;
  EXPECT_NE(check_lr_schedule(s).find("min_lr"), std::string::npos);
  s = schedule(LrDecay::linear);
  s.lr = 0;
  EXPECT_NE(check_lr_schedule(s).find("lr must be"), std::string::npos);
}

}  // namespace
}  // namespace mtc::rt
