// Attention forward/backward through cuDNN's fused flash-attention engines,
// built with the cuDNN 9 backend graph API (no cudnn-frontend dependency).
//
// cuDNN is loaded at run time (dlopen of libcudnn.so.9, or $MTC_CUDNN_LIB),
// so the runtime neither links nor requires it: when it is missing, too old,
// or has no engine for a shape, attention_fwd.cu / attention_bwd.cu use the
// library's own kernels. Used where the math is the same: no padding mask,
// Dh 64 or 128, KV dividing H. Same outputs as the own kernels: O bf16,
// lse = max + log(sum exp) of the scaled scores (cuDNN's softmax "Stats"),
// dq, dk, dv written into the fused dqkv.
//
// Layout (Megatron's grouped fused QKV, QkvCols in attention_common.cuh):
// a row of qkv is ld = (H + 2 KV) Dh wide; KV group g (R = H / KV query
// heads) holds [q_{gR}, ..., q_{gR+R-1}, k_g, v_g], each Dh wide. So k and
// v are 4-D strided tensors (B, KV, S, Dh), strides (S ld, (R+2) Dh, ld, 1)
// at columns R Dh and (R+1) Dh. Query head h = gR + j sits at column
// g (R+2) Dh + j Dh, one stride per head only when R == 1 (MHA, 3 Dh) or
// KV == 1 (MQA, Dh); for 1 < KV < H (GQA) no 4-D view exists, so q is first
// copied into a packed (B, S, H, Dh) buffer in ctx.scratch and the backward
// writes dq there and copies it back into dqkv's q columns (one strided
// cudaMemcpy2DAsync each way: B S KV rows of R Dh elements).
//
// Graphs (the composite SDPA expansion cudnn-frontend emits for cuDNN < 9.21,
// op by op; S = scores (B, H, S, S), virtual, fp32 unless noted; K and V
// have KV heads and the matmuls broadcast them over each group's R query
// heads, query head h reading KV head h / R as in the own kernels):
//   forward:  S = Q K^T; S *= scale; [causal: S = row >= col ? S : lowest];
//             M = max_rows(S); E = exp(S - M); Z = sum_rows(E);
//             Stats = M + log(Z); P = E / Z (bf16); O = P V
//   backward: Dsum = sum_rows(dO * O) * 1; S = Q K^T * scale - Stats;
//             [causal mask]; E = exp(S); dV = E^T dO; dP = dO V^T;
//             dS = (dP - Dsum) * E * scale; dK = dS^T Q; dQacc = dS K;
//             dQ = identity(dQacc)
//   with R > 1, dV and dK are first (B, H, S, Dh) bf16 virtual tensors and
//   a sum reduction over each group's R heads gives the (B, KV, S, Dh)
//   outputs (cudnn-frontend's GQA expansion; the fused engine accumulates
//   the group's gradients itself).
// Dsum and dQacc are fp32 tensors in ctx.scratch, with the plan's workspace
// (dQacc zeroed by the engine since cuDNN 9.6; the tests poison the scratch).
// Plans are built once per (direction, B, S, H, KV, Dh, causal) and cached
// in the context; MTC_CUDA_ATTN_VERBOSE=1 prints each build and fallback.
#include "cuda/internal.h"

#if __has_include(<cudnn_graph.h>)
#include <cudnn_graph.h>
#include <dlfcn.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace mtc::rt::cuda {
namespace {

bool verbose() {
  static const bool v = [] {
    const char* e = std::getenv("MTC_CUDA_ATTN_VERBOSE");
    return e && e[0] != '\0' && std::strcmp(e, "0") != 0;
  }();
  return v;
}

// The cuDNN entry points this file uses, resolved with dlsym.
struct CudnnApi {
  bool ok = false;
  std::string error;
  size_t (*GetVersion)() = nullptr;
  const char* (*GetErrorString)(cudnnStatus_t) = nullptr;
  void (*GetLastErrorString)(char*, size_t) = nullptr;
  cudnnStatus_t (*Create)(cudnnHandle_t*) = nullptr;
  cudnnStatus_t (*Destroy)(cudnnHandle_t) = nullptr;
  cudnnStatus_t (*SetStream)(cudnnHandle_t, cudaStream_t) = nullptr;
  cudnnStatus_t (*CreateDescriptor)(cudnnBackendDescriptorType_t, cudnnBackendDescriptor_t*) =
      nullptr;
  cudnnStatus_t (*DestroyDescriptor)(cudnnBackendDescriptor_t) = nullptr;
  cudnnStatus_t (*Finalize)(cudnnBackendDescriptor_t) = nullptr;
  cudnnStatus_t (*SetAttribute)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t,
                                cudnnBackendAttributeType_t, int64_t, const void*) = nullptr;
  cudnnStatus_t (*GetAttribute)(cudnnBackendDescriptor_t const, cudnnBackendAttributeName_t,
                                cudnnBackendAttributeType_t, int64_t, int64_t*, void*) = nullptr;
  cudnnStatus_t (*Execute)(cudnnHandle_t, cudnnBackendDescriptor_t,
                           cudnnBackendDescriptor_t) = nullptr;
};

template <typename F>
bool resolve(void* lib, const char* name, F& fn, std::string& error) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn && error.empty()) error = std::string("symbol ") + name + " not found";
  return fn != nullptr;
}

const CudnnApi& api() {
  static const CudnnApi a = [] {
    CudnnApi r;
    const char* path = std::getenv("MTC_CUDNN_LIB");
    void* lib = dlopen(path && path[0] ? path : "libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      r.error = std::string("cannot load cuDNN: ") + (e ? e : "unknown error");
      return r;
    }
    bool ok = resolve(lib, "cudnnGetVersion", r.GetVersion, r.error) &&
              resolve(lib, "cudnnGetErrorString", r.GetErrorString, r.error) &&
              resolve(lib, "cudnnCreate", r.Create, r.error) &&
              resolve(lib, "cudnnDestroy", r.Destroy, r.error) &&
              resolve(lib, "cudnnSetStream", r.SetStream, r.error) &&
              resolve(lib, "cudnnBackendCreateDescriptor", r.CreateDescriptor, r.error) &&
              resolve(lib, "cudnnBackendDestroyDescriptor", r.DestroyDescriptor, r.error) &&
              resolve(lib, "cudnnBackendFinalize", r.Finalize, r.error) &&
              resolve(lib, "cudnnBackendSetAttribute", r.SetAttribute, r.error) &&
              resolve(lib, "cudnnBackendGetAttribute", r.GetAttribute, r.error) &&
              resolve(lib, "cudnnBackendExecute", r.Execute, r.error);
    r.GetLastErrorString =
        reinterpret_cast<void (*)(char*, size_t)>(dlsym(lib, "cudnnGetLastErrorString"));
    if (ok && r.GetVersion() < 90000) {
      r.error = "cuDNN " + std::to_string(r.GetVersion()) + " is older than 9.0";
      ok = false;
    }
    r.ok = ok;
    return r;
  }();
  return a;
}

std::string status_text(cudnnStatus_t st) {
  std::string s = api().GetErrorString ? api().GetErrorString(st) : std::to_string(st);
  if (api().GetLastErrorString) {
    char buf[1024] = {0};
    api().GetLastErrorString(buf, sizeof(buf));
    if (buf[0]) s += std::string(" (") + buf + ")";
  }
  return s;
}

using Dims = std::array<int64_t, 4>;

// Builds one backend graph; the first failing call is recorded and every
// later call becomes a no-op, so a builder reads straight through.
class Builder {
 public:
  explicit Builder(std::vector<cudnnBackendDescriptor_t>& owned) : owned_(owned) {}
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }

  cudnnBackendDescriptor_t create(cudnnBackendDescriptorType_t type, const char* what) {
    if (!ok()) return nullptr;
    cudnnBackendDescriptor_t d = nullptr;
    check(api().CreateDescriptor(type, &d), what);
    if (d) owned_.push_back(d);
    return d;
  }
  void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
           cudnnBackendAttributeType_t type, int64_t count, const void* value, const char* what) {
    if (!ok()) return;
    check(api().SetAttribute(d, name, type, count, value), what);
  }
  void finalize(cudnnBackendDescriptor_t d, const char* what) {
    if (!ok()) return;
    check(api().Finalize(d), what);
  }
  void fail(const std::string& why) {
    if (ok()) error_ = why;
  }

  // A 4-D tensor (dims, strides in elements).
  cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t type, const Dims& dims,
                                  const Dims& strides, bool is_virtual, bool by_value = false) {
    cudnnBackendDescriptor_t t = create(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor");
    const int64_t alignment = 16;
    set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor uid");
    set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, "tensor type");
    set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment, "tensor alignment");
    set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data(), "tensor dims");
    set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data(), "tensor strides");
    if (is_virtual) {
      const bool v = true;
      set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v, "tensor virtual");
    }
    if (by_value) {
      const bool v = true;
      set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &v, "tensor by value");
    }
    finalize(t, "tensor");
    return t;
  }
  cudnnBackendDescriptor_t scalar(int64_t uid) {
    const Dims one = {1, 1, 1, 1};
    return tensor(uid, CUDNN_DATA_FLOAT, one, one, false, true);
  }

  // y = mode(x [, b [, t]]).
  cudnnBackendDescriptor_t pointwise(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
                                     cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t,
                                     cudnnBackendDescriptor_t y,
                                     cudnnDataType_t math = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    cudnnBackendDescriptor_t pw = create(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise desc");
    set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
    set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &math, "pointwise math");
    if (axis >= 0)
      set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
    finalize(pw, "pointwise desc");
    cudnnBackendDescriptor_t op =
        create(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise op");
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw,
        "pointwise op desc");
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x,
        "pointwise x");
    if (b)
      set(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b,
          "pointwise b");
    if (t)
      set(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t,
          "pointwise t");
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y,
        "pointwise y");
    finalize(op, "pointwise op");
    ops.push_back(op);
    return op;
  }

  void reduction(cudnnReduceTensorOp_t red, cudnnBackendDescriptor_t x,
                 cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t rd = create(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction desc");
    const cudnnDataType_t math = CUDNN_DATA_FLOAT;
    set(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &red,
        "reduction operator");
    set(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &math, "reduction math");
    finalize(rd, "reduction desc");
    cudnnBackendDescriptor_t op =
        create(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "reduction op");
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd,
        "reduction op desc");
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x,
        "reduction x");
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y,
        "reduction y");
    finalize(op, "reduction op");
    ops.push_back(op);
  }

  // c = a b (batched over the first two dimensions).
  void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c) {
    cudnnBackendDescriptor_t md = create(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul desc");
    const cudnnDataType_t math = CUDNN_DATA_FLOAT;
    set(md, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &math, "matmul math");
    finalize(md, "matmul desc");
    cudnnBackendDescriptor_t op = create(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "matmul op");
    set(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a, "matmul a");
    set(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, "matmul b");
    set(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c, "matmul c");
    set(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &md,
        "matmul op desc");
    finalize(op, "matmul op");
    ops.push_back(op);
  }

  void reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t op = create(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, "reshape op");
    set(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "reshape x");
    set(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "reshape y");
    finalize(op, "reshape op");
    ops.push_back(op);
  }

  std::vector<cudnnBackendDescriptor_t> ops;

 private:
  void check(cudnnStatus_t st, const char* what) {
    if (st != CUDNN_STATUS_SUCCESS && ok()) error_ = std::string(what) + ": " + status_text(st);
  }
  std::vector<cudnnBackendDescriptor_t>& owned_;
  std::string error_;
};

// Tensor uids shared by both graphs.
enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kScale, kMaskValue, kDO, kDQ, kDK, kDV, kOne, kDsum, kDQAcc,
  kVirtual = 100
};

struct Plan {
  bool ok = false;
  std::string error;
  std::vector<cudnnBackendDescriptor_t> owned;
  cudnnBackendDescriptor_t plan = nullptr;
  int64_t workspace = 0;
  ~Plan() {
    for (auto it = owned.rbegin(); it != owned.rend(); ++it) api().DestroyDescriptor(*it);
  }
};

struct Shape {
  int64_t b, s, h, kv, dh;
  bool causal;
};

// The 4-D views of the fused qkv (and dqkv) that the graphs use; see the
// file comment for the layout.
struct Layout {
  int64_t r;             // query heads per KV head, H / KV
  bool packed_q;         // q and dq go through a packed (B, S, H, Dh) copy
  Dims qd, qs;           // Q, dQ (B, H, S, Dh): fused view, or the packed copy
  Dims ktd, kts;         // K^T, V^T (B, KV, Dh, S)
  Dims kd, ks;           // K, V, dK, dV (B, KV, S, Dh)
  Dims od, os;           // O, dO (B, H, S, Dh) in out's (B, S, H, Dh) layout
  int64_t k_col, v_col;  // columns of k_0 and v_0 in a qkv row
};

Layout layout(const Shape& s) {
  const int64_t b = s.b, n = s.s, h = s.h, d = s.dh, r = s.h / s.kv;
  const int64_t ld = (s.h + 2 * s.kv) * d;  // qkv row
  const int64_t group = (r + 2) * d;        // columns of one KV group
  Layout l;
  l.r = r;
  l.packed_q = r > 1 && s.kv > 1;
  l.od = {b, h, n, d};
  l.os = {n * h * d, d, h * d, 1};
  l.qd = {b, h, n, d};
  // MHA: one query head per group; MQA: the H query heads side by side.
  l.qs = l.packed_q ? l.os : Dims{n * ld, r == 1 ? group : d, ld, 1};
  l.ktd = {b, s.kv, d, n};
  l.kts = {n * ld, group, 1, ld};
  l.kd = {b, s.kv, n, d};
  l.ks = {n * ld, group, ld, 1};
  l.k_col = r * d;
  l.v_col = (r + 1) * d;
  return l;
}

// Adds the causal mask (keep row >= col, else lowest) to scores x; returns
// the masked scores.
cudnnBackendDescriptor_t add_causal_mask(Builder& g, cudnnBackendDescriptor_t x,
                                         cudnnBackendDescriptor_t mask_value, const Dims& sd,
                                         const Dims& ss, int64_t& next_uid) {
  cudnnBackendDescriptor_t row = g.tensor(next_uid++, CUDNN_DATA_INT32, sd, ss, true);
  cudnnBackendDescriptor_t col = g.tensor(next_uid++, CUDNN_DATA_INT32, sd, ss, true);
  cudnnBackendDescriptor_t keep = g.tensor(next_uid++, CUDNN_DATA_BOOLEAN, sd, ss, true);
  cudnnBackendDescriptor_t y = g.tensor(next_uid++, CUDNN_DATA_FLOAT, sd, ss, true);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, x, nullptr, nullptr, row, CUDNN_DATA_INT32, 2);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, x, nullptr, nullptr, col, CUDNN_DATA_INT32, 3);
  g.pointwise(CUDNN_POINTWISE_CMP_GE, row, col, nullptr, keep, CUDNN_DATA_BOOLEAN);
  g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, x, mask_value, keep, y);
  return y;
}

// Operation graph -> heuristics -> the first engine configuration that
// finalizes into an execution plan.
void make_plan(Builder& g, cudnnHandle_t handle, Plan& p) {
  cudnnBackendDescriptor_t graph = g.create(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "graph");
  // CUDNN_ATTR_OPERATIONGRAPH_HANDLE (800): deprecated in 9.x, still honored.
  g.set(graph, static_cast<cudnnBackendAttributeName_t>(800), CUDNN_TYPE_HANDLE, 1, &handle,
        "graph handle");
  g.set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
        static_cast<int64_t>(g.ops.size()), g.ops.data(), "graph ops");
  g.finalize(graph, "operation graph");
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    if (!g.ok()) return;
    cudnnBackendDescriptor_t heur = g.create(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
    g.set(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph,
          "heuristics graph");
    g.set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
    g.finalize(heur, "heuristics");
    if (!g.ok()) return;
    int64_t count = 0;
    if (api().GetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                           &count, nullptr) != CUDNN_STATUS_SUCCESS)
      count = 0;
    std::vector<cudnnBackendDescriptor_t> cfgs;
    for (int64_t i = 0; i < count; ++i)
      cfgs.push_back(g.create(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config"));
    int64_t returned = 0;
    if (count > 0 && g.ok())
      api().GetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                         &returned, cfgs.data());
    for (int64_t i = 0; i < returned && g.ok(); ++i) {
      cudnnBackendDescriptor_t plan = nullptr;
      if (api().CreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan) !=
          CUDNN_STATUS_SUCCESS)
        continue;
      bool fine =
          api().SetAttribute(plan, static_cast<cudnnBackendAttributeName_t>(400),  // plan handle
                             CUDNN_TYPE_HANDLE, 1, &handle) == CUDNN_STATUS_SUCCESS &&
          api().SetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                             CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]) == CUDNN_STATUS_SUCCESS &&
          api().Finalize(plan) == CUDNN_STATUS_SUCCESS;
      if (!fine) {
        api().DestroyDescriptor(plan);
        continue;
      }
      p.owned.push_back(plan);
      int64_t n = 0;
      api().GetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                         &p.workspace);
      p.plan = plan;
      p.ok = true;
      return;
    }
  }
  g.fail("no cuDNN engine supports this attention graph");
}

void build_forward(cudnnHandle_t handle, const Shape& s, Plan& p) {
  Builder g(p.owned);
  const Layout l = layout(s);
  const int64_t b = s.b, n = s.s, h = s.h;
  const Dims sd = {b, h, n, n}, ss = {h * n * n, n * n, n, 1};
  const Dims rd = {b, h, n, 1}, rs = {h * n, n, 1, 1};
  int64_t v = kVirtual;
  auto q = g.tensor(kQ, CUDNN_DATA_BFLOAT16, l.qd, l.qs, false);
  auto kt = g.tensor(kK, CUDNN_DATA_BFLOAT16, l.ktd, l.kts, false);
  auto vv = g.tensor(kV, CUDNN_DATA_BFLOAT16, l.kd, l.ks, false);
  auto o = g.tensor(kO, CUDNN_DATA_BFLOAT16, l.od, l.os, false);
  auto stats = g.tensor(kStats, CUDNN_DATA_FLOAT, rd, rs, false);
  auto scale = g.scalar(kScale);
  auto s0 = g.tensor(v++, CUDNN_DATA_FLOAT, sd, ss, true);
  g.matmul(q, kt, s0);
  auto s1 = g.tensor(v++, CUDNN_DATA_FLOAT, sd, ss, true);
  g.pointwise(CUDNN_POINTWISE_MUL, s0, scale, nullptr, s1);
  if (s.causal) s1 = add_causal_mask(g, s1, g.scalar(kMaskValue), sd, ss, v);
  auto mx = g.tensor(v++, CUDNN_DATA_FLOAT, rd, rs, true);
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, s1, mx);
  auto sub = g.tensor(v++, CUDNN_DATA_FLOAT, sd, ss, true);
  g.pointwise(CUDNN_POINTWISE_SUB, s1, mx, nullptr, sub);
  auto e = g.tensor(v++, CUDNN_DATA_FLOAT, sd, ss, true);
  g.pointwise(CUDNN_POINTWISE_EXP, sub, nullptr, nullptr, e);
  auto z = g.tensor(v++, CUDNN_DATA_FLOAT, rd, rs, true);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, z);
  auto lz = g.tensor(v++, CUDNN_DATA_FLOAT, rd, rs, true);
  g.pointwise(CUDNN_POINTWISE_LOG, z, nullptr, nullptr, lz);
  g.pointwise(CUDNN_POINTWISE_ADD, mx, lz, nullptr, stats);
  auto pm = g.tensor(v++, CUDNN_DATA_BFLOAT16, sd, ss, true);
  g.pointwise(CUDNN_POINTWISE_DIV, e, z, nullptr, pm);
  g.matmul(pm, vv, o);
  make_plan(g, handle, p);
  if (!g.ok()) p.error = g.error();
}

void build_backward(cudnnHandle_t handle, const Shape& s, Plan& p) {
  Builder g(p.owned);
  const Layout l = layout(s);
  const int64_t b = s.b, n = s.s, h = s.h, d = s.dh;
  const Dims sd = {b, h, n, n}, ss = {h * n * n, n * n, n, 1};
  const Dims std_ = {b, h, n, n}, sts = {h * n * n, n * n, 1, n};  // transposed view
  const Dims rd = {b, h, n, 1}, rs = {h * n, n, 1, 1};
  const Dims fd = {b, h, n, d}, fs = {h * n * d, n * d, d, 1};  // dQ accumulator, per-head dK, dV
  int64_t v = kVirtual;
  auto q = g.tensor(kQ, CUDNN_DATA_BFLOAT16, l.qd, l.qs, false);
  auto kt = g.tensor(kK, CUDNN_DATA_BFLOAT16, l.ktd, l.kts, false);
  auto vt = g.tensor(kV, CUDNN_DATA_BFLOAT16, l.ktd, l.kts, false);
  auto o = g.tensor(kO, CUDNN_DATA_BFLOAT16, l.od, l.os, false);
  auto dout = g.tensor(kDO, CUDNN_DATA_BFLOAT16, l.od, l.os, false);
  auto stats = g.tensor(kStats, CUDNN_DATA_FLOAT, rd, rs, false);
  auto dq = g.tensor(kDQ, CUDNN_DATA_BFLOAT16, l.qd, l.qs, false);
  auto dk = g.tensor(kDK, CUDNN_DATA_BFLOAT16, l.kd, l.ks, false);
  auto dv = g.tensor(kDV, CUDNN_DATA_BFLOAT16, l.kd, l.ks, false);
  auto scale = g.scalar(kScale);
  auto one = g.scalar(kOne);
  auto dsum = g.tensor(kDsum, CUDNN_DATA_FLOAT, rd, rs, false);
  auto dq_acc = g.tensor(kDQAcc, CUDNN_DATA_FLOAT, fd, fs, false);
  // out (dK or dV) = a bm: the matmul gives one gradient per query head;
  // with R > 1 query heads per KV head (GQA, MQA) they land in a (B, H, S,
  // Dh) virtual tensor and are summed over each group's R heads.
  auto kv_grad = [&](cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t bm,
                     cudnnBackendDescriptor_t out) {
    if (l.r == 1) {
      g.matmul(a, bm, out);
      return;
    }
    auto per_head = g.tensor(v++, CUDNN_DATA_BFLOAT16, fd, fs, true);
    g.matmul(a, bm, per_head);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, per_head, out);
  };

  // Dsum = sum_rows(dO * O) * 1.
  const Dims pd = {b, h, n, d}, ps = {h * n * d, n * d, h * d, 1};
  auto dob = g.tensor(v++, CUDNN_DATA_FLOAT, pd, ps, true);
  g.pointwise(CUDNN_POINTWISE_MUL, dout, o, nullptr, dob);
  auto red = g.tensor(v++, CUDNN_DATA_FLOAT, rd, rs, true);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, dob, red);
  g.pointwise(CUDNN_POINTWISE_MUL, red, one, nullptr, dsum);
  // E = exp(Q K^T * scale - Stats), masked.
  auto s0 = g.tensor(v++, CUDNN_DATA_FLOAT, sd, ss, true);
  g.matmul(q, kt, s0);
  auto s1 = g.tensor(v++, CUDNN_DATA_FLOAT, sd, ss, true);
  g.pointwise(CUDNN_POINTWISE_MUL, s0, scale, nullptr, s1);
  auto s2 = g.tensor(v++, CUDNN_DATA_FLOAT, sd, ss, true);
  g.pointwise(CUDNN_POINTWISE_SUB, s1, stats, nullptr, s2);
  if (s.causal) s2 = add_causal_mask(g, s2, g.scalar(kMaskValue), sd, ss, v);
  auto e = g.tensor(v++, CUDNN_DATA_FLOAT, sd, ss, true);
  g.pointwise(CUDNN_POINTWISE_EXP, s2, nullptr, nullptr, e);
  // dV = E^T dO.
  auto et = g.tensor(v++, CUDNN_DATA_BFLOAT16, std_, sts, true);
  g.reshape(e, et);
  kv_grad(et, dout, dv);
  // dS = (dO V^T - Dsum) * E * scale.
  auto dp = g.tensor(v++, CUDNN_DATA_FLOAT, sd, ss, true);
  g.matmul(dout, vt, dp);
  auto d1 = g.tensor(v++, CUDNN_DATA_FLOAT, sd, ss, true);
  g.pointwise(CUDNN_POINTWISE_SUB, dp, dsum, nullptr, d1);
  auto d2 = g.tensor(v++, CUDNN_DATA_FLOAT, sd, ss, true);
  g.pointwise(CUDNN_POINTWISE_MUL, d1, e, nullptr, d2);
  auto ds = g.tensor(v++, CUDNN_DATA_FLOAT, sd, ss, true);
  g.pointwise(CUDNN_POINTWISE_MUL, d2, scale, nullptr, ds);
  // dK = dS^T Q.
  auto dst = g.tensor(v++, CUDNN_DATA_BFLOAT16, std_, sts, true);
  g.reshape(ds, dst);
  kv_grad(dst, q, dk);
  // dQ = dS K (fp32 accumulator), then converted.
  auto kr = g.tensor(v++, CUDNN_DATA_FLOAT, l.kd, l.ks, true);
  g.reshape(kt, kr);
  g.matmul(ds, kr, dq_acc);
  g.pointwise(CUDNN_POINTWISE_IDENTITY, dq_acc, nullptr, nullptr, dq);
  make_plan(g, handle, p);
  if (!g.ok()) p.error = g.error();
}

using Key = std::tuple<bool, int64_t, int64_t, int64_t, int64_t, int64_t, bool>;

}  // namespace

struct CudnnState {
  cudnnHandle_t handle = nullptr;
  std::map<Key, std::unique_ptr<Plan>> plans;
};

void destroy_cudnn_state(CudnnState* state) {
  if (!state) return;
  state->plans.clear();
  if (state->handle) api().Destroy(state->handle);
  delete state;
}

namespace {

AttentionBackend g_backend = [] {
  const char* e = std::getenv("MTC_ATTENTION_BACKEND");
  if (e && std::strcmp(e, "own") == 0) return AttentionBackend::own;
  if (e && std::strcmp(e, "cudnn") == 0) return AttentionBackend::cudnn;
  return AttentionBackend::automatic;
}();

// The cached plan for a shape, built on first use; nullptr (with `why`) when
// cuDNN cannot run it.
Plan* get_plan(Context& ctx, bool forward, const Shape& s, std::string& why) {
  if (!api().ok) {
    why = api().error;
    return nullptr;
  }
  if (!ctx.cudnn) {
    auto* st = new CudnnState;
    cudnnStatus_t rc = api().Create(&st->handle);
    if (rc != CUDNN_STATUS_SUCCESS) {
      why = "cudnnCreate: " + status_text(rc);
      delete st;
      return nullptr;
    }
    ctx.cudnn = st;
  }
  const Key key(forward, s.b, s.s, s.h, s.kv, s.dh, s.causal);
  auto it = ctx.cudnn->plans.find(key);
  if (it == ctx.cudnn->plans.end()) {
    auto p = std::make_unique<Plan>();
    if (forward)
      build_forward(ctx.cudnn->handle, s, *p);
    else
      build_backward(ctx.cudnn->handle, s, *p);
    if (verbose())
      std::fprintf(
          stderr, "[mtc attention] cuDNN %zu %s B=%lld S=%lld H=%lld KV=%lld Dh=%lld%s: %s\n",
          api().GetVersion(), forward ? "forward" : "backward", static_cast<long long>(s.b),
          static_cast<long long>(s.s), static_cast<long long>(s.h), static_cast<long long>(s.kv),
          static_cast<long long>(s.dh), s.causal ? " causal" : "",
          p->ok ? ("plan, workspace " + std::to_string(p->workspace) + " bytes").c_str()
                : p->error.c_str());
    it = ctx.cudnn->plans.emplace(key, std::move(p)).first;
  }
  if (!it->second->ok) {
    why = it->second->error;
    return nullptr;
  }
  return it->second.get();
}

// Whether the cuDNN graphs express this attention (see the file comment).
bool eligible(int64_t h, int64_t kv, int64_t dh, bool has_mask, std::string& why) {
  if (kv < 1 || h % kv != 0) why = "KV must divide H";
  else if (has_mask) why = "padding masks are not supported on the cuDNN path";
  else if (dh != 64 && dh != 128) why = "head_dim must be 64 or 128";
  return why.empty();
}

void execute(Context& ctx, Plan& p, const std::vector<int64_t>& uids,
             const std::vector<void*>& ptrs, void* workspace) {
  cudnnStatus_t rc = api().SetStream(ctx.cudnn->handle, ctx.stream);
  if (rc != CUDNN_STATUS_SUCCESS)
    throw_error("cudnn", "cudnnSetStream", status_text(rc), __FILE__, __LINE__);
  std::vector<cudnnBackendDescriptor_t> owned;
  Builder g(owned);
  cudnnBackendDescriptor_t pack = g.create(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
  g.set(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
        static_cast<int64_t>(uids.size()), uids.data(), "variant pack uids");
  g.set(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
        static_cast<int64_t>(ptrs.size()), ptrs.data(), "variant pack pointers");
  g.set(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace,
        "variant pack workspace");
  g.finalize(pack, "variant pack");
  std::string err = g.error();
  if (g.ok()) {
    cudnnStatus_t st = api().Execute(ctx.cudnn->handle, p.plan, pack);
    if (st != CUDNN_STATUS_SUCCESS) err = "cudnnBackendExecute: " + status_text(st);
  }
  for (auto d : owned) api().DestroyDescriptor(d);
  if (!err.empty()) throw_error("cudnn", "attention graph", err, __FILE__, __LINE__);
}

// Bytes of a scratch piece, rounded up to 256 so the next one stays aligned.
size_t piece(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Copies the query columns between the fused qkv layout (a KV group every
// (R+2) Dh elements) and the packed (B, S, H, Dh) one (every R Dh): B S KV
// rows of R Dh contiguous elements, one strided copy.
void copy_q(Context& ctx, const Shape& s, bf16* dst, const bf16* src, bool to_fused) {
  const int64_t r = s.h / s.kv;
  const size_t packed = sizeof(bf16) * static_cast<size_t>(r * s.dh);
  const size_t fused = sizeof(bf16) * static_cast<size_t>((r + 2) * s.dh);
  MTC_CUDA_CHECK(cudaMemcpy2DAsync(dst, to_fused ? fused : packed, src, to_fused ? packed : fused,
                                   packed, static_cast<size_t>(s.b * s.s * s.kv),
                                   cudaMemcpyDeviceToDevice, ctx.stream));
}

}  // namespace

void set_attention_backend(AttentionBackend backend) { g_backend = backend; }

bool cudnn_attention_supported(Context& ctx, int64_t b, int64_t s, int64_t h, int64_t kv,
                               int64_t dh, bool causal, bool has_mask, std::string* why) {
  std::string reason;
  bool ok = eligible(h, kv, dh, has_mask, reason);
  const Shape shape{b, s, h, kv, dh, causal};
  ok = ok && get_plan(ctx, true, shape, reason) && get_plan(ctx, false, shape, reason);
  if (why) *why = reason;
  return ok;
}

bool cudnn_attention_forward(Context& ctx, const bf16* qkv, const int32_t* mask, bf16* out,
                             float* lse, int64_t b, int64_t s, int64_t h, int64_t kv, int64_t dh,
                             bool causal, float scale) {
  if (g_backend == AttentionBackend::own) return false;
  std::string why;
  Plan* p = nullptr;
  const Shape shape{b, s, h, kv, dh, causal};
  if (eligible(h, kv, dh, mask != nullptr, why)) p = get_plan(ctx, true, shape, why);
  if (!p) {
    require(g_backend != AttentionBackend::cudnn,
            "attention_forward: the cuDNN backend is forced but cannot run this call: " + why);
    return false;
  }
  const Layout l = layout(shape);
  // Scratch: the packed q (B, S, H, Dh) bf16 when q has no 4-D view, then
  // the plan's workspace.
  const size_t q_bytes = l.packed_q ? piece(sizeof(bf16) * static_cast<size_t>(b * s * h * dh)) : 0;
  const size_t total = q_bytes + static_cast<size_t>(p->workspace);
  char* scratch = total > 0 ? static_cast<char*>(ctx.scratch(total)) : nullptr;
  bf16* base = const_cast<bf16*>(qkv);
  bf16* q = base;
  if (l.packed_q) {
    q = reinterpret_cast<bf16*>(scratch);
    copy_q(ctx, shape, q, qkv, false);
  }
  float mask_value = std::numeric_limits<float>::lowest();
  std::vector<int64_t> uids = {kQ, kK, kV, kO, kStats, kScale};
  std::vector<void*> ptrs = {q, base + l.k_col, base + l.v_col, out, lse, &scale};
  if (causal) {
    uids.push_back(kMaskValue);
    ptrs.push_back(&mask_value);
  }
  execute(ctx, *p, uids, ptrs, p->workspace > 0 ? scratch + q_bytes : nullptr);
  return true;
}

bool cudnn_attention_backward(Context& ctx, const bf16* qkv, const int32_t* mask, const bf16* out,
                              const float* lse, const bf16* dout, bf16* dqkv, int64_t b, int64_t s,
                              int64_t h, int64_t kv, int64_t dh, bool causal, float scale) {
  if (g_backend == AttentionBackend::own) return false;
  std::string why;
  Plan* p = nullptr;
  const Shape shape{b, s, h, kv, dh, causal};
  if (eligible(h, kv, dh, mask != nullptr, why)) p = get_plan(ctx, false, shape, why);
  if (!p) {
    require(g_backend != AttentionBackend::cudnn,
            "attention_backward: the cuDNN backend is forced but cannot run this call: " + why);
    return false;
  }
  const Layout l = layout(shape);
  // Scratch: dQ accumulator (B, H, S, Dh) fp32, Dsum (B, H, S) fp32, with a
  // packed q the packed q and dq (B, S, H, Dh) bf16, then the plan's
  // workspace; 256-byte aligned pieces.
  const size_t elems = static_cast<size_t>(b * h * s * dh);
  const size_t acc_bytes = piece(sizeof(float) * elems);
  const size_t dsum_bytes = piece(sizeof(float) * static_cast<size_t>(b * h * s));
  const size_t q_bytes = l.packed_q ? piece(sizeof(bf16) * elems) : 0;
  char* scratch = static_cast<char*>(
      ctx.scratch(acc_bytes + dsum_bytes + 2 * q_bytes + static_cast<size_t>(p->workspace)));
  char* workspace = scratch + acc_bytes + dsum_bytes + 2 * q_bytes;
  // Since cuDNN 9.6 the engine initializes the dQ accumulator itself (as
  // cudnn-frontend assumes); earlier versions need it zeroed.
  if (api().GetVersion() < 90600)
    MTC_CUDA_CHECK(cudaMemsetAsync(scratch, 0, acc_bytes, ctx.stream));
  bf16* base = const_cast<bf16*>(qkv);
  bf16* q = base;
  bf16* dq = dqkv;
  if (l.packed_q) {
    q = reinterpret_cast<bf16*>(scratch + acc_bytes + dsum_bytes);
    dq = reinterpret_cast<bf16*>(scratch + acc_bytes + dsum_bytes + q_bytes);
    copy_q(ctx, shape, q, qkv, false);
  }
  float one = 1.f, mask_value = std::numeric_limits<float>::lowest();
  std::vector<int64_t> uids = {kQ,  kK,  kV,  kO,    kDO,   kStats, kDQ,
                               kDK, kDV, kScale, kOne, kDsum, kDQAcc};
  std::vector<void*> ptrs = {q,
                             base + l.k_col,
                             base + l.v_col,
                             const_cast<bf16*>(out),
                             const_cast<bf16*>(dout),
                             const_cast<float*>(lse),
                             dq,
                             dqkv + l.k_col,
                             dqkv + l.v_col,
                             &scale,
                             &one,
                             scratch + acc_bytes,
                             scratch};
  if (causal) {
    uids.push_back(kMaskValue);
    ptrs.push_back(&mask_value);
  }
  execute(ctx, *p, uids, ptrs, p->workspace > 0 ? workspace : nullptr);
  if (l.packed_q) copy_q(ctx, shape, dqkv, dq, true);
  return true;
}

}  // namespace mtc::rt::cuda

#else  // no cuDNN headers at build time: the own kernels always run.

namespace mtc::rt::cuda {

struct CudnnState {};
void destroy_cudnn_state(CudnnState* state) { delete state; }

namespace {
AttentionBackend g_backend = AttentionBackend::automatic;
const char kNoCudnn[] = "this runtime was built without the cuDNN headers";
}  // namespace

void set_attention_backend(AttentionBackend backend) { g_backend = backend; }

bool cudnn_attention_supported(Context&, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool,
                               std::string* why) {
  if (why) *why = kNoCudnn;
  return false;
}

bool cudnn_attention_forward(Context&, const bf16*, const int32_t*, bf16*, float*, int64_t, int64_t,
                             int64_t, int64_t, int64_t, bool, float) {
  require(g_backend != AttentionBackend::cudnn, std::string("attention_forward: ") + kNoCudnn);
  return false;
}

bool cudnn_attention_backward(Context&, const bf16*, const int32_t*, const bf16*, const float*,
                              const bf16*, bf16*, int64_t, int64_t, int64_t, int64_t, int64_t, bool,
                              float) {
  require(g_backend != AttentionBackend::cudnn, std::string("attention_backward: ") + kNoCudnn);
  return false;
}

}  // namespace mtc::rt::cuda

#endif
