// File helpers shared by the data, tokenizer, checkpoint and trainer code.
//
// - `Error` is the one exception type for user-input errors (a flag, a data
//   file, a checkpoint). Its message names the place (file and byte offset,
//   tensor name, flag) and what would be valid. Library code throws it; the
//   entry points (train_main, mtc-preprocess) catch it, print
//   "error: <message>" and exit non-zero. Nothing user-controlled reaches
//   assert or abort.
// - `MappedFile` is a read-only mmap of a whole file (empty files map to an
//   empty span).
// - `write_file_atomic` writes to "<path>.tmp.<pid>" and renames it into
//   place, so readers see either the old file or the complete new one.
//
// Assumes a POSIX system and a little-endian host (checked at compile time
// in io.cpp): every binary format here is little-endian on disk.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace mtc::rt {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

class MappedFile {
 public:
  MappedFile() = default;
  // Maps `path` read-only; throws Error naming the path if it cannot.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// The whole file as a string; throws Error naming the path.
std::string read_file(const std::string& path);

// Writes `bytes` to `path` through a temporary file + fsync + rename.
void write_file_atomic(const std::string& path, std::string_view bytes);

// fsyncs an already-written file (by path) or directory; throws on failure.
void fsync_path(const std::string& path);

// Little-endian scalar loads from unaligned memory.
uint64_t load_u64_le(const uint8_t* p);
int64_t load_i64_le(const uint8_t* p);
int32_t load_i32_le(const uint8_t* p);

}  // namespace mtc::rt
