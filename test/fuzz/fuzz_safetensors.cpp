// Fuzz target: the safetensors reader on an arbitrary file. Opening it
// validates the header; every tensor it accepts is then read whole (F32 and
// I32 through their readers). mtc::rt::Error is the expected way to refuse
// a file; anything else (another exception, a sanitizer report) is a bug.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "mtc/rt/safetensors.h"
#include "scratch_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const mtc::fuzz::ScratchDir scratch;
  std::string path = scratch.write("input.safetensors", data, size);
  try {
    mtc::rt::SafetensorsReader reader(path);
    for (const auto& [name, info] : reader.tensors()) {
      // Never a null `out`, even for 0 elements: callers pass real buffers.
      int64_t numel = mtc::rt::shape_numel(info.shape);
      size_t n = static_cast<size_t>(std::max<int64_t>(numel, 1));
      if (info.dtype == "F32") {
        std::vector<float> out(n);
        reader.read_f32(name, out.data(), numel);
      } else if (info.dtype == "I32") {
        std::vector<int32_t> out(n);
        reader.read_i32(name, out.data(), numel);
      }
    }
  } catch (const mtc::rt::Error&) {
  }
  return 0;
}
