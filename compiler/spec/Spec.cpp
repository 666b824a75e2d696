// The small pieces of the spec library: enum spellings, derived sizes,
// diagnostic formatting, and the string helpers the parser's messages use.
#include "SpecInternal.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace mtc::spec {

using detail::Wide;

const char* toString(Arch v) {
  switch (v) {
    case Arch::gpt: return "gpt";
    case Arch::llama: return "llama";
    case Arch::bert: return "bert";
  }
  return "?";
}
const char* toString(NormKind v) {
  switch (v) {
    case NormKind::layernorm: return "layernorm";
    case NormKind::rmsnorm: return "rmsnorm";
  }
  return "?";
}
const char* toString(NormPlacement v) {
  switch (v) {
    case NormPlacement::pre: return "pre";
    case NormPlacement::post: return "post";
  }
  return "?";
}
const char* toString(Activation v) {
  switch (v) {
    case Activation::gelu: return "gelu";
    case Activation::gelu_tanh: return "gelu_tanh";
    case Activation::swiglu: return "swiglu";
    case Activation::squared_relu: return "squared_relu";
  }
  return "?";
}
const char* toString(PositionKind v) {
  switch (v) {
    case PositionKind::learned: return "learned";
    case PositionKind::rope: return "rope";
  }
  return "?";
}
const char* toString(Schedule v) {
  switch (v) {
    case Schedule::gpipe: return "gpipe";
    case Schedule::one_f_one_b: return "1f1b";
    case Schedule::interleaved: return "interleaved";
    case Schedule::zb_h1: return "zb-h1";
  }
  return "?";
}
const char* toString(Recompute v) {
  switch (v) {
    case Recompute::none: return "none";
    case Recompute::selective: return "selective";
    case Recompute::full: return "full";
    case Recompute::auto_: return "auto";
  }
  return "?";
}
const char* toString(Precision v) {
  switch (v) {
    case Precision::fp32: return "fp32";
    case Precision::bf16: return "bf16";
    case Precision::fp16: return "fp16";
  }
  return "?";
}
const char* toString(LrDecay v) {
  switch (v) {
    case LrDecay::constant: return "constant";
    case LrDecay::linear: return "linear";
    case LrDecay::cosine: return "cosine";
  }
  return "?";
}

const char* toString(RouterKind v) {
  switch (v) {
    case RouterKind::softmax_topk: return "softmax-topk";
    case RouterKind::topk_softmax: return "topk-softmax";
  }
  return "?";
}

const char* toString(DropPolicy v) {
  switch (v) {
    case DropPolicy::probs: return "probs";
    case DropPolicy::position: return "position";
  }
  return "?";
}

std::optional<Recompute> parseRecompute(const std::string& s) {
  return detail::enumFromString<Recompute>(s);
}

std::optional<Schedule> parseSchedule(const std::string& s) {
  return detail::enumFromString<Schedule>(s);
}

int64_t defaultFfnHiddenSize(int64_t hidden_size, Activation activation) {
  if (hidden_size <= 0 || hidden_size > detail::kMaxInt) return 0;
  if (activation != Activation::swiglu) return 4 * hidden_size;
  // Llama: int(2 * (4h) / 3), then up to a multiple of 256.
  int64_t m = 8 * hidden_size / 3;
  return (m + 255) / 256 * 256;
}

int64_t Spec::numMicrobatches() const {
  // 128 bits: micro * dp may exceed int64 on an unvalidated spec.
  Wide per_step = (Wide)training.micro_batch_size * parallel.dp;
  int64_t global = detail::resolvedGlobalBatch(*this);
  if (per_step <= 0 || global <= 0) return 0;
  return (int64_t)(global / per_step);
}

int64_t Spec::paddedVocabSize() const {
  int64_t multiple = 128 * std::max<int64_t>(1, std::min(parallel.tp, detail::kMaxInt));
  int64_t v = std::max<int64_t>(0, model.vocab_size);
  return (int64_t)(((Wide)v + multiple - 1) / multiple * multiple);
}

std::string formatDiagnostics(const std::string& file,
                              const std::vector<Diagnostic>& diags) {
  std::string out;
  for (const Diagnostic& d : diags) {
    out += file + ": error: ";
    if (!d.path.empty()) out += "at " + d.path + ": ";
    out += d.message + "\n";
  }
  return out;
}

namespace detail {

int64_t resolvedGlobalBatch(const Spec& spec) {
  if (spec.training.global_batch_size != 0) return spec.training.global_batch_size;
  Wide g = (Wide)spec.training.micro_batch_size * spec.parallel.dp *
               spec.parallel.microbatches.value_or(1);
  if (g > INT64_MAX || g < INT64_MIN) return 0;
  return (int64_t)g;
}

std::string formatReal(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

size_t editDistance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  // d[i][j]: distance between a[0, i) and b[0, j).
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

}  // namespace detail
}  // namespace mtc::spec
