// PeerAllReduce (cuda_peer.h): a two-rank bf16 sum through the copy
// engines, ordered by flags in device memory.
#include <cuda.h>

#include <cstring>
#include <vector>

#include "cuda/common.cuh"
#include "mtc/rt/cuda_check.h"
#include "mtc/rt/cuda_peer.h"

namespace mtc::rt::cuda {

namespace {

using WaitValueFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
using WriteValueFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);

// What a rank tells its peer: where its memory is.
struct PeerInfo {
  int32_t device = -1;
  int32_t ok = 0;  // this rank could set up its side
  uint64_t region_bytes = 0;
  uint64_t staging_elements = 0;
  cudaIpcMemHandle_t region{}, staging{}, flags{};
};
constexpr size_t kInfoWords = (sizeof(PeerInfo) + 7) / 8;

// Flag words in each rank's flags buffer, written by the peer.
enum Flag : int { kDelivered = 0, kStagingFree = 1, kReduced = 2, kNumFlags = 4 };

template <typename Fn>
Fn driver_entry(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult status{};
  cudaError_t err = cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &status);
  if (err != cudaSuccess || status != cudaDriverEntryPointSuccess) return nullptr;
  return reinterpret_cast<Fn>(fn);
}

}  // namespace

struct PeerAllReduce::Impl {
  Communicator* comm = nullptr;  // the pair's: its watchdog watches each call
  int rank = 0;
  int sm_count = 0;              // for the add kernel's grid
  char* region = nullptr;
  size_t region_bytes = 0;
  int64_t staging_elements = 0;
  bf16* staging = nullptr;       // mine: the peer writes its contribution here
  uint32_t* flags = nullptr;     // mine: the peer writes these
  char* peer_region = nullptr;   // the peer's, mapped here
  bf16* peer_staging = nullptr;
  uint32_t* peer_flags = nullptr;
  uint32_t seq = 0;
  WaitValueFn wait_value = nullptr;
  WriteValueFn write_value = nullptr;

  ~Impl() {
    if (peer_region) cudaIpcCloseMemHandle(peer_region);
    if (peer_staging) cudaIpcCloseMemHandle(peer_staging);
    if (peer_flags) cudaIpcCloseMemHandle(peer_flags);
    if (staging) cudaFree(staging);
    if (flags) cudaFree(flags);
  }
  // My stream waits until my flag f reaches `value` (the peer writes it).
  void wait(cudaStream_t s, Flag f, uint32_t value) {
    check(wait_value(reinterpret_cast<CUstream>(s), reinterpret_cast<CUdeviceptr>(flags + f),
                     value, CU_STREAM_WAIT_VALUE_GEQ),
          "cuStreamWaitValue32");
  }
  // The peer's flag f = value after my stream's work so far (the default
  // flags fence the copies before the write).
  void signal(cudaStream_t s, Flag f, uint32_t value) {
    check(write_value(reinterpret_cast<CUstream>(s),
                      reinterpret_cast<CUdeviceptr>(peer_flags + f), value,
                      CU_STREAM_WRITE_VALUE_DEFAULT),
          "cuStreamWriteValue32");
  }
  static void check(CUresult r, const char* what) {
    if (r != CUDA_SUCCESS)
      throw CudaError(std::string("tp peer all-reduce: ") + what + " failed (CUresult " +
                      std::to_string(static_cast<int>(r)) + ")");
  }
};

std::unique_ptr<PeerAllReduce> PeerAllReduce::create(Communicator& comm, int device, void* region,
                                                     size_t region_bytes, int64_t max_elements,
                                                     cudaStream_t stream, std::string* why) {
  auto fail = [&](const std::string& reason) {
    if (why) *why = reason;
    return std::unique_ptr<PeerAllReduce>();
  };
  if (comm.size() != 2) return fail("the group has " + std::to_string(comm.size()) + " ranks, not 2");
  auto impl = std::make_unique<Impl>();
  impl->comm = &comm;
  impl->rank = static_cast<int>(comm.rank());
  MTC_CUDA_CHECK(cudaDeviceGetAttribute(&impl->sm_count, cudaDevAttrMultiProcessorCount, device));
  impl->region = static_cast<char*>(region);
  impl->region_bytes = region_bytes;
  impl->staging_elements = (max_elements + 1) / 2 + 8;
  impl->wait_value = driver_entry<WaitValueFn>("cuStreamWaitValue32");
  impl->write_value = driver_entry<WriteValueFn>("cuStreamWriteValue32");

  PeerInfo mine;
  mine.device = device;
  mine.region_bytes = region_bytes;
  mine.staging_elements = static_cast<uint64_t>(impl->staging_elements);
  std::string local_problem;
  if (!impl->wait_value || !impl->write_value) local_problem = "no stream memory operations";
  if (local_problem.empty() &&
      cudaIpcGetMemHandle(&mine.region, region) != cudaSuccess)
    local_problem = "the region cannot be shared (cudaIpcGetMemHandle)";
  if (local_problem.empty()) {
    MTC_CUDA_CHECK(cudaMalloc(&impl->staging, impl->staging_elements * sizeof(bf16)));
    MTC_CUDA_CHECK(cudaMalloc(&impl->flags, kNumFlags * sizeof(uint32_t)));
    MTC_CUDA_CHECK(cudaMemset(impl->flags, 0, kNumFlags * sizeof(uint32_t)));
    MTC_CUDA_CHECK(cudaDeviceSynchronize());
    if (cudaIpcGetMemHandle(&mine.staging, impl->staging) != cudaSuccess ||
        cudaIpcGetMemHandle(&mine.flags, impl->flags) != cudaSuccess)
      local_problem = "staging memory cannot be shared (cudaIpcGetMemHandle)";
  }
  cudaGetLastError();
  mine.ok = local_problem.empty() ? 1 : 0;

  // Exchange (the flags are zero on both ranks before either can write).
  double *send = nullptr, *recv = nullptr;
  MTC_CUDA_CHECK(cudaMalloc(&send, kInfoWords * sizeof(double)));
  MTC_CUDA_CHECK(cudaMalloc(&recv, 2 * kInfoWords * sizeof(double)));
  std::vector<double> words(kInfoWords, 0.0), all(2 * kInfoWords, 0.0);
  std::memcpy(words.data(), &mine, sizeof(PeerInfo));
  MTC_CUDA_CHECK(cudaMemcpy(send, words.data(), kInfoWords * sizeof(double), cudaMemcpyHostToDevice));
  comm.all_gather(send, recv, static_cast<int64_t>(kInfoWords), DType::f64, stream);
  MTC_CUDA_CHECK(cudaStreamSynchronize(stream));
  MTC_CUDA_CHECK(cudaMemcpy(all.data(), recv, all.size() * sizeof(double), cudaMemcpyDeviceToHost));
  PeerInfo peer;
  std::memcpy(&peer, all.data() + (1 - impl->rank) * kInfoWords, sizeof(PeerInfo));

  // Map the peer's memory; then agree (both ranks must take the same path).
  if (local_problem.empty() && !peer.ok) local_problem = "the peer could not share its memory";
  if (local_problem.empty() && (peer.region_bytes != region_bytes ||
                                peer.staging_elements != mine.staging_elements))
    local_problem = "the ranks' regions or staging buffers differ in size";
  if (local_problem.empty() && peer.device != device) {
    int can = 0;
    MTC_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, device, peer.device));
    if (!can)
      local_problem = "GPU " + std::to_string(device) + " cannot access GPU " +
                      std::to_string(peer.device);
  }
  if (local_problem.empty()) {
    void* p = nullptr;
    if (cudaIpcOpenMemHandle(&p, peer.region, cudaIpcMemLazyEnablePeerAccess) == cudaSuccess)
      impl->peer_region = static_cast<char*>(p);
    if (cudaIpcOpenMemHandle(&p, peer.staging, cudaIpcMemLazyEnablePeerAccess) == cudaSuccess)
      impl->peer_staging = static_cast<bf16*>(p);
    if (cudaIpcOpenMemHandle(&p, peer.flags, cudaIpcMemLazyEnablePeerAccess) == cudaSuccess)
      impl->peer_flags = static_cast<uint32_t*>(p);
    if (!impl->peer_region || !impl->peer_staging || !impl->peer_flags)
      local_problem = "cannot map the peer's memory (cudaIpcOpenMemHandle)";
    cudaGetLastError();
  }
  double ok = local_problem.empty() ? 1.0 : 0.0;
  MTC_CUDA_CHECK(cudaMemcpy(send, &ok, sizeof(double), cudaMemcpyHostToDevice));
  comm.all_reduce(send, 1, DType::f64, ReduceOp::sum, stream);
  MTC_CUDA_CHECK(cudaStreamSynchronize(stream));
  MTC_CUDA_CHECK(cudaMemcpy(&ok, send, sizeof(double), cudaMemcpyDeviceToHost));
  cudaFree(send);
  cudaFree(recv);
  if (ok != 2.0)
    return fail(local_problem.empty() ? "the peer cannot map this rank's memory" : local_problem);
  std::unique_ptr<PeerAllReduce> out(new PeerAllReduce());
  out->impl_ = std::move(impl);
  return out;
}

PeerAllReduce::~PeerAllReduce() = default;

bool PeerAllReduce::covers(const void* buf, int64_t n) const {
  const char* p = static_cast<const char*>(buf);
  return n > 0 && p >= impl_->region &&
         p + n * sizeof(bf16) <= impl_->region + impl_->region_bytes &&
         (n + 1) / 2 <= impl_->staging_elements;
}

void PeerAllReduce::all_reduce(bf16* buf, int64_t n, cudaStream_t stream) {
  run({buf, nullptr, buf, nullptr, buf}, n, stream);
}

void PeerAllReduce::all_reduce_add(bf16* buf, const bf16* addend, bf16* out, int64_t n,
                                   cudaStream_t stream) {
  require(addend != nullptr, "tp peer all-reduce: null addend");
  run({buf, addend, out, nullptr, out}, n, stream);
}

void PeerAllReduce::all_reduce_then(bf16* buf, bf16* out, int64_t n, cudaStream_t stream,
                                    const HalfWork& then) {
  run({buf, nullptr, buf, &then, out}, n, stream);
}

void PeerAllReduce::run(const Pass& p, int64_t n, cudaStream_t stream) {
  require(covers(p.buf, n) && covers(p.sum, n) && covers(p.copy, n), "tp peer all-reduce: buffer outside the shared region");
  impl_->comm->watched("all_reduce (copy engines)", stream, [&] { enqueue(p, n, stream); });
}

void PeerAllReduce::enqueue(const Pass& p, int64_t n, cudaStream_t stream) {
  Impl& m = *impl_;
  const uint32_t seq = ++m.seq;
  // Rank 0 reduces [0, h), rank 1 [h, n).
  const int64_t h = n / 2;
  const int64_t my_begin = m.rank == 0 ? 0 : h, my_n = m.rank == 0 ? h : n - h;
  const int64_t peer_begin = m.rank == 0 ? h : 0, peer_n = n - my_n;
  // 1. The peer's half of my partial sums into its staging buffer, once
  //    the peer has consumed what the previous call put there.
  m.wait(stream, kStagingFree, seq - 1);
  if (peer_n > 0)
    MTC_CUDA_CHECK(cudaMemcpyAsync(m.peer_staging, p.buf + peer_begin, peer_n * sizeof(bf16),
                                   cudaMemcpyDeviceToDevice, stream));
  m.signal(stream, kDelivered, seq);
  // 2. Its half of its partial sums, in my staging: add into mine (and
  //    the addend), into p.sum; then the work on that half. (mine + its)
  //    is the same sum on both ranks.
  m.wait(stream, kDelivered, seq);
  add3_on(stream, m.sm_count, p.buf + my_begin, m.staging,
          p.addend ? p.addend + my_begin : nullptr, p.sum + my_begin, my_n);
  m.signal(stream, kStagingFree, seq);
  if (p.then && my_n > 0) (*p.then)(my_begin, my_n);
  // 3. My half of the result to the same place in the peer's (the peer
  //    read its partial sums of it in step 1, before signalling; the
  //    result's storage is the peer's from before its step 1, same
  //    program).
  if (my_n > 0)
    MTC_CUDA_CHECK(cudaMemcpyAsync(
        m.peer_region + (reinterpret_cast<char*>(p.copy) - m.region) + my_begin * sizeof(bf16),
        p.copy + my_begin, my_n * sizeof(bf16), cudaMemcpyDeviceToDevice, stream));
  m.signal(stream, kReduced, seq);
  m.wait(stream, kReduced, seq);
}

}  // namespace mtc::rt::cuda
