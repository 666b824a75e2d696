// Tests the tensor-parallel kernels (cuda_tp_kernels.h) on one GPU, the ranks
// emulated one after the other: the vocabulary-parallel embedding and its
// gradient against host::embedding_*_shard; the two-phase vocabulary-
// parallel cross-entropy (the all-gather emulated by copies) against
// host::cross_entropy_* on the whole (T, V) matrix, with a padded vocabulary,
// ignored and bad targets, in place and loss only, and every rank's loss
// bit-identical; permute_parts exactly in both directions; and the
// multi-range sum of squares (SumSquaresPlan) against a double CPU sum.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <utility>

#include "cuda_test_util.h"
#include "mtc/rt/cuda_tp_kernels.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::cuda::test {
namespace {

class CudaTensorParallel : public CudaTest {};

constexpr int32_t kIgnore = -100;

// Columns [c0, c0 + w) of a row-major (rows, cols) matrix.
std::vector<float> columns(const std::vector<float>& m, int64_t rows, int64_t cols, int64_t c0,
                           int64_t w) {
  std::vector<float> out(static_cast<size_t>(rows * w));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < w; ++j) out[i * w + j] = m[i * cols + c0 + j];
  return out;
}

// ---------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------

TEST_F(CudaTensorParallel, EmbeddingShardsMatchHost) {
  // v_total not a multiple of the parts: the last shard has padding rows.
  // D = 768: 16-byte paths; D = 12: scalar forward, 4-wide backward; D = 6:
  // scalar both.
  struct Case { int64_t t, v_total, d, parts; };
  for (Case c : {Case{256, 50257, 768, 2}, Case{10, 97, 12, 2}, Case{7, 33, 6, 2}}) {
    const int64_t v_local = (c.v_total + c.parts - 1) / c.parts;
    std::vector<int32_t> tok = randint(c.t, 801, 0, static_cast<int32_t>(c.v_total));
    tok[3] = tok[1];                                      // repeated tokens accumulate
    tok[4] = static_cast<int32_t>(v_local - 1);           // last row of shard 0
    tok[5] = static_cast<int32_t>(v_local);               // first row of shard 1
    tok[6] = static_cast<int32_t>(c.v_total - 1);         // last valid token
    std::vector<float> dout = round_bf16(randn(c.t * c.d, 803));
    DevBuf<int32_t> dtok(c.t);
    DevBuf<bf16> ddout(dout.size());
    upload(dtok, tok);
    upload(ddout, dout);
    for (int64_t r = 0; r < c.parts; ++r) {
      const int64_t start = r * v_local;
      std::vector<float> table = round_bf16(randn(v_local * c.d, 810 + r));
      std::vector<float> dt0 = randn(v_local * c.d, 820 + r, 0.1f);
      DevBuf<bf16> dtable(table.size()), out(c.t * c.d);
      DevBuf<float> dgrad(dt0.size());
      upload(dtable, table);
      upload(dgrad, dt0);
      const std::string tg = " T=" + std::to_string(c.t) + " V=" + std::to_string(c.v_total) +
                             " D=" + std::to_string(c.d) + " shard " + std::to_string(r) + "/" +
                             std::to_string(c.parts);

      embedding_forward_shard(ctx(), dtok.get(), dtable.get(), out.get(), c.t, v_local, c.d,
                              start, c.v_total);
      std::vector<float> ref(c.t * c.d);
      host::embedding_forward_shard(tok.data(), table.data(), ref.data(), c.t, v_local, c.d,
                                    start);
      expect_close("embedding_forward_shard" + tg, download(out), ref, Tol{0, 0, 0});

      embedding_backward_shard(ctx(), dtok.get(), ddout.get(), dgrad.get(), c.t, v_local, c.d,
                               start);
      std::vector<float> rg(v_local * c.d);
      host::embedding_backward_shard(tok.data(), dout.data(), rg.data(), c.t, v_local, c.d,
                                     start);
      expect_close("embedding_backward_shard (+=)" + tg, download(dgrad), plus(dt0, rg),
                   Tol{1e-5, 1e-5, 0});
      EXPECT_EQ(ctx().take_data_error(), "");
    }
  }
}

TEST_F(CudaTensorParallel, EmbeddingShardBadTokenIsReportedAndGivesZeroRow) {
  const int64_t t = 16, v_total = 97, v_local = 49, d = 16;  // shard 1 has a padding row (97)
  std::vector<int32_t> tok = randint(t, 831, 0, static_cast<int32_t>(v_total));
  tok[4] = 97;  // inside shard 1's rows [49, 98) but not a token
  tok[7] = -1;
  std::vector<int32_t> ref_tok = tok;
  ref_tok[4] = ref_tok[7] = -1;  // the host reference writes zero rows for these
  DevBuf<int32_t> dtok(t);
  upload(dtok, tok);
  for (int64_t r = 0; r < 2; ++r) {
    std::vector<float> table = round_bf16(randn(v_local * d, 832 + r));
    DevBuf<bf16> dtable(table.size()), out(t * d);
    upload(dtable, table);
    embedding_forward_shard(ctx(), dtok.get(), dtable.get(), out.get(), t, v_local, d,
                            r * v_local, v_total);
    const std::string err = ctx().take_data_error();
    std::printf("[embedding_forward_shard bad token, shard %lld] take_data_error: \"%s\"\n",
                static_cast<long long>(r), err.c_str());
    EXPECT_NE(err.find("token row 4"), std::string::npos) << err;
    EXPECT_EQ(ctx().take_data_error(), "");  // cleared
    std::vector<float> ref(t * d);
    host::embedding_forward_shard(ref_tok.data(), table.data(), ref.data(), t, v_local, d,
                                  r * v_local);
    expect_close("embedding_forward_shard bad tokens shard " + std::to_string(r), download(out),
                 ref, Tol{0, 0, 0});
  }
}

// ---------------------------------------------------------------------------
// Vocabulary-parallel cross-entropy
// ---------------------------------------------------------------------------

// Runs stats on every shard, gathers them (copies), runs finish on every
// shard (loss only, then with the gradient). Returns each shard's loss,
// loss-only loss and dlogits (T, V_local), and the gathered stats.
struct VpResult {
  std::vector<float> loss, loss_only;
  std::vector<std::vector<float>> dlogits;
  std::vector<float> all_stats;  // (P, T, 3)
};

VpResult run_vp_cross_entropy(const std::vector<float>& logits, const std::vector<int32_t>& tgt,
                              int64_t t, int64_t parts, int64_t v_local, int64_t valid,
                              bool in_place, float dloss) {
  const int64_t v = parts * v_local;
  DevBuf<int32_t> dt(t);
  upload(dt, tgt);
  std::vector<std::unique_ptr<DevBuf<bf16>>> dl, dg;
  std::vector<std::unique_ptr<DevBuf<float>>> stats, loss, loss_only;
  DevBuf<float> all_stats(parts * t * 3);
  for (int64_t r = 0; r < parts; ++r) {
    dl.push_back(std::make_unique<DevBuf<bf16>>(t * v_local));
    dg.push_back(std::make_unique<DevBuf<bf16>>(in_place ? 1 : t * v_local));
    stats.push_back(std::make_unique<DevBuf<float>>(t * 3));
    loss.push_back(std::make_unique<DevBuf<float>>(1));
    loss_only.push_back(std::make_unique<DevBuf<float>>(1));
    upload(*dl[r], columns(logits, t, v, r * v_local, v_local));
  }
  for (int64_t r = 0; r < parts; ++r)
    vp_cross_entropy_stats(ctx(), dl[r]->get(), dt.get(), stats[r]->get(), t, v_local,
                           r * v_local, valid, kIgnore);
  for (int64_t r = 0; r < parts; ++r)  // the all-gather, in rank order
    MTC_TEST_CUDA(cudaMemcpyAsync(all_stats.get() + r * t * 3, stats[r]->get(),
                                  sizeof(float) * t * 3, cudaMemcpyDeviceToDevice,
                                  ctx().stream));
  for (int64_t r = 0; r < parts; ++r) {
    vp_cross_entropy_finish(ctx(), dl[r]->get(), dt.get(), all_stats.get(), parts,
                            loss_only[r]->get(), nullptr, t, v_local, r * v_local, valid,
                            kIgnore, dloss);
    vp_cross_entropy_finish(ctx(), dl[r]->get(), dt.get(), all_stats.get(), parts,
                            loss[r]->get(), in_place ? dl[r]->get() : dg[r]->get(), t, v_local,
                            r * v_local, valid, kIgnore, dloss);
  }
  VpResult res;
  for (int64_t r = 0; r < parts; ++r) {
    res.loss.push_back(download(*loss[r])[0]);
    res.loss_only.push_back(download(*loss_only[r])[0]);
    res.dlogits.push_back(download(in_place ? *dl[r] : *dg[r]));
  }
  res.all_stats = download(all_stats);
  return res;
}

// (T, V) from the shards' (T, V_local) blocks.
std::vector<float> concat_columns(const std::vector<std::vector<float>>& shards, int64_t t,
                                  int64_t v_local) {
  const int64_t parts = static_cast<int64_t>(shards.size()), v = parts * v_local;
  std::vector<float> out(static_cast<size_t>(t * v));
  for (int64_t r = 0; r < parts; ++r)
    for (int64_t i = 0; i < t; ++i)
      for (int64_t j = 0; j < v_local; ++j) out[i * v + r * v_local + j] = shards[r][i * v_local + j];
  return out;
}

// The stats of cuda_tp_kernels.h computed in double on the host: (P, T, 3).
std::vector<float> ref_stats(const std::vector<float>& logits, const std::vector<int32_t>& tgt,
                             int64_t t, int64_t parts, int64_t v_local, int64_t valid) {
  const int64_t v = parts * v_local;
  std::vector<float> st(static_cast<size_t>(parts * t * 3));
  for (int64_t r = 0; r < parts; ++r) {
    const int64_t start = r * v_local;
    const int64_t cols = std::clamp<int64_t>(valid - start, 0, v_local);
    for (int64_t i = 0; i < t; ++i) {
      const float* row = logits.data() + i * v + start;
      float mx = -INFINITY;
      for (int64_t j = 0; j < cols; ++j) mx = std::max(mx, row[j]);
      double s = 0;
      for (int64_t j = 0; j < cols; ++j) s += std::exp(static_cast<double>(row[j]) - mx);
      const int64_t local = static_cast<int64_t>(tgt[i]) - start;
      const bool here = tgt[i] != kIgnore && tgt[i] >= 0 && tgt[i] < valid && local >= 0 &&
                        local < cols;
      float* out = st.data() + (r * t + i) * 3;
      out[0] = mx;
      out[1] = static_cast<float>(s);
      out[2] = here ? row[local] : 0.f;
    }
  }
  return st;
}

void expect_same_bits(const std::string& what, const std::vector<float>& v) {
  for (size_t r = 1; r < v.size(); ++r)
    EXPECT_EQ(std::memcmp(&v[r], &v[0], sizeof(float)), 0)
        << what << ": shard " << r << " loss " << v[r] << " differs from shard 0's " << v[0];
}

TEST_F(CudaTensorParallel, VocabParallelCrossEntropyMatchesHost) {
  // V = P * V_local >= valid: padded vocabularies. (4, 8, 20): shard 3 is all
  // padding, shard 2 partly; (2, 501, 990): scalar paths (V_local % 8 != 0).
  struct Case { int64_t t, parts, v_local, valid; bool in_place; };
  const float dloss = 0.25f;
  for (Case c : {Case{64, 2, 25152, 50257, false}, Case{37, 4, 264, 1001, true},
                 Case{16, 4, 8, 20, false}, Case{9, 2, 501, 990, true},
                 Case{32, 4, 12608, 50304, false}, Case{5, 2, 40000, 80000, true}}) {
    const int64_t v = c.parts * c.v_local;
    std::vector<float> logits = round_bf16(randn(c.t * v, 841, 2.f));
    std::vector<int32_t> tgt = randint(c.t, 842, 0, static_cast<int32_t>(c.valid));
    tgt[1] = kIgnore;
    tgt[c.t - 1] = kIgnore;
    tgt[0] = static_cast<int32_t>(c.valid - 1);  // the last valid class
    VpResult res = run_vp_cross_entropy(logits, tgt, c.t, c.parts, c.v_local, c.valid,
                                        c.in_place, dloss);
    const std::string tg = " T=" + std::to_string(c.t) + " P=" + std::to_string(c.parts) +
                           " V_local=" + std::to_string(c.v_local) + " valid=" +
                           std::to_string(c.valid) + (c.in_place ? " in place" : "");

    // Statistics: max exact (bf16 values), sums to fp32 accuracy.
    expect_close("vp_cross_entropy_stats" + tg, res.all_stats,
                 ref_stats(logits, tgt, c.t, c.parts, c.v_local, c.valid), Tol{1e-6, 1e-5, 0});

    float ref_loss = 0;
    ASSERT_TRUE(host::cross_entropy_forward(logits.data(), tgt.data(), &ref_loss, c.t, v,
                                            c.valid, kIgnore));
    std::vector<float> ref(c.t * v);
    host::cross_entropy_backward(logits.data(), tgt.data(), dloss, ref.data(), c.t, v, c.valid,
                                 kIgnore);
    expect_close("vp_cross_entropy loss" + tg, {res.loss[0]}, {ref_loss}, Tol{1e-5, 1e-5, 0});
    expect_same_bits("vp_cross_entropy loss" + tg, res.loss);
    expect_same_bits("vp_cross_entropy loss (forward only)" + tg, res.loss_only);
    EXPECT_EQ(std::memcmp(&res.loss_only[0], &res.loss[0], sizeof(float)), 0) << tg;
    // bf16 gradient: one rounding of an fp32 value, as the fused cross_entropy.
    expect_close("vp_cross_entropy dlogits" + tg, concat_columns(res.dlogits, c.t, c.v_local),
                 ref, Tol{1e-3 * max_abs(ref) / static_cast<double>(c.valid), 8e-3, 1e-2});
    EXPECT_EQ(ctx().take_data_error(), "");
  }
}

TEST_F(CudaTensorParallel, VocabParallelCrossEntropyBadAndIgnoredTargets) {
  const int64_t t = 8, parts = 2, v_local = 16, valid = 30, v = parts * v_local;
  std::vector<float> logits = round_bf16(randn(t * v, 851));
  std::vector<int32_t> tgt = randint(t, 852, 0, static_cast<int32_t>(valid));
  tgt[5] = 30;  // a padding class of shard 1
  tgt[2] = -7;  // negative, not ignore_index
  tgt[6] = kIgnore;
  VpResult res = run_vp_cross_entropy(logits, tgt, t, parts, v_local, valid, false, 1.f);
  const std::string err = ctx().take_data_error();
  std::printf("[vp_cross_entropy bad target] take_data_error: \"%s\"\n", err.c_str());
  EXPECT_NE(err.find("row 2"), std::string::npos) << err;  // the first bad row
  // Bad targets count as ignored: compare against the host with them ignored.
  std::vector<int32_t> ref_tgt = tgt;
  ref_tgt[5] = ref_tgt[2] = kIgnore;
  float ref_loss = 0;
  ASSERT_TRUE(host::cross_entropy_forward(logits.data(), ref_tgt.data(), &ref_loss, t, v, valid,
                                          kIgnore));
  std::vector<float> ref(t * v);
  host::cross_entropy_backward(logits.data(), ref_tgt.data(), 1.f, ref.data(), t, v, valid,
                               kIgnore);
  expect_close("vp_cross_entropy loss with bad targets", {res.loss[0]}, {ref_loss},
               Tol{1e-5, 1e-5, 0});
  expect_same_bits("vp_cross_entropy loss with bad targets", res.loss);
  std::vector<float> got = concat_columns(res.dlogits, t, v_local);
  expect_close("vp_cross_entropy dlogits with bad targets", got, ref,
               Tol{1e-3 * max_abs(ref) / static_cast<double>(valid), 8e-3, 1e-2});
  for (int64_t row : {2, 5, 6})
    for (int64_t j = 0; j < v; ++j) EXPECT_EQ(got[row * v + j], 0.f) << row << ", " << j;

  // Every target ignored: loss 0, gradient 0 on every shard.
  std::vector<int32_t> none(t, kIgnore);
  VpResult zero = run_vp_cross_entropy(logits, none, t, parts, v_local, valid, true, 1.f);
  expect_close("vp_cross_entropy all ignored loss", zero.loss, std::vector<float>(parts, 0.f),
               Tol{0, 0, 0});
  expect_close("vp_cross_entropy all ignored dlogits", concat_columns(zero.dlogits, t, v_local),
               std::vector<float>(t * v, 0.f), Tol{0, 0, 0});
  EXPECT_EQ(ctx().take_data_error(), "");
}

// ---------------------------------------------------------------------------
// permute_parts
// ---------------------------------------------------------------------------

TEST_F(CudaTensorParallel, PermutePartsBothDirectionsExact) {
  // chunk % 8 == 0 (16-byte path), even (4-byte path), odd, and a
  // misaligned pointer (element offset 1: 2-byte path).
  struct Case { int64_t outer, parts, chunk, offset; };
  for (Case c : {Case{5, 4, 64, 0}, Case{512, 4, 96, 0}, Case{6, 3, 6, 0}, Case{3, 2, 7, 0},
                 Case{1, 8, 8, 0}, Case{7, 2, 8, 1}}) {
    const int64_t n = c.outer * c.parts * c.chunk;
    std::vector<float> x = round_bf16(randn(n, 861));  // (outer, parts, chunk)
    std::vector<float> ref(n);                         // (parts, outer, chunk)
    for (int64_t o = 0; o < c.outer; ++o)
      for (int64_t p = 0; p < c.parts; ++p)
        for (int64_t k = 0; k < c.chunk; ++k)
          ref[(p * c.outer + o) * c.chunk + k] = x[(o * c.parts + p) * c.chunk + k];
    DevBuf<bf16> din(n + c.offset), dmid(n + c.offset), dback(n + c.offset);
    std::vector<float> padded(c.offset, 0.f);
    padded.insert(padded.end(), x.begin(), x.end());
    upload(din, padded);
    permute_parts(ctx(), din.get() + c.offset, dmid.get() + c.offset, c.outer, c.parts, c.chunk,
                  true);
    permute_parts(ctx(), dmid.get() + c.offset, dback.get() + c.offset, c.outer, c.parts,
                  c.chunk, false);
    std::vector<float> mid = download(dmid), back = download(dback);
    mid.erase(mid.begin(), mid.begin() + c.offset);
    back.erase(back.begin(), back.begin() + c.offset);
    const std::string tg = " outer=" + std::to_string(c.outer) + " parts=" +
                           std::to_string(c.parts) + " chunk=" + std::to_string(c.chunk) +
                           " offset=" + std::to_string(c.offset);
    expect_close("permute_parts to parts-major" + tg, mid, ref, Tol{0, 0, 0});
    expect_close("permute_parts back" + tg, back, x, Tol{0, 0, 0});
  }
}

// ---------------------------------------------------------------------------
// Multi-range sum of squares
// ---------------------------------------------------------------------------

TEST_F(CudaTensorParallel, SumSquaresPlanMatchesDoubleSum) {
  const int64_t n = (int64_t{1} << 22) + 1000;
  std::vector<float> x = randn(n, 871, 0.01f);
  // One large range at an odd offset (several pieces), an empty range, ~300
  // small ranges of odd sizes and offsets, and one range listed twice.
  std::vector<std::pair<int64_t, int64_t>> ranges = {{3, 2500001}, {2500004, 0}};
  std::mt19937_64 rng(872);
  int64_t pos = 2500010;
  for (int i = 0; i < 300; ++i) {
    const int64_t len = static_cast<int64_t>(rng() % 3000) + 1;
    ranges.push_back({pos, len});
    pos += len + static_cast<int64_t>(rng() % 50);
  }
  ASSERT_LE(pos, n);
  ranges.push_back(ranges[10]);
  double ref = 0;
  for (const auto& [off, len] : ranges)
    for (int64_t i = off; i < off + len; ++i) ref += static_cast<double>(x[i]) * x[i];

  DevBuf<float> dx(n);
  DevBuf<double> out(1);
  upload(dx, x);
  SumSquaresPlan plan(ctx(), ranges);
  sum_squares(ctx(), plan, dx.get(), out.get(), false);
  const double got = out.download_raw()[0];
  sum_squares(ctx(), plan, dx.get(), out.get(), false);
  const double again = out.download_raw()[0];
  sum_squares(ctx(), plan, dx.get(), out.get(), true);
  const double acc = out.download_raw()[0];
  const double rel = std::fabs(got - ref) / ref, rel2 = std::fabs(acc - 2 * ref) / (2 * ref);
  std::printf("[sum_squares plan, %zu ranges, %lld pieces] got %.15g ref %.15g rel %.2e; "
              "accumulate rel %.2e; rerun %s %s\n",
              ranges.size(), static_cast<long long>(plan.num_pieces()), got, ref, rel, rel2,
              got == again ? "identical" : "DIFFERS",
              rel < 1e-12 && rel2 < 1e-12 && got == again ? "PASS" : "FAIL");
  EXPECT_LT(rel, 1e-12);
  EXPECT_LT(rel2, 1e-12);
  EXPECT_EQ(std::memcmp(&got, &again, sizeof(double)), 0) << "not deterministic";

  // One range over everything agrees with the single-buffer sum_squares.
  SumSquaresPlan whole(ctx(), {{0, n}});
  sum_squares(ctx(), whole, dx.get(), out.get(), false);
  const double got_whole = out.download_raw()[0];
  sum_squares(ctx(), dx.get(), n, out.get(), false);
  const double got_flat = out.download_raw()[0];
  EXPECT_LT(std::fabs(got_whole - got_flat) / got_flat, 1e-12) << got_whole << " " << got_flat;

  // An empty plan writes 0, or leaves *out when accumulating.
  SumSquaresPlan empty(ctx(), {});
  const double five = 5.0;
  out.upload_raw(&five);
  sum_squares(ctx(), empty, dx.get(), out.get(), true);
  EXPECT_EQ(out.download_raw()[0], 5.0);
  sum_squares(ctx(), empty, dx.get(), out.get(), false);
  EXPECT_EQ(out.download_raw()[0], 0.0);
}

}  // namespace
}  // namespace mtc::rt::cuda::test
