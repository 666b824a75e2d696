// Helpers for the communicator tests: run a function as N ranks in forked
// processes (each with the launch environment mtc-launch would give it),
// collect exit codes and stderr, and never wait past a deadline.
//
// Children are forked from the test process, which is single-threaded while
// the comm tests run (ctest runs each test in its own process). A child
// redirects its stderr to a file, runs the body, and _exits with the body's
// return value (an exception is printed and exits 1), so nothing of gtest
// runs twice.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "mtc/rt/comm.h"

namespace mtc::rt::testing {

// The message of the CommError `fn` throws, or "(no error)".
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const CommError& e) {
    return e.what();
  }
  return "(no error)";
}

// A fresh directory under the test build's tmp dir.
inline std::string unique_dir(const std::string& name) {
  std::filesystem::path base = std::filesystem::path(MTC_TEST_TMPDIR);
  std::filesystem::create_directories(base);
  std::string templ = (base / (name + "-XXXXXX")).string();
  if (::mkdtemp(templ.data()) == nullptr) return "";
  return templ;
}

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct RankResult {
  int exit_code = -1;   // -1 when killed by a signal
  int term_signal = 0;  // the signal, when killed
  bool timed_out = false;
  bool killed_by_us = false;  // stopped after `primary` exited
  std::string err;            // its stderr
  double seconds = 0;         // from start to exit
};

struct RunOptions {
  double deadline_s = 30;  // after this every child still running is killed
  // >= 0: once this rank exits, the others are killed (for tests where one
  // rank hangs on purpose).
  int primary = -1;
  std::string rdzv_dir;                    // MTC_RDZV_DIR ("" : unset)
  std::map<std::string, std::string> env;  // more variables (same for all)
};

// Runs body(rank) in n processes with RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE set; returns one result per rank.
inline std::vector<RankResult> run_ranks(int n, const std::function<int(int)>& body,
                                         const RunOptions& opt) {
  using Clock = std::chrono::steady_clock;
  std::string logs = unique_dir("ranks");
  std::vector<pid_t> pids(n, -1);
  std::vector<RankResult> res(n);
  auto start = Clock::now();
  std::fflush(stdout);
  std::fflush(stderr);
  for (int r = 0; r < n; ++r) {
    pid_t pid = ::fork();
    if (pid == 0) {
      std::string err = logs + "/rank" + std::to_string(r) + ".err";
      std::FILE* f = std::freopen(err.c_str(), "w", stderr);
      if (f == nullptr) ::_exit(120);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(n).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(n).c_str(), 1);
      if (!opt.rdzv_dir.empty())
        ::setenv("MTC_RDZV_DIR", opt.rdzv_dir.c_str(), 1);
      else
        ::unsetenv("MTC_RDZV_DIR");
      for (const auto& [k, v] : opt.env) ::setenv(k.c_str(), v.c_str(), 1);
      int code = 1;
      try {
        code = body(r);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: exception: %s\n", r, e.what());
      }
      std::fflush(stdout);
      std::fflush(stderr);
      ::_exit(code);
    }
    pids[r] = pid;
  }
  int left = n;
  auto deadline = start + std::chrono::duration_cast<Clock::duration>(
                              std::chrono::duration<double>(opt.deadline_s));
  while (left > 0) {
    for (int r = 0; r < n; ++r) {
      if (pids[r] < 0) continue;
      int status;
      pid_t p = ::waitpid(pids[r], &status, WNOHANG);
      if (p != pids[r]) continue;
      res[r].seconds = std::chrono::duration<double>(Clock::now() - start).count();
      if (WIFEXITED(status))
        res[r].exit_code = WEXITSTATUS(status);
      else
        res[r].term_signal = WTERMSIG(status);
      pids[r] = -1;
      --left;
      if (r == opt.primary)
        for (int o = 0; o < n; ++o)
          if (pids[o] > 0) {
            ::kill(pids[o], SIGKILL);
            res[o].killed_by_us = true;
          }
    }
    if (left > 0 && Clock::now() > deadline) {
      for (int r = 0; r < n; ++r)
        if (pids[r] > 0) {
          ::kill(pids[r], SIGKILL);
          res[r].timed_out = true;
        }
      deadline = Clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (int r = 0; r < n; ++r) res[r].err = slurp(logs + "/rank" + std::to_string(r) + ".err");
  std::error_code ec;
  std::filesystem::remove_all(logs, ec);
  return res;
}

// Asserts that every rank exited 0 in time, showing each one's stderr.
inline void expect_all_ok(const std::vector<RankResult>& res) {
  for (size_t r = 0; r < res.size(); ++r) {
    EXPECT_FALSE(res[r].timed_out) << "rank " << r << " did not finish:\n" << res[r].err;
    EXPECT_EQ(res[r].exit_code, 0)
        << "rank " << r << " (signal " << res[r].term_signal << ") stderr:\n"
        << res[r].err;
  }
}

// Deterministic test data of one rank: (n,) uniform in [-1, 1).
inline std::vector<float> rank_data(int rank, int tag, int64_t n) {
  std::mt19937 gen(static_cast<uint32_t>(1000003u * static_cast<uint32_t>(tag) + 7919u * rank + 1));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(gen);
  return v;
}

// A TCP port the kernel considers free right now on 127.0.0.1 (another
// program may take it before the test does; the tests that use one accept
// that small race).
inline int free_tcp_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  int port = 0;
  if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0)
    port = ntohs(sa.sin_port);
  if (fd >= 0) ::close(fd);
  return port;
}

}  // namespace mtc::rt::testing
