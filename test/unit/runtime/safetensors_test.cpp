// Tests that the safetensors writer produces the documented layout, that
// the reader reads a file assembled by hand, and that each corruption is
// reported with the file name and the offending tensor or offset.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <random>

#include "mtc/rt/safetensors.h"
#include "train_test_support.h"

namespace mtc::rt {
namespace {

using testing::read_bytes;
using testing::scratch_dir;
using testing::write_bytes;

std::string with_header(const std::string& header_json, const std::string& data) {
  uint64_t n = header_json.size();
  std::string s(reinterpret_cast<const char*>(&n), 8);
  return s + header_json + data;
}

std::string floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

TEST(Safetensors, RoundTripAndLayout) {
  std::string dir = scratch_dir("st_roundtrip");
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> a(6), b(5);
  for (float& x : a) x = normal(rng);
  for (float& x : b) x = normal(rng);
  std::vector<int32_t> ids = {1, -2, 70000};
  write_safetensors(dir + "/t.safetensors",
                    {{"layer.a", {2, 3}, a.data(), "F32"},
                     {"b", {5}, b.data(), "F32"},
                     {"ids", {3}, ids.data(), "I32"},
                     {"empty", {0, 4}, nullptr, "F32"}},
                    {{"format", "pt"}, {"step", "12"}});
  std::string bytes = read_bytes(dir + "/t.safetensors");
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "header padded to 8 bytes";
  EXPECT_EQ(bytes.size(), 8 + n + (6 + 5 + 3) * 4);
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["layer.a"]["dtype"], "F32");
  EXPECT_EQ(header["layer.a"]["shape"], nlohmann::json({2, 3}));
  EXPECT_EQ(header["layer.a"]["data_offsets"], nlohmann::json({0, 24}));
  EXPECT_EQ(header["b"]["data_offsets"], nlohmann::json({24, 44}));
  EXPECT_EQ(header["ids"]["dtype"], "I32");
  EXPECT_EQ(header["__metadata__"]["step"], "12");
  EXPECT_EQ(bytes.substr(8 + n, 24), floats(a));

  SafetensorsReader r(dir + "/t.safetensors");
  EXPECT_EQ(r.tensors().size(), 4u);
  EXPECT_EQ(r.metadata().at("format"), "pt");
  std::vector<float> a2(6), b2(5);
  std::vector<int32_t> ids2(3);
  r.read_f32("layer.a", a2.data(), 6);
  r.read_f32("b", b2.data(), 5);
  r.read_i32("ids", ids2.data(), 3);
  EXPECT_EQ(a2, a);
  EXPECT_EQ(b2, b);
  EXPECT_EQ(ids2, ids);
  EXPECT_EQ(r.info("empty").shape, (std::vector<int64_t>{0, 4}));
}

TEST(Safetensors, ReadsAHandAssembledFile) {
  std::string dir = scratch_dir("st_hand");
  // Tensors stored out of name order, BF16 entry present (not read).
  std::string header =
      R"({"z":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("a":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]},"__metadata__":{"k":"v"}})";
  write_bytes(dir + "/h.safetensors",
              with_header(header, floats({1.5f, -2.0f}) + std::string("\x80\x3f\x00\x40", 4)));
  SafetensorsReader r(dir + "/h.safetensors");
  float z[2];
  r.read_f32("z", z, 2);
  EXPECT_EQ(z[0], 1.5f);
  EXPECT_EQ(z[1], -2.0f);
  EXPECT_EQ(r.info("a").dtype, "BF16");
  EXPECT_EQ(r.metadata().at("k"), "v");
  try {
    float x[2];
    r.read_f32("a", x, 2);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"a\" has dtype BF16, expected F32"), std::string::npos)
        << e.what();
  }
}

void expect_reader_error(const std::string& path, const std::string& bytes,
                         const std::vector<std::string>& parts) {
  write_bytes(path, bytes);
  try {
    SafetensorsReader r(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "missing \"" << p << "\" in: " << e.what();
  }
}

TEST(Safetensors, Corruptions) {
  std::string dir = scratch_dir("st_corrupt");
  std::string f = dir + "/c.safetensors";
  const std::string ok_header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data = floats({1, 2});

  expect_reader_error(f, "abc", {"c.safetensors", "too short"});
  std::string huge = with_header(ok_header, data);
  huge[0] = '\x7f';
  huge[3] = '\x01';
  expect_reader_error(f, huge, {"c.safetensors at byte 0", "header length"});
  expect_reader_error(f, with_header(R"({"w":{"dtype":"F32",)", data),
                      {"c.safetensors at byte", "invalid JSON"});
  expect_reader_error(f, with_header("[1, 2]", data), {"JSON object"});
  expect_reader_error(
      f,
      with_header(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data),
      {"\"w\" appears twice"});
  // Truncated data region.
  expect_reader_error(f, with_header(ok_header, data.substr(0, 6)),
                      {"tensor \"w\"", "data_offsets [0,8]", "truncated"});
  // Offsets do not match dtype x shape.
  expect_reader_error(
      f, with_header(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data),
      {"tensor \"w\"", "needs 12"});
  // Gap and overlap between tensors.
  expect_reader_error(
      f,
      with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data),
      {"tensor \"a\" starts at data byte 4, expected 0"});
  expect_reader_error(
      f,
      with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data),
      {"starts at data byte 4, expected 8"});
  // Trailing bytes after the last tensor.
  expect_reader_error(f, with_header(ok_header, data + "xxxx"), {"trailing bytes"});
  expect_reader_error(
      f, with_header(R"({"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", data),
      {"tensor \"w\"", "unknown dtype \"F33\""});
  expect_reader_error(
      f, with_header(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data),
      {"tensor \"w\"", "non-negative"});
  expect_reader_error(f, with_header(R"({"w":{"dtype":"F32"}})", data),
                      {"tensor \"w\"", "expected {"});
  expect_reader_error(
      f, with_header(R"({"__metadata__":{"k":1},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                     data),
      {"metadata values must be strings"});
}

// nlohmann's parser recurses per nesting level: a header of 100000 '['
// overflowed the stack (SIGSEGV). The nesting is bounded before parsing.
TEST(Safetensors, DeeplyNestedHeaderIsAnError) {
  std::string dir = scratch_dir("st_deep");
  std::string f = dir + "/c.safetensors";
  const std::string deep =
      R"({"w":)" + std::string(100000, '[') + std::string(100000, ']') + "}";
  expect_reader_error(f, with_header(deep, ""),
                      {"c.safetensors at byte " + std::to_string(8 + 5 + 63),
                       "JSON nested deeper than 64 levels"});
  expect_reader_error(f, with_header("{" + std::string(100000, '['), ""),
                      {"c.safetensors at byte 72", "nested deeper"});
}

TEST(Safetensors, WriterRejectsBadInput) {
  std::string dir = scratch_dir("st_writer");
  float x = 0;
  EXPECT_THROW(write_safetensors(dir + "/a", {{"w", {1}, &x}, {"w", {1}, &x}}), Error);
  EXPECT_THROW(write_safetensors(dir + "/a", {{"__metadata__", {1}, &x}}), Error);
  EXPECT_THROW(write_safetensors(dir + "/a", {{"w", {1}, &x, "BF16"}}), Error);
  EXPECT_FALSE(std::filesystem::exists(dir + "/a"));
}

}  // namespace
}  // namespace mtc::rt
