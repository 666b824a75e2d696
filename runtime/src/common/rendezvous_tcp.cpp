// The TCP rendezvous store: global rank 0 serves a key-value map on
// MASTER_PORT from background threads; every rank (rank 0 included) is a
// client. This is how ranks on several nodes meet without a shared
// filesystem, as torchrun's TCPStore does.
//
// Protocol (lengths are 32-bit big-endian):
//   hello: 'H' tlen token           -> 'K' when token is the job's, else 'R'
//   set:   'S' klen key vlen value  -> 'K' once stored
//   get:   'G' klen key             -> vlen value, once some rank has set key
// A connection's first request must be a hello with the job's token
// (MTC_RDZV_TOKEN, "" on loopback when unset; docs/security.md says what it
// protects against); anything else, a wrong token or a malformed request
// closes the connection.
//
// What a peer can make the server spend is bounded. Every length is checked
// before anything is allocated (token <= kRdzvTokenMaxBytes, key <=
// kMaxKeyBytes, value <= kMaxValueBytes: the largest real values are Gloo
// addresses and 128-byte NCCL ids). A peer has min(timeout, kHelloDeadline)
// to present its token, and at most kMaxPendingPeers may be doing so at once
// (more are closed at once), so strangers hold few threads for little time.
// A rank that leaves a request unfinished, or sends none for the store's
// timeout (MTC_RDZV_TIMEOUT: its peers would have given up by then), is
// dropped. Finished connections are reaped as new ones arrive.
//
// The server runs one thread per connection (the world's ranks connect once
// each, during setup) and wakes waiting gets when a key is set. Closing it
// waits (up to 5 s) for the clients to disconnect, so that replies already
// due still arrive. Clients retry connecting until the store's timeout (rank
// 0 may start last) and wait for any reply at most that long.
//
// Assumes IPv4. The server listens on 127.0.0.1 when MASTER_ADDR is a
// loopback address, else on every interface, and then a token is required.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "mtc/rt/comm.h"

namespace mtc::rt {

namespace {

using Clock = std::chrono::steady_clock;

std::string secs_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

// Sends all bytes; false on error (peer gone).
bool send_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

enum class ReadResult { ok, closed, timeout };

// Reads exactly n bytes, waiting until `deadline` (Clock::time_point::max()
// for no limit).
ReadResult read_exact(int fd, void* data, size_t n, Clock::time_point deadline) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    if (deadline != Clock::time_point::max()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return ReadResult::timeout;
      pollfd pfd{fd, POLLIN, 0};
      int r = ::poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return ReadResult::closed;
      if (r == 0) continue;
    }
    ssize_t k = ::recv(fd, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return ReadResult::closed;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return ReadResult::ok;
}

// True when the peer has closed its end (nothing more will come).
bool peer_closed(int fd) {
  char c;
  ssize_t k = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

void put_u32(std::string& out, uint32_t v) {
  uint32_t be = htonl(v);
  out.append(reinterpret_cast<const char*>(&be), 4);
}

constexpr uint32_t kMaxKeyBytes = 4096;
constexpr uint32_t kMaxValueBytes = 1 << 20;
constexpr int kMaxPendingPeers = 64;
constexpr std::chrono::seconds kHelloDeadline{10};

// Reads a length and that many bytes into `out`; false (nothing allocated)
// when the length exceeds `max`, or on close or timeout.
bool read_sized(int fd, uint32_t max, Clock::time_point deadline, std::string& out) {
  uint32_t be;
  if (read_exact(fd, &be, 4, deadline) != ReadResult::ok) return false;
  uint32_t len = ntohl(be);
  if (len > max) return false;
  out.assign(len, '\0');
  return read_exact(fd, out.data(), len, deadline) == ReadResult::ok;
}

// Compares in time that depends on the lengths only, not on where the
// strings differ.
bool same_secret(const std::string& given, const std::string& expected) {
  unsigned diff = given.size() != expected.size();
  for (size_t i = 0; i < expected.size(); ++i)
    diff |= static_cast<unsigned char>(expected[i] ^ (i < given.size() ? given[i] : 0));
  return diff == 0;
}

class TcpStoreServer {
 public:
  static constexpr std::chrono::seconds kLinger{5};

  // `idle`: how long a connection may stay silent (the store's timeout).
  TcpStoreServer(const std::string& addr, int port, std::string token, Clock::duration idle)
      : token_(std::move(token)), idle_(idle) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) fail("cannot create a socket");
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(port));
    sa.sin_addr.s_addr = htonl(is_loopback(addr) ? INADDR_LOOPBACK : INADDR_ANY);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      int e = errno;
      ::close(listen_fd_);
      errno = e;
      fail("cannot listen on port " + std::to_string(port) +
           (e == EADDRINUSE ? " (another program uses it: choose another MASTER_PORT)" : ""));
    }
    if (::listen(listen_fd_, 1024) != 0) {
      ::close(listen_fd_);
      fail("cannot listen on port " + std::to_string(port));
    }
    accept_thread_ = std::thread([this] { accept_loop(); });
  }

  // Stops accepting, lets connected clients finish (each disconnects after
  // its last reply: the World's last request is rank r's "ready/r", whose
  // acknowledgement must still reach it after rank 0 has read the key) for
  // at most kLinger, then closes what is left.
  ~TcpStoreServer() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    ::shutdown(listen_fd_, SHUT_RDWR);
    accept_thread_.join();
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, kLinger, [this] { return active_ == 0; });
      stop_ = true;
      for (Conn& c : conns_) ::shutdown(c.fd, SHUT_RDWR);
    }
    cv_.notify_all();
    for (Conn& c : conns_) {
      c.thread.join();
      ::close(c.fd);
    }
    ::close(listen_fd_);
  }

 private:
  struct Conn {
    int fd = -1;
    bool done = false;  // its thread has finished
    std::thread thread;
  };

  [[noreturn]] void fail(const std::string& what) {
    throw CommError("rank 0: the rendezvous store " + what + ": " + std::strerror(errno));
  }

  void accept_loop() {
    while (true) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      std::lock_guard<std::mutex> lock(mu_);
      if (closing_) {
        if (fd >= 0) ::close(fd);
        return;
      }
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE) {
          if (errno == EMFILE || errno == ENFILE)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
          continue;
        }
        return;
      }
      reap_finished();
      if (pending_ >= kMaxPendingPeers) {
        ::close(fd);
        continue;
      }
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      ++pending_;
      ++active_;
      Conn& c = conns_.emplace_back();
      c.fd = fd;
      // The thread marks itself done under mu_, which is held here until
      // c.thread is assigned.
      c.thread = std::thread([this, &c] {
        serve(c.fd);
        ::shutdown(c.fd, SHUT_RDWR);  // the peer sees the end at once
        std::lock_guard<std::mutex> done(mu_);
        c.done = true;
        --active_;
        cv_.notify_all();
      });
    }
  }

  // Joins and closes the connections whose threads have finished (each set
  // `done` as its last use of mu_, so joining under mu_ cannot deadlock).
  void reap_finished() {
    for (auto it = conns_.begin(); it != conns_.end();) {
      if (!it->done) {
        ++it;
        continue;
      }
      it->thread.join();
      ::close(it->fd);
      it = conns_.erase(it);
    }
  }

  // True when the peer's first request is a hello with the job's token;
  // answers 'K' or 'R'.
  bool admit(int fd) {
    auto deadline = Clock::now() + std::min<Clock::duration>(idle_, kHelloDeadline);
    char op;
    std::string token;
    bool ok = read_exact(fd, &op, 1, deadline) == ReadResult::ok && op == 'H' &&
              read_sized(fd, kRdzvTokenMaxBytes, deadline, token);
    if (ok) {
      ok = same_secret(token, token_);
      send_all(fd, ok ? "K" : "R", 1);
    }
    std::lock_guard<std::mutex> lock(mu_);
    --pending_;
    return ok;
  }

  // One client's requests until it disconnects, falls silent for idle_,
  // sends something malformed, or the server stops.
  void serve(int fd) {
    if (!admit(fd)) return;
    while (true) {
      char op;
      if (read_exact(fd, &op, 1, Clock::now() + idle_) != ReadResult::ok) return;
      auto deadline = Clock::now() + idle_;
      std::string key;
      if ((op != 'S' && op != 'G') || !read_sized(fd, kMaxKeyBytes, deadline, key)) return;
      if (op == 'S') {
        std::string value;
        if (!read_sized(fd, kMaxValueBytes, deadline, value)) return;
        {
          std::lock_guard<std::mutex> lock(mu_);
          values_[key] = std::move(value);
        }
        cv_.notify_all();
        if (!send_all(fd, "K", 1)) return;
      } else {
        std::string reply;
        {
          std::unique_lock<std::mutex> lock(mu_);
          // Wake now and then to notice a client that gave up and left.
          while (!cv_.wait_for(lock, std::chrono::milliseconds(100),
                               [&] { return stop_ || values_.count(key) != 0; }))
            if (peer_closed(fd)) return;
          if (stop_) return;
          put_u32(reply, static_cast<uint32_t>(values_[key].size()));
          reply += values_[key];
        }
        if (!send_all(fd, reply.data(), reply.size())) return;
      }
    }
  }

  const std::string token_;
  const Clock::duration idle_;
  int listen_fd_ = -1;
  std::mutex mu_;
  std::condition_variable cv_;
  bool closing_ = false;  // no new connections
  bool stop_ = false;     // drop the remaining ones
  int active_ = 0;        // connections being served
  int pending_ = 0;       // connections that have not presented a token yet
  std::map<std::string, std::string> values_;
  std::list<Conn> conns_;  // a list: threads hold references to their Conn
  std::thread accept_thread_;
};

class TcpStore final : public Store {
 public:
  TcpStore(std::string addr, int port, bool serve, double timeout_s, const std::string& token)
      : addr_(std::move(addr)), port_(port), timeout_s_(timeout_s) {
    check_token(token);
    if (serve) server_ = std::make_unique<TcpStoreServer>(addr_, port_, token, timeout());
    connect_with_retry();
    try {
      present(token);
    } catch (...) {
      ::close(fd_);  // no destructor runs for a constructor that throws
      throw;
    }
  }
  ~TcpStore() override {
    if (fd_ >= 0) ::close(fd_);
  }

  void set(const std::string& key, const std::string& value) override {
    check_size("key '" + key.substr(0, 64) + "'", key.size(), kMaxKeyBytes);
    check_size("the value of key '" + key + "'", value.size(), kMaxValueBytes);
    std::string msg = "S";
    put_u32(msg, static_cast<uint32_t>(key.size()));
    msg += key;
    put_u32(msg, static_cast<uint32_t>(value.size()));
    msg += value;
    if (!send_all(fd_, msg.data(), msg.size())) lost("setting '" + key + "'");
    char ack;
    wait_reply(&ack, 1, "setting key '" + key + "'");
  }

  std::string get(const std::string& key) override {
    check_size("key '" + key.substr(0, 64) + "'", key.size(), kMaxKeyBytes);
    std::string msg = "G";
    put_u32(msg, static_cast<uint32_t>(key.size()));
    msg += key;
    if (!send_all(fd_, msg.data(), msg.size())) lost("asking for '" + key + "'");
    uint32_t len;
    wait_reply(&len, 4, "waiting for key '" + key + "'");
    if (ntohl(len) > kMaxValueBytes)
      throw CommError("the " + describe() + " answered key '" + key + "' with a value of " +
                      std::to_string(ntohl(len)) + " bytes (at most " +
                      std::to_string(kMaxValueBytes) +
                      " are valid): is something other than mtc's rank 0 listening on "
                      "MASTER_ADDR:MASTER_PORT?");
    std::string value(ntohl(len), '\0');
    wait_reply(value.data(), value.size(), "waiting for key '" + key + "'");
    return value;
  }

  std::string describe() const override {
    return "TCP store " + addr_ + ":" + std::to_string(port_) + " (served by rank 0)";
  }

 private:
  // Off loopback the store listens on every interface: only a token keeps
  // strangers out, so one is required there.
  void check_token(const std::string& token) const {
    if (token.empty() && !is_loopback(addr_))
      throw CommError("MASTER_ADDR=" + addr_ +
                      " is not a loopback address, so rank 0's rendezvous store will listen on "
                      "every interface: set MTC_RDZV_TOKEN to the same secret on every rank "
                      "(e.g. export MTC_RDZV_TOKEN=$(openssl rand -hex 16) in the job script "
                      "before srun, torchrun or mtc-launch; docs/security.md)");
    if (!token.empty() && (token.size() < kRdzvTokenMinBytes || token.size() > kRdzvTokenMaxBytes))
      throw CommError("MTC_RDZV_TOKEN has " + std::to_string(token.size()) +
                      " characters: use " + std::to_string(kRdzvTokenMinBytes) + " to " +
                      std::to_string(kRdzvTokenMaxBytes) +
                      " (e.g. export MTC_RDZV_TOKEN=$(openssl rand -hex 16))");
  }

  void check_size(const std::string& what, size_t n, uint32_t max) const {
    if (n > max)
      throw CommError(what + " has " + std::to_string(n) + " bytes; the " + describe() +
                      " takes at most " + std::to_string(max));
  }

  // The hello: this rank's token, which the server accepts or refuses.
  void present(const std::string& token) {
    std::string msg = "H";
    put_u32(msg, static_cast<uint32_t>(token.size()));
    msg += token;
    if (!send_all(fd_, msg.data(), msg.size())) lost("presenting its MTC_RDZV_TOKEN");
    char answer;
    wait_reply(&answer, 1, "presenting its MTC_RDZV_TOKEN",
               "is something other than mtc's rank 0 listening on MASTER_ADDR:MASTER_PORT?");
    if (answer != 'K')
      throw CommError("the " + describe() + " refused this rank: its MTC_RDZV_TOKEN (" +
                      (token.empty() ? std::string("unset") : "set") +
                      ") is not rank 0's; set the same MTC_RDZV_TOKEN on every rank");
  }

  void connect_with_retry() {
    Clock::time_point deadline = Clock::now() + timeout();
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    std::string port = std::to_string(port_);
    std::string last_error;
    auto pause = std::chrono::milliseconds(5);
    while (true) {
      addrinfo* res = nullptr;
      int rc = ::getaddrinfo(addr_.c_str(), port.c_str(), &hints, &res);
      if (rc != 0) {
        last_error = std::string("cannot resolve MASTER_ADDR=") + addr_ + ": " + gai_strerror(rc);
      } else {
        for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
          int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
          if (fd < 0) continue;
          if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            fd_ = fd;
            break;
          }
          last_error = std::strerror(errno);
          ::close(fd);
        }
        ::freeaddrinfo(res);
        if (fd_ >= 0) return;
      }
      if (Clock::now() >= deadline)
        throw CommError("rendezvous timed out after " + secs_text(timeout_s_) +
                        " s (MTC_RDZV_TIMEOUT): cannot connect to " + describe() + " (" +
                        last_error +
                        "): is rank 0 running, and is MASTER_ADDR reachable "
                        "from this node?");
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::milliseconds(200));
    }
  }

  // `doing` ("waiting for key 'k'") and `why` (the likely cause of a
  // timeout) are for messages.
  void wait_reply(void* buf, size_t n, const std::string& doing,
                  const char* why = "the rank that sets it did not start, failed, or meets "
                                    "elsewhere") {
    Clock::time_point deadline = Clock::now() + timeout();
    ReadResult r = read_exact(fd_, buf, n, deadline);
    if (r == ReadResult::closed) lost(doing);
    if (r == ReadResult::timeout)
      throw CommError("rendezvous timed out after " + secs_text(timeout_s_) +
                      " s (MTC_RDZV_TIMEOUT) " + doing + " in " + describe() + ": " + why);
  }

  Clock::duration timeout() const {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
  }

  [[noreturn]] void lost(const std::string& doing) {
    throw CommError("lost the connection to the " + describe() + " while " + doing +
                    ": did rank 0 exit, or was this rank silent for longer than "
                    "MTC_RDZV_TIMEOUT?");
  }

  std::string addr_;
  int port_;
  double timeout_s_;
  std::unique_ptr<TcpStoreServer> server_;
  int fd_ = -1;
};

}  // namespace

std::unique_ptr<Store> make_tcp_store(const std::string& addr, int port, bool serve,
                                      double timeout_s, const std::string& token) {
  return std::make_unique<TcpStore>(addr, port, serve, timeout_s, token);
}

}  // namespace mtc::rt
