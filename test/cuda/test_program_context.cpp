// Tests of the generated programs' runtime (mtc/rt/cuda_program.h): the
// ProgramContext a config builds (lane contexts, axis streams, buffers),
// the optimizer tables over a rank's range of the flat buffer (checked
// through the squared-norm plans against a double sum), lanes that order
// lane 1's work between fork and join, and the loss / data-error path.
#include <cmath>

#include "cuda_test_util.h"
#include "mtc/rt/cuda_program.h"

namespace mtc::rt::cuda::test {
namespace {

class CudaProgramContext : public CudaTest {};

TEST_F(CudaProgramContext, ConfigSetsLanesStreamsAndBuffers) {
  ProgramConfig c;
  c.grid[2] = 2;
  c.tp_slots = 3;
  c.lanes = true;
  c.tp_scratch = 64;
  c.ce_rows = 5;
  {
    ProgramContext two(c);
    EXPECT_NE(&two.ctx1, &two.ctx);
    EXPECT_NE(two.ctx1.stream, two.ctx.stream);
    EXPECT_EQ(two.axis_stream[0], nullptr);  // pp = 1
    EXPECT_EQ(two.axis_stream[1], nullptr);  // dp = 1
    EXPECT_NE(two.axis_stream[2], nullptr);
    EXPECT_EQ(two.slots[2].size(), 3u);
    EXPECT_NE(two.tp_scratch, nullptr);
    EXPECT_NE(two.ce_all_stats, nullptr);
    EXPECT_EQ(two.tp_partial, nullptr);
  }
  c.lanes_two_streams = false;
  ProgramContext one(c);
  EXPECT_EQ(&one.ctx1, &one.ctx);  // both lanes on the compute stream
}

TEST_F(CudaProgramContext, OptimizerPlansCoverTheRanksRange) {
  // Three parameters of a 48-element flat buffer; the middle one split over
  // tp. A rank owning [8, 40) (a distributed optimizer's shard) sees part
  // of the first and last.
  const ParamRow rows[] = {{0, 16, true, false}, {16, 16, false, true}, {32, 16, true, false}};
  std::vector<float> g = randn(48, 901);
  DevBuf<float> grads(48);
  upload(grads, g);
  ProgramContext pc(ProgramConfig{});
  build_optimizer_plans(pc, rows, 3, 8, 40, /*sharded=*/true);
  ASSERT_TRUE(pc.adamw && pc.sq_split && pc.sq_whole);
  double split = 0, whole = 0;
  for (int i = 8; i < 40; ++i) (i >= 16 && i < 32 ? split : whole) += double(g[i]) * g[i];
  DevBuf<double> out(1);
  auto sum = [&](const SumSquaresPlan& plan) {
    sum_squares(pc.ctx, plan, grads.get(), out.get(), false);
    MTC_TEST_CUDA(cudaStreamSynchronize(pc.ctx.stream));
    return out.download_raw()[0];
  };
  EXPECT_NEAR(sum(*pc.sq_split), split, 1e-9 * split);
  EXPECT_NEAR(sum(*pc.sq_whole), whole, 1e-9 * whole);
}

TEST_F(CudaProgramContext, LaneOneRunsBetweenForkAndJoin) {
  ProgramConfig c;
  c.lanes = true;
  ProgramContext pc(c);
  const int64_t n = 1 << 22;
  DevBuf<bf16> a(n), b(n);
  fill(pc.ctx, a.get(), 1.f, n);
  lane_fork(pc);
  // Lane 1 reads a (written on the compute stream before the fork) and
  // writes b on its own stream.
  add(pc.ctx1, a.get(), a.get(), b.get(), n, n);
  lane_join(pc);
  // After the join the compute stream reads lane 1's finished result.
  add(pc.ctx, b.get(), a.get(), a.get(), n, n);
  MTC_TEST_CUDA(cudaStreamSynchronize(pc.ctx.stream));
  MTC_TEST_CUDA(cudaStreamSynchronize(pc.ctx1.stream));
  for (float v : download(a)) ASSERT_EQ(v, 3.f);
}

TEST_F(CudaProgramContext, FinishLossReturnsTheLossOrTheDataError) {
  ProgramContext pc(ProgramConfig{});
  HostState st;
  st.context = &pc;
  DevBuf<float> loss(1);
  upload(loss, std::vector<float>{2.5f});
  EXPECT_EQ(finish_loss(st, loss.get()), 2.5f);
  EXPECT_TRUE(st.error.empty());
  EXPECT_TRUE(std::isnan(data_error(st, "token 70000 at position 3")));
  EXPECT_EQ(st.error, "token 70000 at position 3");
}

}  // namespace
}  // namespace mtc::rt::cuda::test
