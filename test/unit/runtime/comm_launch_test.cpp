// Tests the mtc-launch tool as a user runs it: the environment each rank
// gets and the [rank N] prefixes; a failing rank's exit code propagated
// with its last stderr lines while the other (sleeping) ranks are killed; a
// rank killed by a signal; SIGTERM to the launcher forwarded to every rank;
// pass-through when RANK/WORLD_SIZE are already set; command-line errors,
// among them several nodes without a shared MTC_RDZV_TOKEN.
// The ranks are small sh scripts; every case ends within a few seconds.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "comm_test_support.h"

namespace mtc::rt {
namespace {

std::string launcher() {
#ifdef MTC_LAUNCH_BIN
  return MTC_LAUNCH_BIN;
#else
  // Built beside the test binary (CMAKE_RUNTIME_OUTPUT_DIRECTORY).
  return (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "mtc-launch").string();
#endif
}

struct Launch {
  int rc = -1;
  std::string out, err;
  double seconds = 0;
};

// Runs mtc-launch with `args` and extra environment; optionally sends
// `signal_after` to the launcher once `ready_marker` appears `ready_count`
// times in its stdout. Kills it after 30 s.
Launch run_launcher(const std::vector<std::string>& args,
                    const std::vector<std::pair<std::string, std::string>>& env = {},
                    int signal_after = 0, const std::string& ready_marker = "",
                    int ready_count = 0) {
  Launch res;
  std::string bin = launcher();
  EXPECT_TRUE(std::filesystem::exists(bin)) << bin << " is missing: build the mtc-launch target";
  std::string dir = testing::unique_dir("launch");
  std::string out_path = dir + "/out", err_path = dir + "/err";
  auto t0 = std::chrono::steady_clock::now();
  pid_t pid = ::fork();
  if (pid == 0) {
    int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, 1);
    ::dup2(err, 2);
    for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                          "MTC_RDZV_DIR", "MTC_RDZV_TOKEN", "NCCL_NVLS_ENABLE"})
      ::unsetenv(v);
    for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> argv{const_cast<char*>(bin.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    ::_exit(126);
  }
  bool signalled = false;
  int status = 0;
  while (true) {
    pid_t p = ::waitpid(pid, &status, WNOHANG);
    if (p == pid) break;
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (secs > 30) {
      ::kill(pid, SIGKILL);
      ADD_FAILURE() << "mtc-launch did not finish in 30 s";
    }
    if (signal_after != 0 && !signalled) {
      std::string out = testing::slurp(out_path);
      int seen = 0;
      for (size_t at = out.find(ready_marker); at != std::string::npos;
           at = out.find(ready_marker, at + 1))
        ++seen;
      if (seen >= ready_count) {
        ::kill(pid, signal_after);
        signalled = true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  res.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  res.out = testing::slurp(out_path);
  res.err = testing::slurp(err_path);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return res;
}

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

TEST(CommLaunch, GivesEachRankItsEnvironmentAndPrefixesItsLines) {
  Launch r = run_launcher(
      {"-n", "3", "--master-port", "29999", "sh", "-c",
       "echo \"env $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT "
       "nvls=$NCCL_NVLS_ENABLE\"; echo \"dir $MTC_RDZV_DIR\"; printf 'to stderr %s' $RANK >&2"},
      {{"NCCL_NVLS_ENABLE", "0"}});
  EXPECT_EQ(r.rc, 0) << r.err;
  for (int k = 0; k < 3; ++k) {
    std::string ks = std::to_string(k);
    EXPECT_TRUE(
        contains(r.out, "[rank " + ks + "] env " + ks + " 3 " + ks + " 3 127.0.0.1 29999 nvls=0\n"))
        << r.out;
    // A last line without a newline is still printed, with its prefix.
    EXPECT_TRUE(contains(r.err, "[rank " + ks + "] to stderr " + ks + "\n")) << r.err;
  }
  // The rendezvous directory was fresh and is gone afterwards.
  size_t at = r.out.find("] dir ");
  ASSERT_NE(at, std::string::npos) << r.out;
  std::string dir = r.out.substr(at + 6, r.out.find('\n', at) - at - 6);
  EXPECT_TRUE(contains(dir, "mtc-rdzv-")) << dir;
  EXPECT_FALSE(std::filesystem::exists(dir)) << dir;
}

TEST(CommLaunch, AFailingRankStopsTheOthersAndSetsTheExitCode) {
  Launch r = run_launcher(
      {"-n", "3", "sh", "-c",
       "if [ \"$RANK\" = 1 ]; then sleep 0.3; echo 'first line' >&2; echo \"boom on $RANK\" >&2; "
       "exit 7; fi; echo started; exec sleep 60"});
  EXPECT_EQ(r.rc, 7) << r.err;
  EXPECT_TRUE(contains(r.err,
                       "mtc-launch: rank 1 failed with exit code 7; its last stderr lines:\n"
                       "  [rank 1] first line\n  [rank 1] boom on 1\n"))
      << r.err;
  // The sleeping ranks were stopped: the launcher did not wait 60 s.
  EXPECT_LT(r.seconds, 20.0);
}

TEST(CommLaunch, ARankKilledByASignalIsReported) {
  Launch r = run_launcher(
      {"-n", "2", "sh", "-c", "if [ \"$RANK\" = 0 ]; then kill -SEGV $$; fi; exec sleep 60"});
  EXPECT_EQ(r.rc, 128 + SIGSEGV) << r.err;
  EXPECT_TRUE(contains(r.err, "mtc-launch: rank 0 was killed by signal 11")) << r.err;
  EXPECT_LT(r.seconds, 20.0);
}

TEST(CommLaunch, ForwardsSigtermToEveryRank) {
  Launch r = run_launcher({"-n", "2", "sh", "-c",
                           "trap 'echo \"got TERM $RANK\"; exit 143' TERM; echo ready; "
                           "sleep 60 & wait"},
                          {}, SIGTERM, "ready", 2);
  EXPECT_EQ(r.rc, 128 + SIGTERM) << r.err;
  EXPECT_TRUE(contains(r.out, "[rank 0] got TERM 0")) << r.out;
  EXPECT_TRUE(contains(r.out, "[rank 1] got TERM 1")) << r.out;
  EXPECT_LT(r.seconds, 20.0);
}

TEST(CommLaunch, RunsTheProgramAsTheGivenRankWhenRankIsAlreadySet) {
  Launch r = run_launcher({"sh", "-c", "echo \"I am $RANK of $WORLD_SIZE\""},
                          {{"RANK", "2"}, {"WORLD_SIZE", "4"}});
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, "I am 2 of 4\n");

  Launch bad = run_launcher({"-n", "2", "true"}, {{"RANK", "2"}, {"WORLD_SIZE", "4"}});
  EXPECT_EQ(bad.rc, 2);
  EXPECT_TRUE(contains(bad.err, "RANK=2 and WORLD_SIZE=4 are already set")) << bad.err;
}

TEST(CommLaunch, RefusesABadCommandLine) {
  Launch no_n = run_launcher({"true"});
  EXPECT_EQ(no_n.rc, 2);
  EXPECT_TRUE(contains(no_n.err, "-n N (ranks on this node) is required")) << no_n.err;
  Launch zero = run_launcher({"-n", "0", "true"});
  EXPECT_EQ(zero.rc, 2);
  EXPECT_TRUE(contains(zero.err, "-n '0' is not an integer in [1, 4096]")) << zero.err;
  Launch multi = run_launcher({"-n", "2", "--nnodes", "2", "true"});
  EXPECT_EQ(multi.rc, 2);
  EXPECT_TRUE(contains(multi.err, "--master-addr")) << multi.err;
  // Off loopback, several nodes need a shared MTC_RDZV_TOKEN (no rank
  // starts without one); with it, each rank gets it.
  Launch no_token =
      run_launcher({"-n", "1", "--nnodes", "2", "--master-addr", "node0.invalid", "true"});
  EXPECT_EQ(no_token.rc, 2);
  EXPECT_TRUE(contains(no_token.err, "export the same secret on every node")) << no_token.err;
  Launch token = run_launcher({"-n", "1", "--nnodes", "2", "--node-rank", "1", "--master-addr",
                               "node0.invalid", "sh", "-c", "echo $MTC_RDZV_TOKEN"},
                              {{"MTC_RDZV_TOKEN", "0123456789abcdef"}});
  EXPECT_EQ(token.rc, 0) << token.err;
  EXPECT_EQ(token.out, "[rank 1] 0123456789abcdef\n");
  Launch missing = run_launcher({"-n", "1", "/nonexistent/program"});
  EXPECT_EQ(missing.rc, 127);
  EXPECT_TRUE(contains(missing.err, "cannot run '/nonexistent/program'")) << missing.err;
  EXPECT_TRUE(contains(missing.err, "rank 0 failed with exit code 127")) << missing.err;
}

}  // namespace
}  // namespace mtc::rt
