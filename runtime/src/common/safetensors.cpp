// safetensors writer and validating reader. Format and checks:
// mtc/rt/safetensors.h.
#include "mtc/rt/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <set>

namespace mtc::rt {

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

// Bytes per element of each safetensors dtype; 0 if unknown.
int64_t dtype_size(const std::string& dtype) {
  static const std::map<std::string, int64_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

std::string q(const std::string& s) { return json(s).dump(); }

}  // namespace

int64_t shape_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

void write_safetensors(const std::string& path,
                       const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  uint64_t offset = 0;
  for (const TensorRef& t : tensors) {
    if (t.name == "__metadata__" || t.name.empty())
      throw Error(path + ": tensor name " + q(t.name) + " is reserved or empty");
    if (header.contains(t.name))
      throw Error(path + ": tensor " + q(t.name) + " is written twice");
    int64_t size = dtype_size(t.dtype);
    if (t.dtype != "F32" && t.dtype != "I32")
      throw Error(path + ": tensor " + q(t.name) + ": the writer supports F32 "
                  "and I32, not " + q(t.dtype));
    for (int64_t d : t.shape)
      if (d < 0)
        throw Error(path + ": tensor " + q(t.name) + " has negative shape " +
                    shape_string(t.shape));
    uint64_t bytes = static_cast<uint64_t>(shape_numel(t.shape) * size);
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t n = text.size();

  OutputFile out(path);
  out.write(&n, 8);
  out.write(text);
  for (const TensorRef& t : tensors)
    out.write(t.data, static_cast<size_t>(shape_numel(t.shape) * dtype_size(t.dtype)));
  out.commit();
}

// ---------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------

SafetensorsReader::SafetensorsReader(const std::string& path) : file_(path) {
  const uint64_t size = file_.size();
  if (size < 8)
    throw Error(path + ": " + std::to_string(size) +
                " bytes, too short for a safetensors header length (8 bytes)");
  uint64_t n = load_u64_le(file_.data());
  if (n > kMaxHeaderBytes || n > size - 8)
    throw Error(path + " at byte 0: header length " + std::to_string(n) +
                " exceeds the file (" + std::to_string(size) +
                " bytes) or the 100 MB limit (truncated or not safetensors)");
  data_start_ = 8 + n;
  const char* text = reinterpret_cast<const char*>(file_.data() + 8);
  if (n == 0 || text[0] != '{')
    throw Error(path + " at byte 8: the header must be a JSON object");

  std::string duplicate;
  json::parser_callback_t check_duplicates =
      [&duplicate, seen = std::set<std::string>()](
          int depth, json::parse_event_t event, json& parsed) mutable {
        if (event == json::parse_event_t::key && depth == 1 &&
            !seen.insert(parsed.get<std::string>()).second && duplicate.empty())
          duplicate = parsed.get<std::string>();
        return true;
      };
  check_json_depth(std::string_view(text, n), path, 8);
  json header;
  try {
    header = json::parse(text, text + n, check_duplicates);
  } catch (const json::parse_error& e) {
    throw Error(path + " at byte " + std::to_string(8 + e.byte) +
                ": invalid JSON header (" + e.what() + ")");
  } catch (const json::exception& e) {
    // A number out of range (1e400), a key that is not a string, ...
    throw Error(path + ": invalid JSON header (" + e.what() + ")");
  }
  if (!duplicate.empty())
    throw Error(path + ": tensor " + q(duplicate) + " appears twice in the header");
  if (!header.is_object()) throw Error(path + ": the header is not a JSON object");

  const uint64_t data_bytes = size - data_start_;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  std::vector<std::string> range_names;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        throw Error(path + ": __metadata__ must be an object of strings");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          throw Error(path + ": __metadata__[" + q(key) + "] is " + value.dump() +
                      ", metadata values must be strings");
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    std::string where = path + ": tensor " + q(name);
    if (!entry.is_object() || !entry.contains("dtype") ||
        !entry["dtype"].is_string() || !entry.contains("shape") ||
        !entry["shape"].is_array() || !entry.contains("data_offsets") ||
        !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2)
      throw Error(where + ": expected {\"dtype\": str, \"shape\": [...], "
                  "\"data_offsets\": [begin, end]}, got " + entry.dump());
    TensorInfo info;
    info.dtype = entry["dtype"].get<std::string>();
    int64_t esize = dtype_size(info.dtype);
    if (esize == 0) throw Error(where + ": unknown dtype " + q(info.dtype));
    uint64_t numel = 1;
    for (const json& d : entry["shape"]) {
      if (!d.is_number_unsigned())
        throw Error(where + ": shape " + entry["shape"].dump() +
                    " must hold non-negative integers");
      uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > data_bytes / dim)
        throw Error(where + ": shape " + entry["shape"].dump() +
                    " is larger than the data region");
      numel *= dim;
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    const json& off = entry["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw Error(where + ": data_offsets " + off.dump() +
                  " must be non-negative integers");
    info.begin = off[0].get<uint64_t>();
    info.end = off[1].get<uint64_t>();
    if (info.begin > info.end || info.end > data_bytes)
      throw Error(where + ": data_offsets " + off.dump() + " lie outside the " +
                  std::to_string(data_bytes) + "-byte data region (file bytes " +
                  std::to_string(data_start_) + ".." + std::to_string(size) +
                  "; truncated file?)");
    if (info.end - info.begin != numel * static_cast<uint64_t>(esize))
      throw Error(where + ": data_offsets " + off.dump() + " hold " +
                  std::to_string(info.end - info.begin) + " bytes, but " +
                  info.dtype + " " + shape_string(info.shape) + " needs " +
                  std::to_string(numel * esize));
    ranges.emplace_back(info.begin, info.end);
    range_names.push_back(name);
    tensors_.emplace(name, std::move(info));
  }
  // The tensors must tile [0, data_bytes) exactly.
  std::vector<size_t> order(ranges.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&ranges](size_t a, size_t b) {
    return ranges[a] < ranges[b];
  });
  uint64_t expect = 0;
  for (size_t i : order) {
    if (ranges[i].first != expect)
      throw Error(path + ": tensor " + q(range_names[i]) + " starts at data byte " +
                  std::to_string(ranges[i].first) + ", expected " +
                  std::to_string(expect) + " (tensors overlap or leave a gap)");
    expect = ranges[i].second;
  }
  if (expect != data_bytes)
    throw Error(path + ": the tensors cover " + std::to_string(expect) +
                " data bytes but the file has " + std::to_string(data_bytes) +
                " after the header (trailing bytes or truncation)");
}

const TensorInfo& SafetensorsReader::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end())
    throw Error(path() + ": no tensor " + q(name));
  return it->second;
}

void SafetensorsReader::read_raw(const std::string& name, const char* dtype,
                                 void* out, int64_t numel) const {
  const TensorInfo& t = info(name);
  if (t.dtype != dtype)
    throw Error(path() + ": tensor " + q(name) + " has dtype " + t.dtype +
                ", expected " + dtype);
  if (shape_numel(t.shape) != numel)
    throw Error(path() + ": tensor " + q(name) + " has " +
                std::to_string(shape_numel(t.shape)) + " elements " +
                shape_string(t.shape) + ", expected " + std::to_string(numel));
  if (t.end > t.begin)  // memcpy with a null `out` is undefined even for 0 bytes
    std::memcpy(out, file_.data() + data_start_ + t.begin, t.end - t.begin);
}

void SafetensorsReader::read_f32(const std::string& name, float* out,
                                 int64_t numel) const {
  read_raw(name, "F32", out, numel);
}

void SafetensorsReader::read_i32(const std::string& name, int32_t* out,
                                 int64_t numel) const {
  read_raw(name, "I32", out, numel);
}

}  // namespace mtc::rt
