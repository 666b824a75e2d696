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
// - `OutputFile` is how every runtime writer (checkpoints, --dump-grads,
//   the metrics rewrite, datasets, MTC_PROFILE) puts a file at a path the
//   user named, and `write_file_atomic` its one-call form. A writer never
//   removes or replaces what it did not write:
//     a new path or a regular file: written to a temporary
//       "<path>.tmp.<pid>.<n>" next to it, created exclusively (never a file someone else made),
//       fsync'd and renamed over the path by commit(), so readers see the
//       old file or the complete new one; an uncommitted temporary is
//       removed, and nothing else is;
//     a symbolic link: followed; its target is written as above (the link
//       stays);
//     a FIFO, character device or socket (/dev/null, /dev/stdout, a pipe):
//       written through in place, nothing renamed over it;
//     a directory or any other kind: refused with an Error naming the path.
// - `check_json_depth` bounds the nesting of JSON before it is parsed.
//
// Assumes a POSIX system and a little-endian host (checked at compile time
// in io.cpp): every binary format here is little-endian on disk.
#pragma once

#include <cstddef>
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

// A file being written to `path` by the rules above. The constructor
// creates the temporary (or opens the special file); write() buffers;
// commit() flushes, fsyncs and renames into place. Destroying it uncommitted
// (an error on the way) removes the temporary. Every error names the path.
class OutputFile {
 public:
  explicit OutputFile(const std::string& path);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void write(const void* data, size_t bytes);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  void commit();
  const std::string& path() const { return path_; }

 private:
  void flush();

  std::string path_;    // as given, for messages
  std::string target_;  // what is replaced: path_ or a symlink's target
  std::string tmp_;     // "" when written through
  int fd_ = -1;
  bool committed_ = false;
  std::string buffer_;
};

// OutputFile(path), write(bytes), commit().
void write_file_atomic(const std::string& path, std::string_view bytes);

// fsyncs an already-written file (by path) or directory; throws on failure.
void fsync_path(const std::string& path);

// JSON read from files mtc does not trust is parsed by nlohmann, whose
// parser recurses once per nesting level: 100000 '[' overflow the stack.
// Every reader calls this first: it scans `text` (skipping strings) and
// throws Error "<where> at byte N: JSON nested deeper than 64 levels" at
// the first bracket past kMaxJsonDepth; N counts from `byte_base`.
inline constexpr int kMaxJsonDepth = 64;
void check_json_depth(std::string_view text, const std::string& where, uint64_t byte_base = 0);

// Little-endian scalar loads from unaligned memory.
uint64_t load_u64_le(const uint8_t* p);
int64_t load_i64_le(const uint8_t* p);
int32_t load_i32_le(const uint8_t* p);

}  // namespace mtc::rt
