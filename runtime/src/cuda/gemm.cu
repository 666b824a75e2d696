// GEMMs through cuBLASLt: bf16 inputs, fp32 accumulation, bf16 or fp32
// output, with cuBLASLt's fused epilogues (bias, GELU keeping the
// pre-activation, GELU gradient, bias gradients).
//
// Row-major to column-major: cuBLASLt is column-major, and a row-major (R, C)
// matrix is the column-major (C, R) matrix with the same bytes. So the
// row-major C (M, N) = op(A) op(B) is computed as the column-major
//   C^T (N, M) = op(B)^T (N, K) * op(A)^T (K, M)
// i.e. cuBLASLt's "A" is our B and its "B" is our A, each with the transpose
// flag it had. The bias of a column-major (N, M) D has N entries (one per
// row-major column) as wanted, and cuBLASLt's BGRADB (reduction of its B over
// k) is the sum over rows of our dY when our A = dY is stored (K, M).
//
// Plans: the matmul descriptor, the four layouts and the heuristic's best
// algorithm are cached per (shape, transposes, epilogue, output type,
// accumulate, pointer alignments, ctx.sm_margin) in ctx.gemm_cache at first
// use. Epilogues
// cuBLASLt has no algorithm for (the heuristic returns none) fall back to a
// plain GEMM followed by this library's own kernels, same math; a process
// remembers the fallback per shape. MTC_CUDA_GEMM_VERBOSE=1 prints every new
// plan (and fallback) to stderr.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>

#include "cuda/common.cuh"

namespace mtc::rt::cuda {

namespace {

bool verbose() {
  static const bool v = [] {
    const char* e = std::getenv("MTC_CUDA_GEMM_VERBOSE");
    return e && e[0] != '\0' && std::strcmp(e, "0") != 0;
  }();
  return v;
}

bool g_fused_epilogues = true;

int alignment(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (!p || (a & 15u) == 0) return 16;
  if ((a & 7u) == 0) return 8;
  if ((a & 3u) == 0) return 4;
  return 2;
}

// One GEMM call, in our row-major terms.
struct Call {
  const bf16* a;
  const bf16* b;
  void* c;                 // bf16 or fp32 output (also the input C when beta = 1)
  const void* bias;        // bias (bf16) or bias gradient output (fp32 / bf16)
  const void* aux;         // pre-activation: GELU_AUX output, DGELU input
  int64_t m, n, k;
  bool ta, tb;
  cublasLtEpilogue_t epilogue;
  bool out_f32;
  bool accumulate;         // beta = 1
  cudaDataType_t bias_type;
};

using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, int, bool, bool, int, int, int, int,
                       int, int, int>;

Key key_of(const Context& ctx, const Call& c) {
  return Key(c.m, c.n, c.k, c.ta, c.tb, static_cast<int>(c.epilogue), c.out_f32, c.accumulate,
             alignment(c.a), alignment(c.b), alignment(c.c), alignment(c.bias), alignment(c.aux),
             static_cast<int>(c.bias_type), ctx.sm_margin);
}

struct Plan {
  bool supported = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo;
};

const char* epilogue_name(cublasLtEpilogue_t e) {
  switch (e) {
    case CUBLASLT_EPILOGUE_DEFAULT: return "default";
    case CUBLASLT_EPILOGUE_BIAS: return "bias";
    case CUBLASLT_EPILOGUE_GELU: return "gelu";
    case CUBLASLT_EPILOGUE_GELU_BIAS: return "gelu_bias";
    case CUBLASLT_EPILOGUE_GELU_AUX: return "gelu_aux";
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: return "gelu_aux_bias";
    case CUBLASLT_EPILOGUE_DGELU: return "dgelu";
    case CUBLASLT_EPILOGUE_DGELU_BGRAD: return "dgelu_bgrad";
    case CUBLASLT_EPILOGUE_BGRADB: return "bgradb";
    default: return "other";
  }
}

bool has_aux(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS ||
         e == CUBLASLT_EPILOGUE_DGELU || e == CUBLASLT_EPILOGUE_DGELU_BGRAD;
}

bool has_bias(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_GELU_BIAS ||
         e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_DGELU_BGRAD ||
         e == CUBLASLT_EPILOGUE_BGRADB;
}

// Sets the per-call pointers of the descriptor (they are part of the plan's
// key only through their alignment).
void set_pointers(cublasLtMatmulDesc_t desc, const Call& c) {
  if (has_bias(c.epilogue))
    MTC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                    &c.bias, sizeof(c.bias)));
  if (has_aux(c.epilogue))
    MTC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &c.aux, sizeof(c.aux)));
}

Plan make_plan(Context& ctx, const Call& c) {
  Plan p;
  MTC_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t op_a = c.tb ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
  cublasOperation_t op_b = c.ta ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's B is our A
  MTC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a,
                                                  sizeof(op_a)));
  MTC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b,
                                                  sizeof(op_b)));
  MTC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                  &c.epilogue, sizeof(c.epilogue)));
  if (has_bias(c.epilogue)) {
    int32_t bt = static_cast<int32_t>(c.bias_type);
    MTC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                    &bt, sizeof(bt)));
  }
  if (has_aux(c.epilogue)) {
    int64_t ld = c.n;
    MTC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                                                    &ld, sizeof(ld)));
  }
  if (ctx.sm_margin > 0 && ctx.sm_margin < ctx.sm_count) {
    int32_t target = ctx.sm_count - ctx.sm_margin;
    MTC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        p.desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &target, sizeof(target)));
  }
  set_pointers(p.desc, c);
  // Column-major layouts (rows, cols, ld = rows) of cuBLASLt's A = our B,
  // B = our A, C = D = our C^T.
  const int64_t a_rows = c.tb ? c.k : c.n, a_cols = c.tb ? c.n : c.k;
  const int64_t b_rows = c.ta ? c.m : c.k, b_cols = c.ta ? c.k : c.m;
  MTC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.la, CUDA_R_16BF, a_rows, a_cols, a_rows));
  MTC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lb, CUDA_R_16BF, b_rows, b_cols, b_rows));
  MTC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lc, c.out_f32 ? CUDA_R_32F : CUDA_R_16BF, c.n,
                                              c.m, c.n));

  cublasLtMatmulPreference_t pref;
  MTC_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = ctx.cublas_workspace_bytes;
  MTC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  uint32_t al_a = alignment(c.b), al_b = alignment(c.a), al_c = alignment(c.c);
  MTC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)));
  MTC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)));
  MTC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c)));
  MTC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c)));
  cublasLtMatmulHeuristicResult_t results[4];
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(ctx.lt, p.desc, p.la, p.lb, p.lc, p.lc, pref,
                                                     4, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < found; ++i) {
    if (results[i].state == CUBLAS_STATUS_SUCCESS) {
      p.algo = results[i].algo;
      p.supported = true;
      break;
    }
  }
  if (verbose())
    std::fprintf(stderr,
                 "[mtc gemm] M=%lld N=%lld K=%lld ta=%d tb=%d epilogue=%s out=%s beta=%d "
                 "sm_margin=%d: %s\n",
                 static_cast<long long>(c.m), static_cast<long long>(c.n),
                 static_cast<long long>(c.k), c.ta, c.tb, epilogue_name(c.epilogue),
                 c.out_f32 ? "f32" : "bf16", c.accumulate ? 1 : 0, ctx.sm_margin,
                 p.supported ? "cuBLASLt plan" : "no cuBLASLt algorithm (fallback)");
  return p;
}

}  // namespace

struct GemmCache {
  std::map<Key, Plan> plans;
};

void destroy_gemm_cache(GemmCache* cache) {
  if (!cache) return;
  for (auto& kv : cache->plans) {
    Plan& p = kv.second;
    if (p.la) cublasLtMatrixLayoutDestroy(p.la);
    if (p.lb) cublasLtMatrixLayoutDestroy(p.lb);
    if (p.lc) cublasLtMatrixLayoutDestroy(p.lc);
    if (p.desc) cublasLtMatmulDescDestroy(p.desc);
  }
  delete cache;
}

namespace {

// Runs the call with its cached plan; false when cuBLASLt has no algorithm
// for it (the caller falls back), never false for the plain epilogues.
bool run(Context& ctx, const Call& c) {
  if (!ctx.gemm_cache) ctx.gemm_cache = new GemmCache;
  const Key key = key_of(ctx, c);
  auto it = ctx.gemm_cache->plans.find(key);
  if (it == ctx.gemm_cache->plans.end())
    it = ctx.gemm_cache->plans.emplace(key, make_plan(ctx, c)).first;
  Plan& p = it->second;
  if (!p.supported) {
    require(c.epilogue != CUBLASLT_EPILOGUE_DEFAULT && c.epilogue != CUBLASLT_EPILOGUE_BIAS,
            "matmul: cuBLASLt found no algorithm for M=" + std::to_string(c.m) +
                " N=" + std::to_string(c.n) + " K=" + std::to_string(c.k));
    return false;
  }
  set_pointers(p.desc, c);
  const float alpha = 1.f, beta = c.accumulate ? 1.f : 0.f;
  // cuBLASLt's A is our B and its B is our A (see the file comment).
  cublasStatus_t st = cublasLtMatmul(ctx.lt, p.desc, &alpha, c.b, p.la, c.a, p.lb, &beta, c.c,
                                     p.lc, c.c, p.lc, &p.algo, ctx.cublas_workspace,
                                     ctx.cublas_workspace_bytes, ctx.stream);
  const bool plain = c.epilogue == CUBLASLT_EPILOGUE_DEFAULT || c.epilogue == CUBLASLT_EPILOGUE_BIAS;
  if (!plain && (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE)) {
    // A fused epilogue the heuristic offered but the call refused: remember
    // and take the unfused path from now on.
    if (verbose())
      std::fprintf(stderr, "[mtc gemm] epilogue %s refused at run time (%s): fallback\n",
                   epilogue_name(c.epilogue), cublas_status_string(st).c_str());
    p.supported = false;
    return false;
  }
  MTC_CUBLAS_CHECK(st);
  return true;
}

void check_shapes(const char* op, int64_t m, int64_t n, int64_t k) {
  require(m > 0 && n > 0 && k > 0, std::string(op) + ": M, N, K must be positive (got " +
                                       std::to_string(m) + ", " + std::to_string(n) + ", " +
                                       std::to_string(k) + ")");
}

Call make_call(const bf16* a, const bf16* b, void* c, int64_t m, int64_t n, int64_t k, bool ta,
               bool tb) {
  Call call;
  call.a = a;
  call.b = b;
  call.c = c;
  call.bias = nullptr;
  call.aux = nullptr;
  call.m = m;
  call.n = n;
  call.k = k;
  call.ta = ta;
  call.tb = tb;
  call.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  call.out_f32 = false;
  call.accumulate = false;
  call.bias_type = CUDA_R_16BF;
  return call;
}

}  // namespace

void set_fused_gemm_epilogues(bool enabled) { g_fused_epilogues = enabled; }

void matmul(Context& ctx, const bf16* a, const bf16* b, const bf16* bias, bf16* c, int64_t m,
            int64_t n, int64_t k, bool trans_a, bool trans_b) {
  check_shapes("matmul", m, n, k);
  Call call = make_call(a, b, c, m, n, k, trans_a, trans_b);
  if (bias) {
    call.epilogue = CUBLASLT_EPILOGUE_BIAS;
    call.bias = bias;
  }
  run(ctx, call);
}

void matmul_gelu(Context& ctx, const bf16* a, const bf16* b, const bf16* bias, bf16* c, bf16* pre,
                 int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b) {
  check_shapes("matmul_gelu", m, n, k);
  Call call = make_call(a, b, c, m, n, k, trans_a, trans_b);
  call.bias = bias;
  call.aux = pre;
  if (pre)
    call.epilogue = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
  else
    call.epilogue = bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
  // The aux matrix needs a leading dimension divisible by 8.
  const bool fusable = g_fused_epilogues && (!pre || n % 8 == 0);
  if (fusable && run(ctx, call)) return;
  // Fallback: Z = op(A) op(B) + bias into pre (or c), then c = gelu(Z).
  bf16* z = pre ? pre : c;
  matmul(ctx, a, b, bias, z, m, n, k, trans_a, trans_b);
  gelu_forward(ctx, z, c, m * n, /*tanh_approx=*/true);
}

void matmul_dgelu(Context& ctx, const bf16* a, const bf16* b, const bf16* pre, bf16* c,
                  float* dbias, int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b) {
  check_shapes("matmul_dgelu", m, n, k);
  require(pre != nullptr, "matmul_dgelu: the pre-activation is required");
  const bool fusable = g_fused_epilogues && n % 8 == 0;
  if (fusable && dbias) {
    // DGELU_BGRAD writes the bias gradient (fp32) into scratch; then +=.
    float* tmp = static_cast<float*>(ctx.scratch(sizeof(float) * n));  // (N)
    Call call = make_call(a, b, c, m, n, k, trans_a, trans_b);
    call.epilogue = CUBLASLT_EPILOGUE_DGELU_BGRAD;
    call.aux = pre;
    call.bias = tmp;
    call.bias_type = CUDA_R_32F;
    if (run(ctx, call)) {
      accumulate(ctx, dbias, tmp, n);
      return;
    }
  }
  if (fusable) {
    Call call = make_call(a, b, c, m, n, k, trans_a, trans_b);
    call.epilogue = CUBLASLT_EPILOGUE_DGELU;
    call.aux = pre;
    if (run(ctx, call)) {
      if (dbias) reduce_rows_accumulate(ctx, c, dbias, m, n);
      return;
    }
  }
  // Fallback: c = op(A) op(B), then c = c * gelu'(pre) in place.
  matmul(ctx, a, b, nullptr, c, m, n, k, trans_a, trans_b);
  gelu_backward(ctx, pre, c, c, m * n, /*tanh_approx=*/true);
  if (dbias) reduce_rows_accumulate(ctx, c, dbias, m, n);
}

void matmul_f32(Context& ctx, const bf16* a, const bf16* b, float* c, float* dbias, int64_t m,
                int64_t n, int64_t k, bool trans_a, bool trans_b, bool accumulate_c) {
  check_shapes("matmul_f32", m, n, k);
  require(!dbias || trans_a, "matmul_f32: a bias gradient needs A = dY stored (K, M) (trans_a)");
  Call call = make_call(a, b, c, m, n, k, trans_a, trans_b);
  call.out_f32 = true;
  call.accumulate = accumulate_c;
  if (dbias && g_fused_epilogues) {
    float* tmp = static_cast<float*>(ctx.scratch(sizeof(float) * m));  // (M)
    Call bg = call;
    bg.epilogue = CUBLASLT_EPILOGUE_BGRADB;
    bg.bias = tmp;
    bg.bias_type = CUDA_R_32F;
    if (run(ctx, bg)) {
      accumulate(ctx, dbias, tmp, m);
      return;
    }
  }
  run(ctx, call);
  // dbias (M) += column sums of A stored (K, M).
  if (dbias) reduce_rows_accumulate(ctx, a, dbias, k, m);
}

}  // namespace mtc::rt::cuda
