// Tests that the elementwise CUDA kernels (conversion, fill, add, accumulate,
// column sums, dropout) match the host kernels, on both the 16-byte vector
// path (sizes multiple of 8) and the scalar path (odd sizes).
#include "cuda_test_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::cuda::test {
namespace {

class CudaElementwise : public CudaTest {};

// Tolerance of one bf16 rounding of an fp32 result (2^-9 relative) + slack.
constexpr Tol kOneRounding{1e-6, 4.0e-3, 0};

TEST_F(CudaElementwise, ConvertRoundTrip) {
  for (size_t n : {size_t{4096}, size_t{1001}}) {
    std::vector<float> x = randn(n, 11 + n, 3.f);
    DevBuf<float> xf(n), back(n);
    DevBuf<bf16> xb(n);
    upload(xf, x);
    convert(ctx(), xf.get(), xb.get(), static_cast<int64_t>(n));
    convert(ctx(), xb.get(), back.get(), static_cast<int64_t>(n));
    // f32 -> bf16 must be round-to-nearest-even exactly.
    expect_close("convert f32->bf16 n=" + std::to_string(n), download(xb), round_bf16(x),
                 Tol{0, 0, 0});
    expect_close("convert bf16->f32 n=" + std::to_string(n), download(back), round_bf16(x),
                 Tol{0, 0, 0});
  }
}

TEST_F(CudaElementwise, Fill) {
  const size_t n = 777;
  DevBuf<float> f(n);
  DevBuf<bf16> b(n);
  fill(ctx(), f.get(), 1.5f, n);
  fill(ctx(), b.get(), -0.25f, n);
  expect_close("fill f32", download(f), std::vector<float>(n, 1.5f), Tol{0, 0, 0});
  expect_close("fill bf16", download(b), std::vector<float>(n, -0.25f), Tol{0, 0, 0});
}

TEST_F(CudaElementwise, AddResidualAndBroadcast) {
  struct Case { int64_t n, nb; };
  for (Case c : {Case{64 * 768, 64 * 768}, Case{4 * 96 * 64, 96 * 64}, Case{3 * 105, 105}}) {
    std::vector<float> a = round_bf16(randn(c.n, 21)), b = round_bf16(randn(c.nb, 22));
    DevBuf<bf16> da(c.n), db(c.nb), out(c.n);
    upload(da, a);
    upload(db, b);
    add(ctx(), da.get(), db.get(), out.get(), c.n, c.nb);
    std::vector<float> ref(c.n);
    host::add(a.data(), b.data(), ref.data(), c.n, c.nb);
    expect_close("add n=" + std::to_string(c.n) + " nb=" + std::to_string(c.nb), download(out),
                 ref, kOneRounding);
  }
}

// add3_on: the tp all-reduce's sum with the residual, (a + b) + c with one
// rounding, on another stream; without c it is a + b.
TEST_F(CudaElementwise, Add3OnStream) {
  for (int64_t n : {int64_t{64 * 768}, int64_t{1001}}) {
    std::vector<float> a = round_bf16(randn(n, 23)), b = round_bf16(randn(n, 24)),
                       c = round_bf16(randn(n, 25));
    DevBuf<bf16> da(n), db(n), dc(n), out(n), out2(n);
    upload(da, a);
    upload(db, b);
    upload(dc, c);
    cudaStream_t s = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    add3_on(s, ctx().sm_count, da.get(), db.get(), dc.get(), out.get(), n);
    add3_on(s, ctx().sm_count, da.get(), db.get(), nullptr, out2.get(), n);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    cudaStreamDestroy(s);
    std::vector<float> ref(n), ref2(n);
    for (int64_t i = 0; i < n; ++i) {
      ref2[i] = a[i] + b[i];
      ref[i] = ref2[i] + c[i];
    }
    expect_close("add3 n=" + std::to_string(n), download(out), ref, kOneRounding);
    expect_close("add3 without c n=" + std::to_string(n), download(out2), ref2, kOneRounding);
  }
}

TEST_F(CudaElementwise, Accumulate) {
  const int64_t n = 5003;
  std::vector<float> dst = randn(n, 31), src = round_bf16(randn(n, 32));
  DevBuf<float> d(n), sf(n);
  DevBuf<bf16> sb(n);
  upload(d, dst);
  upload(sb, src);
  upload(sf, src);
  accumulate(ctx(), d.get(), sb.get(), n);
  accumulate(ctx(), d.get(), sf.get(), n);
  std::vector<float> ref = dst;
  host::accumulate(ref.data(), src.data(), n);
  host::accumulate(ref.data(), src.data(), n);
  expect_close("accumulate bf16+f32", download(d), ref, Tol{1e-6, 1e-6, 0});
}

TEST_F(CudaElementwise, AccumulateRows) {
  // 143 rows of 2048 (the 1.3B GPT's tp rows) and a ragged width, into
  // scattered, unaligned destinations of one buffer; the rows end zeroed.
  for (auto [m, n] : {std::pair<int64_t, int64_t>{143, 2048}, {5, 1001}}) {
    const int64_t total = m * n * 3 + 7;
    std::vector<float> base = randn(total, 41), rows = randn(m * n, 42);
    std::vector<int64_t> dst(m);
    for (int64_t i = 0; i < m; ++i) dst[i] = ((m - 1 - i) * 3 * n) + (i % 3);
    DevBuf<float> d(total), r(m * n);
    DevBuf<int64_t> dd(m);
    upload(d, base);
    upload(r, rows);
    upload(dd, dst);
    accumulate_rows(ctx(), d.get(), dd.get(), r.get(), m, n);
    std::vector<float> ref = base;
    for (int64_t i = 0; i < m; ++i)
      host::accumulate(ref.data() + dst[i], rows.data() + i * n, n);
    const std::string what = "accumulate_rows m=" + std::to_string(m) + " n=" + std::to_string(n);
    expect_close(what, download(d), ref, Tol{1e-6, 1e-6, 0});
    expect_close(what + " (rows zeroed)", download(r), std::vector<float>(m * n, 0.f),
                 Tol{0, 0, 0});
  }
}

TEST_F(CudaElementwise, ReduceRowsAccumulate) {
  struct Case { int64_t m, n; };
  for (Case c : {Case{4096, 768}, Case{16384, 2048}, Case{37, 13}, Case{1000, 2304}}) {
    std::vector<float> x = round_bf16(randn(c.m * c.n, 41)), y0 = randn(c.n, 42);
    DevBuf<bf16> dx(c.m * c.n);
    DevBuf<float> dy(c.n);
    upload(dx, x);
    upload(dy, y0);
    reduce_rows_accumulate(ctx(), dx.get(), dy.get(), c.m, c.n);
    std::vector<float> ref(c.n);
    host::reduce_rows(x.data(), ref.data(), c.m, c.n);
    // fp32 sums of m values of size ~1: order differences ~ sqrt(m) * 6e-8 * |sum|.
    expect_close("reduce_rows_accumulate M=" + std::to_string(c.m) + " N=" + std::to_string(c.n),
                 download(dy), plus(y0, ref), Tol{1e-3, 1e-5, 0});
  }
}

TEST_F(CudaElementwise, DropoutMatchesHostMaskExactly) {
  for (int64_t n : {int64_t{1} << 16, int64_t{999}}) {
    for (float p : {0.1f, 0.5f}) {
      std::vector<float> x = round_bf16(randn(n, 51));
      for (float& v : x)
        if (v == 0.f) v = 1.f;  // zero output <=> dropped
      DevBuf<bf16> dx(n), dy(n);
      upload(dx, x);
      const uint64_t seed = 1234, key = 77;
      const int64_t offset = 1000003;
      dropout(ctx(), dx.get(), dy.get(), n, p, seed, key, offset);
      std::vector<float> ref(n);
      host::dropout(x.data(), ref.data(), n, p, seed, key, offset);
      std::vector<float> got = download(dy);
      int64_t mismatched = 0, dropped = 0;
      for (int64_t i = 0; i < n; ++i) {
        mismatched += (got[i] == 0.f) != (ref[i] == 0.f);
        dropped += ref[i] == 0.f;
      }
      std::printf("[dropout n=%lld p=%.1f] dropped %.4f, mask mismatches %lld %s\n",
                  static_cast<long long>(n), p, static_cast<double>(dropped) / n,
                  static_cast<long long>(mismatched), mismatched == 0 ? "PASS" : "FAIL");
      EXPECT_EQ(mismatched, 0);
      expect_close("dropout values n=" + std::to_string(n), got, ref, kOneRounding);

      // Fused residual add, in place on the residual.
      std::vector<float> r = round_bf16(randn(n, 52));
      DevBuf<bf16> dr(n);
      upload(dr, r);
      dropout_add(ctx(), dx.get(), dr.get(), dr.get(), n, p, seed, key, offset);
      expect_close("dropout_add n=" + std::to_string(n), download(dr), plus(r, ref),
                   Tol{1e-6, 8e-3, 0});
    }
  }
}

// A tensor-parallel slice draws the global tensor's mask: every rank's
// dropout_slice of its part of a global (outer, parts, chunk) tensor equals
// the host dropout of the whole tensor, cut the same way (vector path with
// chunk % 8 == 0, scalar path otherwise).
TEST_F(CudaElementwise, DropoutSliceDrawsTheGlobalMask) {
  for (int64_t chunk : {int64_t{64}, int64_t{37}}) {
    const int64_t outer = 96, parts = 2;
    const int64_t n = outer * parts * chunk;
    std::vector<float> x = round_bf16(randn(n, 53));
    for (float& v : x)
      if (v == 0.f) v = 1.f;
    const float p = 0.3f;
    const uint64_t seed = 99, key = 5;
    std::vector<float> ref(n);
    host::dropout(x.data(), ref.data(), n, p, seed, key, 0);
    for (int64_t index = 0; index < parts; ++index) {
      std::vector<float> mine(outer * chunk), want(outer * chunk);
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t c = 0; c < chunk; ++c) {
          mine[o * chunk + c] = x[(o * parts + index) * chunk + c];
          want[o * chunk + c] = ref[(o * parts + index) * chunk + c];
        }
      DevBuf<bf16> dx(outer * chunk), dy(outer * chunk);
      upload(dx, mine);
      dropout_slice(ctx(), dx.get(), dy.get(), outer, chunk, parts, index, p, seed, key);
      std::vector<float> got = download(dy);
      int64_t mismatched = 0;
      for (int64_t i = 0; i < outer * chunk; ++i) mismatched += (got[i] == 0.f) != (want[i] == 0.f);
      EXPECT_EQ(mismatched, 0) << "chunk " << chunk << " index " << index;
      expect_close("dropout_slice chunk=" + std::to_string(chunk), got, want, kOneRounding);
    }
  }
}

TEST_F(CudaElementwise, DropoutEdgeProbabilities) {
  const int64_t n = 4096;
  std::vector<float> x = round_bf16(randn(n, 61));
  DevBuf<bf16> dx(n), dy(n);
  upload(dx, x);
  dropout(ctx(), dx.get(), dy.get(), n, 0.f, 1, 2, 0);
  expect_close("dropout p=0 copies", download(dy), x, Tol{0, 0, 0});
  dropout(ctx(), dx.get(), dy.get(), n, 1.f, 1, 2, 0);
  expect_close("dropout p=1 zeroes", download(dy), std::vector<float>(n, 0.f), Tol{0, 0, 0});
}

}  // namespace
}  // namespace mtc::rt::cuda::test
