// Tests the collective watchdog: entries that end in time never fire, a
// probe's entry stays open until the probe says done, and in child
// processes: an entry past its timeout, a probe reporting an error, and a
// real Gloo all_reduce that one rank never joins each end the process with
// kWatchdogExitCode and a message naming rank, collective, group and step,
// within a short timeout.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "comm_test_support.h"
#include "mtc/rt/comm.h"
#include "mtc/rt/watchdog.h"

namespace mtc::rt {
namespace {

TEST(CommWatchdog, EntriesThatEndInTimeNeverFire) {
  Watchdog wd(0, 0.2);
  for (int i = 0; i < 50; ++i) {
    uint64_t id = wd.begin("all_reduce", "world (ranks 0,1)");
    wd.end(id);
  }
  EXPECT_EQ(wd.open_entries(), 0u);
  // Still alive well past the timeout: nothing was left open.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(wd.open_entries(), 0u);
}

TEST(CommWatchdog, ProbeKeepsTheEntryOpenUntilDone) {
  Watchdog wd(0, 5.0);
  std::atomic<int> polls{0};
  uint64_t id = wd.begin("all_gather", "tp[0] (ranks 0,1)");
  wd.end_when(id, [&](std::string*) { return ++polls >= 3; });
  wd.end(id);  // ignored: the probe owns the entry now
  EXPECT_EQ(wd.open_entries(), 1u);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(4);
  while (wd.open_entries() != 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(wd.open_entries(), 0u);
  EXPECT_GE(polls.load(), 3);
}

TEST(CommWatchdog, RefusesANonPositiveTimeout) {
  EXPECT_THROW(Watchdog(0, 0.0), CommError);
  EXPECT_THROW(Watchdog(0, -1.0), CommError);
}

TEST(CommWatchdog, AnEntryPastItsTimeoutEndsTheProcess) {
  testing::RunOptions opt;
  opt.deadline_s = 20;
  auto res = testing::run_ranks(
      1,
      [](int) {
        Watchdog wd(5, 0.3);
        wd.set_step(42);
        wd.begin("reduce_scatter", "dp[1] (ranks 1,3)");
        std::this_thread::sleep_for(std::chrono::seconds(15));
        return 0;  // not reached
      },
      opt);
  EXPECT_FALSE(res[0].timed_out);
  EXPECT_EQ(res[0].exit_code, kWatchdogExitCode) << res[0].err;
  EXPECT_NE(res[0].err.find("mtc watchdog: rank 5: reduce_scatter on group dp[1] (ranks 1,3) at "
                            "step 42 has not completed after 0.3 s"),
            std::string::npos)
      << res[0].err;
  EXPECT_LT(res[0].seconds, 10.0);
}

TEST(CommWatchdog, AProbeErrorEndsTheProcess) {
  testing::RunOptions opt;
  opt.deadline_s = 20;
  auto res = testing::run_ranks(
      1,
      [](int) {
        Watchdog wd(2, 60.0);
        uint64_t id = wd.begin("send_recv", "pp[0] (ranks 0,2)");
        wd.end_when(id, [](std::string* error) {
          *error = "peer vanished";
          return false;
        });
        std::this_thread::sleep_for(std::chrono::seconds(15));
        return 0;
      },
      opt);
  EXPECT_EQ(res[0].exit_code, kWatchdogExitCode) << res[0].err;
  EXPECT_NE(res[0].err.find("rank 2: send_recv on group pp[0] (ranks 0,2) at step 0 failed: "
                            "peer vanished"),
            std::string::npos)
      << res[0].err;
}

// A collective implemented outside the backend (Communicator::watched, as
// cuda::PeerAllReduce uses it) is watched like the backend's own: done, it
// leaves no entry; never done, it ends the rank with the usual report.
TEST(CommWatchdog, WatchedWorkIsReportedLikeACollective) {
  testing::RunOptions opt;
  opt.rdzv_dir = testing::unique_dir("watchdog-watched");
  opt.env = {{"MTC_COLLECTIVE_TIMEOUT", "1"}};
  opt.deadline_s = 30;
  auto res = testing::run_ranks(
      1,
      [](int) {
        auto world = World::from_env(GridSpec{1, 1, 1}, gloo_comm_factory());
        world->set_step(4);
        Communicator& c = world->comm(GroupKind::world);
        int calls = 0;
        c.watched("all_reduce (copy engines)", nullptr, [&] { ++calls; });
        if (calls != 1 || world->watchdog().open_entries() != 0) return 10;
        bool threw = false;
        try {
          c.watched("all_reduce (copy engines)", nullptr, [] { throw CommError("x"); });
        } catch (const CommError&) {
          threw = true;
        }
        if (!threw || world->watchdog().open_entries() != 0) return 11;
        c.watched("all_reduce (copy engines)", nullptr,
                  [] { std::this_thread::sleep_for(std::chrono::seconds(25)); });
        return 12;
      },
      opt);
  EXPECT_FALSE(res[0].timed_out);
  EXPECT_EQ(res[0].exit_code, kWatchdogExitCode) << res[0].err;
  EXPECT_NE(res[0].err.find("mtc watchdog: rank 0: all_reduce (copy engines) on group world"),
            std::string::npos)
      << res[0].err;
  EXPECT_NE(res[0].err.find("at step 4 has not completed after 1 s"), std::string::npos)
      << res[0].err;
}

// Rank 1 builds the world and then never joins the all_reduce; rank 0 must
// not hang: its watchdog ends it after MTC_COLLECTIVE_TIMEOUT=1.
TEST(CommWatchdog, AHungAllReduceEndsTheRankWithAClearError) {
  testing::RunOptions opt;
  opt.rdzv_dir = testing::unique_dir("watchdog-hang");
  opt.env = {{"MTC_COLLECTIVE_TIMEOUT", "1"}};
  opt.primary = 0;  // once rank 0 is gone, stop rank 1
  opt.deadline_s = 30;
  auto res = testing::run_ranks(
      2,
      [](int r) {
        auto world = World::from_env(GridSpec{1, 2, 1}, gloo_comm_factory());
        world->set_step(7);
        if (r == 1) {
          std::this_thread::sleep_for(std::chrono::seconds(25));
          return 0;
        }
        std::vector<float> x(16, 1.0f);
        world->comm(GroupKind::dp).all_reduce(x.data(), 16);
        std::fprintf(stderr, "all_reduce returned without its peer\n");
        return 0;
      },
      opt);
  EXPECT_FALSE(res[0].timed_out);
  EXPECT_EQ(res[0].exit_code, kWatchdogExitCode) << res[0].err;
  EXPECT_NE(res[0].err.find("mtc watchdog: rank 0: all_reduce on group dp[0] (ranks 0,1) at step "
                            "7 has not completed after 1 s (MTC_COLLECTIVE_TIMEOUT=1)"),
            std::string::npos)
      << res[0].err;
  EXPECT_LT(res[0].seconds, 15.0);
  EXPECT_TRUE(res[1].killed_by_us);
}

}  // namespace
}  // namespace mtc::rt
