// Tests the TCP rendezvous store against peers that do not follow the
// protocol (loopback only): a 5-byte request announcing a 4 GiB length is
// refused without allocating it, before and after the token; a silent or
// stalled peer is dropped after the store's timeout; a wrong or missing
// token is refused; a token is required off loopback and must be long
// enough; ranks of a world meet with a token and one with another token is
// refused.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>

#include "comm_test_support.h"
#include "mtc/rt/comm.h"

namespace mtc::rt {
namespace {

using Clock = std::chrono::steady_clock;

const std::string kToken = "0123456789abcdef0123456789abcdef";

using testing::error_of;

// A raw client of 127.0.0.1:port; -1 on failure.
int dial(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) return fd;
  if (fd >= 0) ::close(fd);
  return -1;
}

void send_bytes(int fd, const std::string& bytes) {
  ASSERT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(bytes.size()));
}

std::string be32(uint32_t v) {
  uint32_t be = htonl(v);
  return std::string(reinterpret_cast<const char*>(&be), 4);
}

// op, then a length, then `payload` (which may be shorter than announced).
std::string request(char op, uint32_t len, const std::string& payload = "") {
  return std::string(1, op) + be32(len) + payload;
}

std::string hello(const std::string& token) {
  return request('H', static_cast<uint32_t>(token.size()), token);
}

// Seconds until the server closes fd (reads and discards what it sends), or
// `limit` if it is still open then.
double seconds_until_closed(int fd, double limit) {
  auto t0 = Clock::now();
  while (true) {
    double spent = std::chrono::duration<double>(Clock::now() - t0).count();
    if (spent >= limit) return limit;
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>((limit - spent) * 1000) + 1) <= 0) continue;
    char buf[64];
    if (::recv(fd, buf, sizeof buf, 0) <= 0)
      return std::chrono::duration<double>(Clock::now() - t0).count();
  }
}

// A raw client that presented the token and was admitted.
int admitted_peer(int port) {
  int fd = dial(port);
  EXPECT_GE(fd, 0);
  send_bytes(fd, hello(kToken));
  char answer = 0;
  EXPECT_EQ(::recv(fd, &answer, 1, MSG_WAITALL), 1);
  EXPECT_EQ(answer, 'K');
  return fd;
}

long peak_rss_kib() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

TEST(TcpStoreHardening, HugeLengthIsRefusedWithoutAllocating) {
  int port = testing::free_tcp_port();
  auto server = make_tcp_store("127.0.0.1", port, /*serve=*/true, 5.0, kToken);
  long rss_before = peak_rss_kib();
  // Before the token (a stranger) and after it (a rank gone wrong): each
  // 5-byte request announces 4 GiB - 1; the server must hang up at once
  // rather than allocate it or wait 5 s for the bytes.
  std::vector<std::string> attacks = {request('H', 0xffffffffu)};
  for (char op : {'S', 'G'}) attacks.push_back(request(op, 0xffffffffu));
  attacks.push_back(request('S', 3, "key") + be32(0xffffffffu));  // the value's length
  for (size_t i = 0; i < attacks.size(); ++i) {
    int fd = i == 0 ? dial(port) : admitted_peer(port);
    ASSERT_GE(fd, 0);
    send_bytes(fd, attacks[i]);
    EXPECT_LT(seconds_until_closed(fd, 3.0), 1.0) << "attack " << i;
    ::close(fd);
  }
  EXPECT_LT(peak_rss_kib() - rss_before, 256 * 1024) << "the server allocated the length";
  // The store still serves ranks that follow the protocol.
  auto client = make_tcp_store("127.0.0.1", port, false, 5.0, kToken);
  client->set("k", "v");
  EXPECT_EQ(server->get("k"), "v");
  // A client refuses to send what the server would refuse.
  std::string msg = error_of([&] { client->set("big", std::string((1 << 20) + 1, 'x')); });
  EXPECT_NE(msg.find("takes at most 1048576"), std::string::npos) << msg;
}

TEST(TcpStoreHardening, SilentPeersAreDroppedAfterTheTimeout) {
  int port = testing::free_tcp_port();
  auto server = make_tcp_store("127.0.0.1", port, true, 0.5, kToken);
  int mute = dial(port);  // never says hello
  ASSERT_GE(mute, 0);
  int idle = admitted_peer(port);  // admitted, then silent
  int stalled = admitted_peer(port);
  send_bytes(stalled, request('S', 10, "abc"));  // 7 of the key's 10 bytes never come
  auto t0 = Clock::now();
  for (int fd : {mute, idle, stalled}) {
    EXPECT_LT(seconds_until_closed(fd, 1.8), 1.8) << "a silent peer was kept past the timeout";
    // Each was dropped after the timeout, counted from its last byte.
    EXPECT_GT(std::chrono::duration<double>(Clock::now() - t0).count(), 0.3);
    ::close(fd);
  }
}

TEST(TcpStoreHardening, PeersWithoutTheTokenAreRefused) {
  int port = testing::free_tcp_port();
  auto server = make_tcp_store("127.0.0.1", port, true, 5.0, kToken);
  std::string wrong =
      error_of([&] { make_tcp_store("127.0.0.1", port, false, 5.0, "fedcba9876543210fedcba"); });
  EXPECT_NE(wrong.find("refused this rank: its MTC_RDZV_TOKEN (set) is not rank 0's"),
            std::string::npos)
      << wrong;
  std::string missing = error_of([&] { make_tcp_store("127.0.0.1", port, false, 5.0, ""); });
  EXPECT_NE(missing.find("MTC_RDZV_TOKEN (unset)"), std::string::npos) << missing;
  // A refused raw peer gets 'R' and the connection ends.
  int fd = dial(port);
  ASSERT_GE(fd, 0);
  send_bytes(fd, hello(std::string(kToken.size(), 'x')));
  char answer = 0;
  EXPECT_EQ(::recv(fd, &answer, 1, MSG_WAITALL), 1);
  EXPECT_EQ(answer, 'R');
  EXPECT_LT(seconds_until_closed(fd, 3.0), 1.0);
  ::close(fd);
  // A request before the hello is not one.
  fd = dial(port);
  send_bytes(fd, request('G', 1, "k"));
  EXPECT_LT(seconds_until_closed(fd, 3.0), 1.0);
  ::close(fd);
  auto good = make_tcp_store("127.0.0.1", port, false, 5.0, kToken);
  good->set("ok", "1");
  EXPECT_EQ(server->get("ok"), "1");
}

TEST(TcpStoreHardening, TokenIsRequiredOffLoopbackAndMustBeLong) {
  // Checked before any socket is opened (".invalid" never resolves).
  std::string off = error_of([] { make_tcp_store("rank0.invalid", 29500, false, 0.1, ""); });
  EXPECT_NE(off.find("MASTER_ADDR=rank0.invalid is not a loopback address"), std::string::npos)
      << off;
  EXPECT_NE(off.find("set MTC_RDZV_TOKEN"), std::string::npos) << off;
  std::string shortish = error_of([] { make_tcp_store("127.0.0.1", 29500, true, 0.1, "secret"); });
  EXPECT_NE(shortish.find("MTC_RDZV_TOKEN has 6 characters: use 16 to 256"), std::string::npos)
      << shortish;
}

// A world of two ranks meeting through rank 0's store with MTC_RDZV_TOKEN
// set on both; then rank 1 with another token is refused at once.
TEST(TcpStoreHardening, RanksWithTheTokenMeetAndOthersAreRefused) {
  auto run = [](const std::string& rank1_token, int primary) {
    testing::RunOptions opt;
    opt.env = {{"MASTER_ADDR", "127.0.0.1"},
               {"MASTER_PORT", std::to_string(testing::free_tcp_port())},
               {"MTC_RDZV_TOKEN", kToken}};
    opt.primary = primary;
    return testing::run_ranks(
        2,
        [rank1_token](int r) {
          if (r == 1) ::setenv("MTC_RDZV_TOKEN", rank1_token.c_str(), 1);
          WorldOptions o;
          o.grid = GridSpec{1, 2, 1};
          o.rendezvous_timeout_s = 20;
          World w(read_launch_env(), o, gloo_comm_factory());
          float x = static_cast<float>(r + 1);
          w.comm(GroupKind::dp).all_reduce(&x, 1);
          return x == 3.0f ? 0 : 1;
        },
        opt);
  };
  auto ok = run(kToken, -1);
  EXPECT_EQ(ok[0].exit_code, 0) << ok[0].err;
  EXPECT_EQ(ok[1].exit_code, 0) << ok[1].err;
  // Rank 0 waits for rank 1 until it is stopped.
  auto refused = run("another-token-of-this-job", /*primary=*/1);
  EXPECT_EQ(refused[1].exit_code, 1);
  EXPECT_LT(refused[1].seconds, 10);
  EXPECT_NE(refused[1].err.find("refused this rank"), std::string::npos) << refused[1].err;
}

}  // namespace
}  // namespace mtc::rt
