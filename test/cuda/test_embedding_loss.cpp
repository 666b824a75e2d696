// Tests that the embedding lookup (with the fused position table) and its
// fp32 accumulating gradient, and the fused softmax cross-entropy (loss and
// dlogits in one pass, ignore_index, padded vocabulary, in place, forward
// only) match the host kernels; and that bad token / target ids are
// reported, not read.
#include "cuda_test_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::cuda::test {
namespace {

class CudaEmbedding : public CudaTest {};
class CudaLoss : public CudaTest {};

TEST_F(CudaEmbedding, ForwardWithPositionsAndBackward) {
  struct Case { int64_t b, s, v, d; };
  for (Case c : {Case{4, 64, 50304, 768}, Case{2, 5, 97, 12}}) {
    const int64_t t = c.b * c.s;
    std::vector<int32_t> tok = randint(t, 501, 0, static_cast<int32_t>(c.v));
    tok[3] = tok[1];  // repeated tokens accumulate
    std::vector<float> table = round_bf16(randn(c.v * c.d, 502));
    std::vector<float> pos = round_bf16(randn(c.s * c.d, 503));
    std::vector<float> dout = round_bf16(randn(t * c.d, 504));
    std::vector<float> dt0 = randn(c.v * c.d, 505, 0.1f);
    DevBuf<int32_t> dtok(t);
    DevBuf<bf16> dtable(table.size()), dpos(pos.size()), out(t * c.d), ddout(dout.size());
    DevBuf<float> dtab_grad(c.v * c.d);
    upload(dtok, tok);
    upload(dtable, table);
    upload(dpos, pos);
    upload(ddout, dout);
    upload(dtab_grad, dt0);
    const std::string tg = " T=" + std::to_string(t) + " V=" + std::to_string(c.v) +
                           " D=" + std::to_string(c.d);

    std::vector<float> ref(t * c.d), ref_pos(t * c.d);
    ASSERT_TRUE(host::embedding_forward(tok.data(), table.data(), ref.data(), t, c.v, c.d));
    embedding_forward(ctx(), dtok.get(), dtable.get(), nullptr, out.get(), t, c.v, c.d, c.s);
    expect_close("embedding_forward" + tg, download(out), ref, Tol{0, 0, 0});
    out.poison();
    embedding_forward(ctx(), dtok.get(), dtable.get(), dpos.get(), out.get(), t, c.v, c.d, c.s);
    host::add(ref.data(), pos.data(), ref_pos.data(), t * c.d, c.s * c.d);
    expect_close("embedding_forward + positions" + tg, download(out), ref_pos,
                 Tol{1e-6, 4e-3, 0});
    EXPECT_EQ(ctx().take_data_error(), "");

    embedding_backward(ctx(), dtok.get(), ddout.get(), dtab_grad.get(), t, c.v, c.d);
    std::vector<float> rg(c.v * c.d);
    host::embedding_backward(tok.data(), dout.data(), rg.data(), t, c.v, c.d);
    expect_close("embedding_backward (+=)" + tg, download(dtab_grad), plus(dt0, rg),
                 Tol{1e-5, 1e-5, 0});
  }
}

TEST_F(CudaEmbedding, BadTokenIsReportedAndGivesZeroRow) {
  const int64_t t = 16, v = 50, d = 16;
  std::vector<int32_t> tok = randint(t, 511, 0, v);
  tok[9] = 50;
  tok[12] = -3;
  std::vector<float> table = round_bf16(randn(v * d, 512));
  DevBuf<int32_t> dtok(t);
  DevBuf<bf16> dtable(v * d), out(t * d);
  upload(dtok, tok);
  upload(dtable, table);
  embedding_forward(ctx(), dtok.get(), dtable.get(), nullptr, out.get(), t, v, d, t);
  const std::string err = ctx().take_data_error();
  std::printf("[embedding bad token] take_data_error: \"%s\"\n", err.c_str());
  EXPECT_NE(err.find("token row 9"), std::string::npos) << err;
  EXPECT_EQ(ctx().take_data_error(), "");  // cleared
  std::vector<float> got = download(out);
  for (int64_t c = 0; c < d; ++c) {
    EXPECT_EQ(got[9 * d + c], 0.f);
    EXPECT_EQ(got[12 * d + c], 0.f);
    EXPECT_EQ(got[0 * d + c], table[tok[0] * d + c]);
  }
}

TEST_F(CudaLoss, FusedCrossEntropyMatchesHost) {
  // valid < V: a padded vocabulary (GPT-2's 50257 classes padded to 50304).
  struct Case { int64_t t, v, valid; bool in_place; };
  const int32_t kIgnore = -100;
  for (Case c : {Case{64, 50304, 50304, false}, Case{37, 1001, 1001, false},
                 Case{8, 70000, 70000, true}, Case{128, 50304, 50257, true},
                 Case{16, 70000, 65541, false}, Case{9, 1001, 990, true}}) {
    std::vector<float> logits = round_bf16(randn(c.t * c.v, 601, 2.f));
    std::vector<int32_t> tgt = randint(c.t, 602, 0, static_cast<int32_t>(c.valid));
    tgt[1] = kIgnore;
    tgt[c.t - 1] = kIgnore;
    const float dloss = 0.25f;
    DevBuf<bf16> dl(logits.size()), dgrad(c.in_place ? 1 : logits.size());
    DevBuf<int32_t> dt(c.t);
    DevBuf<float> loss(1), loss_only(1);
    upload(dl, logits);
    upload(dt, tgt);
    bf16* g = c.in_place ? dl.get() : dgrad.get();
    cross_entropy(ctx(), dl.get(), dt.get(), loss_only.get(), nullptr, c.t, c.v, c.valid, kIgnore,
                  dloss);
    cross_entropy(ctx(), dl.get(), dt.get(), loss.get(), g, c.t, c.v, c.valid, kIgnore, dloss);
    float ref_loss = 0;
    ASSERT_TRUE(host::cross_entropy_forward(logits.data(), tgt.data(), &ref_loss, c.t, c.v,
                                            c.valid, kIgnore));
    std::vector<float> ref(c.t * c.v);
    host::cross_entropy_backward(logits.data(), tgt.data(), dloss, ref.data(), c.t, c.v, c.valid,
                                 kIgnore);
    const std::string tg = " T=" + std::to_string(c.t) + " V=" + std::to_string(c.v) +
                           " valid=" + std::to_string(c.valid) + (c.in_place ? " in place" : "");
    expect_close("cross_entropy loss" + tg, download(loss), {ref_loss}, Tol{1e-5, 1e-5, 0});
    expect_close("cross_entropy loss (forward only)" + tg, download(loss_only), {ref_loss},
                 Tol{1e-5, 1e-5, 0});
    // bf16 gradient: one rounding of an fp32 value (exp2f/logf error ~1e-6).
    expect_close("cross_entropy dlogits" + tg, download(c.in_place ? dl : dgrad), ref,
                 Tol{1e-3 * max_abs(ref) / static_cast<double>(c.v), 8e-3, 1e-2});
    EXPECT_EQ(ctx().take_data_error(), "");
  }
}

TEST_F(CudaLoss, AllIgnoredGivesZeroLossAndGradient) {
  const int64_t t = 4, v = 64;
  std::vector<float> logits = round_bf16(randn(t * v, 611));
  std::vector<int32_t> tgt(t, -1);
  DevBuf<bf16> dl(t * v), dg(t * v);
  DevBuf<int32_t> dt(t);
  DevBuf<float> loss(1);
  upload(dl, logits);
  upload(dt, tgt);
  cross_entropy(ctx(), dl.get(), dt.get(), loss.get(), dg.get(), t, v, v, -1, 1.f);
  expect_close("cross_entropy all ignored loss", download(loss), {0.f}, Tol{0, 0, 0});
  expect_close("cross_entropy all ignored dlogits", download(dg), std::vector<float>(t * v, 0.f),
               Tol{0, 0, 0});
}

TEST_F(CudaLoss, BadTargetIsReported) {
  const int64_t t = 8, v = 32;
  std::vector<float> logits = round_bf16(randn(t * v, 621));
  std::vector<int32_t> tgt = randint(t, 622, 0, v - 2);
  tgt[5] = 30;  // a padding class (valid = 30)
  DevBuf<bf16> dl(t * v), dg(t * v);
  DevBuf<int32_t> dt(t);
  DevBuf<float> loss(1);
  upload(dl, logits);
  upload(dt, tgt);
  cross_entropy(ctx(), dl.get(), dt.get(), loss.get(), dg.get(), t, v, v - 2, -100, 1.f);
  const std::string err = ctx().take_data_error();
  std::printf("[cross_entropy bad target] take_data_error: \"%s\"\n", err.c_str());
  EXPECT_NE(err.find("row 5"), std::string::npos) << err;
  // The bad row is treated as ignored: zero gradient.
  std::vector<float> g = download(dg);
  for (int64_t c = 0; c < v; ++c) EXPECT_EQ(g[5 * v + c], 0.f);
}

}  // namespace
}  // namespace mtc::rt::cuda::test
