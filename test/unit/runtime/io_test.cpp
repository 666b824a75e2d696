// Tests of the output files every runtime writer goes through (io.h): a
// regular file is replaced atomically, a symbolic link's target is written
// (the link stays), a FIFO is written through (never replaced), a directory
// is refused, a temporary is created exclusively and removed on failure;
// and of the JSON nesting bound that protects the parsers' stacks.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <future>
#include <set>

#include "mtc/rt/io.h"
#include "mtc/rt/safetensors.h"
#include "train_test_support.h"

namespace mtc::rt {
namespace {

namespace fs = std::filesystem;
using testing::read_bytes;
using testing::scratch_dir;
using testing::write_bytes;

std::set<std::string> listing(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

std::string expect_error(const std::function<void()>& fn, const std::string& part) {
  try {
    fn();
    ADD_FAILURE() << "expected an Error with \"" << part << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    return e.what();
  }
  return {};
}

TEST(OutputFile, ReplacesARegularFileAtomically) {
  const std::string dir = scratch_dir("io_regular");
  write_file_atomic(dir + "/a", "first");
  write_file_atomic(dir + "/a", "second");
  EXPECT_EQ(read_bytes(dir + "/a"), "second");
  {
    OutputFile out(dir + "/a");
    out.write("half");
    // Destroyed without commit (an error on the way): the old file stays and
    // the temporary goes.
  }
  EXPECT_EQ(read_bytes(dir + "/a"), "second");
  EXPECT_EQ(listing(dir), (std::set<std::string>{"a"}));
  // Large writes bypass the buffer and arrive in order.
  std::string big(3 << 20, 'x');
  big[0] = 'a';
  big.back() = 'z';
  OutputFile out(dir + "/big");
  out.write("<");
  out.write(big);
  out.write(">");
  out.commit();
  EXPECT_EQ(read_bytes(dir + "/big"), "<" + big + ">");
}

TEST(OutputFile, NeverTakesOverAnotherFilesTemporaryName) {
  const std::string dir = scratch_dir("io_exclusive");
  // Whatever sits at the first temporary name is someone else's.
  const std::string squatter = dir + "/a.tmp." + std::to_string(::getpid()) + ".";
  for (int i = 0; i < 50; ++i) {
    const std::string p = squatter + std::to_string(i);
    if (!fs::exists(p)) write_bytes(p, "theirs");
  }
  write_file_atomic(dir + "/a", "mine");
  EXPECT_EQ(read_bytes(dir + "/a"), "mine");
  for (int i = 0; i < 50; ++i) EXPECT_EQ(read_bytes(squatter + std::to_string(i)), "theirs");
}

TEST(OutputFile, WritesThroughAFifoInsteadOfReplacingIt) {
  const std::string dir = scratch_dir("io_fifo");
  const std::string fifo = dir + "/pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto reader = std::async(std::launch::async, [&] { return read_bytes(fifo); });
  write_file_atomic(fifo, "through the pipe");
  EXPECT_EQ(reader.get(), "through the pipe");
  EXPECT_TRUE(fs::is_fifo(fifo));
  EXPECT_EQ(listing(dir), (std::set<std::string>{"pipe"}));

  // --dump-grads FIFO: a safetensors file streamed into a reader.
  auto st_reader = std::async(std::launch::async, [&] { return read_bytes(fifo); });
  const float x[2] = {1, 2};
  write_safetensors(fifo, {{"w", {2}, x, "F32"}});
  const std::string bytes = st_reader.get();
  EXPECT_TRUE(fs::is_fifo(fifo));
  write_bytes(dir + "/copy.safetensors", bytes);
  float y[2] = {0, 0};
  SafetensorsReader(dir + "/copy.safetensors").read_f32("w", y, 2);
  EXPECT_EQ(y[1], 2.0f);
}

TEST(OutputFile, WritesThroughACharacterDevice) {
  // /dev/null is opened and written, never renamed over (which, for root,
  // would have replaced the system's /dev/null with a regular file).
  struct stat before {};
  ASSERT_EQ(::stat("/dev/null", &before), 0);
  OutputFile out("/dev/null");
  out.write("discarded");
  out.commit();
  struct stat after {};
  ASSERT_EQ(::stat("/dev/null", &after), 0);
  EXPECT_TRUE(S_ISCHR(after.st_mode));
  EXPECT_EQ(before.st_ino, after.st_ino);
}

TEST(OutputFile, FollowsASymbolicLinkAndKeepsIt) {
  const std::string dir = scratch_dir("io_symlink");
  fs::create_directories(dir + "/real");
  write_bytes(dir + "/real/target", "old");
  fs::create_symlink(dir + "/real/target", dir + "/link");
  write_file_atomic(dir + "/link", "new");
  EXPECT_TRUE(fs::is_symlink(dir + "/link"));
  EXPECT_EQ(read_bytes(dir + "/real/target"), "new");
  EXPECT_EQ(listing(dir + "/real"), (std::set<std::string>{"target"}));
  // A dangling link: its target is created.
  fs::create_symlink(dir + "/real/later", dir + "/dangling");
  write_file_atomic(dir + "/dangling", "made");
  EXPECT_TRUE(fs::is_symlink(dir + "/dangling"));
  EXPECT_EQ(read_bytes(dir + "/real/later"), "made");
}

TEST(OutputFile, RefusesADirectory) {
  const std::string dir = scratch_dir("io_directory");
  fs::create_directories(dir + "/out");
  write_bytes(dir + "/out/keep", "keep");
  expect_error([&] { write_file_atomic(dir + "/out", "x"); }, "/out: is a directory");
  const float x = 1;
  expect_error([&] { write_safetensors(dir + "/out", {{"w", {1}, &x, "F32"}}); },
               "is a directory");
  fs::create_directory_symlink(dir + "/out", dir + "/link");
  expect_error([&] { write_file_atomic(dir + "/link", "x"); }, "is a directory");
  EXPECT_EQ(listing(dir + "/out"), (std::set<std::string>{"keep"}));
  EXPECT_EQ(listing(dir), (std::set<std::string>{"link", "out"}));
  expect_error([&] { write_file_atomic(dir + "/missing/a", "x"); }, "cannot create");
}

TEST(JsonDepth, DeepNestingIsRefusedBeforeParsing) {
  EXPECT_NO_THROW(check_json_depth(std::string(kMaxJsonDepth, '[') +
                                   std::string(kMaxJsonDepth, ']'), "f"));
  expect_error([] { check_json_depth(std::string(100000, '['), "f.json"); },
               "f.json at byte 64: JSON nested deeper than 64 levels");
  expect_error([] { check_json_depth("{\"a\": " + std::string(65, '{'), "f", 8); },
               "f at byte 77:");
  // Brackets inside strings, escaped quotes included, do not count.
  std::string in_string = "[\"" + std::string(100, '[') + "\\\"" + std::string(100, '{') + "\"]";
  EXPECT_NO_THROW(check_json_depth(in_string, "f"));
}

}  // namespace
}  // namespace mtc::rt
