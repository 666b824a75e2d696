// mtc dropout hash: the counter-based random numbers behind every dropout
// mask, shared bit-for-bit by the host kernels and the CUDA kernels (this
// header compiles as plain C++ and under nvcc).
//
// The exact function (integer arithmetic modulo 2^64, so every compiler and
// the GPU agree bit-for-bit):
//
//   mix64(z)      = SplitMix64's output function:
//                     z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
//                     z = (z ^ (z >> 27)) * 0x94D049BB133111EB
//                     return z ^ (z >> 31)
//   GAMMA         = 0x9E3779B97F4A7C15
//   stream(seed, key) = mix64(seed + GAMMA * (mix64(key + GAMMA) | 1))
//   bits(seed, key, index) = mix64(stream(seed, key) + GAMMA * (index + 1))
//   uniform(seed, key, index) = (bits >> 40) * 2^-24        (a float in [0, 1),
//                                                            exact in fp32)
//
// bits(...) is the (index+1)-th output of a SplitMix64 generator whose state
// starts at stream(seed, key), so element i of one stream is independent of
// how the tensor is split: the kernel for a piece that starts at global
// element `offset` uses index = offset + i.
//
// Dropout keeps element `index` iff uniform(seed, key, index) >= p (a float
// comparison) and writes y = x * scale with scale = 1.0f / (1.0f - p), both
// computed in fp32 (so a kernel that divides by 1 - p instead is not
// bit-identical); dropped elements are 0. p <= 0 copies, p >= 1 gives zeros.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MTC_HOST_DEVICE __host__ __device__
#else
#define MTC_HOST_DEVICE
#endif

namespace mtc::rt {

inline constexpr uint64_t kDropoutGamma = 0x9E3779B97F4A7C15ull;

// SplitMix64's output function (Steele, Lea, Flood 2014; Vigna's constants).
MTC_HOST_DEVICE inline uint64_t dropout_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The key of one dropout site (the op's `key` attribute) at one optimizer
// step and microbatch of the global batch (HostState::global_microbatch):
// every site, step and microbatch draws its own mask,
// and forward, backward and recomputation of the same site draw the same.
// Generated code of every target calls this, so their masks agree.
MTC_HOST_DEVICE inline uint64_t dropout_site_key(uint64_t site, int64_t step,
                                                 int64_t microbatch) {
  return (site << 40) ^ (uint64_t(step) << 16) ^ uint64_t(microbatch);
}

// The generator state of the stream (seed, key); compute once per kernel.
MTC_HOST_DEVICE inline uint64_t dropout_stream(uint64_t seed, uint64_t key) {
  return dropout_mix64(seed +
                       kDropoutGamma * (dropout_mix64(key + kDropoutGamma) | 1ull));
}

// 64 random bits for global element `index` of the stream.
MTC_HOST_DEVICE inline uint64_t dropout_bits(uint64_t stream, uint64_t index) {
  return dropout_mix64(stream + kDropoutGamma * (index + 1ull));
}

// Uniform in [0, 1) with 24 random bits: every value is exact in fp32.
MTC_HOST_DEVICE inline float dropout_uniform(uint64_t stream, uint64_t index) {
  return static_cast<float>(dropout_bits(stream, index) >> 40) *
         5.9604644775390625e-8f;  // 2^-24
}

// True iff element `index` of the stream survives dropout with probability p.
MTC_HOST_DEVICE inline bool dropout_keep(uint64_t stream, uint64_t index,
                                         float p) {
  return dropout_uniform(stream, index) >= p;
}

}  // namespace mtc::rt
