// Tests of checkpoint directories: the files and `latest` written, exact
// round trip of parameters and moments, independence from the parameters'
// order/offsets, and validation errors that name the first mismatching
// tensor and list missing and unexpected names.
#include <gtest/gtest.h>

#include <random>

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

}  // namespace
}  // namespace mtc::rt
