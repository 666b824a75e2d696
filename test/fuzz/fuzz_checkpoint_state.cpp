// Fuzz target: a checkpoint's state.json. The input becomes state.json of an
// otherwise empty step directory, which inspect_checkpoint reads before it
// looks for the tensor files (absent here, so an accepted state ends in an
// Error about them). mtc::rt::Error is the expected way to refuse a
// checkpoint; anything else (another exception, a sanitizer report) is a bug.
#include <cstdint>

#include "mtc/rt/checkpoint.h"
#include "mtc/rt/io.h"
#include "scratch_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const mtc::fuzz::ScratchDir scratch;
  scratch.write("state.json", data, size);
  try {
    mtc::rt::inspect_checkpoint(scratch.dir(), mtc::rt::ProgramDesc{});
  } catch (const mtc::rt::Error&) {
  }
  return 0;
}
