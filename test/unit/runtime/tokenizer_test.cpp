// Tests that the tokenizers follow GPT-2: pre-tokenization splits as the
// original pattern does (expectations worked out by hand from the regex),
// BPE applies merges by rank on a tiny hand-written vocabulary, the two file
// formats agree, and bad files give errors naming the place.
#include <gtest/gtest.h>

#include <random>
#include <regex>
#include <string>
#include <vector>

#include "mtc/rt/io.h"
#include "mtc/rt/tokenizer.h"
#include "train_test_support.h"

namespace mtc::rt {
namespace {

using testing::scratch_dir;
using testing::write_bytes;

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view p : gpt2_pretokenize(text)) out.emplace_back(p);
  return out;
}

using V = std::vector<std::string>;

TEST(TokenizerPretokenize, WordsAndLeadingSpaces) {
  EXPECT_EQ(pieces("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(pieces("abc123 45!!  ?"), (V{"abc", "123", " 45", "!!", " ", " ?"}));
  EXPECT_EQ(pieces(" leading"), (V{" leading"}));
  EXPECT_EQ(pieces(""), V{});
}

TEST(TokenizerPretokenize, Contractions) {
  EXPECT_EQ(pieces("I'm here's don't"), (V{"I", "'m", " here", "'s", " don", "'t"}));
  EXPECT_EQ(pieces("we'll they're I've he'd"),
            (V{"we", "'ll", " they", "'re", " I", "'ve", " he", "'d"}));
  // Not a contraction: upper case, or an apostrophe before a non-suffix.
  EXPECT_EQ(pieces("I'M"), (V{"I", "'", "M"}));
  EXPECT_EQ(pieces("'hello"), (V{"'", "hello"}));
  EXPECT_EQ(pieces("?'s"), (V{"?'", "s"}));
}

TEST(TokenizerPretokenize, WhitespaceRuns) {
  // \s+(?!\S) leaves the last space of a run for the next word.
  EXPECT_EQ(pieces("a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(pieces("a   b"), (V{"a", "  ", " b"}));
  // Trailing whitespace is one piece.
  EXPECT_EQ(pieces("x   "), (V{"x", "   "}));
  // A newline before a word cannot join it: \s+ takes it alone.
  EXPECT_EQ(pieces("a\n\nb"), (V{"a", "\n", "\n", "b"}));
  EXPECT_EQ(pieces("a \nb"), (V{"a", " ", "\n", "b"}));
  EXPECT_EQ(pieces("a\t b"), (V{"a", "\t", " b"}));
  EXPECT_EQ(pieces(" \thi"), (V{" ", "\t", "hi"}));
  EXPECT_EQ(pieces("end.\n"), (V{"end", ".", "\n"}));
}

TEST(TokenizerPretokenize, NonAsciiCountsAsLetters) {
  // Accented letters stay inside words, as with \p{L}.
  EXPECT_EQ(pieces("caf\xC3\xA9 au lait"), (V{"caf\xC3\xA9", " au", " lait"}));
  // The documented approximation: U+2014 (em dash) is punctuation to GPT-2
  // but a "letter" byte run here.
  EXPECT_EQ(pieces("a\xE2\x80\x94" "b"), (V{"a\xE2\x80\x94" "b"}));
}

TEST(TokenizerPretokenize, PiecesConcatenateToText) {
  std::string text = "The quick  brown fox's 42 jumps!!\n\n  over\tthe lazy dog.  ";
  std::string joined;
  for (auto p : gpt2_pretokenize(text)) joined += p;
  EXPECT_EQ(joined, text);
}

// On ASCII the byte classes are exact, so the split must equal the original
// pattern's (with \p{L} = [A-Za-z], \p{N} = [0-9], \s = [ \t\n\v\f\r]) run
// by std::regex, whose ECMAScript alternation is leftmost-first like the
// regex module's.
TEST(TokenizerPretokenize, MatchesTheAsciiPatternOnRandomText) {
  const std::regex pattern(
      "'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^ \t\n\v\f\rA-Za-z0-9]+"
      "|[ \t\n\v\f\r]+(?![^ \t\n\v\f\r])|[ \t\n\v\f\r]+");
  const std::string alphabet = "ab Z09'  \t\n\r\v\f.!-'sltdmrve";
  std::mt19937 rng(1);
  for (int i = 0; i < 3000; ++i) {
    std::string text(rng() % 15, ' ');
    for (char& c : text) c = alphabet[rng() % alphabet.size()];
    std::vector<std::string> expected;
    for (std::sregex_iterator it(text.begin(), text.end(), pattern), end; it != end; ++it)
      expected.push_back(it->str());
    ASSERT_EQ(pieces(text), expected) << "text: \"" << text << "\"";
  }
}

TEST(TokenizerByte, EncodeDecodeAndEod) {
  auto tok = make_byte_tokenizer(std::nullopt);
  EXPECT_EQ(tok->vocab_size(), 256);
  EXPECT_FALSE(tok->eod_id().has_value());
  std::vector<int32_t> ids;
  tok->encode(std::string("A\xff\n", 3), ids);
  EXPECT_EQ(ids, (std::vector<int32_t>{65, 255, 10}));
  EXPECT_EQ(tok->decode(ids), std::string("A\xff\n", 3));

  auto with_eod = make_byte_tokenizer(256);
  EXPECT_EQ(with_eod->vocab_size(), 257);
  EXPECT_EQ(with_eod->eod_id(), 256);
  EXPECT_EQ(with_eod->decode({104, 256, 105}), "hi");
  EXPECT_THROW(tok->decode({300}), Error);
  EXPECT_THROW(make_byte_tokenizer(-1), Error);
}

// GPT-2 writes byte 0x20 (space) as U+0120 "Ġ" and 0x0A (newline) as U+010A.
TEST(TokenizerByte, Gpt2ByteAlphabet) {
  EXPECT_EQ(gpt2_byte_to_codepoint(' '), 0x120u);
  EXPECT_EQ(gpt2_byte_to_codepoint('\n'), 0x10Au);
  EXPECT_EQ(gpt2_byte_to_codepoint('a'), static_cast<uint32_t>('a'));
  EXPECT_EQ(gpt2_byte_to_codepoint(0xAD), 0x143u);  // the last of the 68 remapped
  EXPECT_EQ(gpt2_byte_to_codepoint(0xFF), 0xFFu);
}

// A tiny vocabulary: bytes a b c ! Ġ(space) Ċ(newline), merges as listed.
const char* kVocab = R"({"a": 0, "b": 1, "c": 2, "\u0120": 3, "ab": 4, "abc": 5,
  "\u0120a": 6, "\u0120ab": 7, "<|endoftext|>": 8, "!": 9, "\u010a": 10})";

struct Files {
  std::string vocab, merges, hf_strings, hf_pairs;
};

// `merges` lines in rank order.
Files write_files(const std::string& dir, const std::vector<std::string>& merges) {
  Files f{dir + "/vocab.json", dir + "/merges.txt", dir + "/tok_strings.json",
          dir + "/tok_pairs.json"};
  write_bytes(f.vocab, kVocab);
  std::string m = "#version: 0.2\n";
  std::string as_strings, as_pairs;
  for (const std::string& line : merges) {
    m += line + "\n";
    size_t sp = line.find(' ');
    as_strings += std::string(as_strings.empty() ? "" : ",") + "\"" + line + "\"";
    as_pairs += std::string(as_pairs.empty() ? "" : ",") + "[\"" + line.substr(0, sp) +
                "\",\"" + line.substr(sp + 1) + "\"]";
  }
  write_bytes(f.merges, m);
  auto hf = [](const std::string& merges_json) {
    return std::string(R"({"version": "1.0", "normalizer": null,
      "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
      "added_tokens": [{"id": 8, "content": "<|endoftext|>", "special": true}],
      "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": "", "end_of_word_suffix": "",
                "vocab": )") + kVocab + R"(, "merges": [)" + merges_json + "]}}";
  };
  write_bytes(f.hf_strings, hf(as_strings));
  write_bytes(f.hf_pairs, hf(as_pairs));
  return f;
}

std::vector<int32_t> encode(const Tokenizer& tok, std::string_view text) {
  std::vector<int32_t> ids;
  tok.encode(text, ids);
  return ids;
}

TEST(TokenizerBpe, MergesApplyByRank) {
  std::string dir = scratch_dir("tokenizer_rank");
  // "a b" outranks "Ġ a": " ab" becomes Ġ + ab, and "Ġa b" never applies.
  Files f = write_files(dir, {"a b", "\xC4\xA0 a", "ab c", "\xC4\xA0" "a b"});
  auto tok = load_gpt2_tokenizer(f.vocab, f.merges);
  EXPECT_EQ(tok->name(), "gpt2-bpe");
  EXPECT_EQ(tok->vocab_size(), 11);
  EXPECT_EQ(tok->eod_id(), 8);
  // Pieces: "abc" " ab" " abab" "!" "\n".
  EXPECT_EQ(encode(*tok, "abc ab abab!\n"),
            (std::vector<int32_t>{5, 3, 4, 3, 4, 4, 9, 10}));
  EXPECT_EQ(tok->decode(encode(*tok, "abc ab abab!\n")), "abc ab abab!\n");

  // With "Ġ a" first, " ab" becomes Ġa + b, then "Ġa b" -> Ġab.
  std::string dir2 = scratch_dir("tokenizer_rank2");
  Files g = write_files(dir2, {"\xC4\xA0 a", "a b", "ab c", "\xC4\xA0" "a b"});
  auto tok2 = load_gpt2_tokenizer(g.vocab, g.merges);
  EXPECT_EQ(encode(*tok2, " ab abc"), (std::vector<int32_t>{7, 7, 2}));
}

TEST(TokenizerBpe, HuggingFaceJsonMatchesVocabMerges) {
  std::string dir = scratch_dir("tokenizer_hf");
  Files f = write_files(dir, {"a b", "\xC4\xA0 a", "ab c", "\xC4\xA0" "a b"});
  auto ref = load_gpt2_tokenizer(f.vocab, f.merges);
  const std::string text = "abc ab\n\n !!cab  aab";
  for (const std::string& path : {f.hf_strings, f.hf_pairs}) {
    auto tok = load_hf_tokenizer(path);
    EXPECT_EQ(encode(*tok, text), encode(*ref, text)) << path;
    EXPECT_EQ(tok->eod_id(), 8);
    EXPECT_EQ(tok->decode(encode(*tok, text)), text);
  }
}

TEST(TokenizerBpe, EodOverride) {
  std::string dir = scratch_dir("tokenizer_eod");
  Files f = write_files(dir, {"a b"});
  auto tok = with_eod_id(load_gpt2_tokenizer(f.vocab, f.merges), 9);
  EXPECT_EQ(tok->eod_id(), 9);
  try {
    with_eod_id(load_gpt2_tokenizer(f.vocab, f.merges), 42);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("42"), std::string::npos) << e.what();
  }
}

void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "missing \"" << p << "\" in: " << e.what();
  }
}

TEST(TokenizerBpe, ErrorsNameThePlace) {
  std::string dir = scratch_dir("tokenizer_errors");
  Files f = write_files(dir, {"a b"});
  auto tok = load_gpt2_tokenizer(f.vocab, f.merges);
  // A byte with no single-byte token.
  expect_error([&] { encode(*tok, "abz"); }, {"0x7a", "offset 2"});

  // A merge whose result is not in the vocabulary, reported with its line.
  write_bytes(dir + "/bad_merges.txt", "#version: 0.2\na b\nb c\n");
  expect_error([&] { load_gpt2_tokenizer(f.vocab, dir + "/bad_merges.txt"); },
               {"bad_merges.txt:3", "\"bc\""});
  write_bytes(dir + "/bad_line.txt", "a b c\n");
  expect_error([&] { load_gpt2_tokenizer(f.vocab, dir + "/bad_line.txt"); },
               {"bad_line.txt:1", "two tokens"});

  // A plain space is not in the byte-level alphabet (it is written as Ġ).
  write_bytes(dir + "/bad_vocab.json", R"({"a": 0, " ": 1})");
  expect_error([&] { load_gpt2_tokenizer(dir + "/bad_vocab.json", f.merges); },
               {"bad_vocab.json", "U+20"});
  write_bytes(dir + "/dup_vocab.json", R"({"a": 0, "b": 0})");
  expect_error([&] { load_gpt2_tokenizer(dir + "/dup_vocab.json", f.merges); },
               {"id 0 is used by"});
  write_bytes(dir + "/broken.json", R"({"a": 0,)");
  expect_error([&] { load_gpt2_tokenizer(dir + "/broken.json", f.merges); },
               {"broken.json", "invalid JSON"});

  write_bytes(dir + "/wordpiece.json", R"({"model": {"type": "WordPiece", "vocab": {}}})");
  expect_error([&] { load_hf_tokenizer(dir + "/wordpiece.json"); },
               {"wordpiece.json", "model.type", "WordPiece"});
  write_bytes(dir + "/metaspace.json",
              R"({"pre_tokenizer": {"type": "Metaspace"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})");
  expect_error([&] { load_hf_tokenizer(dir + "/metaspace.json"); },
               {"metaspace.json", "pre_tokenizer", "Metaspace"});
  expect_error([&] { load_hf_tokenizer(dir + "/missing.json"); }, {"missing.json", "cannot open"});

  // Ids from the file never size an allocation, and never wrap.
  write_bytes(dir + "/sparse.json",
              R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 2147483646}, "merges": []},)"
              R"( "added_tokens": [{"id": 2147483647, "content": "<|endoftext|>"}]})");
  auto sparse = load_hf_tokenizer(dir + "/sparse.json");
  EXPECT_EQ(sparse->vocab_size(), int64_t{1} << 31);
  EXPECT_EQ(sparse->decode({0, 2147483646, 2147483647}), "ab<|endoftext|>");
  write_bytes(dir + "/wrap.json",
              R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},)"
              R"( "added_tokens": [{"id": 4294967301, "content": "x"}]})");
  expect_error([&] { load_hf_tokenizer(dir + "/wrap.json"); },
               {"wrap.json: added_tokens[0]: id 4294967301 is not in [0, 2^31)"});
  write_bytes(dir + "/deep.json", std::string(100000, '[') + std::string(100000, ']'));
  expect_error([&] { load_gpt2_tokenizer(dir + "/deep.json", f.merges); },
               {"deep.json at byte 64: JSON nested deeper than 64 levels"});
}

}  // namespace
}  // namespace mtc::rt
