// safetensors files, written and read by hand (no library).
//
// Format (huggingface/safetensors):
//   bytes [0, 8)        N, the header length, uint64 little-endian
//   bytes [8, 8 + N)    a UTF-8 JSON object:
//                         {"<name>": {"dtype": "F32", "shape": [d0, ...],
//                                     "data_offsets": [begin, end]}, ...,
//                          "__metadata__": {"key": "string value", ...}}
//                       padded with spaces to a multiple of 8 bytes
//   bytes [8 + N, end)  the tensor data, row-major little-endian; offsets
//                       are relative to this region's start.
// The writer stores tensors in the order given, back to back (F32 and I32;
// I32 is used for token ids). The reader checks what the format requires:
// header length within the file (and <= 100 MB), valid JSON object, no
// duplicate names, each entry's dtype known, shape non-negative, offsets
// ordered with end - begin = numel * dtype size, the tensors tiling the data
// region exactly with no gap or overlap, metadata values strings. Every
// error names the file, and the tensor or byte offset.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mtc/rt/io.h"

namespace mtc::rt {

// One tensor to write; `data` points at numel(shape) elements of `dtype`
// ("F32" or "I32").
struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  std::string dtype = "F32";
};

int64_t shape_numel(const std::vector<int64_t>& shape);
std::string shape_string(const std::vector<int64_t>& shape);  // "[2, 3]"

// Writes the file through OutputFile (io.h: temporary + rename, or through
// to a FIFO or device). Throws Error on a duplicate or reserved name or an
// I/O failure.
void write_safetensors(const std::string& path,
                       const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

struct TensorInfo {
  std::string dtype;            // "F32", "I32", "BF16", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range in the data region
};

class SafetensorsReader {
 public:
  // Maps and validates the file.
  explicit SafetensorsReader(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // throws if absent

  // Copies tensor `name` into `out`, checking dtype F32 and `numel`.
  void read_f32(const std::string& name, float* out, int64_t numel) const;
  // Same for I32.
  void read_i32(const std::string& name, int32_t* out, int64_t numel) const;

 private:
  void read_raw(const std::string& name, const char* dtype, void* out,
                int64_t numel) const;

  MappedFile file_;
  uint64_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace mtc::rt
