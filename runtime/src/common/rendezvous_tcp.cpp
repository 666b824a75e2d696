// The TCP rendezvous store: global rank 0 serves a key-value map on
// MASTER_PORT from background threads; every rank (rank 0 included) is a
// client. This is how ranks on several nodes meet without a shared
// filesystem, as torchrun's TCPStore does.
//
// Protocol (lengths are 32-bit big-endian):
//   set: 'S' klen key vlen value  -> 'K' once stored
//   get: 'G' klen key             -> vlen value, once some rank has set key
// The server runs one thread per connection (the world's ranks connect once
// each, during setup) and wakes waiting gets when a key is set. Closing it
// waits (up to 5 s) for the clients to disconnect, so that replies already
// due still arrive. Clients retry
// connecting until the store's timeout (rank 0 may start last) and wait for
// any reply at most that long.
//
// Assumes IPv4. The server listens on 127.0.0.1 when MASTER_ADDR is a
// loopback address, else on every interface.
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

class TcpStoreServer {
 public:
  static constexpr std::chrono::seconds kLinger{5};

  TcpStoreServer(const std::string& addr, int port) {
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
    std::vector<std::thread> threads;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, kLinger, [this] { return active_ == 0; });
      stop_ = true;
      for (int fd : conn_fds_) ::shutdown(fd, SHUT_RDWR);
      threads.swap(conn_threads_);
    }
    cv_.notify_all();
    for (auto& t : threads) t.join();
    for (int fd : conn_fds_) ::close(fd);
    ::close(listen_fd_);
  }

 private:
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
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      conn_fds_.push_back(fd);
      ++active_;
      conn_threads_.emplace_back([this, fd] {
        serve(fd);
        std::lock_guard<std::mutex> done(mu_);
        --active_;
        cv_.notify_all();
      });
    }
  }

  // One client's requests until it disconnects or the server stops.
  void serve(int fd) {
    auto forever = Clock::time_point::max();
    while (true) {
      char op;
      uint32_t len;
      if (read_exact(fd, &op, 1, forever) != ReadResult::ok) return;
      if (read_exact(fd, &len, 4, forever) != ReadResult::ok) return;
      std::string key(ntohl(len), '\0');
      if (read_exact(fd, key.data(), key.size(), forever) != ReadResult::ok) return;
      if (op == 'S') {
        if (read_exact(fd, &len, 4, forever) != ReadResult::ok) return;
        std::string value(ntohl(len), '\0');
        if (read_exact(fd, value.data(), value.size(), forever) != ReadResult::ok) return;
        {
          std::lock_guard<std::mutex> lock(mu_);
          values_[key] = std::move(value);
        }
        cv_.notify_all();
        if (!send_all(fd, "K", 1)) return;
      } else if (op == 'G') {
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
      } else {
        return;  // not one of ours: drop the connection
      }
    }
  }

  int listen_fd_ = -1;
  std::mutex mu_;
  std::condition_variable cv_;
  bool closing_ = false;  // no new connections
  bool stop_ = false;     // drop the remaining ones
  int active_ = 0;        // connections being served
  std::map<std::string, std::string> values_;
  std::vector<int> conn_fds_;
  std::vector<std::thread> conn_threads_;
  std::thread accept_thread_;
};

class TcpStore final : public Store {
 public:
  TcpStore(std::string addr, int port, bool serve, double timeout_s)
      : addr_(std::move(addr)), port_(port), timeout_s_(timeout_s) {
    if (serve) server_ = std::make_unique<TcpStoreServer>(addr_, port_);
    connect_with_retry();
  }
  ~TcpStore() override {
    if (fd_ >= 0) ::close(fd_);
  }

  void set(const std::string& key, const std::string& value) override {
    std::string msg = "S";
    put_u32(msg, static_cast<uint32_t>(key.size()));
    msg += key;
    put_u32(msg, static_cast<uint32_t>(value.size()));
    msg += value;
    if (!send_all(fd_, msg.data(), msg.size())) lost("setting '" + key + "'");
    char ack;
    wait_reply(&ack, 1, key, "setting");
  }

  std::string get(const std::string& key) override {
    std::string msg = "G";
    put_u32(msg, static_cast<uint32_t>(key.size()));
    msg += key;
    if (!send_all(fd_, msg.data(), msg.size())) lost("asking for '" + key + "'");
    uint32_t len;
    wait_reply(&len, 4, key, "waiting for");
    std::string value(ntohl(len), '\0');
    wait_reply(value.data(), value.size(), key, "waiting for");
    return value;
  }

  std::string describe() const override {
    return "TCP store " + addr_ + ":" + std::to_string(port_) + " (served by rank 0)";
  }

 private:
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

  void wait_reply(void* buf, size_t n, const std::string& key, const char* doing) {
    Clock::time_point deadline = Clock::now() + timeout();
    ReadResult r = read_exact(fd_, buf, n, deadline);
    if (r == ReadResult::closed) lost(std::string(doing) + " '" + key + "'");
    if (r == ReadResult::timeout)
      throw CommError("rendezvous timed out after " + secs_text(timeout_s_) +
                      " s (MTC_RDZV_TIMEOUT) " + doing + " key '" + key + "' in " + describe() +
                      ": the rank that sets it did not start, failed, or meets elsewhere");
  }

  Clock::duration timeout() const {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
  }

  [[noreturn]] void lost(const std::string& doing) {
    throw CommError("lost the connection to the " + describe() + " while " + doing +
                    ": did rank 0 exit?");
  }

  std::string addr_;
  int port_;
  double timeout_s_;
  std::unique_ptr<TcpStoreServer> server_;
  int fd_ = -1;
};

}  // namespace

std::unique_ptr<Store> make_tcp_store(const std::string& addr, int port, bool serve,
                                      double timeout_s) {
  return std::make_unique<TcpStore>(addr, port, serve, timeout_s);
}

}  // namespace mtc::rt
