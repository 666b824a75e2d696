// Host layer norm and RMS norm, forward and backward, per row of a (T, D)
// activation.
//
// Statistics are recomputed in backward (nothing is saved between passes).
// Sums accumulate in double; stored values are fp32. Backward runs in two
// passes so that it is deterministic for any thread count: rows in parallel
// for dx (saving each row's statistics in a (T) scratch), then columns in
// parallel for dgamma / dbeta, each summing its rows in order.
//
// Math, with xhat = (x - mean) * rstd and g = dy * gamma:
//   layer norm: rstd = 1 / sqrt(var + eps), var = mean((x - mean)^2)
//               dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//               dgamma = sum_t dy * xhat,   dbeta = sum_t dy
//   rms norm:   rstd = 1 / sqrt(mean(x^2) + eps), xhat = x * rstd
//               dx = rstd * (g - xhat * mean(g * xhat))
//               dgamma = sum_t dy * xhat
#include "mtc/rt/host_kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "host/parallel.h"

namespace mtc::rt::host {
namespace {

struct RowStats {
  double mean;  // 0 for rms norm
  double rstd;
};

RowStats row_stats(const float* x, int64_t d, float eps, bool center) {
  double mean = 0.0;
  if (center) {
    for (int64_t j = 0; j < d; ++j) mean += x[j];
    mean /= static_cast<double>(d);
  }
  double ss = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    double c = x[j] - mean;
    ss += c * c;
  }
  double var = ss / static_cast<double>(d);
  return {mean, 1.0 / std::sqrt(var + static_cast<double>(eps))};
}

int64_t row_grain(int64_t d) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1)); }

// y = xhat * gamma (+ beta).   x, y (T, D); gamma, beta (D).
void norm_forward(const float* x, const float* gamma, const float* beta,
                  float* y, int64_t t, int64_t d, float eps, bool center) {
  parallel_for(t, row_grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * d;
      float* yr = y + r * d;
      RowStats st = row_stats(xr, d, eps, center);
      for (int64_t j = 0; j < d; ++j) {
        double v = (xr[j] - st.mean) * st.rstd * gamma[j];
        if (beta) v += beta[j];
        yr[j] = static_cast<float>(v);
      }
    }
  });
}

// dx (T, D); dgamma, dbeta (D) overwritten (dbeta may be nullptr).
void norm_backward(const float* x, const float* gamma, const float* dy,
                   float* dx, float* dgamma, float* dbeta, int64_t t,
                   int64_t d, float eps, bool center) {
  std::vector<RowStats> stats(static_cast<size_t>(t));  // (T)
  parallel_for(t, row_grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * d;
      const float* dyr = dy + r * d;
      RowStats st = row_stats(xr, d, eps, center);
      stats[r] = st;
      double sum_g = 0.0, sum_gx = 0.0;
      for (int64_t j = 0; j < d; ++j) {
        double g = static_cast<double>(dyr[j]) * gamma[j];
        sum_g += g;
        sum_gx += g * (xr[j] - st.mean) * st.rstd;
      }
      double mean_g = center ? sum_g / d : 0.0;
      double mean_gx = sum_gx / d;
      float* dxr = dx + r * d;
      for (int64_t j = 0; j < d; ++j) {
        double g = static_cast<double>(dyr[j]) * gamma[j];
        double xhat = (xr[j] - st.mean) * st.rstd;
        dxr[j] = static_cast<float>(st.rstd * (g - mean_g - xhat * mean_gx));
      }
    }
  });
  parallel_for(d, 64, [&](int64_t begin, int64_t end) {
    std::vector<double> sg(static_cast<size_t>(end - begin), 0.0);
    std::vector<double> sb(static_cast<size_t>(end - begin), 0.0);
    for (int64_t r = 0; r < t; ++r) {
      const float* xr = x + r * d;
      const float* dyr = dy + r * d;
      const RowStats st = stats[r];
      for (int64_t j = begin; j < end; ++j) {
        sg[j - begin] += static_cast<double>(dyr[j]) * ((xr[j] - st.mean) * st.rstd);
        sb[j - begin] += dyr[j];
      }
    }
    for (int64_t j = begin; j < end; ++j) {
      dgamma[j] = static_cast<float>(sg[j - begin]);
      if (dbeta) dbeta[j] = static_cast<float>(sb[j - begin]);
    }
  });
}

}  // namespace

void layer_norm_forward(const float* x, const float* gamma, const float* beta,
                        float* y, int64_t t, int64_t d, float eps) {
  norm_forward(x, gamma, beta, y, t, d, eps, /*center=*/true);
}

void layer_norm_backward(const float* x, const float* gamma, const float* dy,
                         float* dx, float* dgamma, float* dbeta, int64_t t,
                         int64_t d, float eps) {
  norm_backward(x, gamma, dy, dx, dgamma, dbeta, t, d, eps, /*center=*/true);
}

void rms_norm_forward(const float* x, const float* gamma, float* y, int64_t t,
                      int64_t d, float eps) {
  norm_forward(x, gamma, nullptr, y, t, d, eps, /*center=*/false);
}

void rms_norm_backward(const float* x, const float* gamma, const float* dy,
                       float* dx, float* dgamma, int64_t t, int64_t d,
                       float eps) {
  norm_backward(x, gamma, dy, dx, dgamma, nullptr, t, d, eps, /*center=*/false);
}

}  // namespace mtc::rt::host
