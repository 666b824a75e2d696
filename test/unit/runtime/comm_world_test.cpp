// Tests World setup: the launch environment (RANK/WORLD_SIZE, Slurm's
// variables, malformed values), refusal of a WORLD_SIZE that does not match
// the compiled grid, the rendezvous stores (file and TCP, their blocking
// get and their timeouts) and a world meeting through rank 0's TCP store.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <thread>

#include "comm_test_support.h"
#include "mtc/rt/comm.h"

namespace mtc::rt {
namespace {

using Env = std::map<std::string, std::string>;

LaunchEnv env_from(const Env& vars) {
  return read_launch_env([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

using testing::error_of;

TEST(CommEnv, ReadsTorchrunVariables) {
  LaunchEnv e = env_from({{"RANK", "5"},
                          {"WORLD_SIZE", "8"},
                          {"LOCAL_RANK", "1"},
                          {"LOCAL_WORLD_SIZE", "4"},
                          {"MASTER_ADDR", "node0"},
                          {"MASTER_PORT", "29501"},
                          {"MTC_RDZV_TOKEN", "0123456789abcdef"}});
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.master_addr, "node0");
  EXPECT_EQ(e.master_port, 29501);
  EXPECT_EQ(e.rdzv_token, "0123456789abcdef");
  EXPECT_EQ(e.source, "RANK/WORLD_SIZE");

  LaunchEnv d = env_from({{"RANK", "6"}, {"WORLD_SIZE", "8"}, {"LOCAL_WORLD_SIZE", "4"}});
  EXPECT_EQ(d.local_rank, 2);  // RANK mod LOCAL_WORLD_SIZE

  LaunchEnv one = env_from({});
  EXPECT_EQ(one.rank, 0);
  EXPECT_EQ(one.world_size, 1);
}

TEST(CommEnv, ReadsSlurmVariables) {
  LaunchEnv e = env_from({{"SLURM_PROCID", "9"},
                          {"SLURM_NTASKS", "16"},
                          {"SLURM_LOCALID", "1"},
                          {"SLURM_NTASKS_PER_NODE", "8(x2)"}});
  EXPECT_EQ(e.rank, 9);
  EXPECT_EQ(e.world_size, 16);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 8);
  EXPECT_EQ(e.source, "SLURM_PROCID/SLURM_NTASKS");
  // RANK wins over Slurm's (torchrun inside an allocation).
  EXPECT_EQ(
      env_from({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}})
          .rank,
      1);
}

TEST(CommEnv, RefusesMalformedValues) {
  EXPECT_NE(error_of([] {
              env_from({{"RANK", "x"}, {"WORLD_SIZE", "2"}});
            }).find("RANK='x' is not an integer"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              env_from({{"RANK", "2"}, {"WORLD_SIZE", "2"}});
            }).find("RANK=2 must be in [0, WORLD_SIZE=2)"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              env_from({{"RANK", "0"}});
            }).find("WORLD_SIZE is not set but RANK is"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              env_from({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}});
            }).find("MASTER_PORT=70000"),
            std::string::npos);
  EXPECT_NE(
      error_of([] {
        env_from(
            {{"RANK", "0"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "3"}, {"LOCAL_WORLD_SIZE", "2"}});
      }).find("LOCAL_RANK=3"),
      std::string::npos);
}

TEST(CommWorld, RefusesAWorldSizeThatDoesNotMatchTheGrid) {
  LaunchEnv env = env_from({{"RANK", "0"}, {"WORLD_SIZE", "3"}});
  WorldOptions opt;
  opt.grid = GridSpec{1, 2, 2};
  std::string msg = error_of([&] { World w(env, opt, gloo_comm_factory()); });
  EXPECT_NE(msg.find("the program was compiled for tp=2 x dp=2 = 4 ranks but WORLD_SIZE is 3"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("mtc-launch -n 4"), std::string::npos) << msg;
}

TEST(CommWorld, OneRankNeedsNoRendezvous) {
  WorldOptions opt;  // 1 x 1 x 1
  World w(env_from({}), opt, gloo_comm_factory());
  std::vector<float> x = {1.5f, -2.f};
  w.comm(GroupKind::tp).all_reduce(x.data(), 2);
  EXPECT_EQ(x, (std::vector<float>{1.5f, -2.f}));
  std::vector<float> g(2);
  w.comm(GroupKind::world).all_gather(x.data(), g.data(), 2);
  EXPECT_EQ(g, x);
}

TEST(CommWorld, SaysHowToMeetWhenNothingIsSet) {
  WorldOptions opt;
  opt.grid = GridSpec{1, 2, 1};
  std::string msg = error_of([&] {
    World w(env_from({{"RANK", "1"}, {"WORLD_SIZE", "2"}}), opt, gloo_comm_factory());
  });
  EXPECT_NE(msg.find("set MASTER_ADDR and MASTER_PORT"), std::string::npos) << msg;
}

TEST(CommWorld, RendezvousTimesOutWhenARankNeverStarts) {
  WorldOptions opt;
  opt.grid = GridSpec{1, 2, 1};
  opt.rendezvous_timeout_s = 0.5;
  std::string dir = testing::unique_dir("rdzv-timeout");
  auto t0 = std::chrono::steady_clock::now();
  std::string msg = error_of([&] {
    World w(env_from({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MTC_RDZV_DIR", dir}}), opt,
            gloo_comm_factory());
  });
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(msg.find("rendezvous timed out after 0.5 s"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir), std::string::npos) << msg;
  EXPECT_LT(secs, 10.0);
}

TEST(CommStore, FileStoreGetWaitsForALaterSet) {
  std::string dir = testing::unique_dir("filestore");
  auto a = make_file_store(dir, 5.0), b = make_file_store(dir, 5.0);
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    a->set("gloo/tp[0]/1", std::string("bin\0ary", 7));
  });
  EXPECT_EQ(b->get("gloo/tp[0]/1"), std::string("bin\0ary", 7));
  writer.join();
  auto quick = make_file_store(dir, 0.1);
  EXPECT_NE(error_of([&] { quick->get("never"); }).find("waiting for key 'never'"),
            std::string::npos);
}

TEST(CommStore, TcpStoreServesBlockingGets) {
  int port = testing::free_tcp_port();
  ASSERT_GT(port, 0);
  auto server = make_tcp_store("127.0.0.1", port, /*serve=*/true, 5.0, "");
  auto client = make_tcp_store("127.0.0.1", port, /*serve=*/false, 5.0, "");
  std::string big(100000, 'x');
  big[777] = '\0';
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    server->set("k", big);
  });
  EXPECT_EQ(client->get("k"), big);
  writer.join();
  client->set("c", "from client");
  EXPECT_EQ(server->get("c"), "from client");
  auto quick = make_tcp_store("127.0.0.1", port, false, 0.2, "");
  EXPECT_NE(error_of([&] { quick->get("never"); }).find("rendezvous timed out"), std::string::npos);
  // A client with no server gives up after its timeout, naming the address.
  int closed_port = testing::free_tcp_port();
  std::string msg = error_of([&] { make_tcp_store("127.0.0.1", closed_port, false, 0.2, ""); });
  EXPECT_NE(msg.find("cannot connect to TCP store 127.0.0.1:" + std::to_string(closed_port)),
            std::string::npos)
      << msg;
}

// Two ranks that meet through MASTER_ADDR:MASTER_PORT (no shared directory),
// as on several nodes.
TEST(CommWorld, RanksMeetThroughRankZerosTcpStore) {
  testing::RunOptions opt;
  opt.env = {{"MASTER_ADDR", "127.0.0.1"},
             {"MASTER_PORT", std::to_string(testing::free_tcp_port())}};
  auto res = testing::run_ranks(
      2,
      [](int r) {
        WorldOptions o;
        o.grid = GridSpec{1, 2, 1};
        o.rendezvous_timeout_s = 20;
        World w(read_launch_env(), o, gloo_comm_factory());
        std::vector<float> x = testing::rank_data(r, 40, 100);
        w.comm(GroupKind::dp).all_reduce(x.data(), 100);
        auto a = testing::rank_data(0, 40, 100), b = testing::rank_data(1, 40, 100);
        for (int i = 0; i < 100; ++i)
          if (std::fabs(x[i] - (a[i] + b[i])) > 1e-6) return 1;
        return 0;
      },
      opt);
  testing::expect_all_ok(res);
}

}  // namespace
}  // namespace mtc::rt
