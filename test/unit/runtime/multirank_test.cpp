// Multi-rank training with the hand-written SPMD program of
// multirank_test_support.h, each job run as forked ranks that meet through
// a file store (Gloo over 127.0.0.1):
//   - data parallel (grid dp=2) trains, validates and dumps gradients like
//     one process over the same global batches (losses within 1e-6);
//   - tensor parallel (tp=2, two split parameters) initializes the same
//     global model as the one-process tiny program (bit for bit), trains like
//     it, and its checkpoints (gathered) resume under tp=1 and the other way
//     round with the same next losses; a 2 x 2 grid (4 ranks) too;
//   - a WORLD_SIZE that does not match the grid, a data error on one rank,
//     ranks that find different checkpoints and bad split descriptions stop
//     every rank with a message.
// Only global rank 0 prints or writes; the other ranks' stdout stays empty.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "mtc/rt/checkpoint.h"
#include "mtc/rt/grid_comm.h"
#include "mtc/rt/safetensors.h"
#include "multirank_test_support.h"

namespace mtc::rt {
namespace {

using testing::read_jsonl;
using testing::run_train;
using testing::scratch_dir;
using testing::sharded::Job;
using testing::column;
using testing::sharded::expect_close;
using testing::sharded::expect_ok;
using testing::sharded::expect_same_tensors;
using testing::sharded::run_job;
namespace sharded = testing::sharded;
namespace tiny = testing::tiny;

class MultiRank : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = scratch_dir("multirank_" + std::string(::testing::UnitTest::GetInstance()
                                                      ->current_test_info()
                                                      ->name()));
    corpus_ = dir_ + "/corpus";
    tiny::write_corpus(corpus_, 60);
  }
  std::vector<std::string> args(std::vector<std::string> extra) const {
    std::vector<std::string> a = {"--data", corpus_, "--split", "90,10"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  // One process, in this process, stdout swallowed.
  void run_one(const ProgramDesc& p, const std::vector<std::string>& a) const {
    ::testing::internal::CaptureStdout();
    int rc = run_train(p, a);
    std::string out = ::testing::internal::GetCapturedStdout();
    ASSERT_EQ(rc, 0) << out;
  }
  std::string dir_, corpus_;
};

TEST_F(MultiRank, DataParallelTrainsLikeOneProcess) {
  // One process takes the global batch of 8 as 4 microbatches of 2; each of
  // the two dp ranks takes 2 of them (loader.h: rows i*4 + 2d + [0, 2)).
  const auto a = args({"--steps", "6", "--eval-interval", "3", "--eval-iters", "2",
                       "--log-interval", "2"});
  run_one(sharded::program<4>(1, 1), [&] {
    auto x = a;
    x.insert(x.end(), {"--metrics", dir_ + "/one.jsonl", "--save", dir_ + "/one"});
    return x;
  }());
  auto x = a;
  x.insert(x.end(), {"--metrics", dir_ + "/dp.jsonl", "--save", dir_ + "/dp"});
  Job job = run_job(2, sharded::program<2>(2, 1), x);
  expect_ok(job);
  EXPECT_NE(job.out[0].find("grid        dp=2 = 2 ranks (gloo)"), std::string::npos)
      << job.out[0];
  EXPECT_NE(job.out[0].find("global 8 = micro 2 x 2 microbatches x dp 2"), std::string::npos);
  EXPECT_NE(job.out[0].find("step 6/6 | loss "), std::string::npos) << job.out[0];
  EXPECT_NE(job.out[0].find("validation at step 6"), std::string::npos) << job.out[0];

  auto one = read_jsonl(dir_ + "/one.jsonl"), dp = read_jsonl(dir_ + "/dp.jsonl");
  ASSERT_EQ(one.size(), 6u);
  ASSERT_EQ(dp.size(), 6u);
  expect_close(column(one, "loss"), column(dp, "loss"), 1e-6, "loss");
  expect_close(column(one, "val_loss"), column(dp, "val_loss"), 1e-6, "val_loss");
  expect_close(column(one, "grad_norm"), column(dp, "grad_norm"), 1e-5, "grad_norm");
  EXPECT_EQ(column(one, "lr"), column(dp, "lr"));
  EXPECT_EQ(column(one, "consumed_samples"), column(dp, "consumed_samples"));
  EXPECT_EQ(column(dp, "val_loss").size(), 2u);
  // The same model after 6 steps (replicated over dp; rank 0 wrote it).
  expect_same_tensors(dir_ + "/one/step_000006/model.safetensors",
                      dir_ + "/dp/step_000006/model.safetensors", 1e-5);
}

TEST_F(MultiRank, DataParallelDumpIsTheOneProcessDump) {
  run_one(sharded::program<4>(1, 1), args({"--dump-grads", dir_ + "/one.safetensors"}));
  Job job = run_job(2, sharded::program<2>(2, 1), args({"--dump-grads", dir_ + "/dp.safetensors"}));
  expect_ok(job);
  SafetensorsReader one(dir_ + "/one.safetensors"), dp(dir_ + "/dp.safetensors");
  // The global batch in sample order: exactly the one-process rows.
  for (const char* name : {"batch.tokens", "batch.targets"}) {
    ASSERT_EQ(one.info(name).shape, (std::vector<int64_t>{8, tiny::kS}));
    ASSERT_EQ(dp.info(name).shape, one.info(name).shape);
    std::vector<int32_t> x(8 * tiny::kS), y(8 * tiny::kS);
    one.read_i32(name, x.data(), 8 * tiny::kS);
    dp.read_i32(name, y.data(), 8 * tiny::kS);
    EXPECT_EQ(x, y) << name;
  }
  // Step 1 starts from the same parameters: each microbatch loss is the same
  // float, their mean the same up to the order of the additions.
  for (const char* key : {"mtc.microbatch_losses", "mtc.num_microbatches", "mtc.micro_batch",
                          "mtc.step", "mtc.seed"})
    EXPECT_EQ(one.metadata().at(key), dp.metadata().at(key)) << key;
  EXPECT_NEAR(std::stod(dp.metadata().at("mtc.loss")), std::stod(one.metadata().at("mtc.loss")),
              1e-12);
  // Gradients: (sum over ranks of 2 microbatches) / 2 / 2 vs (sum of 4) / 4.
  expect_same_tensors(dir_ + "/one.safetensors", dir_ + "/dp.safetensors", 1e-6);
}

TEST_F(MultiRank, TensorParallelInitIsTheOneProcessInit) {
  run_one(tiny::program(), {"--init-only", dir_ + "/one", "--seed", "5"});
  Job job = run_job(2, sharded::program<2>(1, 2), {"--init-only", dir_ + "/tp", "--seed", "5"});
  expect_ok(job);
  EXPECT_NE(job.out[0].find("parameters  272 in 3 tensors (144 on each rank)"),
            std::string::npos) << job.out[0];
  for (const char* file : {"model.safetensors", "optimizer.safetensors"})
    expect_same_tensors(dir_ + "/one/step_000000/" + file, dir_ + "/tp/step_000000/" + file, 0);

  // Each rank's slice, as init_params computes it: the matching block of
  // the global tensor (wte by columns, head.weight by rows).
  const ProgramDesc one = tiny::program(), tp = sharded::program<2>(1, 2);
  std::vector<float> global(one.num_param_elems);
  init_params(one, 5, global.data());
  for (int64_t r = 0; r < 2; ++r) {
    std::vector<float> local(tp.num_param_elems);
    init_params(tp, 5, local.data(), {0, 0, r});
    for (int64_t v = 0; v < tiny::kV; ++v)
      for (int64_t d = 0; d < tiny::kD / 2; ++d)
        EXPECT_EQ(local[v * 4 + d], global[tiny::kWte + v * tiny::kD + r * 4 + d]);
    for (int64_t v = 0; v < tiny::kV / 2; ++v)
      for (int64_t d = 0; d < tiny::kD; ++d)
        EXPECT_EQ(local[64 + v * tiny::kD + d], global[tiny::kHeadW + (r * 8 + v) * tiny::kD + d]);
  }
}

TEST_F(MultiRank, TensorParallelTrainsLikeOneProcess) {
  const auto a = args({"--steps", "8", "--eval-interval", "4", "--eval-iters", "2"});
  auto one_args = a, tp_args = a;
  one_args.insert(one_args.end(), {"--metrics", dir_ + "/one.jsonl", "--save", dir_ + "/one"});
  tp_args.insert(tp_args.end(), {"--metrics", dir_ + "/tp.jsonl", "--save", dir_ + "/tp"});
  run_one(tiny::program(), one_args);
  Job job = run_job(2, sharded::program<2>(1, 2), tp_args);
  expect_ok(job);
  auto one = read_jsonl(dir_ + "/one.jsonl"), tp = read_jsonl(dir_ + "/tp.jsonl");
  ASSERT_EQ(tp.size(), 8u);
  expect_close(column(one, "loss"), column(tp, "loss"), 1e-5, "loss");
  expect_close(column(one, "val_loss"), column(tp, "val_loss"), 1e-5, "val_loss");
  expect_close(column(one, "grad_norm"), column(tp, "grad_norm"), 1e-4, "grad_norm");
  // The gathered checkpoint holds the same global tensors as tp=1's.
  for (const char* file : {"model.safetensors", "optimizer.safetensors"})
    expect_same_tensors(dir_ + "/one/step_000008/" + file, dir_ + "/tp/step_000008/" + file,
                        1e-4);
}

TEST_F(MultiRank, CheckpointsResumeAcrossLayouts) {
  // Two runs stop after step 4 with a checkpoint: one at tp=1, one at tp=2.
  // Each checkpoint is resumed to step 8 by both layouts; the two
  // continuations of one checkpoint must see the same losses.
  const ProgramDesc one = tiny::program(), tp = sharded::program<2>(1, 2);
  auto base = args({"--steps", "8", "--exit-interval", "4"});
  run_one(one, [&] { auto x = base; x.insert(x.end(), {"--save", dir_ + "/a"}); return x; }());
  {
    auto x = base;
    x.insert(x.end(), {"--save", dir_ + "/b"});
    expect_ok(run_job(2, tp, x));
  }
  ASSERT_EQ(resolve_checkpoint(dir_ + "/b"), dir_ + "/b/step_000004");
  auto resume = [&](const std::string& from, const std::string& name) {
    return args({"--steps", "8", "--resume", "--load", dir_ + "/" + from, "--save",
                 dir_ + "/" + name, "--metrics", dir_ + "/" + name + ".jsonl"});
  };
  run_one(one, resume("a", "a1"));
  expect_ok(run_job(2, tp, resume("a", "a2")));
  run_one(one, resume("b", "b1"));
  expect_ok(run_job(2, tp, resume("b", "b2")));
  for (const char* pair : {"a", "b"}) {
    auto r1 = read_jsonl(dir_ + "/" + pair + "1.jsonl"), r2 = read_jsonl(dir_ + "/" + pair + "2.jsonl");
    ASSERT_EQ(r1.size(), 4u) << pair;
    ASSERT_EQ(r2.size(), 4u) << pair;
    EXPECT_EQ(column(r1, "step"), (std::vector<double>{5, 6, 7, 8}));
    EXPECT_EQ(column(r2, "step"), column(r1, "step"));
    EXPECT_EQ(column(r2, "consumed_samples"), column(r1, "consumed_samples"));
    expect_close(column(r1, "loss"), column(r2, "loss"), 1e-5, std::string("loss from ") + pair);
    for (const char* file : {"model.safetensors", "optimizer.safetensors"})
      expect_same_tensors(dir_ + "/" + pair + "1/step_000008/" + file,
                          dir_ + "/" + pair + "2/step_000008/" + file, 1e-4);
  }
  // Both checkpoints hold the same step-4 model (up to rounding): the
  // tp=2 one was gathered, not written as slices.
  for (const char* file : {"model.safetensors", "optimizer.safetensors"})
    expect_same_tensors(dir_ + "/a/step_000004/" + file, dir_ + "/b/step_000004/" + file, 1e-4);
}

TEST_F(MultiRank, TensorAndDataParallelGridOfFour) {
  // tp=2 x dp=2 with one microbatch per rank: the global batch of the tiny
  // program (2 microbatches of 2).
  const ProgramDesc grid = sharded::program<1>(2, 2);
  run_one(tiny::program(), args({"--steps", "5", "--metrics", dir_ + "/one.jsonl"}));
  Job job = run_job(4, grid, args({"--steps", "5", "--metrics", dir_ + "/g.jsonl"}));
  expect_ok(job);
  EXPECT_NE(job.out[0].find("grid        tp=2 x dp=2 = 4 ranks"), std::string::npos)
      << job.out[0];
  expect_close(column(read_jsonl(dir_ + "/one.jsonl"), "loss"),
               column(read_jsonl(dir_ + "/g.jsonl"), "loss"), 1e-5, "loss");

  run_one(tiny::program(), args({"--dump-grads", dir_ + "/one.safetensors"}));
  expect_ok(run_job(4, grid, args({"--dump-grads", dir_ + "/g.safetensors"})));
  expect_same_tensors(dir_ + "/one.safetensors", dir_ + "/g.safetensors", 1e-5);
  SafetensorsReader a(dir_ + "/one.safetensors"), b(dir_ + "/g.safetensors");
  std::vector<int32_t> x(4 * tiny::kS), y(4 * tiny::kS);
  a.read_i32("batch.tokens", x.data(), 4 * tiny::kS);
  b.read_i32("batch.tokens", y.data(), 4 * tiny::kS);
  EXPECT_EQ(x, y);
}

TEST_F(MultiRank, WorldSizeMustMatchTheGrid) {
  Job three = run_job(3, sharded::program<2>(2, 1), args({"--steps", "2"}), 30);
  for (size_t r = 0; r < three.ranks.size(); ++r) {
    EXPECT_EQ(three.ranks[r].exit_code, 1) << three.ranks[r].err;
    EXPECT_NE(three.ranks[r].err.find("the program was compiled for dp=2 = 2 ranks but "
                                      "WORLD_SIZE is 3; start it with 2 processes, e.g. "
                                      "mtc-launch -n 2"),
              std::string::npos)
        << three.ranks[r].err;
  }
  // A one-rank program started as two ranks would train twice and race on
  // its checkpoints.
  Job two = run_job(2, tiny::program(), args({"--steps", "2"}), 30);
  for (const auto& r : two.ranks) {
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find("compiled for 1 rank but WORLD_SIZE is 2"), std::string::npos) << r.err;
  }
}

TEST_F(MultiRank, DataErrorOnOneRankStopsEveryRank) {
  tiny::write_corpus(corpus_ + "_bad", 60, /*bad_token=*/99);
  Job job = run_job(2, sharded::program<2>(2, 1),
                    {"--data", corpus_ + "_bad", "--steps", "300", "--save", dir_ + "/ck"}, 60);
  sharded::expect_data_error_stops_every_rank(job, dir_ + "/ck");
}

TEST_F(MultiRank, RanksMustResumeFromTheSameCheckpoint) {
  const ProgramDesc dp = sharded::program<2>(2, 1);
  expect_ok(run_job(2, dp, args({"--steps", "4", "--save", dir_ + "/a", "--save-interval", "2"})));
  // Rank 1 is pointed at another step (as on a node that does not share
  // the directory and finds an older copy).
  Job other = run_job(2, dp, [&](int rank) {
    return args({"--steps", "6", "--resume", "--load",
                 dir_ + (rank == 0 ? "/a" : "/a/step_000002")});
  }, 30);
  for (const auto& r : other.ranks) {
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find("the ranks do not see the same checkpoint to resume from (rank 0: "
                         "step 4, rank 1: step 2)"), std::string::npos) << r.err;
  }
  // Rank 1 cannot find it at all: it names the path, rank 0 names rank 1.
  Job missing = run_job(2, dp, [&](int rank) {
    return args({"--steps", "6", "--resume", "--load", dir_ + (rank == 0 ? "/a" : "/nowhere")});
  }, 30);
  EXPECT_EQ(missing.ranks[1].exit_code, 1);
  EXPECT_NE(missing.ranks[1].err.find("nowhere: not a checkpoint"), std::string::npos)
      << missing.ranks[1].err;
  EXPECT_EQ(missing.ranks[0].exit_code, 1);
  EXPECT_NE(missing.ranks[0].err.find("stopping because rank 1 failed (see its error)"),
            std::string::npos) << missing.ranks[0].err;
}

TEST(MultiRankProgram, SplitParametersAreValidated) {
  auto error_of = [](const ProgramDesc& p) {
    try {
      validate_program(p);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(error_of(sharded::program<2>(2, 2)), "");
  ProgramDesc p = sharded::program<2>(1, 2);
  p.params[0].split_dim = 2;
  EXPECT_NE(error_of(p).find("parameter \"wte\": split_dim 2, split_axis 2: split_dim is not a "
                             "dimension of shape [16, 8]"), std::string::npos) << error_of(p);
  p = sharded::program<2>(1, 2);
  p.params[1].split_axis = 0;
  EXPECT_NE(error_of(p).find("split_axis must be 1 (data), 2 (tensor) or 3 (expert parallel)"),
            std::string::npos);
  p = sharded::program<2>(1, 2);
  p.grid[3] = 3;
  EXPECT_NE(error_of(p).find("expert parallelism ep 3 must be at least 1 and divide dp 1"),
            std::string::npos) << error_of(p);
  p = sharded::program<2>(1, 2);
  p.params[0].numel = 128;
  EXPECT_NE(error_of(p).find("numel 128 != product of shape [16, 8] / 2 ranks"),
            std::string::npos) << error_of(p);
  p = sharded::program<2>(1, 2);
  p.grid[2] = 3;
  EXPECT_NE(error_of(p).find("does not divide evenly over the 3 ranks"), std::string::npos)
      << error_of(p);
  // The experts' optimizer region needs ep and the dense region, and the
  // regions must fill the buffer.
  p = sharded::program<2>(4, 1);
  p.grid[3] = 2;
  p.optimizer_shard_elems = p.num_param_elems / 4;
  p.expert_optimizer_shard_elems = 16;
  EXPECT_NE(error_of(p).find("expert_optimizer_shard_elems 16 needs expert parallelism (ep 2) "
                             "and a sharded dense region, with num_param_elems"),
            std::string::npos) << error_of(p);
  p.num_param_elems += 2 * 16;
  EXPECT_EQ(error_of(p), "");
  p.grid[3] = 1;
  EXPECT_NE(error_of(p).find("needs expert parallelism (ep 1)"), std::string::npos);
  p = sharded::program<2>(2, 1);
  p.train.global_batch = 4;
  EXPECT_NE(error_of(p).find("global_batch 4 = micro_batch 2 x 2 microbatches x dp 1, but the "
                             "program's grid has dp = 2"), std::string::npos) << error_of(p);
  p.grid[1] = 0;
  EXPECT_NE(error_of(p).find("every axis must be at least 1"), std::string::npos);
}

TEST(MultiRankProgram, SlicesOfAThreeDimensionalTensor) {
  // (3, 4, 6) split along dimension 1 over 2 ranks: rank r holds
  // x[a, 2r + b, c] for b in [0, 2), as (3, 2, 6).
  ParamDesc d;
  d.name = "x";
  d.shape = {3, 4, 6};
  d.numel = 36;
  d.split_dim = 1;
  d.split_axis = 2;
  const int64_t grid[3] = {1, 1, 2};
  std::vector<float> global(72), back(72, -1.0f);
  for (size_t i = 0; i < global.size(); ++i) global[i] = static_cast<float>(i);
  for (int64_t r = 0; r < 2; ++r) {
    const ParamSlice s = param_slice(d, grid, {0, 0, r});
    EXPECT_EQ(s.local_numel(), 36);
    EXPECT_EQ(s.global_numel(), 72);
    std::vector<float> local(36);
    take_slice(s, global.data(), local.data());
    for (int64_t a = 0; a < 3; ++a)
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t c = 0; c < 6; ++c) {
          const int64_t li = (a * 2 + b) * 6 + c, gi = (a * 4 + 2 * r + b) * 6 + c;
          EXPECT_EQ(local[li], global[gi]);
          EXPECT_EQ(s.global_at(li), gi);
        }
    put_slice(s, r, local.data(), back.data());
  }
  EXPECT_EQ(back, global);
  // Split along an axis of size 1, or not split: the whole tensor.
  const int64_t one[3] = {1, 1, 1};
  EXPECT_EQ(param_slice(d, one, {0, 0, 0}).global_numel(), 36);
  EXPECT_EQ(param_slice(d, one, {0, 0, 0}).parts, 1);
}

TEST(MultiRankProgram, ExpertsSplitOverEpThenTp) {
  // (4, 6, 2) stacked experts: dimension 0 over ep = 2, then dimension 1 of
  // that slice over tp = 3; the rank at (tp t, ep e) holds
  // x[2e + a, 2t + b, c] for a, b in [0, 2), as (2, 2, 2).
  ParamDesc d;
  d.name = "experts";
  d.shape = {4, 6, 2};
  d.numel = 8;
  d.split_dim = 0;
  d.split_axis = 3;
  d.split2_dim = 1;
  d.split2_axis = 2;
  const int64_t grid[4] = {1, 2, 3, 2};
  std::vector<float> global(48);
  for (size_t i = 0; i < global.size(); ++i) global[i] = static_cast<float>(i);
  std::vector<int> seen(48, 0);
  for (int64_t e = 0; e < 2; ++e)
    for (int64_t t = 0; t < 3; ++t) {
      const ParamSlices s = param_slices(d, grid, {0, e, t, e, 0});
      ASSERT_TRUE(s.split());
      EXPECT_EQ(s.second.local_numel(), 8);
      std::vector<float> local(8);
      take_slices(s, global.data(), local.data());
      for (int64_t a = 0; a < 2; ++a)
        for (int64_t b = 0; b < 2; ++b)
          for (int64_t c = 0; c < 2; ++c) {
            const int64_t li = (a * 2 + b) * 2 + c, gi = ((2 * e + a) * 6 + 2 * t + b) * 2 + c;
            EXPECT_EQ(local[li], global[gi]);
            EXPECT_EQ(s.global_at(li), gi);
            ++seen[gi];
          }
    }
  EXPECT_EQ(seen, std::vector<int>(48, 1));  // every element on exactly one rank
}

}  // namespace
}  // namespace mtc::rt
