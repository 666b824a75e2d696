// Shared helpers of the CUDA kernel tests: GPU detection (tests skip without
// a GPU), one Context for the process, device buffers poisoned with NaN,
// bf16 rounding on the host, seeded random data, and the comparison that
// prints one diagnostic line per checked output:
//
//   [CudaNorms] layer_norm_forward y (T=64,D=768): n=49152 max_abs=1.9e-03
//     max_rel=3.9e-03 rel_l2=1.2e-03 (tol abs 8e-03 + rel 8e-03, l2 1e-02) PASS
//
// References are the host fp32 kernels (mtc::rt::host) run on the same
// bf16-rounded inputs, so the tolerance only has to cover the GPU kernel's
// bf16 outputs and intermediate roundings, not the input quantization.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "mtc/rt/cuda_kernels.h"

namespace mtc::rt::cuda::test {

inline bool gpu_available() {
  static const bool ok = [] {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return n > 0;
  }();
  return ok;
}

// The process's context (never destroyed: it outlives every test).
inline Context& ctx() {
  static Context* c = new Context(0);
  return *c;
}

// Skips when no GPU is present; synchronizes and checks after each test.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_available()) GTEST_SKIP() << "no CUDA GPU (cudaGetDeviceCount failed or returned 0)";
  }
  void TearDown() override {
    if (!gpu_available()) return;
    cudaError_t e = cudaStreamSynchronize(ctx().stream);
    EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
  }
};

// --- bf16 on the host --------------------------------------------------------

inline uint16_t to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}
inline float from_bf16_bits(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float round_bf16(float f) { return from_bf16_bits(to_bf16_bits(f)); }
inline std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = round_bf16(x);
  return v;
}

// --- random data ------------------------------------------------------------

inline std::vector<float> randn(size_t n, uint64_t seed, float stddev = 1.f, float mean = 0.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(mean, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}
inline std::vector<float> uniform(size_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}
inline std::vector<int32_t> randint(size_t n, uint64_t seed, int32_t lo, int32_t hi) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> d(lo, hi - 1);
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = d(rng);
  return v;
}

// --- device buffers ---------------------------------------------------------

#define MTC_TEST_CUDA(call)                                                 \
  do {                                                                      \
    cudaError_t e_ = (call);                                                \
    if (e_ != cudaSuccess)                                                  \
      throw std::runtime_error(std::string(#call) + ": " + cudaGetErrorString(e_)); \
  } while (0)

// A device array of T (float, bf16 or int32), NaN-poisoned on creation.
template <typename T>
class DevBuf {
 public:
  explicit DevBuf(size_t n) : n_(n) {
    MTC_TEST_CUDA(cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T)));
    poison();
  }
  ~DevBuf() { cudaFree(p_); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;

  T* get() const { return p_; }
  size_t size() const { return n_; }
  // All bytes 0xFF: NaN as fp32 and as bf16, -1 as int32. Uploads and
  // poisoning go through ctx().stream and complete before returning (a plain
  // cudaMemcpy / cudaMemset is not ordered with the non-blocking stream).
  void poison() {
    MTC_TEST_CUDA(cudaMemsetAsync(p_, 0xff, n_ * sizeof(T), ctx().stream));
    MTC_TEST_CUDA(cudaStreamSynchronize(ctx().stream));
  }
  void upload_raw(const T* src) {
    MTC_TEST_CUDA(cudaMemcpyAsync(p_, src, n_ * sizeof(T), cudaMemcpyHostToDevice, ctx().stream));
    MTC_TEST_CUDA(cudaStreamSynchronize(ctx().stream));
  }
  std::vector<T> download_raw() const {
    MTC_TEST_CUDA(cudaStreamSynchronize(ctx().stream));
    std::vector<T> h(n_);
    MTC_TEST_CUDA(cudaMemcpyAsync(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost, ctx().stream));
    MTC_TEST_CUDA(cudaStreamSynchronize(ctx().stream));
    return h;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

// bf16 device buffer from/to float vectors (values rounded to bf16).
inline void upload(DevBuf<bf16>& d, const std::vector<float>& v) {
  std::vector<uint16_t> bits(v.size());
  for (size_t i = 0; i < v.size(); ++i) bits[i] = to_bf16_bits(v[i]);
  MTC_TEST_CUDA(cudaMemcpyAsync(d.get(), bits.data(), bits.size() * 2, cudaMemcpyHostToDevice,
                                ctx().stream));
  MTC_TEST_CUDA(cudaStreamSynchronize(ctx().stream));
}
inline std::vector<float> download(const DevBuf<bf16>& d) {
  MTC_TEST_CUDA(cudaStreamSynchronize(ctx().stream));
  std::vector<uint16_t> bits(d.size());
  MTC_TEST_CUDA(cudaMemcpyAsync(bits.data(), d.get(), bits.size() * 2, cudaMemcpyDeviceToHost,
                                ctx().stream));
  MTC_TEST_CUDA(cudaStreamSynchronize(ctx().stream));
  std::vector<float> v(bits.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = from_bf16_bits(bits[i]);
  return v;
}
inline void upload(DevBuf<float>& d, const std::vector<float>& v) { d.upload_raw(v.data()); }
inline std::vector<float> download(const DevBuf<float>& d) { return d.download_raw(); }
inline void upload(DevBuf<int32_t>& d, const std::vector<int32_t>& v) { d.upload_raw(v.data()); }
inline void upload(DevBuf<int64_t>& d, const std::vector<int64_t>& v) { d.upload_raw(v.data()); }

// --- comparison -------------------------------------------------------------

struct Tol {
  double abs;     // per element: |got - ref| <= abs + rel * |ref|
  double rel;
  double l2;      // and ||got - ref|| / ||ref|| <= l2 (0: not checked)
};

// Compares every element (a NaN or inf where the reference is finite fails,
// so unwritten poisoned outputs are caught), prints one diagnostic line and
// records a gtest failure naming the worst element.
inline void expect_close(const std::string& what, const std::vector<float>& got,
                         const std::vector<float>& ref, Tol tol) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double max_abs = 0, max_rel = 0, err2 = 0, ref2 = 0;
  size_t bad = 0, worst = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = ref[i];
    double d;
    if (std::isinf(r) || std::isinf(g)) {
      d = (g == r) ? 0.0 : INFINITY;  // infinities must match exactly (e.g. lse = -inf)
    } else {
      d = std::fabs(g - r);
      if (std::isnan(d)) d = INFINITY;
      err2 += d * d;
      ref2 += r * r;
    }
    max_abs = std::max(max_abs, d);
    if (std::isfinite(r) && std::fabs(r) > 0) max_rel = std::max(max_rel, d / std::fabs(r));
    const double allowed = tol.abs + tol.rel * (std::isfinite(r) ? std::fabs(r) : 0.0);
    if (!(d <= allowed)) {
      ++bad;
      const double excess = std::isfinite(d) ? d - allowed : INFINITY;
      if (excess > worst_excess) worst_excess = excess, worst = i;
    }
  }
  const double rel_l2 = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  const bool l2_ok = tol.l2 <= 0 || rel_l2 <= tol.l2;
  const bool pass = bad == 0 && l2_ok;
  std::printf("[%s] n=%zu max_abs=%.3e max_rel=%.3e rel_l2=%.3e (tol abs %.1e + rel %.1e",
              what.c_str(), ref.size(), max_abs, max_rel, rel_l2, tol.abs, tol.rel);
  if (tol.l2 > 0) std::printf(", l2 %.1e", tol.l2);
  std::printf(") %s\n", pass ? "PASS" : "FAIL");
  std::fflush(stdout);
  if (bad > 0)
    ADD_FAILURE() << what << ": " << bad << " of " << ref.size()
                  << " elements out of tolerance; worst at " << worst << ": got " << got[worst]
                  << ", expected " << ref[worst];
  if (!l2_ok) ADD_FAILURE() << what << ": relative L2 error " << rel_l2 << " > " << tol.l2;
}

inline double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v)
    if (std::isfinite(x)) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}
inline double rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return v.empty() ? 0.0 : std::sqrt(s / static_cast<double>(v.size()));
}

inline std::vector<float> plus(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<float> r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = a[i] + b[i];
  return r;
}

}  // namespace mtc::rt::cuda::test
