// Tests that indexed datasets are byte-compatible with Megatron's
// MMapIndexedDataset (the expected .idx bytes are assembled field by field
// in the test, from Megatron's layout), round-trip through the writer and
// reader, and that every corruption gives an error naming the file and the
// byte offset.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <random>
#include <set>

#include "mtc/rt/data.h"
#include "train_test_support.h"

namespace mtc::rt {
namespace {

using testing::read_bytes;
using testing::scratch_dir;
using testing::write_bytes;

template <typename T>
void append(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}

// Megatron's .idx for one-sequence documents, built independently of the writer.
std::string megatron_index(uint8_t dtype_code, int64_t itemsize,
                           const std::vector<int32_t>& sizes) {
  std::string s("MMIDIDX\0\0", 9);
  append<uint64_t>(s, 1);
  append<uint8_t>(s, dtype_code);
  append<uint64_t>(s, sizes.size());
  append<uint64_t>(s, sizes.size() + 1);
  for (int32_t n : sizes) append<int32_t>(s, n);
  int64_t ptr = 0;
  for (int32_t n : sizes) {
    append<int64_t>(s, ptr);
    ptr += n * itemsize;
  }
  for (size_t d = 0; d <= sizes.size(); ++d) append<int64_t>(s, static_cast<int64_t>(d));
  return s;
}

std::set<std::string> listing(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    names.insert(e.path().filename().string());
  return names;
}

std::vector<std::vector<int32_t>> random_docs(uint32_t seed, int n, int32_t vocab) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int32_t>> docs(static_cast<size_t>(n));
  for (auto& d : docs) {
    d.resize(rng() % 50);  // some documents are empty
    for (int32_t& t : d) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  }
  return docs;
}

void expect_docs(const TokenSource& src, const std::vector<std::vector<int32_t>>& docs) {
  ASSERT_EQ(src.num_docs(), static_cast<int64_t>(docs.size()));
  for (size_t d = 0; d < docs.size(); ++d) {
    ASSERT_EQ(src.doc_length(static_cast<int64_t>(d)), static_cast<int64_t>(docs[d].size()));
    std::vector<int32_t> got(docs[d].size());
    src.read(static_cast<int64_t>(d), 0, static_cast<int64_t>(got.size()), got.data());
    EXPECT_EQ(got, docs[d]) << "document " << d;
  }
}

TEST(IndexedDataset, WriterProducesMegatronBytes) {
  std::string dir = scratch_dir("idx_megatron_bytes");
  auto docs = random_docs(1, 40, 50257);
  {
    IndexedDatasetWriter w(dir + "/c", optimal_token_dtype(50257));
    for (const auto& d : docs) w.add_document(d);
    w.finalize();
  }
  std::vector<int32_t> sizes;
  std::string bin;
  for (const auto& d : docs) {
    sizes.push_back(static_cast<int32_t>(d.size()));
    for (int32_t t : d) append<uint16_t>(bin, static_cast<uint16_t>(t));
  }
  EXPECT_EQ(read_bytes(dir + "/c.idx"), megatron_index(8, 2, sizes));
  EXPECT_EQ(read_bytes(dir + "/c.bin"), bin);
  EXPECT_EQ(listing(dir), (std::set<std::string>{"c.bin", "c.idx"}));  // no temporaries

  IndexedDataset ds(dir + "/c");
  EXPECT_EQ(ds.dtype(), TokenDtype::uint16);
  EXPECT_EQ(ds.num_documents(), 40);
  expect_docs(ds, docs);
  // Partial reads.
  int32_t two[2];
  ds.read(1, 3, 2, two);
  EXPECT_EQ(two[0], docs[1][3]);
  EXPECT_EQ(two[1], docs[1][4]);
}

TEST(IndexedDataset, Int32RoundTripForLargeVocabularies) {
  EXPECT_EQ(optimal_token_dtype(65499), TokenDtype::uint16);
  EXPECT_EQ(optimal_token_dtype(65500), TokenDtype::int32);
  std::string dir = scratch_dir("idx_int32");
  auto docs = random_docs(2, 25, 200000);
  IndexedDatasetWriter w(dir + "/c", TokenDtype::int32);
  for (const auto& d : docs) w.add_document(d);
  w.finalize();
  IndexedDataset ds(dir + "/c");
  EXPECT_EQ(ds.dtype(), TokenDtype::int32);
  expect_docs(ds, docs);
}

TEST(IndexedDataset, ReadsMultiSequenceDocumentsAndOtherDtypes) {
  // A Megatron index whose doc_idx groups sequences (sentence splitting),
  // stored as uint8: documents {s0, s1}, {s2}.
  std::string dir = scratch_dir("idx_handmade");
  std::string idx("MMIDIDX\0\0", 9);
  append<uint64_t>(idx, 1);
  append<uint8_t>(idx, 1);  // uint8
  append<uint64_t>(idx, 3);
  append<uint64_t>(idx, 3);
  for (int32_t n : {2, 1, 3}) append<int32_t>(idx, n);
  for (int64_t p : {0, 2, 3}) append<int64_t>(idx, p);
  for (int64_t d : {0, 2, 3}) append<int64_t>(idx, d);
  write_bytes(dir + "/h.idx", idx);
  write_bytes(dir + "/h.bin", std::string("\x05\x06\x07\x08\x09\xff", 6));
  IndexedDataset ds(dir + "/h");
  EXPECT_EQ(ds.num_sequences(), 3);
  EXPECT_EQ(ds.num_documents(), 2);
  EXPECT_EQ(ds.doc_idx(1), 2);
  expect_docs(ds, {{5, 6}, {7}, {8, 9, 255}});
}

TEST(IndexedDataset, PlainTokenFile) {
  std::string dir = scratch_dir("idx_plain");
  std::string bytes;
  for (uint16_t t : {1, 2, 65535, 7}) append<uint16_t>(bytes, t);
  write_bytes(dir + "/p.tokens", bytes);
  auto src = open_token_source(dir + "/p.tokens");
  expect_docs(*src, {{1, 2, 65535, 7}});
  write_bytes(dir + "/odd.tokens", bytes + "x");
  try {
    open_token_source(dir + "/odd.tokens");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("odd.tokens at byte 8"), std::string::npos) << e.what();
  }
}

TEST(IndexedDataset, WriterRejectsIdsOutsideTheDtype) {
  std::string dir = scratch_dir("idx_range");
  write_bytes(dir + "/c.bin", "an earlier dataset");
  {
    IndexedDatasetWriter w(dir + "/c", TokenDtype::uint16);
    w.add_document({1, 2});
    try {
      w.add_document({3, 70000});
      FAIL();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("document 1, token 1: id 70000"), std::string::npos)
          << e.what();
    }
  }
  // The failed writer removed its temporaries and nothing else.
  EXPECT_EQ(listing(dir), (std::set<std::string>{"c.bin"}));
  EXPECT_EQ(read_bytes(dir + "/c.bin"), "an earlier dataset");
}

// ---------------------------------------------------------------------------
// Corruptions: each edits a valid dataset and expects the error to name the
// file and the offset of the bad field.
// ---------------------------------------------------------------------------

class IndexedDatasetCorruption : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = scratch_dir("idx_corrupt_" + std::string(
        ::testing::UnitTest::GetInstance()->current_test_info()->name()));
    prefix_ = dir_ + "/c";
    // 3 documents of 4, 0 and 5 uint16 tokens.
    IndexedDatasetWriter w(prefix_, TokenDtype::uint16);
    w.add_document({1, 2, 3, 4});
    w.add_document(std::vector<int32_t>{});
    w.add_document({5, 6, 7, 8, 9});
    w.finalize();
    idx_ = read_bytes(prefix_ + ".idx");
    bin_ = read_bytes(prefix_ + ".bin");
  }

  void expect_open_error(const std::vector<std::string>& parts) {
    write_bytes(prefix_ + ".idx", idx_);
    write_bytes(prefix_ + ".bin", bin_);
    try {
      IndexedDataset ds(prefix_);
      FAIL() << "expected an error";
    } catch (const Error& e) {
      for (const std::string& p : parts)
        EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
            << "missing \"" << p << "\" in: " << e.what();
    }
  }

  template <typename T>
  void poke(size_t offset, T v) {
    std::memcpy(idx_.data() + offset, &v, sizeof v);
  }

  std::string dir_, prefix_, idx_, bin_;
};

TEST_F(IndexedDatasetCorruption, BadMagic) {
  idx_[3] = 'X';
  expect_open_error({"c.idx at byte 0", "bad magic"});
}

TEST_F(IndexedDatasetCorruption, BadVersion) {
  poke<uint64_t>(9, 2);
  expect_open_error({"c.idx at byte 9", "version 2"});
}

TEST_F(IndexedDatasetCorruption, WrongDtype) {
  poke<uint8_t>(17, 7);  // float32
  expect_open_error({"c.idx at byte 17", "dtype code 7"});
  poke<uint8_t>(17, 42);
  expect_open_error({"c.idx at byte 17", "dtype code 42"});
}

TEST_F(IndexedDatasetCorruption, TruncatedIndex) {
  idx_.resize(idx_.size() - 5);
  expect_open_error({"c.idx at byte 26", "document count 4 does not fit", "truncated"});
  idx_.resize(20);
  expect_open_error({"c.idx", "truncated index"});
}

TEST_F(IndexedDatasetCorruption, TrailingBytes) {
  idx_ += "12345";
  expect_open_error({"c.idx", "index is 107 bytes", "need 102"});
}

TEST_F(IndexedDatasetCorruption, SequenceCountPastEnd) {
  poke<uint64_t>(18, 1000000);
  expect_open_error({"c.idx at byte 18", "sequence count 1000000"});
}

TEST_F(IndexedDatasetCorruption, SizesPastEndOfData) {
  poke<int32_t>(34 + 4 * 2, 6);  // third sequence claims 6 tokens, .bin has 5
  expect_open_error({"c.idx at byte " + std::to_string(34 + 4 * 2), "sequence 2",
                     "ends at byte 20", "c.bin has 18 bytes"});
}

TEST_F(IndexedDatasetCorruption, NegativeSize) {
  poke<int32_t>(34 + 4, -1);
  expect_open_error({"c.idx at byte 38", "negative size"});
}

TEST_F(IndexedDatasetCorruption, MisalignedPointer) {
  poke<int64_t>(34 + 12 + 8, 3);
  expect_open_error({"c.idx at byte 54", "pointer 3", "expected 8"});
}

// A dtype byte changed to another integer type of another size used to
// open (the pointers were merely aligned and inside .bin) and train on
// garbage; the sequences must tile .bin at the dtype's size.
TEST_F(IndexedDatasetCorruption, ChangedDtypeByte) {
  poke<uint8_t>(17, 1);  // uint8: sequence 1 would start at byte 4, not 8
  expect_open_error({"c.idx at byte 54", "sequence 1 has pointer 8, expected 4",
                     "18 bytes for the index's 9 tokens would be 2 bytes per token"});
  poke<uint8_t>(17, 4);  // int32: sequence 0 would end at byte 16
  expect_open_error({"c.idx at byte 54", "pointer 8, expected 16"});
  poke<uint8_t>(17, 5);  // int64
  expect_open_error({"c.idx at byte 34: sequence 0 (4 int64 tokens) ends at byte 32"});
}

TEST_F(IndexedDatasetCorruption, ChangedDtypeByteOfOneSequence) {
  IndexedDatasetWriter w(prefix_, TokenDtype::uint16);
  w.add_document({1, 2, 3, 4, 5, 6});
  w.finalize();
  idx_ = read_bytes(prefix_ + ".idx");
  bin_ = read_bytes(prefix_ + ".bin");
  poke<uint8_t>(17, 2);  // int8: 6 tokens end at byte 6 of 12
  expect_open_error({"c.idx: the sequences end at byte 6", "c.bin", "has 12 bytes",
                     "would be 2 bytes per token"});
  poke<uint8_t>(17, 4);  // int32: the sequence passes the end of .bin
  expect_open_error({"c.idx at byte 34", "ends at byte 24", "has 12 bytes"});
}

TEST_F(IndexedDatasetCorruption, GapBetweenSequences) {
  // .bin 2 bytes longer, sequence 2 moved up by them: aligned and inside
  // .bin, but not where sequence 1 ends.
  bin_.insert(8, 2, '\0');
  poke<int64_t>(34 + 12 + 16, 10);
  expect_open_error({"c.idx at byte 62", "sequence 2 has pointer 10, expected 8"});
}

TEST_F(IndexedDatasetCorruption, TruncatedBin) {
  bin_.resize(bin_.size() - 2);
  expect_open_error({"sequence 2", "c.bin has 16 bytes"});
}

TEST_F(IndexedDatasetCorruption, DocIdxNotMonotone) {
  poke<int64_t>(34 + 36 + 8 * 2, 0);  // doc_idx = 0 1 0 3
  expect_open_error({"c.idx at byte 86", "doc_idx[2] = 0"});
}

TEST_F(IndexedDatasetCorruption, MissingBin) {
  write_bytes(prefix_ + ".idx", idx_);
  std::filesystem::remove(prefix_ + ".bin");
  try {
    IndexedDataset ds(prefix_);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("c.bin: cannot open"), std::string::npos) << e.what();
  }
}

// int64 datasets: ids that do not fit int32 used to be narrowed silently.
TEST(IndexedDataset, Int64IdsBeyondInt32AreRefusedByPosition) {
  const std::string dir = scratch_dir("idx_int64");
  std::string bin;
  for (int64_t v : {int64_t{7}, int64_t{8}, int64_t{9}}) append<int64_t>(bin, v);
  for (int64_t v : {int64_t{10}, (int64_t{1} << 31) + 5, int64_t{11}}) append<int64_t>(bin, v);
  write_bytes(dir + "/w.bin", bin);
  write_bytes(dir + "/w.idx", megatron_index(5, 8, {3, 3}));
  IndexedDataset ds(dir + "/w");
  int32_t out[3];
  ds.read(0, 0, 3, out);
  EXPECT_EQ(std::vector<int32_t>(out, out + 3), (std::vector<int32_t>{7, 8, 9}));
  ds.read(1, 0, 1, out);
  EXPECT_EQ(out[0], 10);
  try {
    ds.read(1, 0, 3, out);
    FAIL() << "narrowed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("w.bin at byte 32 (sequence 1, token 1): token id "
                                         "2147483653 does not fit int32"),
              std::string::npos)
        << e.what();
  }
  append<int64_t>(bin, -(int64_t{1} << 40));
  write_bytes(dir + "/n.bin", bin);
  write_bytes(dir + "/n.idx", megatron_index(5, 8, {3, 3, 1}));
  IndexedDataset neg(dir + "/n");
  try {
    neg.read(2, 0, 1, out);
    FAIL() << "narrowed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("n.bin at byte 48 (sequence 2, token 0): token id "
                                         "-1099511627776"),
              std::string::npos)
        << e.what();
  }
}

TEST(IndexedDataset, PrefixWithExtensionIsExplained) {
  try {
    open_token_source("/some/where/corpus.bin");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/some/where/corpus)"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mtc::rt
