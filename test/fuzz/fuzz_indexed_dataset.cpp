// Fuzz target: the Megatron indexed-dataset reader. The input is
//   [0, 2)   n, uint16 little-endian: the .bin file's length
//   [2, end) the .idx file
// and the .bin holds n bytes of a fixed pattern. Opening validates the
// index against both files; the first tokens of every accepted document are
// then read. mtc::rt::Error is the expected way to refuse a dataset;
// anything else (another exception, a sanitizer report) is a bug.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "mtc/rt/data.h"
#include "scratch_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const mtc::fuzz::ScratchDir scratch;
  if (size < 2) return 0;
  size_t bin_len = data[0] | (size_t{data[1]} << 8);
  std::vector<uint8_t> bin(bin_len);
  for (size_t i = 0; i < bin_len; ++i) bin[i] = static_cast<uint8_t>(i * 7 + 1);
  scratch.write("d.bin", bin.data(), bin.size());
  scratch.write("d.idx", data + 2, size - 2);
  try {
    mtc::rt::IndexedDataset ds(scratch.dir() + "/d");
    std::vector<int32_t> out(256);
    for (int64_t doc = 0; doc < std::min<int64_t>(ds.num_docs(), 64); ++doc) {
      int64_t n = std::min<int64_t>(ds.doc_length(doc), 256);
      ds.read(doc, 0, n, out.data());
    }
  } catch (const mtc::rt::Error&) {
  }
  return 0;
}
