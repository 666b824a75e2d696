// The file rendezvous store: one file per key in a directory all ranks see.
//
// set writes "<dir>/<key>.tmp.<pid>" and renames it to "<dir>/<key>", so a
// reader sees the whole value or nothing. get polls for the file with a
// back-off from 1 ms to 20 ms until the store's timeout. Key characters
// outside [A-Za-z0-9._-] are written as %XX in file names.
//
// Assumes the directory is fresh for each run: a key left by an earlier run
// would be read as this run's (mtc-launch makes a new directory per run).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>

#include "mtc/rt/comm.h"

namespace mtc::rt {

namespace {

std::string escape_key(const std::string& key) {
  std::string out;
  for (unsigned char ch : key) {
    bool plain = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '.' || ch == '_' || ch == '-';
    if (plain) {
      out += static_cast<char>(ch);
    } else {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", ch);
      out += hex;
    }
  }
  return out;
}

class FileStore final : public Store {
 public:
  FileStore(std::string dir, double timeout_s) : dir_(std::move(dir)), timeout_s_(timeout_s) {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (!std::filesystem::is_directory(dir_))
      throw CommError("rendezvous directory " + dir_ + " cannot be created" +
                      (ec ? " (" + ec.message() + ")" : std::string()));
  }

  void set(const std::string& key, const std::string& value) override {
    std::string path = dir_ + "/" + escape_key(key);
    std::string tmp = path + ".tmp." + std::to_string(::getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail("cannot create " + tmp);
    size_t done = 0;
    while (done < value.size()) {
      ssize_t n = ::write(fd, value.data() + done, value.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::close(fd);
        fail("cannot write " + tmp);
      }
      done += static_cast<size_t>(n);
    }
    if (::close(fd) != 0) fail("cannot write " + tmp);
    if (::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename " + tmp + " to " + path);
  }

  std::string get(const std::string& key) override {
    std::string path = dir_ + "/" + escape_key(key);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
    auto pause = std::chrono::milliseconds(1);
    while (true) {
      int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        std::string value;
        char buf[4096];
        ssize_t n;
        while ((n = ::read(fd, buf, sizeof buf)) != 0) {
          if (n < 0 && errno == EINTR) continue;
          if (n < 0) {
            ::close(fd);
            fail("cannot read " + path);
          }
          value.append(buf, static_cast<size_t>(n));
        }
        ::close(fd);
        return value;
      }
      if (errno != ENOENT) fail("cannot open " + path);
      if (std::chrono::steady_clock::now() >= deadline) {
        char secs[32];
        std::snprintf(secs, sizeof secs, "%g", timeout_s_);
        throw CommError("rendezvous timed out after " + std::string(secs) +
                        " s (MTC_RDZV_TIMEOUT) waiting for key '" + key + "' in " + describe() +
                        ": the rank that sets it did not start, failed, or uses another "
                        "rendezvous directory");
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::milliseconds(20));
    }
  }

  std::string describe() const override { return "file store " + dir_; }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw CommError(describe() + ": " + what + " (" + std::strerror(errno) + ")");
  }

  std::string dir_;
  double timeout_s_;
};

}  // namespace

std::unique_ptr<Store> make_file_store(const std::string& dir, double timeout_s) {
  return std::make_unique<FileStore>(dir, timeout_s);
}

}  // namespace mtc::rt
