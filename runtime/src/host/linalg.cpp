// Host linear algebra: the GEMM (OpenBLAS sgemm) and the small dense
// elementwise/reduction kernels around it (bias gradient, residual and
// broadcast add, gradient accumulation).
//
// Assumptions: row-major dense fp32; sizes fit cblas' int (checked by the
// compiler's shape planning, asserted nowhere here). Reductions accumulate in
// double and in a fixed order, so results do not depend on the thread count.
#include "mtc/rt/host_kernels.h"

#include <cblas.h>

#include <algorithm>
#include <vector>

#include "host/parallel.h"

namespace mtc::rt::host {

// C (M, N) = op(A) (M, K) · op(B) (K, N) [+ bias (N) on every row].
// With a bias, C is first filled with it and sgemm runs with beta = 1.
void matmul(const float* a, const float* b, const float* bias, float* c,
            int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b) {
  if (m <= 0 || n <= 0) return;
  if (bias) {
    for (int64_t i = 0; i < m; ++i) std::copy(bias, bias + n, c + i * n);
  }
  if (k <= 0) {
    if (!bias) std::fill(c, c + m * n, 0.0f);
    return;
  }
  const int lda = static_cast<int>(trans_a ? m : k);  // A stored (K, M) or (M, K)
  const int ldb = static_cast<int>(trans_b ? k : n);  // B stored (N, K) or (K, N)
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), 1.0f, a, lda, b, ldb,
              bias ? 1.0f : 0.0f, c, static_cast<int>(n));
}

// y[j] = sum_i x[i*n + j] for the rows i of x (rows, n), accumulated in
// double; the columns are split across threads.
static void column_sums(const float* x, float* y, int64_t rows, int64_t n) {
  parallel_for(n, 1024, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(static_cast<size_t>(end - begin), 0.0);
    for (int64_t i = 0; i < rows; ++i) {
      const float* row = x + i * n;
      for (int64_t j = begin; j < end; ++j) acc[j - begin] += row[j];
    }
    for (int64_t j = begin; j < end; ++j)
      y[j] = static_cast<float>(acc[j - begin]);
  });
}

// y (N) = sum over rows of x (M, N).
void reduce_rows(const float* x, float* y, int64_t m, int64_t n) {
  column_sums(x, y, m, n);
}

// out (n) = a (n) + b broadcast: b (nb) repeats n / nb times.
void add(const float* a, const float* b, float* out, int64_t n, int64_t nb) {
  if (n <= 0 || nb <= 0) return;
  parallel_for(n / nb, std::max<int64_t>(1, 65536 / nb),
               [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* ar = a + r * nb;
      float* o = out + r * nb;
      for (int64_t j = 0; j < nb; ++j) o[j] = ar[j] + b[j];
    }
  });
}

// dst (n) += src (n).
void accumulate(float* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

// dst (n) = value.
void fill(float* dst, float value, int64_t n) {
  if (n > 0) std::fill(dst, dst + n, value);
}

// y (nb) = sum_r x[r*nb + j]: the gradient of `add`'s broadcast operand.
void reduce_broadcast(const float* x, float* y, int64_t n, int64_t nb) {
  if (nb <= 0) return;
  column_sums(x, y, n / nb, nb);
}

}  // namespace mtc::rt::host
