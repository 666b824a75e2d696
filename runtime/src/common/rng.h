// Deterministic random numbers for the runtime's host-side decisions: data
// shuffles and parameter initialization. Everything is integer arithmetic on
// uint64 (SplitMix64, Steele/Lea/Flood 2014, Vigna's constants), so results
// are the same on every platform and compiler; std::shuffle and the
// std:: distributions are implementation-defined and are not used.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace mtc::rt::detail {

inline constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A key for the stream (a, b, c): distinct inputs give unrelated keys.
inline uint64_t stream_key(uint64_t a, uint64_t b, uint64_t c = 0) {
  return mix64(mix64(mix64(a + kGamma) + b * kGamma + 1) + c * kGamma + 2);
}

// FNV-1a of a string (stable names -> stream ids).
inline uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// SplitMix64 generator: output i is mix64(key + (i+1) * gamma).
class Rng {
 public:
  explicit Rng(uint64_t key) : state_(key) {}
  uint64_t next() { return mix64(state_ += kGamma); }
  // Uniform in [0, n), unbiased (rejection of the short top range); n > 0.
  uint64_t below(uint64_t n) {
    uint64_t threshold = (0 - n) % n;  // 2^64 mod n
    for (;;) {
      uint64_t r = next();
      if (r >= threshold) return r % n;
    }
  }

 private:
  uint64_t state_;
};

// Fisher-Yates shuffle of `v` driven by Rng(key).
template <typename T>
void shuffle(std::vector<T>& v, uint64_t key) {
  Rng rng(key);
  for (size_t i = v.size(); i > 1; --i) {
    size_t j = static_cast<size_t>(rng.below(i));
    std::swap(v[i - 1], v[j]);
  }
}

// Element `index` of a standard normal stream `key`, computed independently
// of every other element (Box-Muller on the pair index/2), so any slice of a
// tensor can be generated alone:
//   u1 = (bits(2p) >> 11 + 1) 2^-53 in (0, 1], u2 = (bits(2p+1) >> 11) 2^-53
//   z = sqrt(-2 ln u1) * (cos 2 pi u2 for even index, sin 2 pi u2 for odd)
inline double normal_at(uint64_t key, uint64_t index) {
  uint64_t p = index / 2;
  double u1 = static_cast<double>((mix64(key + (2 * p + 1) * kGamma) >> 11) + 1) *
              0x1.0p-53;
  double u2 = static_cast<double>(mix64(key + (2 * p + 2) * kGamma) >> 11) *
              0x1.0p-53;
  double r = std::sqrt(-2.0 * std::log(u1));
  double angle = 6.283185307179586476925286766559 * u2;
  return (index % 2 == 0) ? r * std::cos(angle) : r * std::sin(angle);
}

}  // namespace mtc::rt::detail
