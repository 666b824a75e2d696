// Tests that LayerNorm and RMSNorm forward/backward on the GPU match the host
// kernels on the same bf16 inputs, for row lengths on each register-caching
// path (D <= 1024, <= 2048, <= 4096) and the tiled path (D > 4096); that the
// parameter gradients accumulate into fp32 and that dx can accumulate.
#include "cuda_test_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::cuda::test {
namespace {

class CudaNorms : public CudaTest {};

struct Shape {
  int64_t t, d;
};

std::string tag(const char* op, Shape s) {
  return std::string(op) + " T=" + std::to_string(s.t) + " D=" + std::to_string(s.d);
}

const Shape kShapes[] = {{64, 768}, {50, 2048}, {33, 8}, {16, 4096}, {9, 6152}};
constexpr float kEps = 1e-5f;

TEST_F(CudaNorms, LayerNormForwardBackward) {
  for (Shape s : kShapes) {
    for (bool with_beta : {true, false}) {
      const int64_t n = s.t * s.d;
      // A large common offset checks the two-pass variance.
      std::vector<float> x = round_bf16(randn(n, 101, 2.f, 3.f));
      std::vector<float> gamma = round_bf16(randn(s.d, 102, 0.5f, 1.f));
      std::vector<float> beta = round_bf16(randn(s.d, 103, 0.5f));
      std::vector<float> dy = round_bf16(randn(n, 104));
      std::vector<float> dg0 = randn(s.d, 105), db0 = randn(s.d, 106);
      DevBuf<bf16> dx_(n), dgm(s.d), dbt(s.d), dy_(n), y(n), gx(n);
      DevBuf<float> dgamma(s.d), dbeta(s.d);
      upload(dx_, x);
      upload(dgm, gamma);
      upload(dbt, beta);
      upload(dy_, dy);
      upload(dgamma, dg0);
      upload(dbeta, db0);
      layer_norm_forward(ctx(), dx_.get(), dgm.get(), with_beta ? dbt.get() : nullptr, y.get(),
                         s.t, s.d, kEps);
      layer_norm_backward(ctx(), dx_.get(), dgm.get(), dy_.get(), gx.get(), dgamma.get(),
                          with_beta ? dbeta.get() : nullptr, s.t, s.d, kEps);
      std::vector<float> ry(n), rdx(n), rdg(s.d), rdb(s.d);
      host::layer_norm_forward(x.data(), gamma.data(), with_beta ? beta.data() : nullptr,
                               ry.data(), s.t, s.d, kEps);
      host::layer_norm_backward(x.data(), gamma.data(), dy.data(), rdx.data(), rdg.data(),
                                rdb.data(), s.t, s.d, kEps);
      const std::string b = with_beta ? "" : " (no beta)";
      expect_close(tag("layer_norm_forward y", s) + b, download(y), ry, Tol{8e-3, 8e-3, 1e-2});
      expect_close(tag("layer_norm_backward dx", s) + b, download(gx), rdx,
                   Tol{1e-2 * rms(rdx), 1e-2, 1e-2});
      expect_close(tag("layer_norm_backward dgamma (+=)", s) + b, download(dgamma),
                   plus(dg0, rdg), Tol{1e-4 * (rms(rdg) + 1), 1e-4, 0});
      expect_close(tag("layer_norm_backward dbeta (+=)", s) + b, download(dbeta),
                   with_beta ? plus(db0, rdb) : db0, Tol{1e-4 * (rms(rdb) + 1), 1e-4, 0});
    }
  }
}

TEST_F(CudaNorms, RmsNormForwardBackward) {
  for (Shape s : kShapes) {
    const int64_t n = s.t * s.d;
    std::vector<float> x = round_bf16(randn(n, 201, 1.5f));
    std::vector<float> gamma = round_bf16(randn(s.d, 202, 0.5f, 1.f));
    std::vector<float> dy = round_bf16(randn(n, 203));
    std::vector<float> dg0 = randn(s.d, 204);
    DevBuf<bf16> dx_(n), dgm(s.d), dy_(n), y(n), gx(n);
    DevBuf<float> dgamma(s.d);
    upload(dx_, x);
    upload(dgm, gamma);
    upload(dy_, dy);
    upload(dgamma, dg0);
    rms_norm_forward(ctx(), dx_.get(), dgm.get(), y.get(), s.t, s.d, kEps);
    rms_norm_backward(ctx(), dx_.get(), dgm.get(), dy_.get(), gx.get(), dgamma.get(), s.t, s.d,
                      kEps);
    std::vector<float> ry(n), rdx(n), rdg(s.d);
    host::rms_norm_forward(x.data(), gamma.data(), ry.data(), s.t, s.d, kEps);
    host::rms_norm_backward(x.data(), gamma.data(), dy.data(), rdx.data(), rdg.data(), s.t, s.d,
                            kEps);
    expect_close(tag("rms_norm_forward y", s), download(y), ry, Tol{8e-3, 8e-3, 1e-2});
    expect_close(tag("rms_norm_backward dx", s), download(gx), rdx,
                 Tol{1e-2 * rms(rdx), 1e-2, 1e-2});
    expect_close(tag("rms_norm_backward dgamma (+=)", s), download(dgamma), plus(dg0, rdg),
                 Tol{1e-4 * (rms(rdg) + 1), 1e-4, 0});
  }
}

TEST_F(CudaNorms, BackwardAccumulatesDx) {
  const Shape s{40, 2048};
  const int64_t n = s.t * s.d;
  std::vector<float> x = round_bf16(randn(n, 301)), gamma = round_bf16(randn(s.d, 302, 0.3f, 1.f));
  std::vector<float> dy = round_bf16(randn(n, 303)), resid = round_bf16(randn(n, 304));
  DevBuf<bf16> dx_(n), dgm(s.d), dy_(n), gx(n);
  DevBuf<float> dgamma(s.d), dbeta(s.d);
  upload(dx_, x);
  upload(dgm, gamma);
  upload(dy_, dy);
  upload(gx, resid);
  fill(ctx(), dgamma.get(), 0.f, s.d);
  fill(ctx(), dbeta.get(), 0.f, s.d);
  layer_norm_backward(ctx(), dx_.get(), dgm.get(), dy_.get(), gx.get(), dgamma.get(), dbeta.get(),
                      s.t, s.d, kEps, /*accumulate_dx=*/true);
  std::vector<float> rdx(n), rdg(s.d), rdb(s.d);
  host::layer_norm_backward(x.data(), gamma.data(), dy.data(), rdx.data(), rdg.data(), rdb.data(),
                            s.t, s.d, kEps);
  std::vector<float> ref = plus(resid, rdx);
  expect_close(tag("layer_norm_backward dx (+= residual grad)", s), download(gx), ref,
               Tol{1e-2 * rms(ref), 1e-2, 1e-2});
  // Out of place (the tp all-reduce's half): the residual gradient stays.
  DevBuf<bf16> base(n), out(n);
  upload(base, resid);
  layer_norm_backward_add(ctx(), dx_.get(), dgm.get(), dy_.get(), base.get(), out.get(),
                          dgamma.get(), dbeta.get(), s.t, s.d, kEps);
  expect_close(tag("layer_norm_backward_add dx = residual grad + dx", s), download(out), ref,
               Tol{1e-2 * rms(ref), 1e-2, 1e-2});
  expect_close(tag("layer_norm_backward_add leaves the base", s), download(base), resid,
               Tol{0, 0, 0});
  expect_close(tag("layer_norm_backward_add dgamma (+= twice)", s), download(dgamma),
               plus(rdg, rdg), Tol{1e-4 * (rms(rdg) + 1), 1e-4, 0});
  DevBuf<float> rg(s.d);
  fill(ctx(), rg.get(), 0.f, s.d);
  rms_norm_backward_add(ctx(), dx_.get(), dgm.get(), dy_.get(), base.get(), out.get(), rg.get(),
                        s.t, s.d, kEps);
  std::vector<float> rrdx(n), rrdg(s.d);
  host::rms_norm_backward(x.data(), gamma.data(), dy.data(), rrdx.data(), rrdg.data(), s.t, s.d,
                          kEps);
  std::vector<float> rref = plus(resid, rrdx);
  expect_close(tag("rms_norm_backward_add dx", s), download(out), rref,
               Tol{1e-2 * rms(rref), 1e-2, 1e-2});
}

}  // namespace
}  // namespace mtc::rt::cuda::test
