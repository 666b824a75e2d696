// Tokenizers for preprocessing text into token ids (mtc-preprocess).
//
// Two kinds:
// - byte-level: vocabulary 256, token id = byte value. No end-of-document
//   token unless one is configured (any id; the vocabulary then grows to
//   eod_id + 1 if needed).
// - GPT-2 byte-level BPE, loaded from OpenAI's vocab.json + merges.txt or
//   from a HuggingFace tokenizer.json (model.type "BPE", pre_tokenizer
//   "ByteLevel"). Text is split by GPT-2's pre-tokenization pattern
//   (gpt2_pretokenize below), each piece's bytes become single-byte tokens,
//   and the merges are applied lowest rank first, all occurrences of the
//   best pair left to right per round (GPT-2's encoder.py). The end-of-
//   document token is "<|endoftext|>" when the vocabulary has it.
//
// Special tokens written literally in the text (e.g. "<|endoftext|>") are
// encoded as ordinary text; documents are separated by the tool, not by
// markers in the text.
//
// Encoding keeps a per-tokenizer cache of encoded pieces: one tokenizer
// object must not be used from two threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mtc::rt {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // "byte" or "gpt2-bpe".
  virtual std::string name() const = 0;
  // One more than the largest id the tokenizer can produce or decode.
  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int32_t> eod_id() const = 0;
  // Appends the ids of `text` to `out`. Throws Error if a byte has no token.
  virtual void encode(std::string_view text, std::vector<int32_t>& out) const = 0;
  // The bytes the ids stand for. Throws Error on an unknown id.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
};

// Byte-level tokenizer; eod_id, if given, must be >= 0.
std::unique_ptr<Tokenizer> make_byte_tokenizer(std::optional<int32_t> eod_id);

// GPT-2 BPE from vocab.json ({"token": id, ...}, tokens written with GPT-2's
// bytes-to-unicode alphabet) and merges.txt ("a b" per line, an optional
// "#version" first line; rank = line order).
std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::string& vocab_json,
                                               const std::string& merges_txt);

// GPT-2-style BPE from a HuggingFace tokenizer.json. Rejects files whose
// model is not BPE or whose pre-tokenizer/normalizer is not GPT-2's, naming
// the JSON path.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& tokenizer_json);

// Replaces the tokenizer's end-of-document id (checked against its
// vocabulary for BPE tokenizers).
std::unique_ptr<Tokenizer> with_eod_id(std::unique_ptr<Tokenizer> tok,
                                       int32_t eod_id);

// GPT-2's pre-tokenization, written out by hand. The original pattern is
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// tried in that order at each position. Character classes are approximated
// on bytes:
//   letter     ASCII a-z A-Z, and every byte >= 0x80 (so a UTF-8 sequence
//              is always part of a letter run);
//   number     ASCII 0-9;
//   whitespace ' ', \t, \n, \v, \f, \r;
//   other      every other byte.
// This matches GPT-2 exactly on ASCII text and on text whose non-ASCII
// characters are letters (accented Latin, CJK, Cyrillic, ...). It differs on
// non-ASCII digits, punctuation, symbols and spaces (e.g. U+2019, U+00A0,
// emoji), which it groups with letters.
// Returns views into `text`; their concatenation is `text`.
std::vector<std::string_view> gpt2_pretokenize(std::string_view text);

// GPT-2's bytes_to_unicode table: the code point that stands for byte b in
// vocab.json / merges.txt.
uint32_t gpt2_byte_to_codepoint(uint8_t b);

}  // namespace mtc::rt
