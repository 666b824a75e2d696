// File helpers: mmap, whole-file reads, output files that replace only
// what they write. See mtc/rt/io.h.
#include "mtc/rt/io.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "mtc's file formats are little-endian; a big-endian host needs byte swaps"
#endif

namespace mtc::rt {

namespace {

std::string errno_text() { return std::strerror(errno); }

}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open (" + errno_text() + ")");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    std::string why = errno_text();
    ::close(fd);
    throw Error(path + ": cannot stat (" + why + ")");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      std::string why = errno_text();
      ::close(fd);
      throw Error(path + ": cannot mmap " + std::to_string(size_) +
                  " bytes (" + why + ")");
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)), data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
    path_ = std::move(other.path_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open (" + errno_text() + ")");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error");
  return ss.str();
}

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open for fsync (" + errno_text() + ")");
  int rc = ::fsync(fd);
  std::string why = errno_text();
  ::close(fd);
  if (rc != 0) throw Error(path + ": fsync failed (" + why + ")");
}

namespace {

// Writes all of [p, p + n) to fd; false with errno set on failure.
bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

constexpr size_t kOutputBuffer = size_t(1) << 20;

}  // namespace

OutputFile::OutputFile(const std::string& path) : path_(path), target_(path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (path.empty()) throw Error("cannot write a file with an empty path");
  // A symbolic link (or a chain of them) is replaced by nothing: its final
  // target, which need not exist yet, is what gets written.
  fs::path at = path;
  for (int hops = 0; fs::is_symlink(fs::symlink_status(at, ec)); ++hops) {
    fs::path next = fs::read_symlink(at, ec);
    if (ec || hops == 40)
      throw Error(path + ": cannot resolve the symbolic link (" +
                  (ec ? ec.message() : std::string("too many levels")) + ")");
    at = next.is_absolute() ? next : at.parent_path() / next;
  }
  target_ = at.string();
  const fs::file_status st = fs::status(target_, ec);
  const std::string what = target_ == path ? path : path + " (-> " + target_ + ")";
  switch (st.type()) {
    case fs::file_type::not_found:
    case fs::file_type::regular:
      break;
    case fs::file_type::fifo:
    case fs::file_type::character:
    case fs::file_type::socket:
      fd_ = ::open(target_.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd_ < 0) throw Error(what + ": cannot open for writing (" + errno_text() + ")");
      return;
    case fs::file_type::directory:
      throw Error(what + ": is a directory; give a file path to write");
    default:
      throw Error(what + ": exists and is neither a regular file nor a FIFO or device "
                  "to write through; refusing to replace it");
  }
  static std::atomic<uint64_t> counter{0};
  const std::string stem = target_ + ".tmp." + std::to_string(::getpid()) + ".";
  for (int tries = 0; fd_ < 0; ++tries) {
    tmp_ = stem + std::to_string(counter++);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0 && (errno != EEXIST || tries == 100))
      throw Error(tmp_ + ": cannot create (" + errno_text() + ")");
  }
}

OutputFile::~OutputFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
}

void OutputFile::flush() {
  if (!write_all(fd_, buffer_.data(), buffer_.size()))
    throw Error((tmp_.empty() ? path_ : tmp_) + ": write failed (" + errno_text() + ")");
  buffer_.clear();
}

void OutputFile::write(const void* data, size_t bytes) {
  if (fd_ < 0) throw Error(path_ + ": write after commit");
  if (bytes == 0) return;
  if (buffer_.size() + bytes > kOutputBuffer) flush();
  if (bytes >= kOutputBuffer) {
    if (!write_all(fd_, static_cast<const char*>(data), bytes))
      throw Error((tmp_.empty() ? path_ : tmp_) + ": write failed (" + errno_text() + ")");
    return;
  }
  buffer_.append(static_cast<const char*>(data), bytes);
}

void OutputFile::commit() {
  if (fd_ < 0) throw Error(path_ + ": committed twice");
  flush();
  const int fd = fd_;
  fd_ = -1;
  if (tmp_.empty()) {  // written through: nothing to sync or rename
    if (::close(fd) != 0) throw Error(path_ + ": close failed (" + errno_text() + ")");
    committed_ = true;
    return;
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0)
    throw Error(tmp_ + ": fsync/close failed (" + errno_text() + ")");
  if (::rename(tmp_.c_str(), target_.c_str()) != 0)
    throw Error(path_ + ": cannot rename " + tmp_ + " into place (" + errno_text() + ")");
  committed_ = true;
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  OutputFile out(path);
  out.write(bytes);
  out.commit();
}

void check_json_depth(std::string_view text, const std::string& where, uint64_t byte_base) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;  // the escaped character cannot end the string
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        throw Error(where + " at byte " + std::to_string(byte_base + i) +
                    ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

uint64_t load_u64_le(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

int64_t load_i64_le(const uint8_t* p) {
  int64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

int32_t load_i32_le(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace mtc::rt
