// Tests of GPT sample construction: Megatron's split rule, samples that are
// windows of a document-permuted token stream (checked with tokens that
// encode their own document and position), exact coverage of every epoch,
// seeded determinism, disjoint train/validation documents, and the
// data-parallel batch layout.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "mtc/rt/loader.h"
#include "train_test_support.h"

namespace mtc::rt {
namespace {

using testing::scratch_dir;

constexpr int32_t kPosBase = 1000;  // token = doc * 1000 + position

// num_docs documents of varying length (some empty); token (d, i) = d*1000+i.
std::string write_coded(const std::string& name, int64_t num_docs) {
  std::string prefix = scratch_dir(name) + "/c";
  IndexedDatasetWriter w(prefix, TokenDtype::int32);
  for (int64_t d = 0; d < num_docs; ++d) {
    std::vector<int32_t> doc(static_cast<size_t>((d * 7) % 23));
    for (size_t i = 0; i < doc.size(); ++i)
      doc[i] = static_cast<int32_t>(d * kPosBase + static_cast<int64_t>(i));
    w.add_document(doc);
  }
  w.finalize();
  return prefix;
}

TEST(LoaderSplit, ParseSplit) {
  EXPECT_EQ(parse_split("98,2"), (std::vector<double>{98, 2}));
  EXPECT_EQ(parse_split("969,30,1"), (std::vector<double>{969, 30, 1}));
  EXPECT_EQ(parse_split("1"), (std::vector<double>{1}));
  for (const char* bad : {"", "98,", "a,b", "1,2,3,4", "0,0", "-1,2", "98;2"}) {
    try {
      parse_split(bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--split"), std::string::npos);
    }
  }
}

TEST(LoaderSplit, MegatronRounding) {
  std::string prefix = write_coded("loader_split", 10);
  IndexedDataset ds(prefix);
  // 1,1,1 of 10: round(3.33) = 3 each, the shortfall of 1 moves the later
  // boundaries: [0, 4), [4, 7), [7, 10) (Megatron's get_split_indices).
  auto r = split_source(ds, {1, 1, 1});
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].doc_begin, 0);
  EXPECT_EQ(r[0].doc_end, 4);
  EXPECT_EQ(r[1].doc_begin, 4);
  EXPECT_EQ(r[1].doc_end, 7);
  EXPECT_EQ(r[2].doc_end, 10);
  auto r2 = split_source(ds, {98, 2});
  EXPECT_EQ(r2[0].doc_end, 10);  // round(9.8) = 10, round(0.2) = 0
  EXPECT_EQ(r2[1].doc_begin, 10);
  EXPECT_EQ(r2[1].doc_end, 10);
}

// Checks that samples j = 0..spe-1 of `epoch` tile a stream made of every
// document of the range exactly once, each sample being S+1 consecutive
// stream tokens. Returns the documents in stream order.
std::vector<int64_t> check_epoch(GptSamples& gs, int64_t epoch, int64_t s,
                                 int64_t doc_begin, int64_t doc_end) {
  const int64_t spe = gs.samples_per_epoch();
  std::vector<std::vector<int32_t>> samples;
  for (int64_t j = 0; j < spe; ++j) {
    std::vector<int32_t> row(static_cast<size_t>(s + 1));
    gs.sample(epoch * spe + j, row.data());
    samples.push_back(row);
  }
  // Reassemble the stream: sample k starts where another one's S-th token is.
  std::map<int32_t, size_t> by_first;
  for (size_t i = 0; i < samples.size(); ++i) {
    EXPECT_EQ(by_first.count(samples[i][0]), 0u) << "two samples start at the same token";
    by_first[samples[i][0]] = i;
  }
  std::set<size_t> successors;
  for (const auto& row : samples)
    if (by_first.count(row[s])) successors.insert(by_first[row[s]]);
  EXPECT_EQ(successors.size(), samples.size() - 1) << "samples do not chain";
  size_t head = 0;
  for (size_t i = 0; i < samples.size(); ++i)
    if (!successors.count(i)) head = i;
  std::vector<int32_t> stream;
  for (size_t k = 0, cur = head; k < samples.size(); ++k) {
    stream.insert(stream.end(), samples[cur].begin(), samples[cur].end() - 1);
    if (k + 1 == samples.size()) stream.push_back(samples[cur][s]);
    else cur = by_first.at(samples[cur][s]);
  }
  EXPECT_EQ(static_cast<int64_t>(stream.size()), spe * s + 1);
  // The stream walks whole documents in order: (d, 0), (d, 1), ... (d, n-1).
  std::vector<int64_t> order;
  for (size_t i = 0; i < stream.size(); ++i) {
    int64_t d = stream[i] / kPosBase, pos = stream[i] % kPosBase;
    if (pos == 0) order.push_back(d);
    else if (i == 0) ADD_FAILURE() << "the stream starts inside a document";
    else EXPECT_EQ(stream[i - 1], stream[i] - 1) << "stream position " << i;
    EXPECT_GE(d, doc_begin);
    EXPECT_LT(d, doc_end);
  }
  // Every non-empty document of the range appears once, except possibly the
  // tail cut off after the last sample.
  std::set<int64_t> seen(order.begin(), order.end());
  EXPECT_EQ(seen.size(), order.size()) << "a document appears twice";
  int64_t nonempty = 0;
  for (int64_t d = doc_begin; d < doc_end; ++d) nonempty += (d * 7) % 23 > 0;
  EXPECT_LE(static_cast<int64_t>(order.size()), nonempty);
  EXPECT_GE(static_cast<int64_t>(order.size()), nonempty - s);
  return order;
}

TEST(LoaderSamples, SamplesTileAShuffledDocumentStream) {
  std::string prefix = write_coded("loader_tile", 120);
  IndexedDataset ds(prefix);
  auto ranges = split_source(ds, {9, 1});
  const int64_t s = 16;
  GptSamples train(ds, ranges[0], s, 1234, 0, "train split");
  EXPECT_EQ(train.samples_per_epoch(), (train.num_tokens() - 1) / s);
  auto order0 = check_epoch(train, 0, s, ranges[0].doc_begin, ranges[0].doc_end);
  auto order1 = check_epoch(train, 1, s, ranges[0].doc_begin, ranges[0].doc_end);
  EXPECT_NE(order0, order1) << "documents are reshuffled per epoch";
  std::vector<int64_t> sorted = order0;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_NE(order0, sorted) << "documents are shuffled";

  GptSamples valid(ds, ranges[1], s, 1234, 1, "validation split");
  check_epoch(valid, 0, s, ranges[1].doc_begin, ranges[1].doc_end);
}

TEST(LoaderSamples, DeterministicPerSeed) {
  std::string prefix = write_coded("loader_seed", 60);
  IndexedDataset ds(prefix);
  auto ranges = split_source(ds, {1});
  auto collect = [&](uint64_t seed) {
    GptSamples gs(ds, ranges[0], 8, seed, 0, "train split");
    std::vector<int32_t> all(9 * 50);
    // Out of order access must not change the result.
    for (int64_t k = 49; k >= 0; --k) gs.sample(k * 7 % 50 + (k % 3) * gs.samples_per_epoch(),
                                                all.data() + 9 * k);
    return all;
  };
  EXPECT_EQ(collect(5), collect(5));
  EXPECT_NE(collect(5), collect(6));
}

TEST(LoaderSamples, TooFewTokensIsAnError) {
  std::string prefix = write_coded("loader_small", 3);  // 0 + 7 + 14 tokens
  IndexedDataset ds(prefix);
  try {
    GptSamples gs(ds, split_source(ds, {1})[0], 32, 1, 0, "train split");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train split has 3 documents and 21 tokens"),
              std::string::npos) << e.what();
  }
}

TEST(LoaderSamples, PlainTokenFileSplitsByTokens) {
  std::string dir = scratch_dir("loader_plain");
  std::string bytes;
  for (uint16_t t = 0; t < 1000; ++t) bytes.append(reinterpret_cast<const char*>(&t), 2);
  testing::write_bytes(dir + "/p.tokens", bytes);
  auto src = open_token_source(dir + "/p.tokens");
  auto r = split_source(*src, {9, 1});
  EXPECT_EQ(r[0].last_end, 900);
  EXPECT_EQ(r[1].first_offset, 900);
  GptSamples valid(*src, r[1], 9, 3, 1, "validation split");
  EXPECT_EQ(valid.num_tokens(), 100);
  EXPECT_EQ(valid.samples_per_epoch(), 11);
  std::set<int32_t> starts;
  for (int64_t k = 0; k < 11; ++k) {
    int32_t row[10];
    valid.sample(k, row);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(row[i], row[0] + i);
    EXPECT_EQ((row[0] - 900) % 9, 0);
    starts.insert(row[0]);
  }
  EXPECT_EQ(starts.size(), 11u);
  EXPECT_EQ(*starts.begin(), 900);
}

TEST(LoaderBatches, DataParallelRanksSliceTheGlobalBatch) {
  std::string prefix = write_coded("loader_dp", 200);
  IndexedDataset ds(prefix);
  auto range = split_source(ds, {1})[0];
  GptSamples gs(ds, range, 8, 11, 0, "train split");
  const int64_t base = 3 * gs.samples_per_epoch() - 5;  // crosses an epoch boundary
  // Global batch 12 = micro 2 x 3 microbatches x dp 2.
  std::multiset<std::vector<int32_t>> from_ranks, expected;
  for (int64_t rank = 0; rank < 2; ++rank) {
    BatchLayout layout{2, 3, 8, rank, 2};
    for (int64_t mb = 0; mb < 3; ++mb) {
      std::vector<int32_t> tok(16), tgt(16);
      fill_microbatch(gs, layout, base, mb, tok.data(), tgt.data());
      for (int64_t j = 0; j < 2; ++j) {
        // Megatron's order: sample base + mb*(micro*dp) + rank*micro + j.
        std::vector<int32_t> row(9);
        gs.sample(base + mb * 4 + rank * 2 + j, row.data());
        EXPECT_TRUE(std::equal(row.begin(), row.end() - 1, tok.begin() + j * 8));
        EXPECT_TRUE(std::equal(row.begin() + 1, row.end(), tgt.begin() + j * 8));
        from_ranks.insert(std::vector<int32_t>(tok.begin() + j * 8, tok.begin() + j * 8 + 8));
      }
    }
  }
  // The same global batch under dp = 1 (micro 2 x 6 microbatches).
  BatchLayout one{2, 6, 8, 0, 1};
  for (int64_t mb = 0; mb < 6; ++mb) {
    std::vector<int32_t> tok(16), tgt(16);
    fill_microbatch(gs, one, base, mb, tok.data(), tgt.data());
    for (int64_t j = 0; j < 2; ++j)
      expected.insert(std::vector<int32_t>(tok.begin() + j * 8, tok.begin() + j * 8 + 8));
  }
  EXPECT_EQ(from_ranks, expected);
}

TEST(LoaderBatches, ValidationWrapsWithinEpochZero) {
  std::string prefix = write_coded("loader_valid", 40);
  IndexedDataset ds(prefix);
  GptSamples gs(ds, split_source(ds, {1})[0], 8, 2, 1, "validation split");
  const int64_t spe = gs.samples_per_epoch();
  BatchLayout layout{1, 1, 8, 0, 1};
  std::vector<int32_t> a(8), b(8), t(8);
  fill_validation_microbatch(gs, layout, spe + 3, 0, a.data(), t.data());
  fill_validation_microbatch(gs, layout, 3, 0, b.data(), t.data());
  EXPECT_EQ(a, b);
}

// A resume position near 2^63 (a corrupt consumed_samples) used to
// overflow into a negative sample index and read out of bounds.
TEST(LoaderBatches, SamplePositionsPastInt64AreErrors) {
  std::string prefix = write_coded("loader_huge", 40);
  IndexedDataset ds(prefix);
  GptSamples gs(ds, split_source(ds, {1})[0], 8, 2, 0, "train split");
  BatchLayout layout{2, 3, 8, 1, 2};
  std::vector<int32_t> tok(16), tgt(16);
  for (int64_t base : {INT64_MAX, INT64_MAX - 5, INT64_MAX - 10, int64_t{-1}, INT64_MIN}) {
    try {
      fill_microbatch(gs, layout, base, 2, tok.data(), tgt.data());
      ADD_FAILURE() << base << ": no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("sample position " + std::to_string(base)),
                std::string::npos)
          << e.what();
    }
  }
  // The largest position whose last row still fits is fine: epoch 2^63 / spe.
  fill_microbatch(gs, layout, INT64_MAX - 11, 2, tok.data(), tgt.data());
  fill_validation_microbatch(gs, layout, INT64_MAX - 11, 2, tok.data(), tgt.data());
}

// Ids outside the program's vocabulary are named by value, data file and
// position in it (document and token, and the byte offset in .bin).
TEST(LoaderSamples, IdsOutsideTheVocabularyNameTheirPosition) {
  std::string prefix = write_coded("loader_vocab", 40);
  IndexedDataset ds(prefix);
  const DocRange all = split_source(ds, {1})[0];
  GptSamples ok(ds, all, 8, 2, 0, "train split", 39 * kPosBase + 30);
  GptSamples small(ds, all, 8, 2, 0, "train split", 5 * kPosBase);
  std::vector<int32_t> row(9);
  for (int64_t k = 0; k < ok.samples_per_epoch(); ++k) ok.sample(k, row.data());
  int64_t errors = 0;
  for (int64_t k = 0; k < small.samples_per_epoch(); ++k) {
    try {
      small.sample(k, row.data());
      for (int32_t t : row) EXPECT_LT(t, 5 * kPosBase);
    } catch (const Error& e) {
      ++errors;
      // The first bad id of the sample: token (d, i) = d * 1000 + i.
      const std::string msg = e.what();
      const size_t at = msg.find(": token id ");
      ASSERT_NE(at, std::string::npos) << msg;
      const int64_t id = std::stoll(msg.substr(at + 11));
      const int64_t d = id / kPosBase, i = id % kPosBase;
      EXPECT_GE(d, 5);
      const int64_t byte = ds.sequence_pointer(d) + 4 * i;
      EXPECT_NE(msg.find(prefix + ".bin at byte " + std::to_string(byte) + " (sequence " +
                         std::to_string(d) + ", token " + std::to_string(i) + "): token id " +
                         std::to_string(id) + " is outside the vocabulary [0, 5000)"),
                std::string::npos)
          << msg;
    }
  }
  EXPECT_GT(errors, 0);
}

}  // namespace
}  // namespace mtc::rt
