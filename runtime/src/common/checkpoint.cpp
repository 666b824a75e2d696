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

template <typename T>
T get_field(const json& j, const char* key, const std::string& path) {
  if (!j.contains(key)) throw Error(path + ": missing field \"" + key + "\"");
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    throw Error(path + ": field \"" + key + "\" has the wrong type: " +
                j.at(key).dump());
  }
}

CheckpointState read_state(const std::string& step_dir) {
  std::string path = step_dir + "/state.json";
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::parse_error& e) {
    throw Error(path + ": invalid JSON at byte " + std::to_string(e.byte));
  }
  if (!j.is_object() || j.value("format", std::string()) != "mtc-checkpoint")
    throw Error(path + ": not an mtc checkpoint state (\"format\" must be "
                "\"mtc-checkpoint\")");
  auto version = get_field<int64_t>(j, "format_version", path);
  if (version != kCheckpointFormatVersion)
    throw Error(path + ": format_version " + std::to_string(version) +
                " is not supported (this runtime reads version " +
                std::to_string(kCheckpointFormatVersion) + ")");
  CheckpointState s;
  s.step = get_field<int64_t>(j, "step", path);
  s.consumed_samples = get_field<int64_t>(j, "consumed_samples", path);
  s.seed = get_field<uint64_t>(j, "seed", path);
  s.has_optimizer = get_field<bool>(j, "has_optimizer", path);
  if (s.step < 0 || s.consumed_samples < 0)
    throw Error(path + ": step and consumed_samples must be >= 0");
  if (j.contains("data") && j["data"].is_object()) {
    const json& d = j["data"];
    s.data = d.value("path", std::string());
    s.split = d.value("split", std::string());
    s.epoch = d.value("epoch", int64_t{0});
    s.epoch_index = d.value("index", int64_t{0});
    s.seq_length = d.value("seq_length", int64_t{0});
    s.global_batch = d.value("global_batch", int64_t{0});
  }
  s.train_steps = j.value("train_steps", int64_t{0});
  s.decay_steps = j.value("decay_steps", int64_t{0});
  return s;
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
  const std::string pid = std::to_string(::getpid());
  const fs::path root(dir), final_dir = root / name,
      tmp = root / ("." + name + ".tmp." + pid),
      old = root / ("." + name + ".old." + pid);
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) throw Error(dir + ": cannot create the checkpoint directory (" + ec.message() + ")");
  fs::remove_all(tmp, ec);
  if (!fs::create_directory(tmp, ec) || ec)
    throw Error(tmp.string() + ": cannot create (" + ec.message() + ")");

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
  json j = {{"format", "mtc-checkpoint"},
            {"format_version", kCheckpointFormatVersion},
            {"step", state.step},
            {"consumed_samples", state.consumed_samples},
            {"seed", state.seed},
            {"has_optimizer", has_opt},
            {"train_steps", state.train_steps},
            {"decay_steps", state.decay_steps},
            {"data", {{"path", state.data},
                      {"split", state.split},
                      {"epoch", state.epoch},
                      {"index", state.epoch_index},
                      {"seq_length", state.seq_length},
                      {"global_batch", state.global_batch}}},
            {"config", config_summary(program)}};
  write_file_atomic((tmp / "state.json").string(), j.dump(2) + "\n");
  fsync_path(tmp.string());

  if (fs::exists(final_dir)) {
    fs::rename(final_dir, old, ec);
    if (ec) throw Error(final_dir.string() + ": cannot move the previous checkpoint aside (" + ec.message() + ")");
  }
  fs::rename(tmp, final_dir, ec);
  if (ec) throw Error(final_dir.string() + ": cannot rename " + tmp.string() + " into place (" + ec.message() + ")");
  fsync_path(root.string());
  write_file_atomic((root / "latest").string(), name + "\n");
  fsync_path(root.string());
  fs::remove_all(old, ec);
  return final_dir.string();
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
    if (name.empty() || name.find('/') != std::string::npos)
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
                                float* exp_avg, float* exp_avg_sq, const GridIndex& at) {
  CheckpointState s = read_state(step_dir);
  SafetensorsReader model(step_dir + "/model.safetensors");
  check_tensors(model, model_tensors(program));
  // One tensor's global data at a time when this rank holds a slice of it.
  std::vector<float> global;
  auto read = [&](const SafetensorsReader& file, const std::string& name, const ParamDesc& d,
                  float* base) {
    const ParamSlice slice = param_slice(d, program.grid, at);
    if (slice.parts == 1) {
      file.read_f32(name, base + d.offset, d.numel);
      return;
    }
    global.resize(static_cast<size_t>(slice.global_numel()));
    file.read_f32(name, global.data(), slice.global_numel());
    take_slice(slice, global.data(), base + d.offset);
  };
  if (s.has_optimizer) {
    SafetensorsReader opt(step_dir + "/optimizer.safetensors");
    check_tensors(opt, optimizer_tensors(program));
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
