// Tests of checkpoint directories: the files and `latest` written, exact
// round trip of parameters and moments, independence from the parameters'
// order/offsets, and validation errors that name the first mismatching
// tensor and list missing and unexpected names.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <set>

#include "mtc/rt/checkpoint.h"
#include "mtc/rt/safetensors.h"
#include "train_test_support.h"

namespace mtc::rt {
namespace {

using testing::read_bytes;
using testing::scratch_dir;
using testing::write_bytes;

std::vector<float> random_floats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = normal(rng);
  return v;
}

CheckpointState some_state(int64_t step) {
  CheckpointState s;
  s.step = step;
  s.consumed_samples = step * 4;
  s.epoch = 1;
  s.epoch_index = 3;
  s.seed = 99;
  s.data = "corpus";
  s.split = "98,2";
  s.seq_length = 8;
  s.global_batch = 4;
  s.train_steps = 20;
  s.decay_steps = 20;
  return s;
}

std::string expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "missing \"" << p << "\" in: " << e.what();
    return e.what();
  }
  return {};
}

TEST(Checkpoint, SaveWritesStepDirectoryAndLatest) {
  std::string dir = scratch_dir("ckpt_save");
  ProgramDesc p = testing::tiny::program();
  auto params = random_floats(p.num_param_elems, 1);
  auto m = random_floats(p.num_param_elems, 2), v = random_floats(p.num_param_elems, 3);
  std::string step_dir = save_checkpoint(dir, p, some_state(100), params.data(), m.data(), v.data());
  EXPECT_EQ(step_dir, dir + "/step_000100");
  EXPECT_EQ(read_bytes(dir + "/latest"), "step_000100\n");
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "state.json"})
    EXPECT_TRUE(std::filesystem::is_regular_file(step_dir + "/" + f)) << f;
  // Nothing temporary is left behind.
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    ++entries;
    EXPECT_EQ(e.path().filename().string().rfind(".", 0), std::string::npos) << e.path();
  }
  EXPECT_EQ(entries, 2);

  SafetensorsReader model(step_dir + "/model.safetensors");
  std::vector<float> head(p.params[1].numel);
  model.read_f32("head.weight", head.data(), p.params[1].numel);
  EXPECT_TRUE(std::equal(head.begin(), head.end(), params.begin() + p.params[1].offset));
  SafetensorsReader opt(step_dir + "/optimizer.safetensors");
  EXPECT_TRUE(opt.has("wte.exp_avg"));
  EXPECT_TRUE(opt.has("head.bias.exp_avg_sq"));
  EXPECT_EQ(opt.tensors().size(), 6u);

  auto state = nlohmann::json::parse(read_bytes(step_dir + "/state.json"));
  EXPECT_EQ(state["format"], "mtc-checkpoint");
  EXPECT_EQ(state["format_version"], 1);
  EXPECT_EQ(state["step"], 100);
  EXPECT_EQ(state["consumed_samples"], 400);
  EXPECT_EQ(state["data"]["epoch"], 1);
  EXPECT_EQ(state["data"]["index"], 3);
  EXPECT_EQ(state["config"]["model_name"], "tiny-linear-softmax");

  // A later step moves `latest`; re-saving a step replaces it.
  save_checkpoint(dir, p, some_state(200), params.data(), m.data(), v.data());
  EXPECT_EQ(read_bytes(dir + "/latest"), "step_000200\n");
  auto params2 = random_floats(p.num_param_elems, 5);
  save_checkpoint(dir, p, some_state(200), params2.data(), m.data(), v.data());
  std::vector<float> back(p.num_param_elems);
  load_checkpoint(resolve_checkpoint(dir), p, back.data(), nullptr, nullptr);
  EXPECT_EQ(back, params2);
}

TEST(Checkpoint, RoundTripIsExactAndLayoutIndependent) {
  std::string dir = scratch_dir("ckpt_roundtrip");
  ProgramDesc p = testing::tiny::program();
  auto params = random_floats(p.num_param_elems, 7);
  auto m = random_floats(p.num_param_elems, 8), v = random_floats(p.num_param_elems, 9);
  save_checkpoint(dir, p, some_state(10), params.data(), m.data(), v.data());

  // The same tensors in another order at other offsets (another layout).
  ProgramDesc q = p;
  std::swap(q.params[0], q.params[2]);
  int64_t off = 0;
  for (ParamDesc& d : q.params) {
    d.offset = off;
    off += d.numel;
  }
  std::vector<float> qp(off), qm(off), qv(off);
  CheckpointState s = load_checkpoint(resolve_checkpoint(dir), q, qp.data(), qm.data(), qv.data());
  EXPECT_EQ(s.step, 10);
  EXPECT_EQ(s.consumed_samples, 40);
  EXPECT_EQ(s.seed, 99u);
  EXPECT_EQ(s.split, "98,2");
  for (const ParamDesc& d : q.params) {
    const ParamDesc& orig = *std::find_if(p.params.begin(), p.params.end(),
                                          [&](const ParamDesc& x) { return x.name == d.name; });
    for (int64_t i = 0; i < d.numel; ++i) {
      ASSERT_EQ(qp[d.offset + i], params[orig.offset + i]) << d.name;
      ASSERT_EQ(qm[d.offset + i], m[orig.offset + i]) << d.name;
      ASSERT_EQ(qv[d.offset + i], v[orig.offset + i]) << d.name;
    }
  }
}

TEST(Checkpoint, ResolveRootOrStepDirectory) {
  std::string dir = scratch_dir("ckpt_resolve");
  ProgramDesc p = testing::tiny::program();
  auto params = random_floats(p.num_param_elems, 1);
  save_checkpoint(dir, p, some_state(5), params.data(), nullptr, nullptr);
  EXPECT_EQ(resolve_checkpoint(dir), dir + "/step_000005");
  EXPECT_EQ(resolve_checkpoint(dir + "/step_000005"), dir + "/step_000005");
  expect_error([&] { resolve_checkpoint(dir + "/nothing"); }, {"not a checkpoint", "latest"});
  write_bytes(dir + "/latest", "step_000777\n");
  expect_error([&] { resolve_checkpoint(dir); }, {"step_000777", "no state.json"});
}

TEST(Checkpoint, MismatchNamesTheTensor) {
  std::string dir = scratch_dir("ckpt_mismatch");
  ProgramDesc p = testing::tiny::program();
  auto params = random_floats(p.num_param_elems, 1);
  save_checkpoint(dir, p, some_state(5), params.data(), params.data(), params.data());
  const std::string step = resolve_checkpoint(dir);

  ProgramDesc shape = p;
  shape.params[1].shape = {testing::tiny::kD, testing::tiny::kV};  // transposed
  std::vector<float> buf(p.num_param_elems);
  expect_error([&] { load_checkpoint(step, shape, buf.data(), nullptr, nullptr); },
               {"model.safetensors does not match", "first mismatch: tensor \"head.weight\"",
                "F32 [16, 8]", "expects F32 [8, 16]"});

  ProgramDesc renamed = p;
  renamed.params[0].name = "embedding.weight";
  std::string msg = expect_error([&] { inspect_checkpoint(step, renamed); },
                                 {"missing (1): embedding.weight", "unexpected (1): wte"});
  EXPECT_EQ(msg.find("first mismatch"), std::string::npos) << msg;

  ProgramDesc fewer = p;
  fewer.params.pop_back();
  expect_error([&] { inspect_checkpoint(step, fewer); }, {"unexpected (1): head.bias"});

  // A model file holding an I32 tensor under a parameter's name.
  std::vector<int32_t> ints(testing::tiny::kV);
  write_safetensors(step + "/model.safetensors",
                    {{"wte", p.params[0].shape, params.data(), "F32"},
                     {"head.weight", p.params[1].shape, params.data(), "F32"},
                     {"head.bias", {testing::tiny::kV}, ints.data(), "I32"}});
  expect_error([&] { inspect_checkpoint(step, p); },
               {"first mismatch: tensor \"head.bias\" is I32 [16]"});

  // The optimizer file is validated the same way.
  write_safetensors(step + "/model.safetensors",
                    {{"wte", p.params[0].shape, params.data(), "F32"},
                     {"head.weight", p.params[1].shape, params.data(), "F32"},
                     {"head.bias", {testing::tiny::kV}, params.data(), "F32"}});
  std::filesystem::remove(step + "/optimizer.safetensors");
  expect_error([&] { inspect_checkpoint(step, p); }, {"optimizer.safetensors", "cannot open"});
}

TEST(Checkpoint, StateJsonIsChecked) {
  std::string dir = scratch_dir("ckpt_state");
  ProgramDesc p = testing::tiny::program();
  auto params = random_floats(p.num_param_elems, 1);
  std::string step = save_checkpoint(dir, p, some_state(5), params.data(), nullptr, nullptr);
  auto state = nlohmann::json::parse(read_bytes(step + "/state.json"));
  EXPECT_EQ(state["has_optimizer"], false);
  state["format_version"] = 2;
  write_bytes(step + "/state.json", state.dump());
  expect_error([&] { inspect_checkpoint(step, p); }, {"state.json", "format_version 2"});
  state["format_version"] = 1;
  state.erase("step");
  write_bytes(step + "/state.json", state.dump());
  expect_error([&] { inspect_checkpoint(step, p); }, {"state.json", "missing field \"step\""});
  write_bytes(step + "/state.json", "{oops");
  expect_error([&] { inspect_checkpoint(step, p); }, {"state.json", "invalid JSON"});
}

// Every field is read with its type and range checked; the error names the
// file and the field (it used to be nlohmann's "[json.exception.type_error.302]
// type must be string, but is number").
TEST(Checkpoint, StateJsonErrorsNameFileAndField) {
  std::string dir = scratch_dir("ckpt_state_fields");
  ProgramDesc p = testing::tiny::program();
  auto params = random_floats(p.num_param_elems, 1);
  CheckpointState saved = some_state(5);
  saved.has_schedule = true;
  saved.schedule = {1e-3, 1e-4, 2, 20, LrDecay::linear};
  std::string step = save_checkpoint(dir, p, saved, params.data(), nullptr, nullptr);
  const std::string path = step + "/state.json";
  const auto good = nlohmann::json::parse(read_bytes(path));
  CheckpointState back = inspect_checkpoint(step, p);
  EXPECT_TRUE(back.has_schedule);
  EXPECT_EQ(back.schedule.lr, 1e-3);
  EXPECT_EQ(back.schedule.min_lr, 1e-4);
  EXPECT_EQ(back.schedule.warmup_steps, 2);
  EXPECT_EQ(back.schedule.decay_steps, 20);
  EXPECT_EQ(back.schedule.decay, LrDecay::linear);

  struct Case {
    nlohmann::json::json_pointer at;
    nlohmann::json value;
    std::string message;
  };
  using ptr = nlohmann::json::json_pointer;
  const std::vector<Case> cases = {
      {ptr("/data/path"), 5, "field \"data.path\" must be a string, got 5"},
      {ptr("/format"), 1, "field \"format\" must be a string, got 1"},
      {ptr("/step"), "5", "field \"step\" must be an integer >= 0, got \"5\""},
      {ptr("/step"), -1, "field \"step\" must be an integer >= 0, got -1"},
      {ptr("/step"), 1.5, "field \"step\" must be an integer >= 0, got 1.5"},
      {ptr("/consumed_samples"), 18446744073709551615ull,
       "field \"consumed_samples\" must be an integer >= 0, got 18446744073709551615"},
      {ptr("/seed"), -3, "field \"seed\" must be a non-negative integer, got -3"},
      {ptr("/has_optimizer"), "no", "field \"has_optimizer\" must be true or false"},
      {ptr("/data"), 7, "field \"data\" must be an object, got 7"},
      {ptr("/data/seq_length"), nullptr, "field \"data.seq_length\" must be an integer"},
      {ptr("/schedule/lr"), "big", "field \"schedule.lr\" must be a number"},
      {ptr("/schedule/decay"), "sideways", "field \"schedule.decay\" must be \"constant\""},
      {ptr("/schedule/lr"), -1.0, "field \"schedule\": lr must be a positive number"},
      {ptr("/format_version"), "1", "field \"format_version\" must be an integer"},
  };
  for (const Case& c : cases) {
    auto j = good;
    j[c.at] = c.value;
    write_bytes(path, j.dump());
    expect_error([&] { inspect_checkpoint(step, p); }, {path + ": ", c.message});
  }
  // Nesting deep enough to overflow the parser's stack is refused first.
  write_bytes(path, "{\"data\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  expect_error([&] { inspect_checkpoint(step, p); },
               {path + " at byte 72", "JSON nested deeper than 64 levels"});
}

// `latest` names a directory inside the root, never outside it.
TEST(Checkpoint, LatestStaysInsideTheRoot) {
  std::string dir = scratch_dir("ckpt_latest");
  ProgramDesc p = testing::tiny::program();
  auto params = random_floats(p.num_param_elems, 1);
  save_checkpoint(dir, p, some_state(2), params.data(), nullptr, nullptr);  // a parent with state
  save_checkpoint(dir + "/ck", p, some_state(1), params.data(), nullptr, nullptr);
  for (const char* name : {"..", ".", "../ck/step_000001", ""}) {
    write_bytes(dir + "/ck/latest", std::string(name) + "\n");
    expect_error([&] { resolve_checkpoint(dir + "/ck"); },
                 {"ck/latest: expected a step directory name like step_000100"});
  }
}

// A save writes only where it may: never into someone else's non-empty
// directory, never over a step directory it did not write, and a failed
// save leaves no temporary directory behind.
TEST(Checkpoint, SaveRefusesWhatItDidNotWrite) {
  namespace fs = std::filesystem;
  std::string dir = scratch_dir("ckpt_foreign");
  ProgramDesc p = testing::tiny::program();
  auto params = random_floats(p.num_param_elems, 1);
  auto listing = [](const std::string& d) {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(d)) names.insert(e.path().filename().string());
    return names;
  };

  // A directory of other files (a home directory, `--save .`).
  fs::create_directories(dir + "/home");
  write_bytes(dir + "/home/notes.txt", "mine");
  expect_error([&] { save_checkpoint(dir + "/home", p, some_state(1), params.data(), nullptr,
                                     nullptr); },
               {dir + "/home: not empty and not an mtc checkpoint directory",
                "\"notes.txt\""});
  EXPECT_EQ(listing(dir + "/home"), (std::set<std::string>{"notes.txt"}));
  // A file where the directory should be.
  expect_error([&] { save_checkpoint(dir + "/home/notes.txt", p, some_state(1), params.data(),
                                     nullptr, nullptr); },
               {"notes.txt: exists and is not a directory"});
  EXPECT_EQ(read_bytes(dir + "/home/notes.txt"), "mine");

  // A checkpoint directory may hold other things beside its checkpoints.
  const std::string ck = dir + "/ck";
  save_checkpoint(ck, p, some_state(1), params.data(), nullptr, nullptr);
  write_bytes(ck + "/train.log", "log");
  save_checkpoint(ck, p, some_state(2), params.data(), nullptr, nullptr);
  // Re-saving a step replaces the step directory a save wrote...
  save_checkpoint(ck, p, some_state(2), params.data(), params.data(), params.data());
  EXPECT_TRUE(fs::exists(ck + "/step_000002/optimizer.safetensors"));
  // ...but not one holding something else, nor a link.
  write_bytes(ck + "/step_000002/README", "keep");
  expect_error([&] { save_checkpoint(ck, p, some_state(2), params.data(), nullptr, nullptr); },
               {"step_000002: holds \"README\"", "refusing to replace it"});
  EXPECT_EQ(read_bytes(ck + "/step_000002/README"), "keep");
  fs::create_directories(dir + "/elsewhere");
  fs::create_directory_symlink(dir + "/elsewhere", ck + "/step_000003");
  expect_error([&] { save_checkpoint(ck, p, some_state(3), params.data(), nullptr, nullptr); },
               {"step_000003: exists and is not a checkpoint step directory"});
  EXPECT_TRUE(fs::is_symlink(ck + "/step_000003"));
  EXPECT_EQ(listing(ck), (std::set<std::string>{"latest", "step_000001", "step_000002",
                                                "step_000003", "train.log"}));

  // A save that fails half-way (a parameter named like safetensors'
  // metadata entry) removes its temporary directory.
  ProgramDesc bad = p;
  bad.params[1].name = "__metadata__";
  expect_error([&] { save_checkpoint(ck, bad, some_state(4), params.data(), nullptr, nullptr); },
               {"reserved"});
  EXPECT_EQ(listing(ck), (std::set<std::string>{"latest", "step_000001", "step_000002",
                                                "step_000003", "train.log"}));
  EXPECT_EQ(read_bytes(ck + "/latest"), "step_000002\n");
}

}  // namespace
}  // namespace mtc::rt
