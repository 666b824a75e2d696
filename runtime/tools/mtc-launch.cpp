// mtc-launch: starts the ranks of a multi-process run on this node and
// supervises them (docs/launching.md, "Several processes").
//
//   mtc-launch -n N [--nnodes M --node-rank K] [--master-addr A]
//              [--master-port P] [--rdzv-dir DIR] [--kill-grace S]
//              [--] PROGRAM [ARGS...]
//
// Each of the N children gets RANK = K*N + i, WORLD_SIZE = M*N, LOCAL_RANK =
// i, LOCAL_WORLD_SIZE = N, MASTER_ADDR, MASTER_PORT, and on one node
// MTC_RDZV_DIR, a fresh directory the ranks meet through (removed at the
// end); everything else in the environment (NCCL_NVLS_ENABLE=0, say, or the
// MTC_RDZV_TOKEN that several nodes need) is passed on unchanged. Each line a child writes is printed as "[rank R] line"
// on the launcher's stdout or stderr. Only local rank 0 reads stdin.
//
// Supervision: each child leads its own process group. SIGINT, SIGTERM and
// SIGHUP are forwarded to every group (a second one sends SIGKILL). When a
// child exits non-zero (or dies of a signal) the others get SIGTERM, then
// SIGKILL after --kill-grace seconds (default 5); once all are gone the
// launcher prints "mtc-launch: rank R failed with exit code C" with that
// rank's last stderr lines and exits with C (128+signal for a signal).
// Ranks that fail within 250 ms of the first all count as failed (a rank's
// exit often makes its peers fail at once, in an order the launcher cannot
// see): each is reported, and the exit code is the first one reaped.
//
// When RANK and WORLD_SIZE are already set (torchrun, a job script), this
// process already is one rank: without -n the program is exec'd in place as
// that rank; with -n it is an error.
//
// POSIX only; one event loop (poll) over the children's pipes and a
// self-pipe the signal handlers write to.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <string>
#include <vector>

namespace {

constexpr int kUsageExit = 2;
constexpr size_t kKeptStderrLines = 20;
// Failures this close to the first one are reported with it.
constexpr std::chrono::milliseconds kCollectWindow(250);

struct Options {
  int nproc = 0;  // 0: not given
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr;
  int master_port = 0;
  std::string rdzv_dir;
  double kill_grace_s = 5.0;
  std::vector<std::string> program;  // PROGRAM ARGS...
};

const char* kUsage =
    "usage: mtc-launch -n N [--nnodes M --node-rank K] [--master-addr A] [--master-port P]\n"
    "                  [--rdzv-dir DIR] [--kill-grace S] [--] PROGRAM [ARGS...]\n"
    "Starts N ranks of PROGRAM on this node with RANK, WORLD_SIZE, LOCAL_RANK,\n"
    "LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (and MTC_RDZV_DIR on one node) set,\n"
    "prefixes their output with [rank R], and stops all of them when one fails.\n"
    "  -n, --nproc-per-node N  ranks on this node (required)\n"
    "  --nnodes M              nodes in the job (default 1); each runs mtc-launch\n"
    "  --node-rank K           this node's index in [0, M) (default 0)\n"
    "  --master-addr A         where global rank 0 serves the rendezvous\n"
    "                          (default 127.0.0.1 on one node; required on several)\n"
    "  --master-port P         its port (default: a free port on one node, 29500 on several)\n"
    "  --rdzv-dir DIR          meet through files: on one node a fresh directory is made\n"
    "                          inside DIR; on several DIR must be shared, fresh and empty\n"
    "  --kill-grace S          seconds between SIGTERM and SIGKILL when stopping (default 5)\n"
    "Exit status: 0 when every rank exited 0, else the first failing rank's status\n"
    "(128+signal for a signal), 2 for a bad command line.\n";

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "mtc-launch: %s\n%s", msg.c_str(), kUsage);
  std::exit(kUsageExit);
}

long parse_long(const std::string& flag, const std::string& v, long lo, long hi) {
  char* end = nullptr;
  errno = 0;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || x < lo || x > hi)
    usage_error(flag + " '" + v + "' is not an integer in [" + std::to_string(lo) + ", " +
                std::to_string(hi) + "]");
  return x;
}

Options parse_args(int argc, char** argv) {
  Options o;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (a.empty() || a[0] != '-') break;  // PROGRAM
    std::string flag = a, value;
    bool inline_value = false;
    if (size_t eq = a.find('='); eq != std::string::npos && a.rfind("--", 0) == 0) {
      flag = a.substr(0, eq);
      value = a.substr(eq + 1);
      inline_value = true;
    }
    auto take = [&]() -> std::string {
      if (inline_value) return value;
      if (i + 1 >= argc) usage_error(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "-n" || flag == "--nproc-per-node") {
      o.nproc = static_cast<int>(parse_long(flag, take(), 1, 4096));
    } else if (flag == "--nnodes") {
      o.nnodes = static_cast<int>(parse_long(flag, take(), 1, 1 << 20));
    } else if (flag == "--node-rank") {
      o.node_rank = static_cast<int>(parse_long(flag, take(), 0, 1 << 20));
    } else if (flag == "--master-addr") {
      o.master_addr = take();
      if (o.master_addr.empty()) usage_error("--master-addr is empty");
    } else if (flag == "--master-port") {
      o.master_port = static_cast<int>(parse_long(flag, take(), 1, 65535));
    } else if (flag == "--rdzv-dir") {
      o.rdzv_dir = take();
      if (o.rdzv_dir.empty()) usage_error("--rdzv-dir is empty");
    } else if (flag == "--kill-grace") {
      std::string v = take();
      char* end = nullptr;
      o.kill_grace_s = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(o.kill_grace_s >= 0) || o.kill_grace_s > 3600)
        usage_error("--kill-grace '" + v + "' is not a number of seconds in [0, 3600]");
    } else {
      usage_error("unknown option " + flag);
    }
  }
  for (; i < argc; ++i) o.program.push_back(argv[i]);
  return o;
}

[[noreturn]] void exec_program(const std::vector<std::string>& program) {
  std::vector<char*> args;
  for (const auto& s : program) args.push_back(const_cast<char*>(s.c_str()));
  args.push_back(nullptr);
  ::execvp(args[0], args.data());
  std::fprintf(stderr, "mtc-launch: cannot run '%s': %s\n", args[0], std::strerror(errno));
  std::fflush(stderr);
  ::_exit(127);
}

// As the runtime's TCP store decides whether it listens on loopback only.
bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

// A TCP port nothing listens on right now (the kernel's choice).
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 29500;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  int port = 29500;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0)
    port = ntohs(sa.sin_port);
  ::close(fd);
  return port;
}

// ---------------------------------------------------------------------------
// Signals: handlers write the signal number into a self-pipe.

int g_signal_pipe[2] = {-1, -1};

extern "C" void on_signal(int sig) {
  int saved = errno;
  unsigned char b = static_cast<unsigned char>(sig);
  ssize_t ignored = ::write(g_signal_pipe[1], &b, 1);
  (void)ignored;
  errno = saved;
}

void install_signal_handlers() {
  if (::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    std::perror("mtc-launch: pipe");
    std::exit(1);
  }
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGCHLD, SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
}

// ---------------------------------------------------------------------------
// Children

struct Stream {
  int fd = -1;
  int out_fd = 1;  // where its lines go
  std::string partial;
};

struct Child {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
  int status = 0;
  Stream out, err;
  std::deque<std::string> last_err;  // the last kKeptStderrLines lines
};

void write_all(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

void emit_line(Child& c, Stream& s, const std::string& line) {
  write_all(s.out_fd, "[rank " + std::to_string(c.rank) + "] " + line + "\n");
  if (&s == &c.err) {
    c.last_err.push_back(line);
    if (c.last_err.size() > kKeptStderrLines) c.last_err.pop_front();
  }
}

// Reads what is available; returns false at end of stream.
bool drain(Child& c, Stream& s) {
  char buf[65536];
  ssize_t n = ::read(s.fd, buf, sizeof buf);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
  if (n <= 0) {
    if (!s.partial.empty()) emit_line(c, s, s.partial);
    s.partial.clear();
    ::close(s.fd);
    s.fd = -1;
    return false;
  }
  s.partial.append(buf, static_cast<size_t>(n));
  size_t start = 0, nl;
  while ((nl = s.partial.find('\n', start)) != std::string::npos) {
    emit_line(c, s, s.partial.substr(start, nl - start));
    start = nl + 1;
  }
  s.partial.erase(0, start);
  return true;
}

void spawn(Child& c, const Options& o, const std::vector<std::pair<std::string, std::string>>& env,
           int local_rank) {
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    std::perror("mtc-launch: pipe");
    std::exit(1);
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("mtc-launch: fork");
    std::exit(1);
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    if (local_rank != 0) {
      int devnull = ::open("/dev/null", O_RDONLY);
      if (devnull >= 0) ::dup2(devnull, 0);
    }
    for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
    std::string global = std::to_string(o.node_rank * o.nproc + local_rank);
    ::setenv("RANK", global.c_str(), 1);
    ::setenv("LOCAL_RANK", std::to_string(local_rank).c_str(), 1);
    exec_program(o.program);
  }
  ::setpgid(pid, pid);  // also here: no race with an early signal
  ::close(out[1]);
  ::close(err[1]);
  c.pid = pid;
  c.running = true;
  c.out.fd = out[0];
  c.out.out_fd = 1;
  c.err.fd = err[0];
  c.err.out_fd = 2;
}

void signal_all(std::vector<Child>& children, int sig) {
  for (auto& c : children)
    if (c.running) ::kill(-c.pid, sig);
}

std::string describe_status(int status) {
  if (WIFSIGNALED(status))
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
           strsignal(WTERMSIG(status)) + ")";
  return "failed with exit code " + std::to_string(WEXITSTATUS(status));
}

int exit_code_of(int status) {
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse_args(argc, argv);
  if (o.program.empty()) usage_error("no PROGRAM given");

  const char* env_rank = std::getenv("RANK");
  const char* env_world = std::getenv("WORLD_SIZE");
  if (env_rank && *env_rank && env_world && *env_world) {
    if (o.nproc != 0)
      usage_error(std::string("RANK=") + env_rank + " and WORLD_SIZE=" + env_world +
                  " are already set: this process already is one rank of a job started by "
                  "another launcher (torchrun, srun, a job script). Run PROGRAM directly, drop -n "
                  "(mtc-launch then runs it as that rank), or unset RANK and WORLD_SIZE");
    exec_program(o.program);
  }
  if (o.nproc == 0) usage_error("-n N (ranks on this node) is required");
  if (o.node_rank >= o.nnodes)
    usage_error("--node-rank " + std::to_string(o.node_rank) + " is not below --nnodes " +
                std::to_string(o.nnodes));

  // Where the ranks meet.
  const bool multi_node = o.nnodes > 1;
  if (o.master_addr.empty()) {
    const char* v = std::getenv("MASTER_ADDR");
    if (v && *v) o.master_addr = v;
  }
  if (o.master_port == 0) {
    const char* v = std::getenv("MASTER_PORT");
    if (v && *v) o.master_port = static_cast<int>(parse_long("MASTER_PORT", v, 1, 65535));
  }
  if (multi_node && o.master_addr.empty())
    usage_error(
        "--master-addr (the host of node 0, where global rank 0 runs) is required with "
        "--nnodes > 1");
  if (o.master_addr.empty()) o.master_addr = "127.0.0.1";
  if (o.master_port == 0) o.master_port = multi_node ? 29500 : free_port();
  // Several nodes meet through rank 0's TCP store, which off loopback admits
  // only ranks presenting MTC_RDZV_TOKEN; one launcher cannot make up a
  // secret for the others, so the job script must share one (the ranks
  // would refuse to start without it: say so before starting them).
  const char* token = std::getenv("MTC_RDZV_TOKEN");
  if (multi_node && o.rdzv_dir.empty() && !is_loopback(o.master_addr) && !(token && *token))
    usage_error("on several nodes the ranks meet through rank 0's TCP store on " +
                o.master_addr +
                ", which admits only ranks presenting MTC_RDZV_TOKEN: export the same secret on "
                "every node first (e.g. export MTC_RDZV_TOKEN=$(openssl rand -hex 16) in the job "
                "script; docs/security.md), or meet through --rdzv-dir on a shared filesystem");

  std::string rdzv_dir;  // what the ranks get; "" for the TCP store
  bool remove_rdzv = false;
  if (!multi_node) {
    std::string base = o.rdzv_dir;
    if (base.empty()) {
      const char* tmp = std::getenv("TMPDIR");
      base = (tmp && *tmp) ? tmp : "/tmp";
    }
    std::error_code ec;
    std::filesystem::create_directories(base, ec);
    std::string templ = base + "/mtc-rdzv-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) {
      std::fprintf(stderr, "mtc-launch: cannot create a rendezvous directory in %s: %s\n",
                   base.c_str(), std::strerror(errno));
      return 1;
    }
    rdzv_dir = templ;
    remove_rdzv = true;
  } else {
    rdzv_dir = o.rdzv_dir;
  }

  std::vector<std::pair<std::string, std::string>> env = {
      {"WORLD_SIZE", std::to_string(o.nnodes * o.nproc)},
      {"LOCAL_WORLD_SIZE", std::to_string(o.nproc)},
      {"MASTER_ADDR", o.master_addr},
      {"MASTER_PORT", std::to_string(o.master_port)},
  };
  if (!rdzv_dir.empty())
    env.push_back({"MTC_RDZV_DIR", rdzv_dir});
  else
    ::unsetenv("MTC_RDZV_DIR");

  install_signal_handlers();
  std::vector<Child> children(static_cast<size_t>(o.nproc));
  for (int i = 0; i < o.nproc; ++i) {
    children[i].rank = o.node_rank * o.nproc + i;
    spawn(children[i], o, env, i);
  }

  using Clock = std::chrono::steady_clock;
  int running = o.nproc;
  std::vector<int> failed;  // children that failed on their own, in the order seen
  int interrupted = 0;      // the signal that stopped the run
  bool stopping = false;
  Clock::time_point kill_at = Clock::time_point::max();
  Clock::time_point collect_until = Clock::time_point::max();
  Clock::time_point drain_until = Clock::time_point::max();

  auto stop_all = [&](int sig) {
    signal_all(children, sig);
    if (!stopping)
      kill_at =
          Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o.kill_grace_s * 1000));
    stopping = true;
  };

  while (true) {
    std::vector<pollfd> fds;
    std::vector<std::pair<Child*, Stream*>> owners;
    fds.push_back({g_signal_pipe[0], POLLIN, 0});
    owners.push_back({nullptr, nullptr});
    for (auto& c : children)
      for (Stream* s : {&c.out, &c.err})
        if (s->fd >= 0) {
          fds.push_back({s->fd, POLLIN, 0});
          owners.push_back({&c, s});
        }
    if (running == 0 && fds.size() == 1) break;
    if (running == 0 && drain_until == Clock::time_point::max())
      drain_until = Clock::now() + std::chrono::seconds(2);  // grandchildren may hold pipes
    if (running == 0 && Clock::now() >= drain_until) break;

    auto next =
        std::min({kill_at, drain_until, stopping ? Clock::time_point::max() : collect_until});
    int timeout_ms = -1;
    if (next != Clock::time_point::max()) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count();
      timeout_ms = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(ms, 1000)));
    }
    int r = ::poll(fds.data(), fds.size(), timeout_ms);
    if (r < 0 && errno != EINTR) {
      std::perror("mtc-launch: poll");
      stop_all(SIGKILL);
    }

    if (r > 0 && (fds[0].revents & POLLIN)) {
      unsigned char sigs[64];
      ssize_t n;
      while ((n = ::read(g_signal_pipe[0], sigs, sizeof sigs)) > 0) {
        for (ssize_t k = 0; k < n; ++k) {
          int sig = sigs[k];
          if (sig == SIGCHLD) continue;
          if (interrupted != 0 || stopping) {
            stop_all(SIGKILL);
          } else {
            interrupted = sig;
            std::fprintf(stderr, "mtc-launch: got %s, passing it to every rank\n", strsignal(sig));
            std::fflush(stderr);
            stop_all(sig);
          }
        }
      }
    }
    for (size_t k = 1; r > 0 && k < fds.size(); ++k)
      if (fds[k].revents & (POLLIN | POLLHUP | POLLERR)) drain(*owners[k].first, *owners[k].second);

    // Reap children. A rank's exit often makes its peers fail at once (they
    // see its connections close), in an order the launcher cannot tell
    // apart: every rank that fails within kCollectWindow of the first one
    // counts as failed, and the others are stopped after that window.
    int status;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      for (size_t i = 0; i < children.size(); ++i) {
        Child& c = children[i];
        if (c.pid != pid || !c.running) continue;
        c.running = false;
        c.status = status;
        --running;
        bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (ok || interrupted != 0 || stopping) continue;
        if (failed.empty()) collect_until = Clock::now() + kCollectWindow;
        failed.push_back(static_cast<int>(i));
      }
    }
    if (!failed.empty() && !stopping && (Clock::now() >= collect_until || running == 0)) {
      const Child& c = children[static_cast<size_t>(failed[0])];
      std::fprintf(stderr, "mtc-launch: rank %d %s%s\n", c.rank, describe_status(c.status).c_str(),
                   running > 0 ? "; stopping the other ranks" : "");
      std::fflush(stderr);
      stop_all(SIGTERM);
    }
    if (stopping && running > 0 && Clock::now() >= kill_at) {
      signal_all(children, SIGKILL);
      kill_at = Clock::time_point::max();
    }
  }
  for (auto& c : children)
    for (Stream* s : {&c.out, &c.err})
      if (s->fd >= 0) ::close(s->fd);

  if (remove_rdzv) {
    std::error_code ec;
    std::filesystem::remove_all(rdzv_dir, ec);
  }

  if (!failed.empty()) {
    std::string msg;
    for (size_t k = 0; k < failed.size() && k < 4; ++k) {
      const Child& c = children[static_cast<size_t>(failed[k])];
      msg += "mtc-launch: rank " + std::to_string(c.rank) + " " + describe_status(c.status);
      if (!c.last_err.empty()) {
        msg += "; its last stderr lines:\n";
        for (const auto& line : c.last_err)
          msg += "  [rank " + std::to_string(c.rank) + "] " + line + "\n";
      } else {
        msg += " (it wrote nothing to stderr)\n";
      }
    }
    if (failed.size() > 1) {
      msg += "mtc-launch: " + std::to_string(failed.size()) +
             " ranks failed at about the same time (ranks";
      for (int i : failed) msg += " " + std::to_string(children[static_cast<size_t>(i)].rank);
      msg += "); the first to fail may have brought down the others\n";
    }
    write_all(2, msg);
    return exit_code_of(children[static_cast<size_t>(failed[0])].status);
  }
  if (interrupted != 0) return 128 + interrupted;
  return 0;
}
