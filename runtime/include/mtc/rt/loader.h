// GPT-style training samples from a TokenSource (Megatron's GPTDataset
// construction, simplified), the train/validation split, and the batch
// layout across microbatches and data-parallel ranks.
//
// Split: `--split 98,2` (or three weights train,valid,test as Megatron; the
// test part is set aside, never read) divides the documents into
// contiguous ranges by Megatron's rule: with weights w normalized to sum 1
// and n documents, boundary i is the running sum of round(w_i * n), and the
// rounding error is taken off the later boundaries so the last is n. A
// source with a single document (a plain .tokens file) is split the same
// way by tokens instead.
//
// Samples of one split (seq_length S), per epoch e = 0, 1, ...:
//   1. its documents are put in a shuffled order (seed, split, e) and
//      concatenated into one token stream of T tokens (the same T every
//      epoch);
//   2. sample j in [0, T_s = (T - 1) / S) is stream tokens [j*S, j*S + S]:
//      S + 1 tokens, inputs = the first S, targets = the last S (so
//      consecutive samples share one token, as in Megatron); the tail that
//      does not fill a sample is not used that epoch;
//   3. the samples are visited in a shuffled order (seed, split, e).
// Global sample k is sample (k mod T_s) of epoch k / T_s, so a training
// run's position is one number, the consumed sample count; an epoch
// boundary may fall inside a batch.
//
// Batches (Megatron's pretraining sampler): the step that starts at global
// sample `base` takes global_batch = micro_batch * num_microbatches *
// dp_size samples. Microbatch i of data-parallel rank r holds samples
//   base + i * (micro_batch * dp_size) + r * micro_batch + [0, micro_batch),
// so a global batch holds the same samples whatever dp_size is.
//
// Validation reads the validation split's epoch 0 only, from its start,
// wrapping around: every evaluation sees the same samples.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mtc/rt/data.h"

namespace mtc::rt {

// Parses "98,2" / "969,30,1": 1 to 3 non-negative weights, positive sum.
// Throws Error quoting the text.
std::vector<double> parse_split(const std::string& text);

// A contiguous part of a source: documents [doc_begin, doc_end), where the
// first document starts at token `first_offset` and the last one ends at
// token `last_end` (-1: its end). Partial documents only occur for
// single-document sources.
struct DocRange {
  int64_t doc_begin = 0;
  int64_t doc_end = 0;
  int64_t first_offset = 0;
  int64_t last_end = -1;
};

// One range per weight (Megatron's rule, above).
std::vector<DocRange> split_source(const TokenSource& source,
                                   const std::vector<double>& weights);

class GptSamples {
 public:
  // `split_id` tells the splits' shuffles apart (0 train, 1 validation).
  // Throws Error if the range has fewer than seq_length + 1 tokens; `what`
  // ("train split", ...) names it. With vocab_size > 0, sample() checks
  // every id it reads against [0, vocab_size).
  GptSamples(const TokenSource& source, const DocRange& range,
             int64_t seq_length, uint64_t seed, uint64_t split_id,
             const std::string& what, int64_t vocab_size = 0);

  int64_t seq_length() const { return seq_length_; }
  int64_t num_docs() const { return range_.doc_end - range_.doc_begin; }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t samples_per_epoch() const { return samples_per_epoch_; }

  // The S + 1 tokens of global sample k >= 0 (epoch k / samples_per_epoch).
  // An id outside the vocabulary (or beyond int32, TokenSource::read) throws
  // Error naming the id, the data file and its position there.
  void sample(int64_t k, int32_t* out);

 private:
  int64_t doc_len(int64_t i) const;     // length of the i-th document of the range
  int64_t doc_start(int64_t i) const;   // its first token in the source document
  void build_epoch(int64_t epoch);

  const TokenSource& source_;
  DocRange range_;
  int64_t seq_length_;
  uint64_t seed_, split_id_;
  int64_t vocab_size_;
  int64_t num_tokens_ = 0;
  int64_t samples_per_epoch_ = 0;
  int64_t epoch_ = -1;                 // the epoch the arrays below describe
  std::vector<int64_t> doc_order_;     // range-relative document per slot
  std::vector<int64_t> stream_start_;  // first stream token of each slot (+T)
  std::vector<int64_t> sample_order_;  // shuffled sample indices
};

// Microbatch / data-parallel layout of one optimizer step.
struct BatchLayout {
  int64_t micro_batch = 1;
  int64_t num_microbatches = 1;
  int64_t seq_length = 1;
  int64_t dp_rank = 0;
  int64_t dp_size = 1;
  int64_t global_batch() const { return micro_batch * num_microbatches * dp_size; }
};

// tokens, targets (micro_batch, S): microbatch `mb` of this rank for the
// step whose first global sample is `base` (Megatron's order, above).
// Throws Error when a sample index would not fit int64 (a corrupt resume
// position) or a sample's ids are bad (GptSamples::sample).
void fill_microbatch(GptSamples& samples, const BatchLayout& layout,
                     int64_t base, int64_t mb, int32_t* tokens,
                     int32_t* targets);

// Validation microbatch: as fill_microbatch, with sample indices taken
// modulo samples_per_epoch (epoch 0 only).
void fill_validation_microbatch(GptSamples& samples, const BatchLayout& layout,
                                int64_t base, int64_t mb, int32_t* tokens,
                                int32_t* targets);

}  // namespace mtc::rt
