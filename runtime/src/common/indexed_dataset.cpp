// Megatron indexed dataset reader/writer and the plain token file. Layout
// and validation rules: mtc/rt/data.h.
#include "mtc/rt/data.h"

#include <algorithm>
#include <cassert>
#include <cstring>

namespace mtc::rt {

namespace {

std::string at(const std::string& path, uint64_t offset) {
  return path + " at byte " + std::to_string(offset);
}

bool is_token_dtype_code(uint8_t code) {
  return code == 1 || code == 2 || code == 3 || code == 4 || code == 5 ||
         code == 8;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// out[i] = the i-th T at src; returns the index of the first value that
// does not fit int32 (then stops), or -1.
template <typename T>
int64_t convert(const uint8_t* src, int64_t count, int32_t* out) {
  for (int64_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, src + i * sizeof(T), sizeof(T));
    if constexpr (sizeof(T) > sizeof(int32_t))
      if (v < INT32_MIN || v > INT32_MAX) return i;
    out[i] = static_cast<int32_t>(v);
  }
  return -1;
}

}  // namespace

TokenDtype optimal_token_dtype(int64_t vocab_size) {
  return vocab_size < 65500 ? TokenDtype::uint16 : TokenDtype::int32;
}

int64_t token_dtype_size(TokenDtype dtype) {
  switch (dtype) {
    case TokenDtype::uint8:
    case TokenDtype::int8: return 1;
    case TokenDtype::int16:
    case TokenDtype::uint16: return 2;
    case TokenDtype::int32:
    case TokenDtype::float32: return 4;
    case TokenDtype::int64:
    case TokenDtype::float64: return 8;
  }
  return 0;
}

const char* token_dtype_name(TokenDtype dtype) {
  switch (dtype) {
    case TokenDtype::uint8: return "uint8";
    case TokenDtype::int8: return "int8";
    case TokenDtype::int16: return "int16";
    case TokenDtype::int32: return "int32";
    case TokenDtype::int64: return "int64";
    case TokenDtype::float64: return "float64";
    case TokenDtype::float32: return "float32";
    case TokenDtype::uint16: return "uint16";
  }
  return "?";
}

int64_t TokenSource::num_tokens() const {
  int64_t total = 0;
  for (int64_t d = 0; d < num_docs(); ++d) total += doc_length(d);
  return total;
}

// ---------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------

IndexedDataset::IndexedDataset(const std::string& prefix)
    : prefix_(prefix), idx_(prefix + ".idx"), bin_(prefix + ".bin") {
  const std::string& ipath = idx_.path();
  const uint8_t* p = idx_.data();
  const uint64_t isize = idx_.size();
  if (isize < static_cast<uint64_t>(kIndexHeaderBytes))
    throw Error(ipath + ": truncated index: " + std::to_string(isize) +
                " bytes, the header alone is " +
                std::to_string(kIndexHeaderBytes));
  if (std::memcmp(p, kIndexMagic, sizeof kIndexMagic) != 0)
    throw Error(at(ipath, 0) +
                ": bad magic (expected \"MMIDIDX\\x00\\x00\", a Megatron "
                "indexed dataset index)");
  uint64_t version = load_u64_le(p + 9);
  if (version != 1)
    throw Error(at(ipath, 9) + ": unsupported version " +
                std::to_string(version) + " (expected 1)");
  uint8_t code = p[17];
  if (!is_token_dtype_code(code))
    throw Error(at(ipath, 17) + ": dtype code " + std::to_string(code) +
                " is not an integer token type (valid: 1 uint8, 2 int8, "
                "3 int16, 4 int32, 5 int64, 8 uint16)");
  dtype_ = static_cast<TokenDtype>(code);
  const int64_t itemsize = token_dtype_size(dtype_);

  uint64_t n = load_u64_le(p + 18);
  uint64_t dcount = load_u64_le(p + 26);
  // Header + sizes + pointers + doc_idx must fit; compute without overflow.
  const uint64_t avail = isize - kIndexHeaderBytes;
  if (n > avail / 12)
    throw Error(at(ipath, 18) + ": sequence count " + std::to_string(n) +
                " needs " + std::to_string(n) + "*12 bytes of sizes and "
                "pointers, but only " + std::to_string(avail) +
                " bytes follow the header (truncated or corrupt index)");
  if (dcount == 0)
    throw Error(at(ipath, 26) + ": document count is 0 (doc_idx needs at "
                "least the leading 0)");
  if (dcount > (avail - n * 12) / 8)
    throw Error(at(ipath, 26) + ": document count " + std::to_string(dcount) +
                " does not fit: " + std::to_string(avail - n * 12) +
                " bytes remain for doc_idx (truncated or corrupt index)");
  uint64_t expected = kIndexHeaderBytes + n * 12 + dcount * 8;
  // Megatron's multimodal indices append one int8 mode per sequence.
  if (isize != expected && isize != expected + n)
    throw Error(ipath + ": index is " + std::to_string(isize) +
                " bytes, but its counts (" + std::to_string(n) +
                " sequences, " + std::to_string(dcount) +
                " doc_idx entries) need " + std::to_string(expected));
  num_sequences_ = static_cast<int64_t>(n);
  doc_idx_count_ = static_cast<int64_t>(dcount);
  sizes_ = p + kIndexHeaderBytes;
  pointers_ = sizes_ + 4 * n;
  doc_idx_ = pointers_ + 8 * n;

  // The sequences tile .bin: each starts where the previous one ended and
  // the last ends at its end. Sizes are < 2^31 and n < 2^61, so `end`
  // cannot overflow before it passes bsize (checked at every step).
  const uint64_t bsize = bin_.size();
  uint64_t tokens = 0;
  for (int64_t i = 0; i < num_sequences_; ++i)
    tokens += static_cast<uint64_t>(std::max(load_i32_le(sizes_ + 4 * i), 0));
  // What the sizes imply, for the messages below.
  const std::string hint =
      (tokens > 0 && bsize % tokens == 0 && bsize / tokens != static_cast<uint64_t>(itemsize)
           ? "; " + std::to_string(bsize) + " bytes for the index's " + std::to_string(tokens) +
                 " tokens would be " + std::to_string(bsize / tokens) + " bytes per token"
           : std::string()) +
      " (the dtype byte at 17 changed, a truncated .bin, or an index of another .bin?)";
  uint64_t end = 0;
  for (int64_t i = 0; i < num_sequences_; ++i) {
    int32_t len = load_i32_le(sizes_ + 4 * i);
    uint64_t len_at = kIndexHeaderBytes + 4 * i;
    if (len < 0)
      throw Error(at(ipath, len_at) + ": sequence " + std::to_string(i) +
                  " has negative size " + std::to_string(len));
    int64_t ptr = load_i64_le(pointers_ + 8 * i);
    uint64_t ptr_at = kIndexHeaderBytes + 4 * n + 8 * i;
    if (ptr < 0 || static_cast<uint64_t>(ptr) != end)
      throw Error(at(ipath, ptr_at) + ": sequence " + std::to_string(i) + " has pointer " +
                  std::to_string(ptr) + ", expected " + std::to_string(end) +
                  " (where the previous sequence ends, at " + std::to_string(itemsize) +
                  " bytes per " + token_dtype_name(dtype_) + " token)" + hint);
    end += static_cast<uint64_t>(len) * itemsize;
    if (end > bsize)
      throw Error(at(ipath, len_at) + ": sequence " + std::to_string(i) + " (" +
                  std::to_string(len) + " " + token_dtype_name(dtype_) + " tokens) ends at byte " +
                  std::to_string(end) + " but " + bin_.path() + " has " + std::to_string(bsize) +
                  " bytes" + hint);
  }
  if (end != bsize)
    throw Error(ipath + ": the sequences end at byte " + std::to_string(end) + " of " +
                bin_.path() + ", which has " + std::to_string(bsize) + " bytes" + hint);
  int64_t prev = 0;
  for (int64_t d = 0; d < doc_idx_count_; ++d) {
    int64_t v = load_i64_le(doc_idx_ + 8 * d);
    uint64_t v_at = kIndexHeaderBytes + 12 * n + 8 * d;
    if ((d == 0 && v != 0) || v < prev || v > num_sequences_)
      throw Error(at(ipath, v_at) + ": doc_idx[" + std::to_string(d) +
                  "] = " + std::to_string(v) + " (must start at 0, not "
                  "decrease, and not exceed the sequence count " +
                  std::to_string(num_sequences_) + ")");
    prev = v;
  }
  if (prev != num_sequences_)
    throw Error(at(ipath, kIndexHeaderBytes + 12 * n + 8 * (dcount - 1)) +
                ": the last doc_idx entry is " + std::to_string(prev) +
                ", expected the sequence count " + std::to_string(num_sequences_));
}

int64_t IndexedDataset::doc_length(int64_t doc) const {
  assert(doc >= 0 && doc < num_sequences_);
  return load_i32_le(sizes_ + 4 * doc);
}

int64_t IndexedDataset::sequence_pointer(int64_t seq) const {
  assert(seq >= 0 && seq < num_sequences_);
  return load_i64_le(pointers_ + 8 * seq);
}

int64_t IndexedDataset::doc_idx(int64_t i) const {
  assert(i >= 0 && i < doc_idx_count_);
  return load_i64_le(doc_idx_ + 8 * i);
}

void IndexedDataset::read(int64_t doc, int64_t offset, int64_t count,
                          int32_t* out) const {
  assert(offset >= 0 && count >= 0 && offset + count <= doc_length(doc));
  const int64_t itemsize = token_dtype_size(dtype_);
  const uint8_t* src = bin_.data() + sequence_pointer(doc) + offset * itemsize;
  int64_t bad = -1;
  switch (dtype_) {
    case TokenDtype::uint8: bad = convert<uint8_t>(src, count, out); break;
    case TokenDtype::int8: bad = convert<int8_t>(src, count, out); break;
    case TokenDtype::int16: bad = convert<int16_t>(src, count, out); break;
    case TokenDtype::uint16: bad = convert<uint16_t>(src, count, out); break;
    case TokenDtype::int32: bad = convert<int32_t>(src, count, out); break;
    case TokenDtype::int64: bad = convert<int64_t>(src, count, out); break;
    case TokenDtype::float32:
    case TokenDtype::float64: break;  // rejected when opened
  }
  if (bad >= 0)
    throw Error(position(doc, offset + bad) + ": token id " +
                std::to_string(load_i64_le(src + bad * itemsize)) +
                " does not fit int32 (mtc trains on int32 ids; no vocabulary is that large)");
}

std::string IndexedDataset::position(int64_t doc, int64_t offset) const {
  return at(bin_.path(), static_cast<uint64_t>(sequence_pointer(doc)) +
                             static_cast<uint64_t>(offset * token_dtype_size(dtype_))) +
         " (sequence " + std::to_string(doc) + ", token " + std::to_string(offset) + ")";
}

// ---------------------------------------------------------------------------
// Plain token file
// ---------------------------------------------------------------------------

PlainTokenFile::PlainTokenFile(const std::string& path) : file_(path) {
  if (file_.size() % 2 != 0)
    throw Error(at(path, file_.size() - 1) +
                ": a .tokens file holds little-endian uint16 ids, but its "
                "length " + std::to_string(file_.size()) + " is odd (truncated?)");
}

void PlainTokenFile::read(int64_t doc, int64_t offset, int64_t count,
                          int32_t* out) const {
  assert(doc == 0 && offset >= 0 && offset + count <= doc_length(0));
  (void)doc;
  convert<uint16_t>(file_.data() + 2 * offset, count, out);
}

std::string PlainTokenFile::position(int64_t, int64_t offset) const {
  return at(file_.path(), static_cast<uint64_t>(2 * offset)) + " (token " +
         std::to_string(offset) + ")";
}

std::unique_ptr<TokenSource> open_token_source(const std::string& spec) {
  if (ends_with(spec, ".tokens")) return std::make_unique<PlainTokenFile>(spec);
  if (ends_with(spec, ".bin") || ends_with(spec, ".idx"))
    throw Error(spec + ": give the dataset prefix without .bin/.idx (e.g. " +
                spec.substr(0, spec.size() - 4) + ")");
  return std::make_unique<IndexedDataset>(spec);
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

IndexedDatasetWriter::IndexedDatasetWriter(const std::string& prefix,
                                           TokenDtype dtype)
    : prefix_(prefix), dtype_(dtype) {
  if (!is_token_dtype_code(static_cast<uint8_t>(dtype)))
    throw Error(prefix + ": cannot write tokens as " + token_dtype_name(dtype));
  bin_ = std::make_unique<OutputFile>(prefix + ".bin");
}

IndexedDatasetWriter::~IndexedDatasetWriter() = default;

void IndexedDatasetWriter::add_document(const int32_t* tokens, int64_t count) {
  if (finalized_) throw Error(prefix_ + ": dataset already finalized");
  if (count > INT32_MAX)
    throw Error(prefix_ + ": document " + std::to_string(sizes_.size()) +
                " has " + std::to_string(count) + " tokens; the index stores "
                "sizes as int32");
  int64_t lo = 0, hi = 0;
  switch (dtype_) {
    case TokenDtype::uint8: hi = 255; break;
    case TokenDtype::int8: lo = -128; hi = 127; break;
    case TokenDtype::int16: lo = -32768; hi = 32767; break;
    case TokenDtype::uint16: hi = 65535; break;
    default: lo = INT32_MIN; hi = INT32_MAX; break;
  }
  const int64_t itemsize = token_dtype_size(dtype_);
  buffer_.resize(static_cast<size_t>(count * itemsize));
  for (int64_t i = 0; i < count; ++i) {
    int64_t v = tokens[i];
    if (v < lo || v > hi)
      throw Error(prefix_ + ": document " + std::to_string(sizes_.size()) +
                  ", token " + std::to_string(i) + ": id " + std::to_string(v) +
                  " does not fit " + token_dtype_name(dtype_));
    // Little-endian two's complement of v, truncated to the item size.
    for (int64_t b = 0; b < itemsize; ++b)
      buffer_[i * itemsize + b] = static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * b));
  }
  bin_->write(buffer_.data(), buffer_.size());
  sizes_.push_back(static_cast<int32_t>(count));
  num_tokens_ += count;
}

void IndexedDatasetWriter::finalize() {
  if (finalized_) return;
  const uint64_t n = sizes_.size();
  std::string idx;
  idx.reserve(kIndexHeaderBytes + n * 20 + 8);
  auto put = [&idx](const void* p, size_t len) {
    idx.append(static_cast<const char*>(p), len);
  };
  put(kIndexMagic, sizeof kIndexMagic);
  uint64_t version = 1;
  put(&version, 8);
  auto code = static_cast<uint8_t>(dtype_);
  put(&code, 1);
  put(&n, 8);
  uint64_t dcount = n + 1;  // doc_idx = 0, 1, ..., n
  put(&dcount, 8);
  put(sizes_.data(), 4 * n);
  int64_t ptr = 0;
  const int64_t itemsize = token_dtype_size(dtype_);
  for (int32_t len : sizes_) {
    put(&ptr, 8);
    ptr += int64_t{len} * itemsize;
  }
  for (int64_t d = 0; d <= static_cast<int64_t>(n); ++d) put(&d, 8);

  OutputFile idx_file(prefix_ + ".idx");
  idx_file.write(idx);
  bin_->commit();
  idx_file.commit();
  finalized_ = true;
}

}  // namespace mtc::rt
