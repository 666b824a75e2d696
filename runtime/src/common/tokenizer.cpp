// Byte-level and GPT-2 byte-level BPE tokenizers. See mtc/rt/tokenizer.h.
//
// The BPE works on raw bytes: vocabulary and merge strings are converted
// from GPT-2's bytes-to-unicode alphabet back to the bytes they stand for
// when loaded, so a token is a byte string and a word starts as one token
// per byte. Merges are keyed by the pair of token ids (a, b) and store
// (rank, id of a+b); every merge's parts and result must be in the
// vocabulary (checked at load, as HuggingFace's BPE builder does).
#include "mtc/rt/tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <climits>
#include <sstream>
#include <unordered_map>

#include "mtc/rt/io.h"

namespace mtc::rt {

namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------
// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
// other 68 bytes map to U+0100.. in byte order.
// ---------------------------------------------------------------------------

bool byte_is_printable_latin1(int b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
         (b >= 0xAE && b <= 0xFF);
}

const std::array<uint32_t, 256>& byte_to_codepoint_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b)
      t[b] = byte_is_printable_latin1(b) ? static_cast<uint32_t>(b) : next++;
    return t;
  }();
  return table;
}

// Decodes the UTF-8 string `s` (written in the bytes-to-unicode alphabet)
// into the raw bytes it stands for; `where` names the string in errors.
std::string unicode_to_bytes(const std::string& s, const std::string& where) {
  static const std::unordered_map<uint32_t, uint8_t> inverse = [] {
    std::unordered_map<uint32_t, uint8_t> m;
    for (int b = 0; b < 256; ++b)
      m[byte_to_codepoint_table()[b]] = static_cast<uint8_t>(b);
    return m;
  }();
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    size_t len;
    if (c < 0x80) {
      cp = c;
      len = 1;
    } else if ((c >> 5) == 0x6) {
      cp = c & 0x1F;
      len = 2;
    } else if ((c >> 4) == 0xE) {
      cp = c & 0x0F;
      len = 3;
    } else if ((c >> 3) == 0x1E) {
      cp = c & 0x07;
      len = 4;
    } else {
      throw Error(where + ": invalid UTF-8 at byte " + std::to_string(i));
    }
    if (i + len > s.size())
      throw Error(where + ": truncated UTF-8 at byte " + std::to_string(i));
    for (size_t k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 0x2)
        throw Error(where + ": invalid UTF-8 at byte " + std::to_string(i));
      cp = (cp << 6) | (cc & 0x3F);
    }
    auto it = inverse.find(cp);
    if (it == inverse.end()) {
      std::ostringstream msg;
      msg << where << ": character U+" << std::hex << std::uppercase << cp
          << " is not in GPT-2's byte-level alphabet (is this a byte-level BPE"
             " vocabulary?)";
      throw Error(msg.str());
    }
    out.push_back(static_cast<char>(it->second));
    i += len;
  }
  return out;
}

std::string json_quote(const std::string& s) { return json(s).dump(); }

// ---------------------------------------------------------------------------
// Byte-level
// ---------------------------------------------------------------------------

class ByteTokenizer final : public Tokenizer {
 public:
  explicit ByteTokenizer(std::optional<int32_t> eod) : eod_(eod) {
    if (eod_ && *eod_ < 0)
      throw Error("byte tokenizer: end-of-document id " +
                  std::to_string(*eod_) + " must be >= 0");
  }
  std::string name() const override { return "byte"; }
  int64_t vocab_size() const override {
    return eod_ ? std::max<int64_t>(256, int64_t{*eod_} + 1) : 256;
  }
  std::optional<int32_t> eod_id() const override { return eod_; }
  void encode(std::string_view text, std::vector<int32_t>& out) const override {
    for (char c : text) out.push_back(static_cast<unsigned char>(c));
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (eod_ && ids[i] == *eod_) continue;
      if (ids[i] < 0 || ids[i] > 255)
        throw Error("byte tokenizer: id " + std::to_string(ids[i]) +
                    " at position " + std::to_string(i) + " is not a byte");
      s.push_back(static_cast<char>(ids[i]));
    }
    return s;
  }

 private:
  std::optional<int32_t> eod_;
};

// ---------------------------------------------------------------------------
// GPT-2 byte-level BPE
// ---------------------------------------------------------------------------

struct Merge {
  int32_t rank;
  int32_t result;
};

// One line of merges.txt (or entry of model.merges), raw bytes, with its
// location for messages.
struct MergeRule {
  std::string a, b, where;
};

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) |
         static_cast<uint32_t>(b);
}

class BpeTokenizer final : public Tokenizer {
 public:
  // `vocab`: raw-byte token -> id. `merges`: pairs of raw-byte tokens in
  // rank order. `extra`: added tokens (id, content) that are decoded but
  // never produced by encode. `source` names the files in errors.
  BpeTokenizer(const std::vector<std::pair<std::string, int32_t>>& vocab,
               const std::vector<MergeRule>& merges,
               const std::vector<std::pair<int32_t, std::string>>& extra,
               const std::string& source)
      : source_(source) {
    byte_id_.fill(-1);
    for (const auto& [token, id] : vocab) add_token(token, id, /*in_bpe=*/true);
    for (const auto& [id, content] : extra) add_token(content, id, false);
    for (size_t r = 0; r < merges.size(); ++r) {
      const auto& [a, b, at] = merges[r];
      std::string where = at + " (" + json_quote(a) + " " + json_quote(b) + ")";
      int32_t ia = lookup(a, where), ib = lookup(b, where),
              ir = lookup(a + b, where);
      // The first occurrence of a duplicated merge keeps its (lower) rank.
      merges_.try_emplace(pair_key(ia, ib), Merge{static_cast<int32_t>(r), ir});
    }
    auto eod = bpe_ids_.find("<|endoftext|>");
    if (eod != bpe_ids_.end()) eod_ = eod->second;
    for (const auto& [id, content] : extra)
      if (content == "<|endoftext|>") eod_ = id;
  }

  std::string name() const override { return "gpt2-bpe"; }
  int64_t vocab_size() const override {
    return vocab_size_;
  }
  std::optional<int32_t> eod_id() const override { return eod_; }
  void set_eod(int32_t id) {
    if (id_to_token_.count(id) == 0)
      throw Error(source_ + ": end-of-document id " + std::to_string(id) +
                  " is not in the vocabulary");
    eod_ = id;
  }

  void encode(std::string_view text, std::vector<int32_t>& out) const override {
    size_t offset = 0;
    for (std::string_view piece : gpt2_pretokenize(text)) {
      const std::vector<int32_t>& ids = encode_piece(piece, offset);
      out.insert(out.end(), ids.begin(), ids.end());
      offset += piece.size();
    }
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (size_t i = 0; i < ids.size(); ++i) {
      int32_t id = ids[i];
      auto it = id_to_token_.find(id);
      if (it == id_to_token_.end())
        throw Error(source_ + ": id " + std::to_string(id) + " at position " +
                    std::to_string(i) + " is not in the vocabulary");
      s += it->second;
    }
    return s;
  }

 private:
  void add_token(const std::string& token, int32_t id, bool in_bpe) {
    if (id < 0)
      throw Error(source_ + ": token " + json_quote(token) + " has negative id " +
                  std::to_string(id));
    // A map, not a table indexed by id: a file's ids (up to 2^31 - 1) never
    // size an allocation.
    auto [it, added] = id_to_token_.try_emplace(id, token);
    if (!added) {
      if (it->second == token) return;  // an added token repeating the vocab
      throw Error(source_ + ": id " + std::to_string(id) + " is used by " +
                  json_quote(it->second) + " and " + json_quote(token));
    }
    vocab_size_ = std::max<int64_t>(vocab_size_, int64_t{id} + 1);
    if (in_bpe) {
      bpe_ids_[token] = id;
      if (token.size() == 1) byte_id_[static_cast<unsigned char>(token[0])] = id;
    }
  }

  int32_t lookup(const std::string& token, const std::string& where) const {
    auto it = bpe_ids_.find(token);
    if (it == bpe_ids_.end())
      throw Error(where + ": token " + json_quote(token) +
                  " is not in the vocabulary");
    return it->second;
  }

  // The ids of one pre-token piece that starts at byte `offset` of the text.
  const std::vector<int32_t>& encode_piece(std::string_view piece,
                                           size_t offset) const {
    auto cached = cache_.find(std::string(piece));
    if (cached != cache_.end()) return cached->second;
    std::vector<int32_t> word;
    word.reserve(piece.size());
    for (size_t i = 0; i < piece.size(); ++i) {
      auto b = static_cast<unsigned char>(piece[i]);
      if (byte_id_[b] < 0) {
        std::ostringstream msg;
        msg << source_ << ": byte 0x" << std::hex << int(b) << std::dec
            << " at text offset " << offset + i
            << " has no single-byte token in the vocabulary";
        throw Error(msg.str());
      }
      word.push_back(byte_id_[b]);
    }
    std::vector<int32_t> next;
    while (word.size() >= 2) {
      int32_t best_rank = INT32_MAX;
      uint64_t best = 0;
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        auto it = merges_.find(pair_key(word[i], word[i + 1]));
        if (it != merges_.end() && it->second.rank < best_rank) {
          best_rank = it->second.rank;
          best = it->first;
        }
      }
      if (best_rank == INT32_MAX) break;
      const Merge& m = merges_.at(best);
      auto a = static_cast<int32_t>(best >> 32);
      auto b = static_cast<int32_t>(best & 0xFFFFFFFFu);
      next.clear();
      for (size_t i = 0; i < word.size();) {
        if (i + 1 < word.size() && word[i] == a && word[i + 1] == b) {
          next.push_back(m.result);
          i += 2;
        } else {
          next.push_back(word[i]);
          i += 1;
        }
      }
      word.swap(next);
    }
    if (cache_.size() > (1u << 20)) cache_.clear();  // bound the memory
    return cache_.emplace(std::string(piece), std::move(word)).first->second;
  }

  std::string source_;
  std::unordered_map<int32_t, std::string> id_to_token_;  // raw bytes; ids may have holes
  int64_t vocab_size_ = 0;                                // largest id + 1
  std::unordered_map<std::string, int32_t> bpe_ids_;
  std::array<int32_t, 256> byte_id_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::optional<int32_t> eod_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

json parse_json_file(const std::string& path) {
  std::string text = read_file(path);
  check_json_depth(text, path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(path + ": invalid JSON at byte " + std::to_string(e.byte) +
                " (" + e.what() + ")");
  }
}

// {"token": id, ...} with tokens in the bytes-to-unicode alphabet.
std::vector<std::pair<std::string, int32_t>> parse_vocab(const json& vocab,
                                                         const std::string& where) {
  if (!vocab.is_object()) throw Error(where + ": expected an object of token: id");
  std::vector<std::pair<std::string, int32_t>> out;
  out.reserve(vocab.size());
  for (const auto& [key, value] : vocab.items()) {
    std::string at = where + "[" + json_quote(key) + "]";
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() > INT32_MAX)
      throw Error(at + ": expected a non-negative integer id, got " + value.dump());
    out.emplace_back(unicode_to_bytes(key, at), value.get<int32_t>());
  }
  return out;
}

MergeRule split_merge_line(const std::string& line, const std::string& where) {
  size_t sp = line.find(' ');
  if (sp == std::string::npos || sp == 0 || sp + 1 == line.size() ||
      line.find(' ', sp + 1) != std::string::npos)
    throw Error(where + ": expected two tokens separated by one space, got " +
                json_quote(line));
  return {unicode_to_bytes(line.substr(0, sp), where),
          unicode_to_bytes(line.substr(sp + 1), where), where};
}

}  // namespace

uint32_t gpt2_byte_to_codepoint(uint8_t b) { return byte_to_codepoint_table()[b]; }

std::unique_ptr<Tokenizer> make_byte_tokenizer(std::optional<int32_t> eod_id) {
  return std::make_unique<ByteTokenizer>(eod_id);
}

std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::string& vocab_json,
                                               const std::string& merges_txt) {
  auto vocab = parse_vocab(parse_json_file(vocab_json), vocab_json);
  std::vector<MergeRule> merges;
  std::istringstream in(read_file(merges_txt));
  std::string line;
  for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (lineno == 1 && line.rfind("#version", 0) == 0)) continue;
    merges.push_back(
        split_merge_line(line, merges_txt + ":" + std::to_string(lineno)));
  }
  return std::make_unique<BpeTokenizer>(vocab, merges,
                                        std::vector<std::pair<int32_t, std::string>>{},
                                        vocab_json + " + " + merges_txt);
}

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path) {
  json doc = parse_json_file(path);
  if (!doc.is_object() || !doc.contains("model") || !doc["model"].is_object())
    throw Error(path + ": no \"model\" object (is this a HuggingFace tokenizer.json?)");
  const json& model = doc["model"];
  std::string type = model.value("type", std::string("BPE"));
  if (type != "BPE")
    throw Error(path + ": model.type is " + json_quote(type) +
                "; only \"BPE\" (GPT-2 style byte-level BPE) is supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && !model[key].is_null() &&
        model[key] != json(""))
      throw Error(path + ": model." + key + " = " + model[key].dump() +
                  " is not supported (GPT-2 BPE has none)");
  if (doc.contains("normalizer") && !doc["normalizer"].is_null())
    throw Error(path + ": normalizer " + doc["normalizer"].dump() +
                " is not supported (GPT-2 BPE has none)");
  if (doc.contains("pre_tokenizer") && !doc["pre_tokenizer"].is_null()) {
    const json& pre = doc["pre_tokenizer"];
    if (!pre.is_object() || pre.value("type", std::string()) != "ByteLevel" ||
        !pre.value("use_regex", true) || pre.value("add_prefix_space", false))
      throw Error(path + ": pre_tokenizer " + pre.dump() +
                  " is not supported; mtc implements GPT-2's ByteLevel"
                  " pre-tokenizer (use_regex true, add_prefix_space false)");
  }
  if (!model.contains("vocab")) throw Error(path + ": model.vocab is missing");
  auto vocab = parse_vocab(model["vocab"], path + ": model.vocab");

  std::vector<MergeRule> merges;
  if (model.contains("merges")) {
    const json& m = model["merges"];
    if (!m.is_array()) throw Error(path + ": model.merges must be an array");
    for (size_t i = 0; i < m.size(); ++i) {
      std::string where = path + ": model.merges[" + std::to_string(i) + "]";
      if (m[i].is_string()) {
        merges.push_back(split_merge_line(m[i].get<std::string>(), where));
      } else if (m[i].is_array() && m[i].size() == 2 && m[i][0].is_string() &&
                 m[i][1].is_string()) {
        merges.push_back({unicode_to_bytes(m[i][0].get<std::string>(), where),
                          unicode_to_bytes(m[i][1].get<std::string>(), where), where});
      } else {
        throw Error(where + ": expected \"a b\" or [\"a\", \"b\"], got " +
                    m[i].dump());
      }
    }
  }
  std::vector<std::pair<int32_t, std::string>> extra;
  if (doc.contains("added_tokens") && doc["added_tokens"].is_array()) {
    const json& added = doc["added_tokens"];
    for (size_t i = 0; i < added.size(); ++i) {
      const json& t = added[i];
      std::string where = path + ": added_tokens[" + std::to_string(i) + "]";
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() ||
          !t.contains("content") || !t["content"].is_string())
        throw Error(where + ": expected {\"id\": int, \"content\": string, ...}");
      if (t["id"].get<int64_t>() < 0 || t["id"].get<int64_t>() > INT32_MAX ||
          (t["id"].is_number_unsigned() && t["id"].get<uint64_t>() > INT32_MAX))
        throw Error(where + ": id " + t["id"].dump() + " is not in [0, 2^31)");
      extra.emplace_back(t["id"].get<int32_t>(), t["content"].get<std::string>());
    }
  }
  return std::make_unique<BpeTokenizer>(vocab, merges, extra, path);
}

std::unique_ptr<Tokenizer> with_eod_id(std::unique_ptr<Tokenizer> tok,
                                       int32_t eod_id) {
  if (auto* bpe = dynamic_cast<BpeTokenizer*>(tok.get())) {
    bpe->set_eod(eod_id);
    return tok;
  }
  return make_byte_tokenizer(eod_id);
}

}  // namespace mtc::rt
