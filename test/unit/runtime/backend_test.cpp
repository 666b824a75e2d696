// The trainer through a Backend other than the host's (program.h), on the
// CPU: the "pool" backend (backend_test_pool.h) stands in for device
// memory; a trainer access to program memory that does not go through the
// backend faults. The program is the tiny hand-written one
// (train_test_support.h) wrapped so that every entry point checks that it
// got pool pointers, the context and an up-to-date compute copy, and ids
// inside the vocabulary. (Several ranks through the pool:
// backend_multirank_test.cpp.)
//
// Checked: the same losses, gradient norms, validation losses and
// checkpoints as the host backend for 10 steps; bit-exact resume through
// the backend; --dump-grads through it equal to the host's dump; bad ids
// stopped on the host by the loader, named with step, microbatch and data
// position, before any upload; the "does not
// fit" error with the plan's numbers before any allocation; cleanup of
// every allocation and the context after success and after errors; the
// host backend's own functions; program checks of the backend.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <regex>
#include <stdexcept>
#include <tuple>

#include "backend_test_pool.h"
#include "mtc/rt/checkpoint.h"
#include "mtc/rt/loader.h"
#include "mtc/rt/safetensors.h"
#include "train_test_support.h"

namespace mtc::rt {
namespace {

using testing::column;
using testing::read_jsonl;
using testing::run_train;
using testing::scratch_dir;
namespace tiny = testing::tiny;
namespace pool = testing::pool;

class Backends : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = scratch_dir("backend_" + std::string(::testing::UnitTest::GetInstance()
                                                    ->current_test_info()
                                                    ->name()));
    corpus_ = dir_ + "/corpus";
    tiny::write_corpus(corpus_, 60);
    pool::reset();
    pool::g_context = {};
  }
  // After every run through the pool: nothing left allocated, the context
  // destroyed as often as created, no contract breach.
  void expect_clean(int64_t runs) {
    EXPECT_TRUE(pool::g().regions.empty()) << pool::g().regions.size() << " leaked";
    EXPECT_EQ(pool::g_context.created, runs);
    EXPECT_EQ(pool::g_context.destroyed, runs);
    EXPECT_EQ(pool::g().violations, std::vector<std::string>{});
  }
  // Runs with stdout and stderr captured; returns (rc, stdout, stderr).
  std::tuple<int, std::string, std::string> quiet(const ProgramDesc& p,
                                                  const std::vector<std::string>& args) {
    ::testing::internal::CaptureStderr();
    ::testing::internal::CaptureStdout();
    int rc = run_train(p, args);
    std::string out = ::testing::internal::GetCapturedStdout();
    std::string err = ::testing::internal::GetCapturedStderr();
    return {rc, out, err};
  }
  std::string dir_, corpus_;
};


TEST_F(Backends, SameTrainingAsTheHostBackend) {
  const std::vector<std::string> common = {"--data", corpus_, "--steps", "10",
                                           "--eval-interval", "5", "--eval-iters", "2",
                                           "--split", "90,10"};
  auto with = [&](const std::string& name) {
    std::vector<std::string> a = common;
    for (const std::string& x : {std::string("--save"), dir_ + "/" + name,
                                 std::string("--metrics"), dir_ + "/" + name + ".jsonl"})
      a.push_back(x);
    return a;
  };
  auto [hrc, hout, herr] = quiet(tiny::program(), with("host"));
  ASSERT_EQ(hrc, 0) << herr;
  // The pool knows its memory (1 GiB free of 2 GiB): the check passes and the
  // device line is printed.
  pool::reset(size_t(1) << 30, size_t(2) << 30);
  auto [prc, pout, perr] = quiet(pool::program(), with("pool"));
  ASSERT_EQ(prc, 0) << perr;
  EXPECT_NE(pout.find("device      pool: 1.0 GiB free of 2.0 GiB"), std::string::npos) << pout;
  EXPECT_EQ(hout.find("device "), std::string::npos) << "the host backend knows no memory";

  auto h = read_jsonl(dir_ + "/host.jsonl"), q = read_jsonl(dir_ + "/pool.jsonl");
  ASSERT_EQ(h.size(), 10u);
  ASSERT_EQ(q.size(), 10u);
  for (const char* key : {"loss", "grad_norm", "lr", "val_loss"}) {
    ASSERT_FALSE(column(h, key).empty()) << key;
    EXPECT_EQ(column(h, key), column(q, key)) << key;  // exact
  }
  for (const char* file : {"model.safetensors", "optimizer.safetensors"})
    EXPECT_EQ(testing::read_bytes(dir_ + "/host/step_000010/" + file),
              testing::read_bytes(dir_ + "/pool/step_000010/" + file)) << file;

  // Grads zeroed once per step through the backend; one upload of tokens and
  // one of targets per microbatch (10 steps x 2, and validations at steps 5
  // and 10 x 2 iters x 2), plus the params at initialization (fresh moments
  // are the backend's zeroed memory); three downloads for the one
  // checkpoint; one synchronize per step; 8 buffers.
  EXPECT_EQ(pool::g().zeros, 10);
  EXPECT_EQ(pool::g().uploads, 1 + 2 * (10 * 2 + 2 * 2 * 2));
  EXPECT_EQ(pool::g().downloads, 3);
  EXPECT_EQ(pool::g().syncs, 10);
  EXPECT_EQ(pool::g().allocs, 8);
  EXPECT_EQ(pool::g_context.syncs_of_compute_copy, 1);
  expect_clean(1);
}

TEST_F(Backends, ResumeIsBitExactThroughTheBackend) {
  ProgramDesc p = pool::program();
  const std::vector<std::string> common = {"--data", corpus_, "--steps", "16",
                                           "--eval-interval", "4", "--eval-iters", "1",
                                           "--split", "90,10"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = common;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  ASSERT_EQ(std::get<0>(quiet(p, with({"--save", dir_ + "/a", "--metrics", dir_ + "/a.jsonl"}))),
            0);
  ASSERT_EQ(std::get<0>(quiet(p, with({"--save", dir_ + "/b", "--metrics", dir_ + "/b.jsonl",
                                       "--save-interval", "5", "--exit-interval", "7"}))),
            0);
  std::filesystem::remove_all(dir_ + "/b/step_000007");
  testing::write_bytes(dir_ + "/b/latest", "step_000005\n");
  const int64_t syncs_before = pool::g_context.syncs_of_compute_copy;
  auto [rc, out, err] = quiet(p, with({"--save", dir_ + "/b", "--metrics",
                                       dir_ + "/b.jsonl", "--resume"}));
  ASSERT_EQ(rc, 0) << err;
  // The load wrote params: the compute copy was refreshed (the forward of
  // step 6 checks it).
  EXPECT_EQ(pool::g_context.syncs_of_compute_copy, syncs_before + 1);

  auto a = read_jsonl(dir_ + "/a.jsonl"), b = read_jsonl(dir_ + "/b.jsonl");
  ASSERT_EQ(a.size(), 16u);
  ASSERT_EQ(b.size(), 16u);
  for (const char* key : {"loss", "grad_norm", "lr", "consumed_samples", "val_loss"})
    EXPECT_EQ(column(a, key), column(b, key)) << key;
  for (const char* file : {"model.safetensors", "optimizer.safetensors"})
    EXPECT_EQ(testing::read_bytes(dir_ + "/a/step_000016/" + file),
              testing::read_bytes(dir_ + "/b/step_000016/" + file)) << file;

  // A checkpoint written through the host backend resumes through the pool
  // to the same end (checkpoints do not depend on the backend).
  ASSERT_EQ(std::get<0>(quiet(tiny::program(),
                              with({"--save", dir_ + "/h", "--exit-interval", "7"}))), 0);
  ASSERT_EQ(std::get<0>(quiet(p, with({"--save", dir_ + "/h", "--resume"}))), 0);
  for (const char* file : {"model.safetensors", "optimizer.safetensors"})
    EXPECT_EQ(testing::read_bytes(dir_ + "/a/step_000016/" + file),
              testing::read_bytes(dir_ + "/h/step_000016/" + file)) << file;
  expect_clean(4);
}

TEST_F(Backends, DumpGradsAndInitOnlyThroughTheBackend) {
  ASSERT_EQ(std::get<0>(quiet(tiny::program(), {"--data", corpus_, "--seed", "5",
                                                "--dump-grads", dir_ + "/host.safetensors"})),
            0);
  ASSERT_EQ(std::get<0>(quiet(pool::program(), {"--data", corpus_, "--seed", "5",
                                                "--dump-grads", dir_ + "/pool.safetensors"})),
            0);
  SafetensorsReader h(dir_ + "/host.safetensors"), q(dir_ + "/pool.safetensors");
  ASSERT_EQ(q.tensors().size(), tiny::program().params.size() + 2);
  EXPECT_EQ(h.metadata(), q.metadata());
  for (const ParamDesc& d : tiny::program().params) {
    std::vector<float> a(d.numel), b(d.numel);
    h.read_f32(d.name, a.data(), d.numel);
    q.read_f32(d.name, b.data(), d.numel);
    EXPECT_EQ(a, b) << d.name;
    double norm = 0;
    for (float x : b) norm += double(x) * x;
    if (d.name != "head.bias") EXPECT_GT(norm, 0) << d.name << " got no gradient";
  }
  const int64_t n = tiny::kMicro * tiny::kT;
  for (const char* batch : {"batch.tokens", "batch.targets"}) {
    std::vector<int32_t> a(n), b(n);
    h.read_i32(batch, a.data(), n);
    q.read_i32(batch, b.data(), n);
    EXPECT_EQ(a, b) << batch;
  }

  ASSERT_EQ(std::get<0>(quiet(tiny::program(), {"--init-only", dir_ + "/ih", "--seed", "5"})), 0);
  ASSERT_EQ(std::get<0>(quiet(pool::program(), {"--init-only", dir_ + "/ip", "--seed", "5"})), 0);
  EXPECT_EQ(testing::read_bytes(dir_ + "/ih/step_000000/model.safetensors"),
            testing::read_bytes(dir_ + "/ip/step_000000/model.safetensors"));
  expect_clean(2);
}

TEST_F(Backends, PlanThatDoesNotFitIsReportedBeforeAllocating) {
  // The tiny plan is a few KiB plus 2 MiB of allocation rounding for each of
  // its 8 buffers: 10 MiB free is too little, 20 MiB is enough.
  pool::reset(size_t(10) << 20, size_t(16) << 20);
  auto [rc, out, err] = quiet(pool::program(), {"--data", corpus_, "--steps", "5"});
  EXPECT_EQ(rc, 1);
  const double pb = 4.0 * tiny::kNumParams;
  const std::string want =
      "the plan does not fit in the memory of the pool device: it needs params " +
      human_bytes(pb) + " + grads " + human_bytes(pb) + " + AdamW moments " +
      human_bytes(2 * pb) + " + compute copy " + human_bytes(pb) + " + activations " +
      human_bytes(4.0 * tiny::kT * tiny::kV) + " + batch " +
      human_bytes(2 * 4.0 * tiny::kMicro * tiny::kT) + " = " +
      human_bytes(5 * pb + 4.0 * tiny::kT * tiny::kV + 2 * 4.0 * tiny::kMicro * tiny::kT);
  EXPECT_NE(err.find(want), std::string::npos) << err << "\nwant: " << want;
  EXPECT_EQ(human_bytes(pb), "1.1 KiB");
  EXPECT_NE(err.find("16.0 MiB of allocation rounding"), std::string::npos) << err;
  EXPECT_NE(err.find("the device has 10.0 MiB free of 16.0 MiB"), std::string::npos) << err;
  EXPECT_EQ(pool::g().allocs, 0);
  expect_clean(1);

  pool::reset(size_t(20) << 20, size_t(32) << 20);
  EXPECT_EQ(std::get<0>(quiet(pool::program(), {"--data", corpus_, "--steps", "5"})), 0);
  expect_clean(2);
}

TEST_F(Backends, BadIdsAreCaughtOnTheHostBeforeUpload) {
  tiny::write_corpus(corpus_ + "_bad", 60, /*bad_token=*/99);
  auto [rc, out, err] = quiet(pool::program(), {"--data", corpus_ + "_bad", "--steps",
                                                "300", "--seed", "9"});
  EXPECT_EQ(rc, 1);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      err, m,
      std::regex(R"(training step (\d+), microbatch (\d): .*_bad\.bin at byte \d+ )"
                 R"(\(sequence (\d+), token (\d+)\): token id 99 is outside the vocabulary )"
                 R"(\[0, 16\))")))
      << err;
  // The bad id is where the message says.
  IndexedDataset ds(corpus_ + "_bad");
  int32_t id = 0;
  ds.read(std::stoll(m[3]), std::stoll(m[4]), 1, &id);
  EXPECT_EQ(id, 99);
  // The program never saw the bad batch (its own check would say "token 99
  // at position N is outside the vocabulary [0, 16)").
  EXPECT_EQ(err.find("at position"), std::string::npos) << err;
  expect_clean(1);
}

double throw_in_optimizer(HostState&, float, int64_t) {
  throw std::runtime_error("device fault in the optimizer (simulated)");
}

TEST_F(Backends, TargetErrorsStopTheRunAndFreeEverything) {
  ProgramDesc p = pool::program();
  p.optimizer_step = &throw_in_optimizer;
  auto [rc, out, err] = quiet(p, {"--data", corpus_, "--steps", "5"});
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("error: training step 1, optimizer: device fault in the optimizer (simulated)"),
            std::string::npos)
      << err;
  expect_clean(1);
}

TEST_F(Backends, ProgramChecksCoverTheBackend) {
  Backend partial = pool::kBackend;
  partial.download = nullptr;
  ProgramDesc p = pool::program();
  p.backend = &partial;
  auto [rc, out, err] = quiet(p, {"--data", corpus_});
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("backend \"pool\" lacks a function"), std::string::npos) << err;

  ProgramDesc q = pool::program();
  q.backend = nullptr;
  std::tie(rc, out, err) = quiet(q, {"--data", corpus_});
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("target \"pool\" has no backend"), std::string::npos) << err;

  ProgramDesc r = pool::program();
  r.compute_param_bytes = -4;
  std::tie(rc, out, err) = quiet(r, {"--data", corpus_});
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("compute_param_bytes must be >= 0"), std::string::npos) << err;
  EXPECT_EQ(pool::g().allocs, 0);
  EXPECT_EQ(pool::g_context.created, 0);
}

TEST(HostBackend, AllocatesZeroedAlignedMemoryAndCopies) {
  const Backend& b = host_backend();
  EXPECT_STREQ(b.name, "host");
  for (size_t bytes : {size_t(0), size_t(1), size_t(63), size_t(4096), size_t(100003)}) {
    auto* p = static_cast<unsigned char*>(b.alloc(bytes, "a test buffer"));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
    for (size_t i = 0; i < bytes; ++i) ASSERT_EQ(p[i], 0) << bytes << " " << i;
    std::vector<unsigned char> src(bytes), back(bytes, 0xAB);
    for (size_t i = 0; i < bytes; ++i) src[i] = static_cast<unsigned char>(i * 131 + 7);
    b.upload(p, src.data(), bytes);
    b.download(back.data(), p, bytes);
    EXPECT_EQ(back, src);
    b.zero(p, bytes);
    b.download(back.data(), p, bytes);
    EXPECT_EQ(back, std::vector<unsigned char>(bytes, 0));
    b.release(p);
  }
  size_t free_bytes = 1, total_bytes = 1;
  b.memory_info(&free_bytes, &total_bytes);
  EXPECT_EQ(free_bytes, 0u);
  EXPECT_EQ(total_bytes, 0u);
  ProgramDesc p = tiny::program();
  EXPECT_EQ(&program_backend(p), &b);
  p.backend = &pool::kBackend;
  EXPECT_EQ(&program_backend(p), &pool::kBackend);
  // A host allocation that cannot be made names the buffer.
  try {
    b.alloc(~size_t(0) - 8, "the enormous buffer");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the enormous buffer"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mtc::rt
