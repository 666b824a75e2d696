// The host backend (program.h's Backend for ProgramDesc::backend ==
// nullptr): program memory is ordinary host memory, so moving data in and
// out is memcpy and there is nothing to synchronize.
//
// Allocations are 64-byte aligned (the host kernels' vector loads) and
// rounded up to a multiple of 64 bytes, at least 64 (so a 0-byte buffer is
// still a valid, distinct pointer), and zeroed.
#include <cstdlib>
#include <cstring>

#include "mtc/rt/io.h"
#include "mtc/rt/trainer.h"

namespace mtc::rt {

namespace {

void* host_alloc(size_t bytes, const char* what) {
  const size_t rounded = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
  if (rounded < bytes)
    throw Error(std::string("cannot allocate ") + std::to_string(bytes) +
                " bytes for " + what + " (size overflows)");
  void* p = std::aligned_alloc(64, rounded);
  if (p == nullptr)
    throw Error(std::string("cannot allocate ") + human_bytes(double(rounded)) +
                " (" + std::to_string(rounded) + " bytes) of host memory for " + what);
  std::memset(p, 0, rounded);
  return p;
}

void host_release(void* p) { std::free(p); }

// dst[0, bytes) = src[0, bytes); dst and src do not overlap.
void host_copy(void* dst, const void* src, size_t bytes) {
  if (bytes > 0) std::memcpy(dst, src, bytes);
}

void host_zero(void* dst, size_t bytes) {
  if (bytes > 0) std::memset(dst, 0, bytes);
}

void host_synchronize() {}

void host_memory_info(size_t* free_bytes, size_t* total_bytes) {
  *free_bytes = 0;
  *total_bytes = 0;
}

const Backend kHostBackend = {
    "host",     &host_alloc, &host_release,     &host_copy, &host_copy,
    &host_zero, &host_synchronize, &host_memory_info,
};

}  // namespace

const Backend& host_backend() { return kHostBackend; }

const Backend& program_backend(const ProgramDesc& program) {
  return program.backend != nullptr ? *program.backend : kHostBackend;
}

}  // namespace mtc::rt
