// Several ranks through a Backend other than the host's, on the CPU: the
// pool backend (backend_test_pool.h), whose Backend::comm_factory is Gloo on
// pool memory, runs the data-parallel SPMD program of
// multirank_test_support.h (grid dp=2) wrapped like the pool's tiny
// program. This is the wiring of a multi-GPU CUDA run (program memory in the
// backend, the program's GridComm on the backend's communicators, the
// trainer's own collectives on a host Gloo World over downloaded copies)
// without a GPU. Each job is two forked ranks (multirank_test_support.h).
//
// Checked:
//   - training, validation and the checkpoint equal the one-process host
//     run over the same global batches (losses within 1e-6);
//   - in every rank the program's collectives reached the pool's
//     communicators with pool memory (one all_reduce per step, each followed
//     by a backend synchronize), no trainer access bypassed the backend (it
//     would fault) or handed host memory to the program's GridComm, and
//     every allocation and the context were released;
//   - resume through the pool on two ranks continues bit for bit;
//   - --dump-grads (the trainer's dp average and gathers, on host copies)
//     equals the one-process dump;
//   - tp > 1 and a backend without communicators are refused at start.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "backend_test_pool.h"
#include "mtc/rt/safetensors.h"
#include "multirank_test_support.h"

namespace mtc::rt {
namespace {

using testing::read_jsonl;
using testing::run_train;
using testing::scratch_dir;
using testing::column;
using testing::sharded::expect_close;
using testing::sharded::expect_ok;
using testing::sharded::expect_same_tensors;
using testing::sharded::Job;
namespace pool = testing::pool;
namespace sharded = testing::sharded;
namespace tiny = testing::tiny;

// train_main of `program` in this (forked) rank, then the pool's account on
// stderr,
//   "pool: all_reduces 6, collectives 6, syncs 12, regions left 0, contexts 1/1"
// with one "pool violation: ..." line per contract breach, which turn a
// successful exit into status 120.
int pool_rank(const ProgramDesc& program, const std::vector<std::string>& args) {
  pool::reset();
  pool::g_context = {};
  const int rc = run_train(program, args);
  const pool::Pool& g = pool::g();
  std::fprintf(stderr,
               "pool: all_reduces %lld, collectives %lld, syncs %lld, regions left %zu, "
               "contexts %lld/%lld\n",
               static_cast<long long>(g.all_reduces), static_cast<long long>(g.collectives),
               static_cast<long long>(g.syncs), g.regions.size(),
               static_cast<long long>(pool::g_context.created),
               static_cast<long long>(pool::g_context.destroyed));
  for (const std::string& v : g.violations) std::fprintf(stderr, "pool violation: %s\n", v.c_str());
  return rc == 0 && !g.violations.empty() ? 120 : rc;
}

Job pool_job(const ProgramDesc& program, const std::vector<std::string>& args) {
  return sharded::run_job_with(2, [&](int) { return pool_rank(program, args); });
}

class BackendMultiRank : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = scratch_dir("backend_multirank_" +
                       std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    corpus_ = dir_ + "/corpus";
    tiny::write_corpus(corpus_, 60);
  }
  std::vector<std::string> args(std::vector<std::string> extra) const {
    std::vector<std::string> a = {"--data", corpus_, "--split", "90,10"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  // One process on the host backend, in this process, stdout swallowed.
  void run_one(const ProgramDesc& p, const std::vector<std::string>& a) const {
    ::testing::internal::CaptureStdout();
    int rc = run_train(p, a);
    std::string out = ::testing::internal::GetCapturedStdout();
    ASSERT_EQ(rc, 0) << out;
  }
  std::string dir_, corpus_;
};

TEST_F(BackendMultiRank, DataParallelThroughTheBackendTrainsLikeOneProcess) {
  // One process takes the global batch of 8 as 4 microbatches of 2; each of
  // the two dp ranks takes 2 of them.
  const auto common = args({"--steps", "6", "--eval-interval", "3", "--eval-iters", "2"});
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = common;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  run_one(sharded::program<4>(1, 1), with({"--metrics", dir_ + "/one.jsonl", "--save",
                                           dir_ + "/one"}));
  const ProgramDesc dp = pool::wrap(sharded::program<2>(2, 1));
  Job job = pool_job(dp, with({"--metrics", dir_ + "/dp.jsonl", "--save", dir_ + "/dp"}));
  expect_ok(job);
  EXPECT_NE(job.out[0].find("grid        dp=2 = 2 ranks (pool-gloo for the program, gloo for "
                            "the trainer)"),
            std::string::npos)
      << job.out[0];
  EXPECT_NE(job.out[0].find("(pool memory, each rank)"), std::string::npos) << job.out[0];
  // Each rank: the optimizer's gradient sum once per step through the pool's
  // communicator, each followed by a synchronize (plus the trainer's one per
  // step); nothing left allocated.
  for (size_t r = 0; r < job.ranks.size(); ++r)
    EXPECT_NE(job.ranks[r].err.find("pool: all_reduces 6, collectives 6, syncs 12, regions "
                                    "left 0, contexts 1/1\n"),
              std::string::npos)
        << "rank " << r << ":\n" << job.ranks[r].err;

  auto one = read_jsonl(dir_ + "/one.jsonl"), got = read_jsonl(dir_ + "/dp.jsonl");
  ASSERT_EQ(one.size(), 6u);
  ASSERT_EQ(got.size(), 6u);
  expect_close(column(one, "loss"), column(got, "loss"), 1e-6, "loss");
  expect_close(column(one, "val_loss"), column(got, "val_loss"), 1e-6, "val_loss");
  expect_close(column(one, "grad_norm"), column(got, "grad_norm"), 1e-5, "grad_norm");
  EXPECT_EQ(column(one, "lr"), column(got, "lr"));
  EXPECT_EQ(column(one, "consumed_samples"), column(got, "consumed_samples"));
  for (const char* file : {"model.safetensors", "optimizer.safetensors"})
    expect_same_tensors(dir_ + "/one/step_000006/" + file, dir_ + "/dp/step_000006/" + file,
                        1e-5);

  // Stopped after step 3 and resumed through the pool: the same steps 4-6
  // and the same files, bit for bit.
  expect_ok(pool_job(dp, with({"--metrics", dir_ + "/re.jsonl", "--save", dir_ + "/re",
                               "--exit-interval", "3"})));
  Job resumed =
      pool_job(dp, with({"--metrics", dir_ + "/re.jsonl", "--save", dir_ + "/re", "--resume"}));
  expect_ok(resumed);
  EXPECT_NE(resumed.ranks[1].err.find("pool: all_reduces 3,"), std::string::npos)
      << resumed.ranks[1].err;
  auto re = read_jsonl(dir_ + "/re.jsonl");
  ASSERT_EQ(re.size(), 6u);
  for (const char* key : {"loss", "grad_norm", "val_loss", "consumed_samples"})
    EXPECT_EQ(column(got, key), column(re, key)) << key;
  for (const char* file : {"model.safetensors", "optimizer.safetensors"})
    EXPECT_EQ(testing::read_bytes(dir_ + "/dp/step_000006/" + file),
              testing::read_bytes(dir_ + "/re/step_000006/" + file))
        << file;
}

// A program that sums the gradients over dp inside the last microbatch's
// backward pass (as the CUDA target's buckets do) trains like one process;
// and when one rank's data has a bad id (found by the loader) that rank
// still runs every microbatch, so the other's
// all-reduce finds it: both stop with an error naming the step, nothing
// hangs, nothing is saved.
TEST_F(BackendMultiRank, DataErrorOnOneRankKeepsTheCollectivesMatched) {
  const auto a = args({"--steps", "4"});
  run_one(sharded::program<4>(1, 1), [&] {
    auto x = a;
    x.insert(x.end(), {"--metrics", dir_ + "/one.jsonl"});
    return x;
  }());
  const ProgramDesc dp = pool::wrap(sharded::program<2>(2, 1, /*summed_in_backward=*/true));
  auto x = a;
  x.insert(x.end(), {"--metrics", dir_ + "/dp.jsonl"});
  expect_ok(pool_job(dp, x));
  auto one = read_jsonl(dir_ + "/one.jsonl"), got = read_jsonl(dir_ + "/dp.jsonl");
  ASSERT_EQ(got.size(), 4u);
  expect_close(column(one, "loss"), column(got, "loss"), 1e-6, "loss");
  expect_close(column(one, "grad_norm"), column(got, "grad_norm"), 1e-5, "grad_norm");

  tiny::write_corpus(corpus_ + "_bad", 60, /*bad_token=*/99);
  Job job = pool_job(dp, {"--data", corpus_ + "_bad", "--steps", "300", "--save", dir_ + "/ck"});
  sharded::expect_data_error_stops_every_rank(job, dir_ + "/ck");
}

TEST_F(BackendMultiRank, DumpThroughTheBackendIsTheOneProcessDump) {
  run_one(sharded::program<4>(1, 1), args({"--dump-grads", dir_ + "/one.safetensors"}));
  Job job = pool_job(pool::wrap(sharded::program<2>(2, 1)),
                     args({"--dump-grads", dir_ + "/dp.safetensors"}));
  expect_ok(job);
  // The dump's dp average and gathers are the trainer's, on host copies:
  // none of them reached the program's communicators.
  for (size_t r = 0; r < job.ranks.size(); ++r)
    EXPECT_NE(job.ranks[r].err.find("pool: all_reduces 0, collectives 0, syncs 0, regions left "
                                    "0, contexts 1/1\n"),
              std::string::npos)
        << "rank " << r << ":\n" << job.ranks[r].err;
  SafetensorsReader one(dir_ + "/one.safetensors"), dp(dir_ + "/dp.safetensors");
  for (const char* name : {"batch.tokens", "batch.targets"}) {
    ASSERT_EQ(dp.info(name).shape, (std::vector<int64_t>{8, tiny::kS}));
    std::vector<int32_t> x(8 * tiny::kS), y(8 * tiny::kS);
    one.read_i32(name, x.data(), 8 * tiny::kS);
    dp.read_i32(name, y.data(), 8 * tiny::kS);
    EXPECT_EQ(x, y) << name;
  }
  EXPECT_EQ(one.metadata().at("mtc.microbatch_losses"), dp.metadata().at("mtc.microbatch_losses"));
  expect_same_tensors(dir_ + "/one.safetensors", dir_ + "/dp.safetensors", 1e-6);
}

TEST_F(BackendMultiRank, RefusedWithoutTheMeansToRun) {
  auto error_of = [&](const ProgramDesc& p) {
    ::testing::internal::CaptureStderr();
    ::testing::internal::CaptureStdout();
    const int rc = run_train(p, args({"--steps", "2"}));
    ::testing::internal::GetCapturedStdout();
    std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(rc, 1) << err;
    return err;
  };
  pool::reset();
  pool::g_context = {};
  // A backend without communicators for its memory cannot run a program of
  // several ranks, data- or tensor-parallel: refused before the World is
  // built or anything allocated.
  Backend no_comms = pool::kBackend;
  no_comms.comm_factory = nullptr;
  for (auto [tp, dp] : {std::pair<int, int>{1, 2}, std::pair<int, int>{2, 1}}) {
    ProgramDesc p = pool::wrap(sharded::program<2>(dp, tp));
    p.backend = &no_comms;
    std::string err = error_of(p);
    const std::string grid = tp > 1 ? "(tp=2 = 2 ranks)" : "(dp=2 = 2 ranks)";
    EXPECT_NE(err.find(grid + ": backend pool has no communicators for its memory "
                              "(Backend::comm_factory is null"),
              std::string::npos)
        << err;
  }
  EXPECT_EQ(pool::g().allocs, 0);
  EXPECT_EQ(pool::g_context.created, 0);
}

}  // namespace
}  // namespace mtc::rt
