// Tests the mtc-preprocess tool end to end: document splitting modes,
// end-of-document tokens, the dataset it writes (read back with the
// indexed dataset reader), and its error messages.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <sys/wait.h>

#include "mtc/rt/data.h"
#include "train_test_support.h"

namespace mtc::rt {
namespace {

using testing::scratch_dir;
using testing::write_bytes;

struct Result {
  int rc;
  std::string output;  // stdout + stderr
};

Result run_tool(const std::string& args) {
  std::string cmd = std::string(MTC_PREPROCESS_BIN) + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed"};
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::vector<std::string> docs_as_text(const IndexedDataset& ds, int32_t skip_id = -1) {
  std::vector<std::string> out;
  for (int64_t d = 0; d < ds.num_docs(); ++d) {
    std::vector<int32_t> ids(ds.doc_length(d));
    ds.read(d, 0, ds.doc_length(d), ids.data());
    std::string s;
    for (int32_t id : ids) s += id == skip_id ? std::string("<eod>") : std::string(1, char(id));
    out.push_back(s);
  }
  return out;
}

TEST(Preprocess, FortuneLineAndFileModes) {
  std::string dir = scratch_dir("preprocess_modes");
  write_bytes(dir + "/f.txt", "first\nfortune\n%\nsecond one\n%\n%\nthird\n");
  write_bytes(dir + "/g.txt", "x\n\ny\n");

  Result r = run_tool("--input " + dir + "/f.txt " + dir + "/g.txt --output-prefix " + dir +
                      "/out/fortune --split-documents fortune");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("4 documents"), std::string::npos) << r.output;
  IndexedDataset f(dir + "/out/fortune");
  EXPECT_EQ(f.dtype(), TokenDtype::uint16);
  EXPECT_EQ(docs_as_text(f), (std::vector<std::string>{"first\nfortune\n", "second one\n",
                                                       "third\n", "x\n\ny\n"}));

  r = run_tool("--input " + dir + "/g.txt --output-prefix " + dir +
               "/lines --split-documents line --append-eod --eod-id 256");
  ASSERT_EQ(r.rc, 0) << r.output;
  IndexedDataset l(dir + "/lines");
  EXPECT_EQ(docs_as_text(l, 256), (std::vector<std::string>{"x<eod>", "y<eod>"}));

  r = run_tool("--input " + dir + "/f.txt --output-prefix " + dir + "/file");
  ASSERT_EQ(r.rc, 0) << r.output;
  IndexedDataset whole(dir + "/file");
  EXPECT_EQ(docs_as_text(whole),
            (std::vector<std::string>{"first\nfortune\n%\nsecond one\n%\n%\nthird\n"}));
}

TEST(Preprocess, JsonlAndGpt2) {
  std::string dir = scratch_dir("preprocess_jsonl");
  write_bytes(dir + "/d.jsonl", "{\"text\": \"ab ab\"}\n\n{\"text\": \"abab\", \"id\": 2}\n");
  write_bytes(dir + "/vocab.json",
              R"({"a": 0, "b": 1, "\u0120": 2, "ab": 3, "\u0120ab": 4, "<|endoftext|>": 5})");
  write_bytes(dir + "/merges.txt", "#version: 0.2\na b\n\xC4\xA0 ab\n");
  Result r = run_tool("--input " + dir + "/d.jsonl --output-prefix " + dir +
                      "/g --split-documents jsonl --tokenizer gpt2 --vocab " + dir +
                      "/vocab.json --merges " + dir + "/merges.txt --append-eod");
  ASSERT_EQ(r.rc, 0) << r.output;
  IndexedDataset g(dir + "/g");
  ASSERT_EQ(g.num_docs(), 2);
  std::vector<int32_t> d0(g.doc_length(0)), d1(g.doc_length(1));
  g.read(0, 0, g.doc_length(0), d0.data());
  g.read(1, 0, g.doc_length(1), d1.data());
  EXPECT_EQ(d0, (std::vector<int32_t>{3, 4, 5}));
  EXPECT_EQ(d1, (std::vector<int32_t>{3, 3, 5}));
}

TEST(Preprocess, RealFortuneFile) {
  // A Debian fortunes file, if installed: the document count equals the
  // number of non-empty entries between "%" lines, counted here directly.
  const std::string path = "/usr/share/games/fortunes/goedel";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not installed";
  std::string text = testing::read_bytes(path);
  int64_t entries = 0;
  size_t begin = 0, pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == std::string::npos ? text.size() : nl;
    if (text.compare(pos, end - pos, "%") == 0) {
      entries += pos > begin;
      begin = end + 1;
    }
    pos = end + 1;
  }
  entries += begin < text.size();
  std::string dir = scratch_dir("preprocess_real");
  Result r = run_tool("--input " + path + " --output-prefix " + dir +
                      "/g --split-documents fortune");
  ASSERT_EQ(r.rc, 0) << r.output;
  IndexedDataset g(dir + "/g");
  EXPECT_EQ(g.num_docs(), entries);
}

TEST(Preprocess, Errors) {
  std::string dir = scratch_dir("preprocess_errors");
  write_bytes(dir + "/a.txt", "hello\n");
  struct Case {
    std::string args;
    int rc;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"", 2, "--input: required"},
      {"--input " + dir + "/a.txt", 2, "--output-prefix: required"},
      {"--input " + dir + "/a.txt --output-prefix " + dir + "/o --tokenizer bpe", 2,
       "--tokenizer: expected byte or gpt2"},
      {"--input " + dir + "/a.txt --output-prefix " + dir + "/o --tokenizer gpt2", 2,
       "needs --vocab"},
      {"--input " + dir + "/a.txt --output-prefix " + dir + "/o --split-documents para", 2,
       "--split-documents: expected"},
      {"--input " + dir + "/a.txt --output-prefix " + dir + "/o --frobnicate", 2,
       "unknown argument \"--frobnicate\""},
      {"--input " + dir + "/a.txt --output-prefix " + dir + "/o --append-eod", 1,
       "--append-eod: the byte tokenizer has no end-of-document token"},
      {"--input " + dir + "/missing.txt --output-prefix " + dir + "/o", 1,
       "missing.txt: cannot open"},
      {"--input " + dir + "/a.txt --output-prefix " + dir + "/o --split-documents jsonl", 1,
       "a.txt:1: invalid JSON"},
  };
  for (const Case& c : cases) {
    Result r = run_tool(c.args);
    EXPECT_EQ(r.rc, c.rc) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << "\n" << r.output;
  }
  // Nothing but the input: no dataset, no temporaries.
  for (const auto& e : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(e.path().filename(), "a.txt");
  Result help = run_tool("--help");
  EXPECT_EQ(help.rc, 0);
  EXPECT_NE(help.output.find("--split-documents MODE"), std::string::npos);
}

}  // namespace
}  // namespace mtc::rt
