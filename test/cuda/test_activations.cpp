// Tests that GELU (tanh and erf), SwiGLU, squared ReLU and rotary embedding
// on the GPU match the host kernels on the same bf16 inputs (vector and scalar paths; rope on
// the grouped fused-QKV layout with GQA, in place and inverse).
#include "cuda_test_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::cuda::test {
namespace {

class CudaActivations : public CudaTest {};

// One bf16 rounding of an fp32 result plus fp32 transcendental error.
constexpr Tol kAct{1e-5, 6e-3, 0};

TEST_F(CudaActivations, GeluForwardBackward) {
  for (int64_t n : {int64_t{1} << 16, int64_t{1001}}) {
    for (bool tanh_approx : {true, false}) {
      std::vector<float> x = round_bf16(randn(n, 401, 2.f)), dy = round_bf16(randn(n, 402));
      DevBuf<bf16> dx_(n), ddy(n), y(n), gx(n);
      upload(dx_, x);
      upload(ddy, dy);
      gelu_forward(ctx(), dx_.get(), y.get(), n, tanh_approx);
      gelu_backward(ctx(), dx_.get(), ddy.get(), gx.get(), n, tanh_approx);
      std::vector<float> ry(n), rdx(n);
      host::gelu_forward(x.data(), ry.data(), n, tanh_approx);
      host::gelu_backward(x.data(), dy.data(), rdx.data(), n, tanh_approx);
      const std::string t = std::string(tanh_approx ? " tanh" : " erf") + " n=" + std::to_string(n);
      expect_close("gelu_forward" + t, download(y), ry, kAct);
      expect_close("gelu_backward" + t, download(gx), rdx, kAct);
    }
  }
}

TEST_F(CudaActivations, SwigluForwardBackward) {
  for (int64_t n : {int64_t{1} << 16, int64_t{999}}) {
    std::vector<float> g = round_bf16(randn(n, 411, 2.f)), u = round_bf16(randn(n, 412));
    std::vector<float> dy = round_bf16(randn(n, 413));
    DevBuf<bf16> dg(n), du(n), ddy(n), y(n), gg(n), gu(n);
    upload(dg, g);
    upload(du, u);
    upload(ddy, dy);
    swiglu_forward(ctx(), dg.get(), du.get(), y.get(), n);
    swiglu_backward(ctx(), dg.get(), du.get(), ddy.get(), gg.get(), gu.get(), n);
    std::vector<float> ry(n), rdg(n), rdu(n);
    host::swiglu_forward(g.data(), u.data(), ry.data(), n);
    host::swiglu_backward(g.data(), u.data(), dy.data(), rdg.data(), rdu.data(), n);
    const std::string t = " n=" + std::to_string(n);
    expect_close("swiglu_forward" + t, download(y), ry, kAct);
    expect_close("swiglu_backward dgate" + t, download(gg), rdg, kAct);
    expect_close("swiglu_backward dup" + t, download(gu), rdu, kAct);
  }
}

TEST_F(CudaActivations, SquaredReluForwardBackward) {
  for (int64_t n : {int64_t{1} << 16, int64_t{1003}}) {
    std::vector<float> x = round_bf16(randn(n, 421, 2.f)), dy = round_bf16(randn(n, 422));
    DevBuf<bf16> dx_(n), ddy(n), y(n), gx(n);
    upload(dx_, x);
    upload(ddy, dy);
    squared_relu_forward(ctx(), dx_.get(), y.get(), n);
    squared_relu_backward(ctx(), dx_.get(), ddy.get(), gx.get(), n);
    std::vector<float> ry(n), rdx(n);
    host::squared_relu_forward(x.data(), ry.data(), n);
    host::squared_relu_backward(x.data(), dy.data(), rdx.data(), n);
    const std::string t = " n=" + std::to_string(n);
    expect_close("squared_relu_forward" + t, download(y), ry, kAct);
    expect_close("squared_relu_backward" + t, download(gx), rdx, kAct);
  }
}

TEST_F(CudaActivations, RopeOnFusedQkv) {
  struct Case { int64_t b, s, h, kv, dh; };
  for (Case c : {Case{2, 64, 4, 2, 64}, Case{1, 2048, 16, 16, 128}, Case{1, 7, 6, 1, 10}}) {
    const int64_t n = c.b * c.s * (c.h + 2 * c.kv) * c.dh;
    std::vector<float> x = round_bf16(randn(n, 421));
    DevBuf<bf16> dx_(n), y(n);
    upload(dx_, x);
    const std::string t = " B=" + std::to_string(c.b) + " S=" + std::to_string(c.s) +
                          " H=" + std::to_string(c.h) + " KV=" + std::to_string(c.kv) +
                          " Dh=" + std::to_string(c.dh);
    for (bool inverse : {false, true}) {
      y.poison();
      rope(ctx(), dx_.get(), y.get(), c.b, c.s, c.h, c.kv, c.dh, 10000.f, inverse);
      std::vector<float> ref(n);
      host::rope(x.data(), ref.data(), c.b, c.s, c.h, c.kv, c.dh, 10000.f, inverse);
      // Values ~1 rotated in fp32 by angles from double: one bf16 rounding.
      expect_close(std::string(inverse ? "rope inverse" : "rope") + t, download(y), ref,
                   Tol{1e-2 * 0.5, 8e-3, 1e-2});
    }
    // In place.
    rope(ctx(), dx_.get(), dx_.get(), c.b, c.s, c.h, c.kv, c.dh, 10000.f, false);
    std::vector<float> ref(n);
    host::rope(x.data(), ref.data(), c.b, c.s, c.h, c.kv, c.dh, 10000.f, false);
    expect_close("rope in place" + t, download(dx_), ref, Tol{5e-3, 8e-3, 1e-2});
  }
}

}  // namespace
}  // namespace mtc::rt::cuda::test
