// Scratch files for the fuzz targets whose readers take a path: one private
// directory per process (in /dev/shm when there is one, for speed; else
// $TMPDIR or /tmp), removed at exit. Each input overwrites the same files.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace mtc::fuzz {

class ScratchDir {
 public:
  ScratchDir() {
    std::error_code ec;
    std::string base = std::filesystem::is_directory("/dev/shm", ec) ? "/dev/shm" : "";
    if (base.empty()) base = std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp";
    std::string templ = base + "/mtc-fuzz-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) std::abort();  // the harness, not an input
    dir_ = templ;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  const std::string& dir() const { return dir_; }

  // Writes `size` bytes as dir()/name; returns its path.
  std::string write(const std::string& name, const uint8_t* data, size_t size) const {
    std::string path = dir_ + "/" + name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!out) std::abort();
    return path;
  }

 private:
  std::string dir_;
};

}  // namespace mtc::fuzz
