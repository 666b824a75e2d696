// Tests that the spec refuses exactly the learning-rate schedules the
// training program refuses at start (check_lr_schedule in
// runtime/src/common/lr_schedule.cpp, with decay_steps 0 standing for the
// run's steps, train_steps by default, as the trainer resolves it), so a
// spec that compiles also runs. The compiler never links the runtime; this
// test links both to hold the two statements of the rule together.
//
// The spec refuses two schedules more, on purpose: a warm-up longer than
// the run (warmup_steps > train_steps) or than the decay (warmup_steps >
// decay_steps), which the program would run without ever reaching the peak.
#include "mtc/Spec/Spec.h"
#include "mtc/rt/lr_schedule.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace mtc {
namespace {

using Json = nlohmann::ordered_json;

TEST(LrRuleAgreement, SpecRefusesWhatTheTrainingProgramRefuses) {
  const std::pair<spec::LrDecay, rt::LrDecay> decays[] = {
      {spec::LrDecay::constant, rt::LrDecay::constant},
      {spec::LrDecay::linear, rt::LrDecay::linear},
      {spec::LrDecay::cosine, rt::LrDecay::cosine}};
  int agreed_refusals = 0, agreed_acceptances = 0;
  for (auto [sd, rd] : decays)
    for (double lr : {1e-3, 0.0})
      for (double min_lr : {0.0, 1e-4, 2e-3})
        for (int64_t steps = 1; steps <= 6; ++steps)
          for (int64_t warmup = 0; warmup <= 7; ++warmup)
            for (int64_t decay_steps = 0; decay_steps <= 7; ++decay_steps) {
              Json j = Json::parse(R"({"model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4,
                                                 "vocab_size": 256, "seq_length": 32}})");
              j["training"]["train_steps"] = steps;
              Json& o = j["training"]["optimizer"];
              o["lr"] = lr;
              o["min_lr"] = min_lr;
              o["warmup_steps"] = warmup;
              o["decay_steps"] = decay_steps;
              o["decay"] = spec::toString(sd);
              std::vector<spec::Diagnostic> diags;
              bool spec_ok = spec::parseSpec(j.dump(), diags).has_value();

              rt::LrSchedule s;
              s.lr = lr;
              s.min_lr = min_lr;
              s.warmup_steps = warmup;
              s.decay_steps = decay_steps > 0 ? decay_steps : steps;
              s.decay = rd;
              std::string why = rt::check_lr_schedule(s);

              SCOPED_TRACE(j.dump() + "\nspec: " + spec::formatDiagnostics("spec", diags) +
                           "runtime: " + why);
              if (warmup > steps || (decay_steps > 0 && warmup > decay_steps)) {
                EXPECT_FALSE(spec_ok);  // the spec's two extra refusals
                continue;
              }
              EXPECT_EQ(spec_ok, why.empty());
              (spec_ok ? agreed_acceptances : agreed_refusals) += spec_ok == why.empty();
            }
  // Both sides of the rule were exercised.
  EXPECT_GT(agreed_refusals, 100);
  EXPECT_GT(agreed_acceptances, 100);
}

}  // namespace
}  // namespace mtc
