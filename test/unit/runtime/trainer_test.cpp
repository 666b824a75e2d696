// Tests of train_main with the tiny hand-written program
// (train_test_support.h): the loss falls, resume is bit-exact, --dump-grads
// writes the gradients of the global-batch mean loss (checked against
// central finite differences of an independent double-precision forward),
// initialization depends only on (seed, name), and bad flags, bad data and
// NaN losses stop with errors naming the flag or step.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cmath>
#include <cstdlib>
#include <future>
#include <random>
#include <regex>
#include <set>

#include "mtc/rt/checkpoint.h"
#include "mtc/rt/loader.h"
#include "mtc/rt/lr_schedule.h"
#include "mtc/rt/metrics.h"
#include "mtc/rt/safetensors.h"
#include "train_test_support.h"

namespace mtc::rt {
namespace {

using testing::column;
using testing::read_jsonl;
using testing::run_train;
using testing::scratch_dir;
namespace tiny = testing::tiny;

class Trainer : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = scratch_dir("trainer_" + std::string(::testing::UnitTest::GetInstance()
                                                     ->current_test_info()
                                                     ->name()));
    corpus_ = dir_ + "/corpus";
    tiny::write_corpus(corpus_, 60);
  }
  std::string dir_, corpus_;
};

TEST_F(Trainer, LossFallsAndLogsEachInterval) {
  ProgramDesc p = tiny::program();
  ::testing::internal::CaptureStdout();
  int rc = run_train(p, {"--data", corpus_, "--steps", "40", "--log-interval", "10",
                         "--metrics", dir_ + "/m.jsonl"});
  std::string out = ::testing::internal::GetCapturedStdout();
  ASSERT_EQ(rc, 0) << out;
  auto rows = read_jsonl(dir_ + "/m.jsonl");
  ASSERT_EQ(rows.size(), 40u);
  auto loss = column(rows, "loss");
  double last5 = 0;
  for (size_t i = 35; i < 40; ++i) last5 += loss[i] / 5;
  EXPECT_LT(last5, loss[0] - 1.0) << "first " << loss[0] << ", last five " << last5;
  EXPECT_EQ(rows[39]["step"], 40);
  EXPECT_EQ(rows[39]["consumed_samples"], 160);
  EXPECT_EQ(rows[0]["tokens"], 32);
  // lr follows the schedule: warm-up 3 steps to 3e-2, cosine to 3e-3 at 40.
  EXPECT_DOUBLE_EQ(rows[0]["lr"].get<double>(), 1e-2);
  EXPECT_NEAR(rows[39]["lr"].get<double>(), 3e-3, 1e-12);

  // The plan summary comes first; then one line per 10 steps in the format
  // step 10/40 | loss 2.1234 | lr 2.79e-02 | grad_norm 0.812 | tokens/s ... | eta ...
  EXPECT_NE(out.find("parameters  272 in 3 tensors"), std::string::npos) << out;
  std::regex line(R"(step (\d+)/40 \| loss \d+\.\d{4} \| lr \d\.\d{2}e-\d{2} \| grad_norm \d+\.\d{3} \| tokens/s \d+ \| TFLOP/s \d+\.\d{2} \| elapsed \d{2}:\d{2}:\d{2} \| eta \d{2}:\d{2}:\d{2})");
  std::vector<std::string> steps;
  for (std::sregex_iterator it(out.begin(), out.end(), line), end; it != end; ++it)
    steps.push_back((*it)[1]);
  EXPECT_EQ(steps, (std::vector<std::string>{"10", "20", "30", "40"})) << out;
}

TEST_F(Trainer, ResumeIsBitExact) {
  ProgramDesc p = tiny::program();
  const std::vector<std::string> common = {"--data", corpus_, "--steps", "20",
                                           "--eval-interval", "5", "--eval-iters", "2",
                                           "--split", "90,10", "--log-interval", "5"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = common;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  ASSERT_EQ(run_train(p, with({"--save", dir_ + "/a", "--metrics", dir_ + "/a.jsonl"})), 0);
  // The same run, killed after step 13 with its last checkpoint at step 10
  // (simulated: stop at 13, then drop the step-13 checkpoint), resumed.
  ASSERT_EQ(run_train(p, with({"--save", dir_ + "/b", "--metrics", dir_ + "/b.jsonl",
                               "--save-interval", "10", "--exit-interval", "13"})), 0);
  EXPECT_EQ(read_jsonl(dir_ + "/b.jsonl").size(), 13u);
  EXPECT_EQ(resolve_checkpoint(dir_ + "/b"), dir_ + "/b/step_000013");
  std::filesystem::remove_all(dir_ + "/b/step_000013");
  testing::write_bytes(dir_ + "/b/latest", "step_000010\n");
  ASSERT_EQ(run_train(p, with({"--save", dir_ + "/b", "--metrics", dir_ + "/b.jsonl",
                               "--resume"})), 0);

  auto a = read_jsonl(dir_ + "/a.jsonl"), b = read_jsonl(dir_ + "/b.jsonl");
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (const char* key : {"loss", "grad_norm", "lr", "consumed_samples", "val_loss"}) {
    auto ca = column(a, key), cb = column(b, key);
    ASSERT_FALSE(ca.empty()) << key;
    EXPECT_EQ(ca, cb) << key;  // exact equality of every value
  }
  EXPECT_EQ(column(a, "val_loss").size(), 4u);
  for (const char* file : {"model.safetensors", "optimizer.safetensors"})
    EXPECT_EQ(testing::read_bytes(dir_ + "/a/step_000020/" + file),
              testing::read_bytes(dir_ + "/b/step_000020/" + file)) << file;
  // The resumed run replaced the metrics of steps 11-13 (one line per step).
  std::vector<double> steps = column(b, "step");
  for (size_t i = 0; i < steps.size(); ++i) EXPECT_EQ(steps[i], double(i + 1));
  // Resuming a finished run does nothing.
  EXPECT_EQ(run_train(p, with({"--save", dir_ + "/b", "--resume"})), 0);
  EXPECT_EQ(read_jsonl(dir_ + "/b.jsonl").size(), 20u);
}

// Mean cross-entropy of the global batch in double, written independently
// of the program: rows (N, S) of tokens/targets, microbatches of kB rows.
double reference_loss(const std::vector<double>& params, const std::vector<int32_t>& tok,
                      const std::vector<int32_t>& tgt) {
  const int64_t rows = static_cast<int64_t>(tok.size()) / tiny::kS;
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t s = 0; s < tiny::kS; ++s) {
      int32_t x = tok[r * tiny::kS + s], y = tgt[r * tiny::kS + s];
      std::vector<double> z(tiny::kV);
      double mx = -1e300;
      for (int64_t v = 0; v < tiny::kV; ++v) {
        z[v] = params[tiny::kHeadB + v];
        for (int64_t d = 0; d < tiny::kD; ++d)
          z[v] += params[tiny::kHeadW + v * tiny::kD + d] * params[tiny::kWte + x * tiny::kD + d];
        mx = std::max(mx, z[v]);
      }
      double sum = 0;
      for (double zv : z) sum += std::exp(zv - mx);
      total += std::log(sum) + mx - z[y];
    }
  }
  // Each microbatch's loss is a mean over its tokens; all microbatches have
  // the same token count, so the mean of means is the mean over all tokens.
  return total / static_cast<double>(rows * tiny::kS);
}

TEST_F(Trainer, ResumeWithoutACheckpointStartsFresh) {
  ProgramDesc p = tiny::program();
  ::testing::internal::CaptureStdout();
  int rc = run_train(p, {"--data", corpus_, "--steps", "5", "--save", dir_ + "/new", "--resume"});
  std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("no checkpoint in " + dir_ + "/new yet"), std::string::npos) << out;
  EXPECT_EQ(resolve_checkpoint(dir_ + "/new"), dir_ + "/new/step_000005");
}

TEST_F(Trainer, DumpGradsMatchFiniteDifferences) {
  ProgramDesc p = tiny::program();
  ASSERT_EQ(run_train(p, {"--init-only", dir_ + "/init", "--seed", "11"}), 0);
  ASSERT_EQ(run_train(p, {"--data", corpus_, "--seed", "11", "--dump-grads",
                          dir_ + "/grads.safetensors"}), 0);
  SafetensorsReader init(dir_ + "/init/step_000000/model.safetensors");
  SafetensorsReader dump(dir_ + "/grads.safetensors");
  EXPECT_EQ(dump.tensors().size(), p.params.size() + 2);
  EXPECT_EQ(dump.metadata().at("mtc.step"), "1");
  EXPECT_EQ(dump.metadata().at("mtc.num_microbatches"), "2");

  const int64_t n = tiny::kMicro * tiny::kB * tiny::kS;
  std::vector<int32_t> tok(n), tgt(n);
  dump.read_i32("batch.tokens", tok.data(), n);
  dump.read_i32("batch.targets", tgt.data(), n);
  EXPECT_EQ(dump.info("batch.tokens").shape, (std::vector<int64_t>{4, 8}));

  // The batch is the loader's first global batch for this seed and split.
  IndexedDataset ds(corpus_);
  GptSamples train(ds, split_source(ds, parse_split("98,2"))[0], tiny::kS, 11, 0, "train");
  BatchLayout layout{tiny::kB, tiny::kMicro, tiny::kS, 0, 1};
  std::vector<int32_t> want_tok(n), want_tgt(n);
  for (int64_t i = 0; i < tiny::kMicro; ++i)
    fill_microbatch(train, layout, 0, i, want_tok.data() + i * tiny::kB * tiny::kS,
                    want_tgt.data() + i * tiny::kB * tiny::kS);
  EXPECT_EQ(tok, want_tok);
  EXPECT_EQ(tgt, want_tgt);

  std::vector<float> p0(tiny::kNumParams), grads(tiny::kNumParams);
  for (const ParamDesc& d : p.params) {
    init.read_f32(d.name, p0.data() + d.offset, d.numel);
    dump.read_f32(d.name, grads.data() + d.offset, d.numel);
  }
  std::vector<double> params(p0.begin(), p0.end());
  EXPECT_NEAR(std::stod(dump.metadata().at("mtc.loss")), reference_loss(params, tok, tgt), 1e-5);

  // Central differences on 40 random elements plus every used embedding row.
  std::mt19937 rng(5);
  std::vector<int64_t> idx;
  for (int k = 0; k < 40; ++k) idx.push_back(rng() % tiny::kNumParams);
  for (int64_t d = 0; d < tiny::kD; ++d) idx.push_back(tiny::kWte + tok[0] * tiny::kD + d);
  const double h = 1e-4;
  for (int64_t i : idx) {
    std::vector<double> plus = params, minus = params;
    plus[i] += h;
    minus[i] -= h;
    double fd = (reference_loss(plus, tok, tgt) - reference_loss(minus, tok, tgt)) / (2 * h);
    EXPECT_NEAR(grads[i], fd, 2e-5 + 1e-3 * std::abs(fd)) << "element " << i;
  }
}

TEST_F(Trainer, InitDependsOnlyOnSeedAndName) {
  ProgramDesc p = tiny::program();
  ProgramDesc q = p;
  std::reverse(q.params.begin(), q.params.end());
  int64_t off = 0;
  for (ParamDesc& d : q.params) {
    d.offset = off;
    off += d.numel;
  }
  ASSERT_EQ(run_train(p, {"--init-only", dir_ + "/p", "--seed", "3"}), 0);
  ASSERT_EQ(run_train(q, {"--init-only", dir_ + "/q", "--seed", "3"}), 0);
  ASSERT_EQ(run_train(p, {"--init-only", dir_ + "/r", "--seed", "4"}), 0);
  SafetensorsReader a(dir_ + "/p/step_000000/model.safetensors"),
      b(dir_ + "/q/step_000000/model.safetensors"), c(dir_ + "/r/step_000000/model.safetensors");
  for (const ParamDesc& d : p.params) {
    std::vector<float> x(d.numel), y(d.numel), z(d.numel);
    a.read_f32(d.name, x.data(), d.numel);
    b.read_f32(d.name, y.data(), d.numel);
    c.read_f32(d.name, z.data(), d.numel);
    EXPECT_EQ(x, y) << d.name;
    if (d.init == InitKind::normal) {
      EXPECT_NE(x, z) << d.name << " must change with the seed";
      double mean = 0, sq = 0;
      for (float v : x) mean += v / d.numel;
      for (float v : x) sq += (v - mean) * (v - mean) / d.numel;
      EXPECT_NEAR(mean, 0.0, 0.15) << d.name;
      EXPECT_NEAR(std::sqrt(sq), d.init_std, 0.1) << d.name;
    } else {
      EXPECT_EQ(x, std::vector<float>(d.numel, 0.0f)) << d.name;
    }
  }
  // A shard of a tensor is the matching slice of the whole (element i of
  // parameter `name` does not depend on the tensor's size).
  ProgramDesc big = p;
  big.params = {{"wte", {tiny::kV * 2, tiny::kD}, 0, 2 * tiny::kV * tiny::kD,
                 InitKind::normal, 0.5, true}};
  big.num_param_elems = 2 * tiny::kV * tiny::kD;
  std::vector<float> whole(big.num_param_elems), part(tiny::kV * tiny::kD);
  init_params(big, 3, whole.data());
  a.read_f32("wte", part.data(), tiny::kV * tiny::kD);
  EXPECT_TRUE(std::equal(part.begin(), part.end(), whole.begin()));
}

struct FlagCase {
  std::vector<std::string> args;
  int rc;
  std::string message;
};

TEST_F(Trainer, BadFlagsAndInputsAreReported) {
  ProgramDesc p = tiny::program();
  std::filesystem::create_directories(dir_ + "/empty");
  const std::vector<FlagCase> cases = {
      {{"--bogus"}, 2, "unknown argument \"--bogus\""},
      {{"--data", corpus_, "--steps", "abc"}, 2, "--steps: expected an integer, got \"abc\""},
      {{"--data", corpus_, "--steps", "0"}, 2, "--steps: must be >= 1"},
      {{"--steps", "5"}, 2, "--data: required"},
      {{"--data", corpus_, "--resume"}, 2, "--resume: needs --load DIR or --save DIR"},
      {{"--data", corpus_, "--lr"}, 2, "--lr: missing value"},
      {{"--data", corpus_, "--lr=-1"}, 2, "--lr: must be > 0"},
      {{"--data", corpus_, "--save-interval", "5"}, 2, "--save-interval: needs --save"},
      {{"--data", corpus_, "--help=1"}, 2, "--help: takes no value"},
      {{"--data", corpus_, "--split", "9;1"}, 1, "--split \"9;1\""},
      {{"--data", dir_ + "/nothing"}, 1, "nothing.idx: cannot open"},
      {{"--data", corpus_, "--split", "100,0", "--eval-interval", "5"}, 1,
       "the validation split of --split 100,0 is empty"},
      {{"--data", corpus_, "--resume", "--load", dir_ + "/empty"}, 1, "not a checkpoint"},
  };
  for (const FlagCase& c : cases) {
    ::testing::internal::CaptureStderr();
    ::testing::internal::CaptureStdout();
    int rc = run_train(p, c.args);
    std::string err = ::testing::internal::GetCapturedStderr();
    ::testing::internal::GetCapturedStdout();
    EXPECT_EQ(rc, c.rc) << c.message << "\n" << err;
    EXPECT_NE(err.find(c.message), std::string::npos) << "stderr: " << err;
  }
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(run_train(p, {"--help"}), 0);
  std::string help = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(help.find("--dump-grads FILE"), std::string::npos) << help;
}

TEST_F(Trainer, BadProgramsAreReported) {
  auto expect_fail = [&](const ProgramDesc& p, const std::string& message) {
    ::testing::internal::CaptureStderr();
    ::testing::internal::CaptureStdout();
    int rc = run_train(p, {"--data", corpus_});
    std::string err = ::testing::internal::GetCapturedStderr();
    ::testing::internal::GetCapturedStdout();
    EXPECT_EQ(rc, 1);
    EXPECT_NE(err.find(message), std::string::npos) << err;
  };
  ProgramDesc dup = tiny::program();
  dup.params[2].name = "wte";
  expect_fail(dup, "parameter \"wte\": the name is used twice");
  ProgramDesc overlap = tiny::program();
  overlap.params[1].offset = 4;
  expect_fail(overlap, "\"wte\" and \"head.weight\" overlap");
  ProgramDesc dp = tiny::program();
  dp.train.global_batch = 8;
  expect_fail(dp, "global_batch 8 = micro_batch 2 x 2 microbatches x dp 2, but the "
                  "program's grid has dp = 1");
  ProgramDesc sched = tiny::program();
  sched.train.warmup_steps = 30;
  expect_fail(sched, "must exceed the warm-up");
}

// A token outside the vocabulary is found by the loader and named by its
// value, data file and position there (it used to be named by the
// program's batch position only).
TEST_F(Trainer, BadIdInTheDataStopsTheRunNamingFileAndPosition) {
  tiny::write_corpus(corpus_ + "_bad", 60, /*bad_token=*/99);
  ProgramDesc p = tiny::program();
  ::testing::internal::CaptureStderr();
  ::testing::internal::CaptureStdout();
  int rc = run_train(p, {"--data", corpus_ + "_bad", "--steps", "300",
                         "--metrics", dir_ + "/m.jsonl"});
  std::string err = ::testing::internal::GetCapturedStderr();
  ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(rc, 1);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      err, m,
      std::regex(R"(training step (\d+), microbatch \d: (.*)_bad\.bin at byte (\d+) \(sequence )"
                 R"((\d+), token (\d+)\): token id 99 is outside the vocabulary \[0, 16\))")))
      << err;
  EXPECT_EQ(m[2].str(), corpus_);
  IndexedDataset ds(corpus_ + "_bad");
  const int64_t seq = std::stoll(m[4]), tok = std::stoll(m[5]);
  int32_t id = 0;
  ds.read(seq, tok, 1, &id);
  EXPECT_EQ(id, 99);
  EXPECT_EQ(std::stoll(m[3]), ds.sequence_pointer(seq) + tok * token_dtype_size(ds.dtype()));
  // The failing step is not recorded.
  EXPECT_EQ(read_jsonl(dir_ + "/m.jsonl").size(), std::stoul(m[1]) - 1);
}

float data_error_at_step_3(HostState& s, const int32_t* tok, const int32_t* tgt) {
  float l = tiny::forward_backward(s, tok, tgt);
  if (s.step == 3 && s.microbatch == 1) s.error = "a data error the program found";
  return l;
}

TEST_F(Trainer, DataErrorFromTheProgramStopsTheRun) {
  ProgramDesc p = tiny::program();
  p.forward_backward = data_error_at_step_3;
  ::testing::internal::CaptureStderr();
  ::testing::internal::CaptureStdout();
  int rc = run_train(p, {"--data", corpus_, "--steps", "30", "--metrics", dir_ + "/m.jsonl"});
  std::string err = ::testing::internal::GetCapturedStderr();
  ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("training step 3, microbatch 1: a data error the program found"),
            std::string::npos)
      << err;
  EXPECT_EQ(read_jsonl(dir_ + "/m.jsonl").size(), 2u);
}

float nan_at_step_3(HostState& s, const int32_t* tok, const int32_t* tgt) {
  float l = tiny::forward_backward(s, tok, tgt);
  return s.step == 3 ? std::nanf("") : l;
}

TEST_F(Trainer, NanLossStopsWithTheStep) {
  ProgramDesc p = tiny::program();
  p.forward_backward = &nan_at_step_3;
  ::testing::internal::CaptureStderr();
  ::testing::internal::CaptureStdout();
  int rc = run_train(p, {"--data", corpus_, "--steps", "10", "--save", dir_ + "/ck"});
  std::string err = ::testing::internal::GetCapturedStderr();
  ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("training step 3: loss is NaN at microbatch 0"), std::string::npos) << err;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/ck/latest"));
}

// Sets an environment variable for a scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    setenv(name, value, 1);
  }
  ~ScopedEnv() { unsetenv(name_); }

 private:
  const char* name_;
};

TEST_F(Trainer, MfuFromThePeakInTheEnvironment) {
  ProgramDesc p = tiny::program();
  const double peak_tflops = 2e-6;  // the tiny model runs at a few MFLOP/s
  std::string out, err;
  int rc = 0;
  {
    ScopedEnv env("MTC_PEAK_TFLOPS", "2e-6");
    ::testing::internal::CaptureStdout();
    rc = run_train(p, {"--data", corpus_, "--steps", "4", "--log-interval", "2",
                       "--metrics", dir_ + "/m.jsonl"});
    out = ::testing::internal::GetCapturedStdout();
  }
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("peak        2e-06 TFLOP/s (MTC_PEAK_TFLOPS): MFU"), std::string::npos)
      << out;
  std::regex line(R"(step (\d)/4 \| .* \| TFLOP/s \d+\.\d{2} \| MFU \d+\.\d% \| elapsed )");
  int lines = 0;
  for (std::sregex_iterator it(out.begin(), out.end(), line), end; it != end; ++it) ++lines;
  EXPECT_EQ(lines, 2) << out;
  // mfu = model FLOPs per step / step time / peak.
  for (const auto& row : read_jsonl(dir_ + "/m.jsonl")) {
    ASSERT_TRUE(row.contains("mfu")) << row.dump();
    const double want = p.flops_per_step / row["step_time_s"].get<double>() /
                        (peak_tflops * 1e12);
    EXPECT_NEAR(row["mfu"].get<double>(), want, 1e-9 * want) << row.dump();
  }

  // Without the variable there is no MFU anywhere.
  ::testing::internal::CaptureStdout();
  ASSERT_EQ(run_train(p, {"--data", corpus_, "--steps", "5", "--metrics", dir_ + "/n.jsonl"}), 0);
  out = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(out.find("MFU"), std::string::npos) << out;
  for (const auto& row : read_jsonl(dir_ + "/n.jsonl")) EXPECT_FALSE(row.contains("mfu"));

  for (const char* bad : {"fast", "0", "-5", "1e400", "3x"}) {
    ScopedEnv env("MTC_PEAK_TFLOPS", bad);
    ::testing::internal::CaptureStderr();
    ::testing::internal::CaptureStdout();
    rc = run_train(p, {"--data", corpus_, "--steps", "2"});
    err = ::testing::internal::GetCapturedStderr();
    ::testing::internal::GetCapturedStdout();
    EXPECT_EQ(rc, 1) << bad;
    EXPECT_NE(err.find("MTC_PEAK_TFLOPS: expected the accelerator's peak TFLOP/s"),
              std::string::npos) << err;
    EXPECT_NE(err.find(std::string("got \"") + bad + "\""), std::string::npos) << err;
  }
}

// Runs with stdout and stderr captured; returns (rc, stderr).
std::pair<int, std::string> run_quiet(const ProgramDesc& p, const std::vector<std::string>& a) {
  ::testing::internal::CaptureStderr();
  ::testing::internal::CaptureStdout();
  int rc = run_train(p, a);
  std::string err = ::testing::internal::GetCapturedStderr();
  ::testing::internal::GetCapturedStdout();
  return {rc, err};
}

// --lr used to be stored nowhere: a resume without it silently trained on
// with the compiled lr. The schedule is in state.json; a resume continues
// it, refuses a different one, and --override-lr-schedule replaces it.
TEST_F(Trainer, ResumeContinuesTheCheckpointsLrSchedule) {
  ProgramDesc p = tiny::program();
  const std::vector<std::string> lr = {"--lr", "5e-3", "--min-lr", "1e-4"};
  auto args = [&](std::vector<std::string> a, bool with_lr) {
    a.insert(a.begin(), {"--data", corpus_, "--steps", "20"});
    if (with_lr) a.insert(a.end(), lr.begin(), lr.end());
    return a;
  };
  ASSERT_EQ(run_train(p, args({"--metrics", dir_ + "/a.jsonl"}, true)), 0);
  ASSERT_EQ(run_train(p, args({"--metrics", dir_ + "/b.jsonl", "--save", dir_ + "/b",
                               "--exit-interval", "10"}, true)), 0);
  auto saved = nlohmann::json::parse(testing::read_bytes(dir_ + "/b/step_000010/state.json"));
  EXPECT_EQ(saved["schedule"]["lr"], 5e-3);
  EXPECT_EQ(saved["schedule"]["min_lr"], 1e-4);
  EXPECT_EQ(saved["schedule"]["decay_steps"], 20);
  ASSERT_EQ(run_train(p, args({"--metrics", dir_ + "/b.jsonl", "--save", dir_ + "/b",
                               "--resume"}, false)), 0);
  auto a = read_jsonl(dir_ + "/a.jsonl"), b = read_jsonl(dir_ + "/b.jsonl");
  EXPECT_EQ(column(a, "lr"), column(b, "lr"));
  EXPECT_EQ(column(a, "loss"), column(b, "loss"));

  // A different --lr on resume is refused, naming both values and the way out.
  auto [rc, err] = run_quiet(p, {"--data", corpus_, "--steps", "30", "--save", dir_ + "/b",
                                 "--resume", "--lr", "1e-2"});
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("step_000020/state.json: the run's learning-rate schedule differs from "
                     "the checkpoint's:\n  --lr 0.01, the checkpoint's 0.005\n"),
            std::string::npos)
      << err;
  EXPECT_NE(err.find("--override-lr-schedule"), std::string::npos) << err;
  // The same value is no conflict; a longer run keeps the decay horizon.
  EXPECT_EQ(run_quiet(p, {"--data", corpus_, "--steps", "22", "--save", dir_ + "/b",
                          "--resume", "--lr", "5e-3", "--metrics", dir_ + "/b.jsonl"}).first,
            0);
  EXPECT_EQ(read_jsonl(dir_ + "/b.jsonl").back()["lr"].get<double>(), 1e-4);
  // --override-lr-schedule: this run's schedule (compiled min_lr, decay to --steps).
  EXPECT_EQ(run_quiet(p, {"--data", corpus_, "--steps", "30", "--save", dir_ + "/b",
                          "--resume", "--lr", "1e-2", "--override-lr-schedule",
                          "--metrics", dir_ + "/b.jsonl"}).first,
            0);
  LrSchedule mine{1e-2, p.train.min_lr, p.train.warmup_steps, 30, p.train.decay};
  EXPECT_EQ(read_jsonl(dir_ + "/b.jsonl").back()["lr"].get<double>(), lr_at(mine, 30));
  auto last = nlohmann::json::parse(testing::read_bytes(dir_ + "/b/step_000030/state.json"));
  EXPECT_EQ(last["schedule"]["lr"], 1e-2);
}

// A consumed_samples near 2^63 used to overflow the loader's sample index
// (SIGSEGV); it is refused when the run's steps cannot fit after it, and a
// huge value that fits trains.
TEST_F(Trainer, HugeConsumedSamplesOnResume) {
  ProgramDesc p = tiny::program();
  ASSERT_EQ(run_quiet(p, {"--data", corpus_, "--steps", "4", "--save", dir_ + "/ck"}).first, 0);
  const std::string state = dir_ + "/ck/step_000004/state.json";
  auto j = nlohmann::json::parse(testing::read_bytes(state));
  j["consumed_samples"] = INT64_MAX - 3;
  testing::write_bytes(state, j.dump());
  auto [rc, err] = run_quiet(p, {"--data", corpus_, "--steps", "8", "--save", dir_ + "/ck",
                                 "--resume"});
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("state.json: consumed_samples 9223372036854775804 plus 4 steps of 4 "
                     "samples does not fit a 64-bit sample count"),
            std::string::npos)
      << err;
  j["consumed_samples"] = INT64_MAX - 100;
  testing::write_bytes(state, j.dump());
  EXPECT_EQ(run_quiet(p, {"--data", corpus_, "--steps", "8", "--save", dir_ + "/ck",
                          "--resume"}).first,
            0);
}

// A one-rank program used to ignore a malformed launch environment.
TEST_F(Trainer, MalformedRankOrWorldSizeIsRefused) {
  ProgramDesc p = tiny::program();
  {
    ScopedEnv rank("RANK", "0"), size("WORLD_SIZE", "2x");
    auto [rc, err] = run_quiet(p, {"--data", corpus_, "--steps", "4"});
    EXPECT_EQ(rc, 1);
    EXPECT_NE(err.find("WORLD_SIZE='2x' is not an integer"), std::string::npos) << err;
  }
  {
    ScopedEnv rank("RANK", "zero"), size("WORLD_SIZE", "1");
    auto [rc, err] = run_quiet(p, {"--data", corpus_, "--steps", "4"});
    EXPECT_EQ(rc, 1);
    EXPECT_NE(err.find("RANK='zero' is not an integer"), std::string::npos) << err;
  }
  {
    ScopedEnv size("WORLD_SIZE", "1");
    auto [rc, err] = run_quiet(p, {"--data", corpus_, "--steps", "4"});
    EXPECT_EQ(rc, 1);
    EXPECT_NE(err.find("RANK is not set but WORLD_SIZE is"), std::string::npos) << err;
  }
  {
    ScopedEnv rank("RANK", "0"), size("WORLD_SIZE", "1");
    EXPECT_EQ(run_quiet(p, {"--data", corpus_, "--steps", "4"}).first, 0);
  }
  // Slurm's variables are read (and checked) when RANK is unset; its task
  // count alone does not make a one-rank program refuse to run.
  {
    ScopedEnv id("SLURM_PROCID", "0"), tasks("SLURM_NTASKS", "four");
    auto [rc, err] = run_quiet(p, {"--data", corpus_, "--steps", "4"});
    EXPECT_EQ(rc, 1);
    EXPECT_NE(err.find("SLURM_NTASKS='four' is not an integer"), std::string::npos) << err;
  }
  ScopedEnv id("SLURM_PROCID", "0"), tasks("SLURM_NTASKS", "4");
  EXPECT_EQ(run_quiet(p, {"--data", corpus_, "--steps", "4"}).first, 0);
}

// The trainer's outputs go through OutputFile and the checkpoint checks:
// --dump-grads into a FIFO streams, into a directory is refused; --save
// into someone else's directory is refused before training.
TEST_F(Trainer, OutputsNeverReplaceWhatTheyDidNotWrite) {
  namespace fs = std::filesystem;
  ProgramDesc p = tiny::program();
  fs::create_directories(dir_ + "/out");
  testing::write_bytes(dir_ + "/out/keep", "keep");
  auto [rc, err] = run_quiet(p, {"--data", corpus_, "--dump-grads", dir_ + "/out"});
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("/out: is a directory"), std::string::npos) << err;
  EXPECT_EQ(testing::read_bytes(dir_ + "/out/keep"), "keep");

  const std::string fifo = dir_ + "/grads.pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto reader = std::async(std::launch::async, [&] { return testing::read_bytes(fifo); });
  EXPECT_EQ(run_quiet(p, {"--data", corpus_, "--dump-grads", fifo}).first, 0);
  const std::string dump = reader.get();
  EXPECT_TRUE(fs::is_fifo(fifo));
  testing::write_bytes(dir_ + "/grads.safetensors", dump);
  EXPECT_TRUE(SafetensorsReader(dir_ + "/grads.safetensors").has("batch.tokens"));

  std::tie(rc, err) = run_quiet(p, {"--data", corpus_, "--steps", "4", "--save", dir_ + "/out"});
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("/out: not empty and not an mtc checkpoint directory"), std::string::npos)
      << err;
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_ + "/out"))
    names.insert(e.path().filename().string());
  EXPECT_EQ(names, std::set<std::string>{"keep"});
}

TEST(LogLine, MfuFollowsTflops) {
  LogLine l;
  l.step = 3;
  l.total_steps = 10;
  l.loss = 2.5;
  l.lr = 1e-3;
  l.grad_norm = 0.5;
  l.tokens_per_s = 1000;
  l.tflops = 123.456;
  l.mfu = 0.41234;
  EXPECT_NE(format_log_line(l).find("| tokens/s 1000 | TFLOP/s 123.46 | MFU 41.2% | elapsed "),
            std::string::npos) << format_log_line(l);
  l.mfu = 0;
  EXPECT_EQ(format_log_line(l).find("MFU"), std::string::npos);
}

}  // namespace
}  // namespace mtc::rt
