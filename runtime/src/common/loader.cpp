// GPT sample construction, split and batch layout. The rules are stated in
// mtc/rt/loader.h; this file implements them.
#include "mtc/rt/loader.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <sstream>

#include "common/rng.h"

namespace mtc::rt {

std::vector<double> parse_split(const std::string& text) {
  std::vector<double> weights;
  std::stringstream ss(text);
  std::string part;
  auto bad = [&text](const std::string& why) {
    return Error("--split \"" + text + "\": " + why +
                 " (expected 1 to 3 comma-separated weights train,valid[,test],"
                 " e.g. 98,2 or 969,30,1)");
  };
  while (std::getline(ss, part, ',')) {
    size_t used = 0;
    double w = 0;
    try {
      w = std::stod(part, &used);
    } catch (const std::exception&) {
      throw bad("\"" + part + "\" is not a number");
    }
    if (used != part.size()) throw bad("\"" + part + "\" is not a number");
    if (!(w >= 0) || !std::isfinite(w)) throw bad("weights must be >= 0");
    weights.push_back(w);
  }
  if (!text.empty() && text.back() == ',') throw bad("trailing comma");
  if (weights.empty() || weights.size() > 3) throw bad("wrong number of weights");
  double sum = 0;
  for (double w : weights) sum += w;
  if (!(sum > 0)) throw bad("the weights sum to 0");
  return weights;
}

std::vector<DocRange> split_source(const TokenSource& source,
                                   const std::vector<double>& weights) {
  double sum = 0;
  for (double w : weights) sum += w;
  const bool by_tokens = source.num_docs() == 1;
  const int64_t n = by_tokens ? source.doc_length(0) : source.num_docs();
  // Megatron's get_split_indices (Python's round: half to even = nearbyint).
  std::vector<int64_t> bound{0};
  for (double w : weights)
    bound.push_back(bound.back() +
                    static_cast<int64_t>(std::nearbyint(w / sum * static_cast<double>(n))));
  const int64_t excess = bound.back() - n;
  for (size_t i = 1; i < bound.size(); ++i)
    bound[i] = std::clamp<int64_t>(bound[i] - excess, bound[i - 1], n);
  std::vector<DocRange> out;
  for (size_t i = 0; i + 1 < bound.size(); ++i) {
    DocRange r;
    if (by_tokens) {
      bool empty = bound[i] == bound[i + 1];
      r.doc_begin = 0;
      r.doc_end = empty ? 0 : 1;
      r.first_offset = bound[i];
      r.last_end = bound[i + 1];
    } else {
      r.doc_begin = bound[i];
      r.doc_end = bound[i + 1];
    }
    out.push_back(r);
  }
  return out;
}

GptSamples::GptSamples(const TokenSource& source, const DocRange& range,
                       int64_t seq_length, uint64_t seed, uint64_t split_id,
                       const std::string& what, int64_t vocab_size)
    : source_(source), range_(range), seq_length_(seq_length), seed_(seed),
      split_id_(split_id), vocab_size_(vocab_size) {
  assert(seq_length >= 1);
  for (int64_t i = 0; i < num_docs(); ++i) num_tokens_ += doc_len(i);
  if (num_tokens_ < seq_length + 1)
    throw Error(source.name() + ": the " + what + " has " +
                std::to_string(num_docs()) + " documents and " +
                std::to_string(num_tokens_) + " tokens, fewer than one sample of"
                " seq_length + 1 = " + std::to_string(seq_length + 1) +
                " tokens (use more data or change --split)");
  samples_per_epoch_ = (num_tokens_ - 1) / seq_length;
}

int64_t GptSamples::doc_start(int64_t i) const {
  return i == 0 ? range_.first_offset : 0;
}

int64_t GptSamples::doc_len(int64_t i) const {
  int64_t doc = range_.doc_begin + i;
  int64_t end = (i == num_docs() - 1 && range_.last_end >= 0)
                    ? range_.last_end
                    : source_.doc_length(doc);
  return end - doc_start(i);
}

void GptSamples::build_epoch(int64_t epoch) {
  const int64_t n = num_docs();
  doc_order_.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) doc_order_[i] = i;
  detail::shuffle(doc_order_, detail::stream_key(seed_, 2 * split_id_, epoch));
  stream_start_.resize(static_cast<size_t>(n + 1));
  stream_start_[0] = 0;
  for (int64_t i = 0; i < n; ++i)
    stream_start_[i + 1] = stream_start_[i] + doc_len(doc_order_[i]);
  sample_order_.resize(static_cast<size_t>(samples_per_epoch_));
  for (int64_t j = 0; j < samples_per_epoch_; ++j) sample_order_[j] = j;
  detail::shuffle(sample_order_,
                  detail::stream_key(seed_, 2 * split_id_ + 1, epoch));
  epoch_ = epoch;
}

void GptSamples::sample(int64_t k, int32_t* out) {
  assert(k >= 0);
  const int64_t epoch = k / samples_per_epoch_;
  if (epoch != epoch_) build_epoch(epoch);
  int64_t pos = sample_order_[k % samples_per_epoch_] * seq_length_;
  int64_t left = seq_length_ + 1;
  // The slot holding stream token `pos`: last slot whose start <= pos.
  auto it = std::upper_bound(stream_start_.begin(), stream_start_.end(), pos);
  int64_t slot = (it - stream_start_.begin()) - 1;
  while (left > 0) {
    int64_t doc = doc_order_[slot];
    int64_t within = pos - stream_start_[slot];
    int64_t take = std::min(left, doc_len(doc) - within);
    source_.read(range_.doc_begin + doc, doc_start(doc) + within, take, out);
    for (int64_t i = 0; i < take && vocab_size_ > 0; ++i)
      if (out[i] < 0 || out[i] >= vocab_size_)
        throw Error(source_.position(range_.doc_begin + doc, doc_start(doc) + within + i) +
                    ": token id " + std::to_string(out[i]) + " is outside the vocabulary [0, " +
                    std::to_string(vocab_size_) + ") of the program");
    out += take;
    left -= take;
    pos += take;
    ++slot;
  }
}

namespace {

void fill_rows(GptSamples& samples, const BatchLayout& layout, int64_t base,
               int64_t mb, bool wrap, int32_t* tokens, int32_t* targets) {
  const int64_t s = layout.seq_length;
  assert(s == samples.seq_length());
  std::vector<int32_t> row(static_cast<size_t>(s + 1));
  // first = base + (mb * dp_size + dp_rank) * micro_batch; the last row's
  // index first + micro_batch - 1 must fit int64.
  int64_t first = 0, last = 0;
  if (base < 0 ||
      __builtin_mul_overflow(mb * layout.dp_size + layout.dp_rank, layout.micro_batch, &first) ||
      __builtin_add_overflow(base, first, &first) ||
      __builtin_add_overflow(first, layout.micro_batch - 1, &last))
    throw Error("sample position " + std::to_string(base) + " (consumed samples) + microbatch " +
                std::to_string(mb) + " does not fit a 64-bit sample index");
  for (int64_t j = 0; j < layout.micro_batch; ++j) {
    int64_t k = first + j;
    if (wrap) k %= samples.samples_per_epoch();
    samples.sample(k, row.data());
    std::copy(row.begin(), row.end() - 1, tokens + j * s);
    std::copy(row.begin() + 1, row.end(), targets + j * s);
  }
}

}  // namespace

void fill_microbatch(GptSamples& samples, const BatchLayout& layout,
                     int64_t base, int64_t mb, int32_t* tokens,
                     int32_t* targets) {
  fill_rows(samples, layout, base, mb, /*wrap=*/false, tokens, targets);
}

void fill_validation_microbatch(GptSamples& samples, const BatchLayout& layout,
                                int64_t base, int64_t mb, int32_t* tokens,
                                int32_t* targets) {
  fill_rows(samples, layout, base, mb, /*wrap=*/true, tokens, targets);
}

}  // namespace mtc::rt
