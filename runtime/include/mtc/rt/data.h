// Token datasets on disk: Megatron-LM's indexed dataset (.bin + .idx) and a
// plain token file. Both are memory-mapped and validated when opened.
//
// Indexed dataset (Megatron's MMapIndexedDataset, file-compatible both ways):
//   PREFIX.bin   the token ids of all sequences back to back, in the dtype
//                named by the index, little-endian.
//   PREFIX.idx   offset  size              field
//                0       9                 magic "MMIDIDX\x00\x00"
//                9       8   uint64        version = 1
//                17      1   uint8         dtype code (1 uint8, 2 int8,
//                                          3 int16, 4 int32, 5 int64,
//                                          6 float64, 7 float32, 8 uint16)
//                18      8   uint64        sequence count N
//                26      8   uint64        document count D + 1
//                34      4N  int32[N]      sizes: tokens per sequence
//                34+4N   8N  int64[N]      pointers: byte offset of each
//                                          sequence in .bin
//                34+12N  8(D+1) int64[D+1] doc_idx: document d is sequences
//                                          [doc_idx[d], doc_idx[d+1]);
//                                          doc_idx[0] = 0, doc_idx[D] = N
//   Megatron's tools write one sequence per document (unless sentences are
//   split); the loader, like Megatron's GPTDataset, uses sequences as the
//   documents it shuffles and splits.
//   Token dtype: uint16 when the vocabulary has < 65500 ids, else int32
//   (Megatron's DType.optimal_dtype). Readers accept every integer code.
//
// Plain token file (a path ending in ".tokens"): raw little-endian uint16
//   token ids, no header; one document. For vocabularies >= 65536 ids use an
//   indexed dataset.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mtc/rt/io.h"

namespace mtc::rt {

// Megatron's DType codes.
enum class TokenDtype : uint8_t {
  uint8 = 1,
  int8 = 2,
  int16 = 3,
  int32 = 4,
  int64 = 5,
  float64 = 6,
  float32 = 7,
  uint16 = 8,
};

// The dtype Megatron picks for a vocabulary of `vocab_size` ids.
TokenDtype optimal_token_dtype(int64_t vocab_size);
int64_t token_dtype_size(TokenDtype dtype);
const char* token_dtype_name(TokenDtype dtype);

inline constexpr char kIndexMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
inline constexpr int64_t kIndexHeaderBytes = 34;

// A read-only collection of token sequences ("documents" to the loader).
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  // What was opened (a prefix or a path), for messages.
  virtual const std::string& name() const = 0;
  virtual int64_t num_docs() const = 0;
  virtual int64_t doc_length(int64_t doc) const = 0;
  // out[i] = token `offset + i` of document `doc`, i < count. The range must
  // lie inside the document (the caller's invariant, asserted). An id that
  // does not fit int32 (an int64 dataset) throws Error naming it by
  // position(): ids are never narrowed.
  virtual void read(int64_t doc, int64_t offset, int64_t count,
                    int32_t* out) const = 0;
  // Where token `offset` of document `doc` lies, for messages:
  // "PREFIX.bin at byte 1234 (sequence 5, token 17)".
  virtual std::string position(int64_t doc, int64_t offset) const = 0;
  int64_t num_tokens() const;
};

// Megatron indexed dataset; opening validates the whole index: magic,
// version, dtype, counts against the .idx length, doc_idx monotone from 0 to
// N, sizes >= 0, and the sequences tiling .bin exactly as Megatron's writer
// lays them out: pointer[0] = 0, pointer[i+1] = pointer[i] + size[i] x the
// dtype's size, the last sequence ending at the end of .bin. So a dtype
// byte changed to another size, sizes that do not match the pointers, or a
// .bin of another length are refused (the message says which dtype the
// sizes imply). Errors name the file and the byte offset of the bad field.
class IndexedDataset final : public TokenSource {
 public:
  explicit IndexedDataset(const std::string& prefix);
  const std::string& name() const override { return prefix_; }
  int64_t num_docs() const override { return num_sequences_; }
  int64_t doc_length(int64_t doc) const override;
  void read(int64_t doc, int64_t offset, int64_t count,
            int32_t* out) const override;
  std::string position(int64_t doc, int64_t offset) const override;

  TokenDtype dtype() const { return dtype_; }
  int64_t num_sequences() const { return num_sequences_; }
  // Documents as written in doc_idx (may group several sequences).
  int64_t num_documents() const { return doc_idx_count_ - 1; }
  int64_t doc_idx(int64_t i) const;  // i in [0, num_documents()]
  int64_t sequence_pointer(int64_t seq) const;

 private:
  std::string prefix_;
  MappedFile idx_, bin_;
  TokenDtype dtype_ = TokenDtype::uint16;
  int64_t num_sequences_ = 0;
  int64_t doc_idx_count_ = 0;
  const uint8_t* sizes_ = nullptr;     // int32[N]
  const uint8_t* pointers_ = nullptr;  // int64[N]
  const uint8_t* doc_idx_ = nullptr;   // int64[D+1]
};

// Plain uint16 token file: one document.
class PlainTokenFile final : public TokenSource {
 public:
  explicit PlainTokenFile(const std::string& path);
  const std::string& name() const override { return file_.path(); }
  int64_t num_docs() const override { return 1; }
  int64_t doc_length(int64_t) const override {
    return static_cast<int64_t>(file_.size() / 2);
  }
  void read(int64_t doc, int64_t offset, int64_t count,
            int32_t* out) const override;
  std::string position(int64_t doc, int64_t offset) const override;

 private:
  MappedFile file_;
};

// Opens `--data`: a path ending in ".tokens" is a plain token file, anything
// else an indexed dataset prefix (PREFIX.bin + PREFIX.idx).
std::unique_ptr<TokenSource> open_token_source(const std::string& spec);

// Writes an indexed dataset: one sequence per document. Both files are
// OutputFiles (io.h): temporaries renamed into place by finalize(), so a
// failed run leaves no half-written dataset and removes only its own
// temporaries. Token ids are checked against the dtype's range.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(const std::string& prefix, TokenDtype dtype);
  ~IndexedDatasetWriter();  // removes the temporaries unless finalized
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  void add_document(const int32_t* tokens, int64_t count);
  void add_document(const std::vector<int32_t>& tokens) {
    add_document(tokens.data(), static_cast<int64_t>(tokens.size()));
  }
  void finalize();

  int64_t num_documents() const { return static_cast<int64_t>(sizes_.size()); }
  int64_t num_tokens() const { return num_tokens_; }

 private:
  std::string prefix_;
  TokenDtype dtype_;
  std::unique_ptr<OutputFile> bin_;
  std::vector<int32_t> sizes_;
  int64_t num_tokens_ = 0;
  bool finalized_ = false;
  std::vector<uint8_t> buffer_;
};

}  // namespace mtc::rt
