// Checkpoint directories: atomic save, resolve, validate, load (keeping a
// rank's slice of split tensors); the --dump-grads file. Layout and
// guarantees: mtc/rt/checkpoint.h.
#include "mtc/rt/checkpoint.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <vector>
#include <unistd.h>

#include "mtc/rt/grid_comm.h"
#include "mtc/rt/lr_schedule.h"
#include "mtc/rt/safetensors.h"

namespace mtc::rt {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

json config_summary(const ProgramDesc& p) {
  const TrainConfig& t = p.train;
  return {{"model_name", p.model_name},
          {"target", p.target},
          {"num_params", p.num_param_elems},
          {"num_param_tensors", p.params.size()},
          {"micro_batch", t.micro_batch},
          {"seq_length", t.seq_length},
          {"vocab_size", t.vocab_size},
          {"num_microbatches", t.num_microbatches},
          {"global_batch", t.global_batch},
          {"lr", t.lr},
          {"min_lr", t.min_lr},
          {"warmup_steps", t.warmup_steps},
          {"decay", lr_decay_name(t.decay)},
          {"beta1", t.beta1},
          {"beta2", t.beta2},
          {"eps", t.eps},
          {"weight_decay", t.weight_decay},
          {"grad_clip", t.grad_clip}};
}

// The tensors a file must hold: name -> shape, in program order.
using Expected = std::vector<std::pair<std::string, std::vector<int64_t>>>;

Expected model_tensors(const ProgramDesc& p) {
  Expected e;
  for (const ParamDesc& d : p.params) e.emplace_back(d.name, d.shape);
  return e;
}

Expected optimizer_tensors(const ProgramDesc& p) {
  Expected e;
  for (const ParamDesc& d : p.params) {
    e.emplace_back(d.name + ".exp_avg", d.shape);
    e.emplace_back(d.name + ".exp_avg_sq", d.shape);
  }
  return e;
}

std::string name_list(const std::vector<std::string>& names) {
  constexpr size_t kShown = 10;
  std::string s;
  for (size_t i = 0; i < names.size() && i < kShown; ++i)
    s += (i ? ", " : "") + names[i];
  if (names.size() > kShown)
    s += ", ... and " + std::to_string(names.size() - kShown) + " more";
  return s;
}

// Throws Error describing the first mismatch and the missing/unexpected names.
void check_tensors(const SafetensorsReader& file, const Expected& expected) {
  std::string first;
  std::vector<std::string> missing, unexpected;
  std::set<std::string> wanted;
  for (const auto& [name, shape] : expected) {
    wanted.insert(name);
    if (!file.has(name)) {
      missing.push_back(name);
      continue;
    }
    const TensorInfo& t = file.info(name);
    if (first.empty() && (t.dtype != "F32" || t.shape != shape))
      first = "tensor \"" + name + "\" is " + t.dtype + " " +
              shape_string(t.shape) + ", the program expects F32 " +
              shape_string(shape);
  }
  for (const auto& [name, info] : file.tensors())
    if (!wanted.count(name)) unexpected.push_back(name);
  if (first.empty() && missing.empty() && unexpected.empty()) return;
  std::string msg = file.path() + " does not match the program";
  if (!first.empty()) msg += "\n  first mismatch: " + first;
  if (!missing.empty())
    msg += "\n  missing (" + std::to_string(missing.size()) + "): " + name_list(missing);
  if (!unexpected.empty())
    msg += "\n  unexpected (" + std::to_string(unexpected.size()) +
           "): " + name_list(unexpected);
  throw Error(msg);
}

// state.json's fields, each read with its type and range checked; errors
// name the file and the field ("data.seq_length").
class StateReader {
 public:
  StateReader(const json& j, std::string path) : j_(j), path_(std::move(path)) {}

  const json* find(const std::string& field) const {
    const json* at = &j_;
    size_t begin = 0;
    while (true) {
      size_t dot = field.find('.', begin);
      std::string key = field.substr(begin, dot - begin);
      if (!at->is_object())
        throw Error(path_ + ": field \"" + field.substr(0, begin - 1) + "\" must be an object, got " +
                    at->dump());
      auto it = at->find(key);
      if (it == at->end()) return nullptr;
      at = &*it;
      if (dot == std::string::npos) return at;
      begin = dot + 1;
    }
  }
  const json& need(const std::string& field) const {
    const json* v = find(field);
    if (v == nullptr) throw Error(path_ + ": missing field \"" + field + "\"");
    return *v;
  }
  [[noreturn]] void bad(const std::string& field, const json& v, const std::string& want) const {
    throw Error(path_ + ": field \"" + field + "\" must be " + want + ", got " + v.dump());
  }
  int64_t integer(const std::string& field, int64_t min, int64_t fallback, bool required) const {
    const json* v = required ? &need(field) : find(field);
    if (v == nullptr) return fallback;
    if (!v->is_number_integer() || (v->is_number_unsigned() && v->get<uint64_t>() > INT64_MAX) ||
        v->get<int64_t>() < min)
      bad(field, *v, "an integer >= " + std::to_string(min));
    return v->get<int64_t>();
  }
  uint64_t unsigned_integer(const std::string& field) const {
    const json& v = need(field);
    if (!v.is_number_unsigned()) bad(field, v, "a non-negative integer");
    return v.get<uint64_t>();
  }
  double number(const std::string& field) const {
    const json& v = need(field);
    if (!v.is_number()) bad(field, v, "a number");
    return v.get<double>();
  }
  bool boolean(const std::string& field) const {
    const json& v = need(field);
    if (!v.is_boolean()) bad(field, v, "true or false");
    return v.get<bool>();
  }
  std::string string(const std::string& field, bool required) const {
    const json* v = required ? &need(field) : find(field);
    if (v == nullptr) return "";
    if (!v->is_string()) bad(field, *v, "a string");
    return v->get<std::string>();
  }
  const std::string& path() const { return path_; }

 private:
  const json& j_;
  std::string path_;
};

CheckpointState read_state(const std::string& step_dir) {
  std::string path = step_dir + "/state.json";
  const std::string text = read_file(path);
  check_json_depth(text, path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(path + ": invalid JSON at byte " + std::to_string(e.byte));
  } catch (const json::exception& e) {
    // A number out of range (1e400) and the like.
    throw Error(path + ": invalid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw Error(path + ": not an mtc checkpoint state (a JSON object)");
  const StateReader r(j, path);
  if (r.string("format", false) != "mtc-checkpoint")
    throw Error(path + ": not an mtc checkpoint state (\"format\" must be "
                "\"mtc-checkpoint\")");
  auto version = r.integer("format_version", INT64_MIN, 0, true);
  if (version != kCheckpointFormatVersion)
    throw Error(path + ": format_version " + std::to_string(version) +
                " is not supported (this runtime reads version " +
                std::to_string(kCheckpointFormatVersion) + ")");
  CheckpointState s;
  s.step = r.integer("step", 0, 0, true);
  s.consumed_samples = r.integer("consumed_samples", 0, 0, true);
  s.seed = r.unsigned_integer("seed");
  s.has_optimizer = r.boolean("has_optimizer");
  s.data = r.string("data.path", false);
  s.split = r.string("data.split", false);
  s.epoch = r.integer("data.epoch", 0, 0, false);
  s.epoch_index = r.integer("data.index", 0, 0, false);
  s.seq_length = r.integer("data.seq_length", 0, 0, false);
  s.global_batch = r.integer("data.global_batch", 0, 0, false);
  s.train_steps = r.integer("train_steps", 0, 0, false);
  s.decay_steps = r.integer("decay_steps", 0, 0, false);
  // Checkpoints written before the schedule was stored have none.
  if (r.find("schedule") != nullptr) {
    LrSchedule& l = s.schedule;
    l.lr = r.number("schedule.lr");
    l.min_lr = r.number("schedule.min_lr");
    l.warmup_steps = r.integer("schedule.warmup_steps", 0, 0, true);
    l.decay_steps = r.integer("schedule.decay_steps", 0, 0, true);
    const std::string decay = r.string("schedule.decay", true);
    if (!parse_lr_decay(decay, &l.decay))
      r.bad("schedule.decay", r.need("schedule.decay"), "\"constant\", \"linear\" or \"cosine\"");
    if (std::string why = check_lr_schedule(l); !why.empty())
      throw Error(path + ": field \"schedule\": " + why);
    s.has_schedule = true;
  }
  return s;
}

json state_json(const ProgramDesc& program, const CheckpointState& s, bool has_opt) {
  const LrSchedule& l = s.schedule;
  json j = {{"format", "mtc-checkpoint"},
            {"format_version", kCheckpointFormatVersion},
            {"step", s.step},
            {"consumed_samples", s.consumed_samples},
            {"seed", s.seed},
            {"has_optimizer", has_opt},
            {"train_steps", s.train_steps},
            {"decay_steps", s.decay_steps},
            {"data", {{"path", s.data},
                      {"split", s.split},
                      {"epoch", s.epoch},
                      {"index", s.epoch_index},
                      {"seq_length", s.seq_length},
                      {"global_batch", s.global_batch}}},
            {"config", config_summary(program)}};
  if (s.has_schedule)
    j["schedule"] = {{"lr", l.lr},
                     {"min_lr", l.min_lr},
                     {"warmup_steps", l.warmup_steps},
                     {"decay_steps", l.decay_steps},
                     {"decay", lr_decay_name(l.decay)}};
  return j;
}

// An existing DIR/step_NNNNNN that a save replaces must be one a save
// wrote: a directory (not a link) holding only checkpoint files.
void check_replaceable_step(const fs::path& step) {
  std::error_code ec;
  if (!fs::is_directory(fs::symlink_status(step, ec)))
    throw Error(step.string() + ": exists and is not a checkpoint step directory (a link or a "
                "file): refusing to replace it");
  for (const fs::directory_entry& e : fs::directory_iterator(step, ec)) {
    const std::string name = e.path().filename().string();
    if (name != "model.safetensors" && name != "optimizer.safetensors" && name != "state.json")
      throw Error(step.string() + ": holds \"" + name + "\", which a checkpoint does not: "
                  "refusing to replace it");
  }
  if (ec) throw Error(step.string() + ": cannot list (" + ec.message() + ")");
}

std::vector<TensorRef> refs(const ProgramDesc& p, const float* base,
                            const char* suffix) {
  std::vector<TensorRef> out;
  for (const ParamDesc& d : p.params)
    out.push_back({d.name + suffix, d.shape, base + d.offset, "F32"});
  return out;
}

}  // namespace

std::string checkpoint_step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%06lld", static_cast<long long>(step));
  return buf;
}

std::string save_checkpoint(const std::string& dir, const ProgramDesc& program,
                            const CheckpointState& state, const float* params,
                            const float* exp_avg, const float* exp_avg_sq) {
  for (const ParamDesc& d : program.params)
    if (d.numel != shape_numel(d.shape))
      throw Error("save_checkpoint: parameter \"" + d.name + "\" holds " +
                  std::to_string(d.numel) + " elements of its global shape " +
                  shape_string(d.shape) + ": pass the global layout (global_layout, "
                  "trainer.h) with the gathered tensors");
  const std::string name = checkpoint_step_name(state.step);
  const fs::path root(dir), final_dir = root / name;
  check_checkpoint_dir(dir);
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) throw Error(dir + ": cannot create the checkpoint directory (" + ec.message() + ")");
  // A fresh temporary step directory: never one that already exists.
  fs::path tmp;
  for (int i = 0; tmp.empty(); ++i) {
    fs::path p = root / ("." + name + ".tmp." + std::to_string(::getpid()) +
                         (i > 0 ? "." + std::to_string(i) : ""));
    if (fs::create_directory(p, ec)) tmp = p;
    else if (ec || i == 100)
      throw Error(p.string() + ": cannot create (" +
                  (ec ? ec.message() : std::string("exists")) + ")");
  }
  const fs::path old = tmp.string() + ".old";
  // Everything up to the rename into place writes only inside `tmp`, which
  // is removed again on any failure.
  try {
    std::map<std::string, std::string> meta = {
        {"format", "pt"},
        {"mtc.model", program.model_name},
        {"mtc.step", std::to_string(state.step)}};
    write_safetensors((tmp / "model.safetensors").string(),
                      refs(program, params, ""), meta);
    bool has_opt = exp_avg != nullptr && exp_avg_sq != nullptr;
    if (has_opt) {
      std::vector<TensorRef> t;
      for (const ParamDesc& d : program.params) {
        t.push_back({d.name + ".exp_avg", d.shape, exp_avg + d.offset, "F32"});
        t.push_back({d.name + ".exp_avg_sq", d.shape, exp_avg_sq + d.offset, "F32"});
      }
      write_safetensors((tmp / "optimizer.safetensors").string(), t, meta);
    }
    write_file_atomic((tmp / "state.json").string(),
                      state_json(program, state, has_opt).dump(2) + "\n");
    fsync_path(tmp.string());

    bool moved_aside = false;
    if (fs::exists(fs::symlink_status(final_dir, ec))) {
      check_replaceable_step(final_dir);
      fs::rename(final_dir, old, ec);
      if (ec) throw Error(final_dir.string() + ": cannot move the previous checkpoint aside (" + ec.message() + ")");
      moved_aside = true;
    }
    fs::rename(tmp, final_dir, ec);
    if (ec) {
      const std::string why = ec.message();
      if (moved_aside) fs::rename(old, final_dir, ec);
      throw Error(final_dir.string() + ": cannot rename " + tmp.string() + " into place (" + why + ")");
    }
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  fsync_path(root.string());
  write_file_atomic((root / "latest").string(), name + "\n");
  fsync_path(root.string());
  fs::remove_all(old, ec);
  return final_dir.string();
}

void check_checkpoint_dir(const std::string& dir) {
  const fs::path root(dir);
  std::error_code ec;
  const fs::file_status st = fs::status(root, ec);
  if (st.type() == fs::file_type::not_found) return;
  if (st.type() != fs::file_type::directory)
    throw Error(root.string() + ": exists and is not a directory; give a directory for "
                "checkpoints");
  std::string foreign;
  for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (name == "latest" || (name.rfind("step_", 0) == 0 && e.is_directory(ec))) return;
    if (foreign.empty()) foreign = name;
  }
  if (ec) throw Error(root.string() + ": cannot list (" + ec.message() + ")");
  if (!foreign.empty())
    throw Error(root.string() + ": not empty and not an mtc checkpoint directory (it holds \"" +
                foreign + "\" but no latest or step_NNNNNN): refusing to write checkpoints "
                "into it; give a new or empty directory");
}

bool checkpoint_exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(fs::path(path) / "latest", ec) ||
         fs::exists(fs::path(path) / "state.json", ec);
}

std::string resolve_checkpoint(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;
  if (fs::is_regular_file(p / "latest", ec)) {
    std::string name = read_file((p / "latest").string());
    while (!name.empty() && (name.back() == '\n' || name.back() == '\r' || name.back() == ' '))
      name.pop_back();
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos)
      throw Error((p / "latest").string() + ": expected a step directory name like "
                  "step_000100, got \"" + name + "\"");
    fs::path step = p / name;
    if (!fs::is_regular_file(step / "state.json", ec))
      throw Error((p / "latest").string() + " names " + step.string() +
                  ", which has no state.json");
    return step.string();
  }
  if (fs::is_regular_file(p / "state.json", ec)) return p.string();
  throw Error(path + ": not a checkpoint (neither " + (p / "latest").string() +
              " nor " + (p / "state.json").string() + " exists)");
}

CheckpointState inspect_checkpoint(const std::string& step_dir,
                                   const ProgramDesc& program) {
  CheckpointState s = read_state(step_dir);
  check_tensors(SafetensorsReader(step_dir + "/model.safetensors"),
                model_tensors(program));
  if (s.has_optimizer)
    check_tensors(SafetensorsReader(step_dir + "/optimizer.safetensors"),
                  optimizer_tensors(program));
  return s;
}

CheckpointState load_checkpoint(const std::string& step_dir,
                                const ProgramDesc& program, float* params,
                                float* exp_avg, float* exp_avg_sq, const GridIndex& at,
                                const ProgramDesc* whole) {
  CheckpointState s = read_state(step_dir);
  SafetensorsReader model(step_dir + "/model.safetensors");
  // The file holds the whole model; a pipeline stage reads its part.
  const ProgramDesc& expected = whole != nullptr ? *whole : program;
  check_tensors(model, model_tensors(expected));
  // One tensor's global data at a time when this rank holds a slice of it.
  std::vector<float> global;
  auto read = [&](const SafetensorsReader& file, const std::string& name, const ParamDesc& d,
                  float* base) {
    const ParamSlices slices = param_slices(d, program.grid, at);
    if (!slices.split()) {
      file.read_f32(name, base + d.offset, d.numel);
      return;
    }
    global.resize(static_cast<size_t>(slices.first.global_numel()));
    file.read_f32(name, global.data(), slices.first.global_numel());
    take_slices(slices, global.data(), base + d.offset);
  };
  if (s.has_optimizer) {
    SafetensorsReader opt(step_dir + "/optimizer.safetensors");
    check_tensors(opt, optimizer_tensors(expected));
    if (exp_avg != nullptr && exp_avg_sq != nullptr) {
      for (const ParamDesc& d : program.params) {
        read(opt, d.name + ".exp_avg", d, exp_avg);
        read(opt, d.name + ".exp_avg_sq", d, exp_avg_sq);
      }
    }
  }
  for (const ParamDesc& d : program.params) read(model, d.name, d, params);
  return s;
}

void write_grad_dump(const std::string& path, const ProgramDesc& program, const float* grads,
                     const int32_t* tokens, const int32_t* targets, const GradDumpInfo& info) {
  std::vector<TensorRef> tensors;
  for (const ParamDesc& d : program.params) {
    if (d.name == "batch.tokens" || d.name == "batch.targets")
      throw Error("--dump-grads: parameter name \"" + d.name +
                  "\" collides with the batch tensors of the dump");
    if (d.numel != shape_numel(d.shape))
      throw Error("write_grad_dump: parameter \"" + d.name + "\" is a slice of " +
                  shape_string(d.shape) + ": pass the global layout with gathered tensors");
    tensors.push_back({d.name, d.shape, grads + d.offset, "F32"});
  }
  const std::vector<int64_t> bshape = {info.num_microbatches * info.micro_batch,
                                       info.seq_length};
  tensors.push_back({"batch.tokens", bshape, tokens, "I32"});
  tensors.push_back({"batch.targets", bshape, targets, "I32"});
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", info.loss);
  std::string losses = "[";
  for (size_t i = 0; i < info.microbatch_losses.size(); ++i) {
    char b[32];
    std::snprintf(b, sizeof b, "%.9g", static_cast<double>(info.microbatch_losses[i]));
    losses += (i ? ", " : "") + std::string(b);
  }
  losses += "]";
  std::map<std::string, std::string> meta = {
      {"format", "mtc-dump-grads"},
      {"mtc.model", info.model},
      {"mtc.step", std::to_string(info.step)},
      {"mtc.seed", std::to_string(info.seed)},
      {"mtc.loss", buf},
      {"mtc.microbatch_losses", losses},
      {"mtc.micro_batch", std::to_string(info.micro_batch)},
      {"mtc.num_microbatches", std::to_string(info.num_microbatches)},
      {"mtc.seq_length", std::to_string(info.seq_length)},
      {"mtc.grad_scale", "gradients of the mean loss over the global batch"}};
  write_safetensors(path, tensors, meta);
}

}  // namespace mtc::rt
