// Thread count of the host kernels (see parallel.h).
#include "host/parallel.h"

#include <cstdio>
#include <cstdlib>

namespace mtc::rt::host {

int num_threads() {
  static const int count = [] {
    if (const char* env = std::getenv("MTC_NUM_THREADS")) {
      char* end = nullptr;
      long v = std::strtol(env, &end, 10);
      if (end != env && *end == '\0' && v >= 1 && v <= 4096)
        return static_cast<int>(v);
      std::fprintf(stderr,
                   "mtc: ignoring MTC_NUM_THREADS='%s' (expected an integer "
                   "in [1, 4096]); using the hardware concurrency\n",
                   env);
    }
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
  }();
  return count;
}

}  // namespace mtc::rt::host
