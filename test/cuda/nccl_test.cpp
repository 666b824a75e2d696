// Tests that the program's GridComm of a multi-rank CUDA run (grid_comm.h:
// ProgramComms + make_program_grid_comm over the CUDA backend's
// comm_factory, NCCL) works on device memory, built exactly as train_main
// builds it: a Gloo World made with ProgramComms::world_factory, so the
// trainer's host collectives run alongside.
//
// Two ranks of a dp=2 grid run as two threads of this process, one per GPU
// (LOCAL_RANK 0 and 1), meeting through a fresh file store. Per rank, on
// random fp32 data x_r (n = 2^20 + 3):
//   all_reduce_sum(dp) of a device buffer = x_0 + x_1 exactly (one fp32
//     addition per element, as on the host), read back right away on a
//     separate non-blocking stream: the sum must be complete when the call
//     returns, since the program's next kernel does not wait for NCCL's
//     stream;
//   all_gather(dp) = [x_0, x_1];
//   along the tp axis (size 1) all_reduce_sum leaves the data alone and
//     all_gather copies it;
//   the host World's agree() sums the ranks' values (Gloo beside NCCL).
// Skips without 2 GPUs or without NCCL (comm_factory null).
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "mtc/rt/comm.h"
#include "mtc/rt/cuda_backend.h"
#include "mtc/rt/grid_comm.h"

namespace mtc::rt {
namespace {

int gpu_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::vector<float> rank_data(int rank, int64_t n) {
  std::mt19937 gen(static_cast<uint32_t>(9176 + 31 * rank));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(gen);
  return v;
}

// What one rank saw, checked on the main thread.
struct RankOut {
  std::string error;           // an exception's message
  std::string program_backend, host_backend;
  std::vector<float> sum;      // all_reduce_sum(dp), read back at once
  std::vector<float> gathered; // all_gather(dp)
  std::vector<float> tp_sum, tp_gathered;  // along the tp axis (size 1)
  double agreed = -1;          // agree(...).sum_tp0 of the ranks' indices
};

// `dst` (host, n) = `src` (device), copied on a fresh non-blocking stream,
// which does not wait for the legacy default stream NCCL ran on.
std::vector<float> read_back_unordered(const float* src, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  cudaStream_t s;
  if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess)
    throw std::runtime_error("cudaStreamCreateWithFlags failed");
  cudaMemcpyAsync(out.data(), src, out.size() * sizeof(float), cudaMemcpyDeviceToHost, s);
  const cudaError_t e = cudaStreamSynchronize(s);
  cudaStreamDestroy(s);
  if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
  return out;
}

void run_rank(int rank, int64_t n, const std::string& rdzv, RankOut* out) {
  try {
    if (cudaSetDevice(rank) != cudaSuccess) throw std::runtime_error("cudaSetDevice failed");
    LaunchEnv env;
    env.rank = rank;
    env.world_size = 2;
    env.local_rank = rank;
    env.local_world_size = 2;
    env.rdzv_dir = rdzv;
    env.source = "RANK/WORLD_SIZE";
    WorldOptions options;
    options.grid = GridSpec{1, 2, 1};
    options.collective_timeout_s = 120;
    options.rendezvous_timeout_s = 120;
    const Backend& backend = cuda::cuda_backend();
    // As start_run_comms declares them: destroyed grid comm, ProgramComms, World.
    std::unique_ptr<World> world;
    auto comms = std::make_unique<ProgramComms>(
        options.grid, *static_cast<const CommFactory*>(backend.comm_factory));
    world = std::make_unique<World>(env, options, comms->world_factory(gloo_comm_factory()));
    std::unique_ptr<GridComm> grid = make_program_grid_comm(*world, *comms, backend);
    out->program_backend = comms->backend();
    out->host_backend = world->comm(GroupKind::world).backend();

    const std::vector<float> x = rank_data(rank, n);
    const size_t bytes = x.size() * sizeof(float);
    float *d = nullptr, *all = nullptr, *copy = nullptr;
    if (cudaMalloc(&d, bytes) != cudaSuccess || cudaMalloc(&all, 2 * bytes) != cudaSuccess ||
        cudaMalloc(&copy, bytes) != cudaSuccess)
      throw std::runtime_error("cudaMalloc failed");
    cudaMemcpy(d, x.data(), bytes, cudaMemcpyHostToDevice);
    grid->all_gather(1, d, all, n);
    out->gathered = read_back_unordered(all, 2 * n);
    grid->all_gather(2, d, copy, n);
    out->tp_gathered = read_back_unordered(copy, n);
    grid->all_reduce_sum(2, d, n);
    out->tp_sum = read_back_unordered(d, n);
    grid->all_reduce_sum(1, d, n);
    out->sum = read_back_unordered(d, n);
    cudaFree(d);
    cudaFree(all);
    cudaFree(copy);

    out->agreed = agree(*world, false, static_cast<double>(rank)).sum_tp0;
    world->comm(GroupKind::world).barrier();
    grid.reset();
    comms.reset();
  } catch (const std::exception& e) {
    out->error = e.what();
  }
}

TEST(NcclProgramComm, DataParallelCollectivesOnDeviceMemory) {
  if (gpu_count() < 2) GTEST_SKIP() << "needs 2 CUDA GPUs (found " << gpu_count() << ")";
  if (cuda::cuda_backend().comm_factory == nullptr)
    GTEST_SKIP() << "the CUDA runtime was built without NCCL";
  const int64_t n = (int64_t{1} << 20) + 3;
  const std::string rdzv =
      (std::filesystem::temp_directory_path() /
       ("mtc-nccl-test-" + std::to_string(::getpid())))
          .string();
  std::filesystem::remove_all(rdzv);
  std::filesystem::create_directories(rdzv);
  RankOut out[2];
  std::thread t0(run_rank, 0, n, rdzv, &out[0]), t1(run_rank, 1, n, rdzv, &out[1]);
  t0.join();
  t1.join();
  std::filesystem::remove_all(rdzv);

  const std::vector<float> x0 = rank_data(0, n), x1 = rank_data(1, n);
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ASSERT_EQ(out[r].error, "");
    EXPECT_EQ(out[r].program_backend, "nccl");
    EXPECT_EQ(out[r].host_backend, "gloo");
    const std::vector<float>& mine = r == 0 ? x0 : x1;
    EXPECT_EQ(out[r].tp_gathered, mine);
    EXPECT_EQ(out[r].tp_sum, mine);
    ASSERT_EQ(out[r].sum.size(), x0.size());
    int64_t wrong = 0;
    for (size_t i = 0; i < x0.size(); ++i) wrong += out[r].sum[i] != x0[i] + x1[i];
    EXPECT_EQ(wrong, 0) << "elements of the all_reduce_sum differ from x0 + x1";
    std::vector<float> both = x0;
    both.insert(both.end(), x1.begin(), x1.end());
    EXPECT_EQ(out[r].gathered, both);
    EXPECT_EQ(out[r].agreed, 1.0);
    std::printf("[nccl dp=2 rank %d] all_reduce_sum n=%lld: %lld elements differ from x0 + x1 %s\n",
                r, static_cast<long long>(n), static_cast<long long>(wrong),
                wrong == 0 ? "PASS" : "FAIL");
  }
}

}  // namespace
}  // namespace mtc::rt
