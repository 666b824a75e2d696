// mtc-preprocess: text files -> a Megatron indexed dataset (PREFIX.bin +
// PREFIX.idx) of token ids, one sequence per document.
//
//   mtc-preprocess --input a.txt [b.txt ...] --output-prefix out/corpus
//       [--tokenizer byte | gpt2 --vocab vocab.json --merges merges.txt
//        | --tokenizer-json tokenizer.json]
//       [--split-documents file|line|fortune|jsonl] [--json-key text]
//       [--append-eod] [--eod-id N]
//
// Document splitting:
//   file     each input file is one document (default);
//   line     each non-empty line is a document (without its newline);
//   fortune  documents are separated by lines that are exactly "%" (the
//            fortune(6) format); the text between separators, with its
//            newlines, is one document;
//   jsonl    each non-empty line is a JSON object whose --json-key string
//            (default "text") is a document (Megatron's preprocess_data.py
//            input).
// Empty documents (no tokens) are skipped, as Megatron does. --append-eod
// adds the tokenizer's end-of-document id after every document (GPT-2:
// <|endoftext|>; byte: needs --eod-id). The dtype is uint16 when the
// vocabulary has < 65500 ids, else int32. Output is written to temporaries
// and renamed, so a failure leaves no partial dataset.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "mtc/rt/data.h"
#include "mtc/rt/io.h"
#include "mtc/rt/tokenizer.h"

namespace {

using mtc::rt::Error;

const char* kUsage =
    "usage: mtc-preprocess --input FILE [FILE ...] --output-prefix PREFIX [options]\n"
    "\n"
    "Tokenizes text into a Megatron indexed dataset PREFIX.bin + PREFIX.idx.\n"
    "\n"
    "  --input FILE [FILE ...]   text files to read\n"
    "  --output-prefix PREFIX    write PREFIX.bin and PREFIX.idx\n"
    "  --tokenizer byte|gpt2     byte-level (default) or GPT-2 BPE\n"
    "  --vocab FILE              GPT-2 vocab.json (with --tokenizer gpt2)\n"
    "  --merges FILE             GPT-2 merges.txt (with --tokenizer gpt2)\n"
    "  --tokenizer-json FILE     HuggingFace tokenizer.json (byte-level BPE)\n"
    "  --split-documents MODE    file (default) | line | fortune | jsonl\n"
    "  --json-key KEY            the text field for jsonl input (default text)\n"
    "  --append-eod              append the end-of-document token to each document\n"
    "  --eod-id N                end-of-document id (required for byte with --append-eod)\n"
    "  --help                    print this help\n";

struct Options {
  std::vector<std::string> inputs;
  std::string output_prefix;
  std::string tokenizer = "byte";
  std::string vocab, merges, tokenizer_json;
  std::string split = "file";
  std::string json_key = "text";
  bool append_eod = false;
  std::optional<int32_t> eod_id;
  bool help = false;
};

Options parse(int argc, char** argv) {
  Options o;
  bool tokenizer_given = false;
  auto value = [&](int& i, const std::string& flag) -> std::string {
    if (i + 1 >= argc || std::strncmp(argv[i + 1], "--", 2) == 0)
      throw Error(flag + ": missing value");
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      o.help = true;
    } else if (a == "--input") {
      while (i + 1 < argc && std::strncmp(argv[i + 1], "--", 2) != 0)
        o.inputs.push_back(argv[++i]);
      if (o.inputs.empty()) throw Error("--input: expected at least one file");
    } else if (a == "--output-prefix") {
      o.output_prefix = value(i, a);
    } else if (a == "--tokenizer") {
      o.tokenizer = value(i, a);
      tokenizer_given = true;
      if (o.tokenizer != "byte" && o.tokenizer != "gpt2")
        throw Error("--tokenizer: expected byte or gpt2, got \"" + o.tokenizer + "\"");
    } else if (a == "--vocab") {
      o.vocab = value(i, a);
    } else if (a == "--merges") {
      o.merges = value(i, a);
    } else if (a == "--tokenizer-json") {
      o.tokenizer_json = value(i, a);
    } else if (a == "--split-documents") {
      o.split = value(i, a);
      if (o.split != "file" && o.split != "line" && o.split != "fortune" &&
          o.split != "jsonl")
        throw Error("--split-documents: expected file, line, fortune or jsonl, got \"" +
                    o.split + "\"");
    } else if (a == "--json-key") {
      o.json_key = value(i, a);
    } else if (a == "--append-eod") {
      o.append_eod = true;
    } else if (a == "--eod-id") {
      std::string v = value(i, a);
      char* end = nullptr;
      long x = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || x < 0 || x > INT32_MAX)
        throw Error("--eod-id: expected a non-negative integer, got \"" + v + "\"");
      o.eod_id = static_cast<int32_t>(x);
    } else {
      throw Error("unknown argument \"" + a + "\"");
    }
  }
  if (o.help) return o;
  if (o.inputs.empty()) throw Error("--input: required");
  if (o.output_prefix.empty()) throw Error("--output-prefix: required");
  if (!o.tokenizer_json.empty()) {
    if (tokenizer_given && o.tokenizer == "byte")
      throw Error("--tokenizer-json: conflicts with --tokenizer byte");
    if (!o.vocab.empty() || !o.merges.empty())
      throw Error("--tokenizer-json: give either it or --vocab/--merges, not both");
    o.tokenizer = "gpt2";
  } else if (o.tokenizer == "gpt2") {
    if (o.vocab.empty() || o.merges.empty())
      throw Error("--tokenizer gpt2: needs --vocab vocab.json and --merges merges.txt "
                  "(or --tokenizer-json tokenizer.json)");
  } else if (!o.vocab.empty() || !o.merges.empty()) {
    throw Error("--vocab/--merges: only with --tokenizer gpt2");
  }
  return o;
}

// Calls `emit(text)` for every document of one input file.
void split_documents(const std::string& path, const std::string& text,
                     const Options& o,
                     const std::function<void(std::string_view)>& emit) {
  if (o.split == "file") {
    emit(text);
    return;
  }
  size_t doc_begin = 0, pos = 0;
  int64_t lineno = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == std::string::npos ? text.size() : nl;
    size_t next = nl == std::string::npos ? text.size() : nl + 1;
    std::string_view line(text.data() + pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    ++lineno;
    if (o.split == "line") {
      if (!line.empty()) emit(line);
    } else if (o.split == "jsonl") {
      if (line.find_first_not_of(" \t") != std::string_view::npos) {
        nlohmann::json j;
        mtc::rt::check_json_depth(line, path + ":" + std::to_string(lineno));
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::parse_error& e) {
          throw Error(path + ":" + std::to_string(lineno) + ": invalid JSON (" +
                      e.what() + ")");
        }
        if (!j.is_object() || !j.contains(o.json_key) || !j[o.json_key].is_string())
          throw Error(path + ":" + std::to_string(lineno) + ": expected an object "
                      "with a string field \"" + o.json_key + "\" (--json-key)");
        emit(j[o.json_key].get<std::string>());
      }
    } else if (line == "%") {  // fortune separator
      emit(std::string_view(text.data() + doc_begin, pos - doc_begin));
      doc_begin = next;
    }
    pos = next;
  }
  if (o.split == "fortune" && doc_begin < text.size())
    emit(std::string_view(text.data() + doc_begin, text.size() - doc_begin));
}

int run(const Options& o) {
  std::unique_ptr<mtc::rt::Tokenizer> tok;
  if (!o.tokenizer_json.empty()) tok = mtc::rt::load_hf_tokenizer(o.tokenizer_json);
  else if (o.tokenizer == "gpt2") tok = mtc::rt::load_gpt2_tokenizer(o.vocab, o.merges);
  else tok = mtc::rt::make_byte_tokenizer(o.eod_id);
  if (o.eod_id && o.tokenizer == "gpt2") tok = mtc::rt::with_eod_id(std::move(tok), *o.eod_id);
  if (o.append_eod && !tok->eod_id())
    throw Error("--append-eod: the " + tok->name() + " tokenizer has no end-of-document "
                "token; give one with --eod-id N");
  const auto dtype = mtc::rt::optimal_token_dtype(tok->vocab_size());

  // Read every input before creating any output.
  std::vector<std::string> texts;
  for (const std::string& path : o.inputs) texts.push_back(mtc::rt::read_file(path));
  std::filesystem::path parent = std::filesystem::path(o.output_prefix).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) throw Error(parent.string() + ": cannot create (" + ec.message() + ")");
  }

  mtc::rt::IndexedDatasetWriter writer(o.output_prefix, dtype);
  std::vector<int32_t> ids;
  int64_t skipped = 0;
  for (size_t f = 0; f < o.inputs.size(); ++f) {
    int64_t docs_before = writer.num_documents(), tokens_before = writer.num_tokens();
    split_documents(o.inputs[f], texts[f], o, [&](std::string_view doc) {
      ids.clear();
      try {
        tok->encode(doc, ids);
      } catch (const Error& e) {
        throw Error(o.inputs[f] + ", document " +
                    std::to_string(writer.num_documents() + skipped) + ": " + e.what());
      }
      if (ids.empty()) {
        ++skipped;
        return;
      }
      if (o.append_eod) ids.push_back(*tok->eod_id());
      writer.add_document(ids);
    });
    std::printf("%s: %lld documents, %lld tokens\n", o.inputs[f].c_str(),
                static_cast<long long>(writer.num_documents() - docs_before),
                static_cast<long long>(writer.num_tokens() - tokens_before));
  }
  writer.finalize();
  std::printf("wrote %s.bin and %s.idx: %lld documents, %lld tokens, dtype %s, "
              "tokenizer %s (vocab %lld)%s\n",
              o.output_prefix.c_str(), o.output_prefix.c_str(),
              static_cast<long long>(writer.num_documents()),
              static_cast<long long>(writer.num_tokens()),
              mtc::rt::token_dtype_name(dtype), tok->name().c_str(),
              static_cast<long long>(tok->vocab_size()),
              skipped > 0 ? (", " + std::to_string(skipped) + " empty documents skipped").c_str()
                          : "");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const Error& e) {
    std::fprintf(stderr, "mtc-preprocess: error: %s\n(run mtc-preprocess --help)\n", e.what());
    return 2;
  }
  if (o.help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  try {
    return run(o);
  } catch (const Error& e) {
    std::fprintf(stderr, "mtc-preprocess: error: %s\n", e.what());
    return 1;
  }
}
