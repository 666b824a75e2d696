// mtc-upcycle: a dense mtc checkpoint -> a mixture-of-experts checkpoint
// that an MoE program (model.moe, docs/moe.md) resumes from. The upcycling
// construction of He et al., "Upcycling Large Language Models into Mixture
// of Experts" (arXiv 2410.07524), as Megatron-LM's upcycling_utils applies
// it, with one difference stated below.
//
//   mtc-upcycle DENSE_CKPT --experts E --topk K [--granularity G]
//       [--router softmax-topk|topk-softmax] [--router-init random|zero]
//       [--router-std S] [--layer-freq N] [--seed N] -o MOE_CKPT
//
// DENSE_CKPT is a checkpoint root (holding `latest`) or a step directory.
// For every MoE layer l (l % N == 0, the spec's model.moe.layer_freq) with
// dense MLP weights fc1 (F, D), fc2 (D, F) (SwiGLU: gate, up (F, D), down
// (D, F)) and biases, with f = F / G and s(e) = e mod G:
//   experts.fc1.weight[e] = fc1.weight[s(e) f : (s(e)+1) f, :]   (E, f, D)
//   experts.fc1.bias[e]   = fc1.bias[s(e) f : (s(e)+1) f]        (E, f)
//   experts.fc2.weight[e] = c * fc2.weight[:, s(e) f : (s(e)+1) f] (E, D, f)
//   experts.fc2.bias[e]   = c * fc2.bias / G                      (E, D)
// so each virtual group of G consecutive experts {jG, ..., jG+G-1} holds
// the whole dense MLP split along its hidden dimension (G = 1: E copies).
// c is the paper's weight scaling: a token routed to k/G whole groups with
// the uniform weights of a zero router gets sum_e w_e = k/E
// (softmax-topk) or 1 (topk-softmax) of (k/G) dense outputs, so
//   c = E G / k   (softmax-topk),   c = G   (topk-softmax)
// makes the MoE MLP equal the dense one. Megatron spreads c over fc1 and
// fc2 by the activation's degree (c^(1/2) each for GELU), which is exact
// only for homogeneous activations (ReLU), and repeats fc2's bias unscaled;
// we put all of c on fc2 (weight and bias / G), which is exact for any
// activation.
// The router weight (E, D): `random` (the paper's and Megatron's) draws
// E / G rows ~ N(0, S^2) (S = --router-std, default 0.02, the spec's
// init_std) and gives row j to every expert of group j, so a group's
// experts always score alike and are selected together; `zero` makes every
// logit 0, hence uniform probabilities and (ties to the lower index) the
// first k experts for every token: then, with G dividing K, the MoE model
// computes exactly the dense model's function (docs/moe.md, the test).
// Every other tensor is copied. The AdamW moments are not carried over
// (the optimizer state is reset: state.json says has_optimizer false and
// the program starts the moments at zero); the step, data position, seed
// and learning-rate schedule are kept, so the MoE program resumes the
// dense run's schedule and data order where it stopped.
// Output: MOE_CKPT/step_NNNNNN/{model.safetensors, state.json} and
// MOE_CKPT/latest, written to a temporary directory and renamed.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "mtc/rt/checkpoint.h"
#include "mtc/rt/io.h"
#include "mtc/rt/safetensors.h"

namespace {

using mtc::rt::Error;
namespace fs = std::filesystem;

struct Options {
  std::string input, output;
  int64_t experts = 0, topk = 0, granularity = 1, layer_freq = 1;
  bool topk_softmax = false, zero_router = false;
  double router_std = 0.02;
  uint64_t seed = 1234;
};

[[noreturn]] void usage(const std::string& why) {
  throw Error(why + "\nusage: mtc-upcycle DENSE_CKPT --experts E --topk K [--granularity G] "
              "[--router softmax-topk|topk-softmax] [--router-init random|zero] "
              "[--router-std S] [--layer-freq N] [--seed N] -o MOE_CKPT");
}

int64_t positive(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < 1 || x > (1LL << 40))
    usage(flag + " must be a positive integer, got \"" + v + "\"");
  return x;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--experts") o.experts = positive(a, value());
    else if (a == "--topk") o.topk = positive(a, value());
    else if (a == "--granularity") o.granularity = positive(a, value());
    else if (a == "--layer-freq") o.layer_freq = positive(a, value());
    else if (a == "--seed") o.seed = uint64_t(positive(a, value()));
    else if (a == "--router") {
      std::string v = value();
      if (v != "softmax-topk" && v != "topk-softmax")
        usage("--router must be softmax-topk or topk-softmax, got \"" + v + "\"");
      o.topk_softmax = v == "topk-softmax";
    } else if (a == "--router-init") {
      std::string v = value();
      if (v != "random" && v != "zero") usage("--router-init must be random or zero, got \"" + v + "\"");
      o.zero_router = v == "zero";
    } else if (a == "--router-std") {
      std::string v = value();
      char* end = nullptr;
      o.router_std = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(o.router_std > 0) || !std::isfinite(o.router_std))
        usage("--router-std must be a number > 0, got \"" + v + "\"");
    } else if (a == "-o" || a == "--output") o.output = value();
    else if (!a.empty() && a[0] == '-') usage("unknown flag " + a);
    else if (o.input.empty()) o.input = a;
    else usage("one dense checkpoint only (got \"" + o.input + "\" and \"" + a + "\")");
  }
  if (o.input.empty()) usage("no dense checkpoint given");
  if (o.output.empty()) usage("no output directory (-o MOE_CKPT)");
  if (o.experts == 0) usage("--experts is required");
  if (o.topk == 0) usage("--topk is required");
  if (o.topk > o.experts)
    usage("--topk (" + std::to_string(o.topk) + ") is more than --experts (" +
          std::to_string(o.experts) + ")");
  if (o.experts % o.granularity != 0)
    usage("--experts (" + std::to_string(o.experts) + ") must be a multiple of --granularity (" +
          std::to_string(o.granularity) + "): the experts form virtual groups of G");
  return o;
}

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

struct Upcycler {
  const Options& o;
  const mtc::rt::SafetensorsReader& in;
  std::vector<std::pair<std::string, Tensor>> out;
  double scale() const {
    return o.topk_softmax ? double(o.granularity)
                          : double(o.experts * o.granularity) / double(o.topk);
  }
  Tensor read(const std::string& name) const {
    Tensor t;
    t.shape = in.info(name).shape;
    t.data.resize(size_t(mtc::rt::shape_numel(t.shape)));
    in.read_f32(name, t.data.data(), int64_t(t.data.size()));
    return t;
  }
  int64_t shard_size(const std::string& name, int64_t f) const {
    if (f % o.granularity != 0)
      throw Error(in.path() + ": \"" + name + "\" has a hidden size of " + std::to_string(f) +
                  ", not divisible by --granularity " + std::to_string(o.granularity));
    return f / o.granularity;
  }
  // (F, D) weight or (F) bias -> (E, f, D) / (E, f): rows of shard e mod G.
  void split_rows(const std::string& name, const std::string& to) {
    Tensor t = read(name);
    int64_t f = shard_size(name, t.shape[0]);
    int64_t inner = t.shape.size() == 2 ? t.shape[1] : 1;
    Tensor r;
    r.shape = {o.experts, f};
    if (t.shape.size() == 2) r.shape.push_back(inner);
    for (int64_t e = 0; e < o.experts; ++e) {
      const float* src = t.data.data() + (e % o.granularity) * f * inner;
      r.data.insert(r.data.end(), src, src + f * inner);
    }
    out.emplace_back(to, std::move(r));
  }
  // (D, F) weight -> (E, D, f): columns of shard e mod G, times c.
  void split_columns(const std::string& name, const std::string& to) {
    Tensor t = read(name);
    int64_t d = t.shape[0], f = shard_size(name, t.shape[1]);
    Tensor r;
    r.shape = {o.experts, d, f};
    const float c = float(scale());
    for (int64_t e = 0; e < o.experts; ++e) {
      int64_t s = e % o.granularity;
      for (int64_t i = 0; i < d; ++i)
        for (int64_t j = 0; j < f; ++j) r.data.push_back(c * t.data[i * t.shape[1] + s * f + j]);
    }
    out.emplace_back(to, std::move(r));
  }
  // (D) bias of the output linear -> (E, D): c * bias / G each.
  void spread_bias(const std::string& name, const std::string& to) {
    Tensor t = read(name);
    Tensor r;
    r.shape = {o.experts, t.shape[0]};
    const double c = scale() / double(o.granularity);
    for (int64_t e = 0; e < o.experts; ++e)
      for (float v : t.data) r.data.push_back(float(c * v));
    out.emplace_back(to, std::move(r));
  }
  void router(const std::string& to, int64_t d, std::mt19937_64& rng) {
    Tensor r;
    r.shape = {o.experts, d};
    r.data.assign(size_t(o.experts * d), 0.0f);
    if (!o.zero_router) {
      std::normal_distribution<double> normal(0.0, o.router_std);
      for (int64_t g = 0; g < o.experts / o.granularity; ++g) {
        std::vector<float> row(static_cast<size_t>(d));
        for (float& v : row) v = float(normal(rng));
        for (int64_t e = g * o.granularity; e < (g + 1) * o.granularity; ++e)
          std::copy(row.begin(), row.end(), r.data.begin() + e * d);
      }
    }
    out.emplace_back(to, std::move(r));
  }
};

// "layers.12.mlp.fc1.weight" -> 12; -1 when not a layer's MLP tensor.
int64_t mlp_layer(const std::string& name, std::string* rest) {
  if (name.rfind("layers.", 0) != 0) return -1;
  size_t dot = name.find('.', 7);
  if (dot == std::string::npos) return -1;
  const std::string tail = name.substr(dot + 1);
  if (tail.rfind("mlp.", 0) != 0 || tail.rfind("mlp.experts", 0) == 0 ||
      tail.rfind("mlp.router", 0) == 0 || tail.rfind("mlp.shared_experts", 0) == 0)
    return -1;
  *rest = tail.substr(4);
  return std::stoll(name.substr(7, dot - 7));
}

int run(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const std::string step_dir = mtc::rt::resolve_checkpoint(o.input);
  std::error_code ec;
  if (fs::exists(o.output, ec) && !fs::is_empty(o.output, ec))
    throw Error(o.output + ": exists and is not empty; mtc-upcycle writes a new checkpoint");
  mtc::rt::SafetensorsReader in(step_dir + "/model.safetensors");
  nlohmann::json state = nlohmann::json::parse(mtc::rt::read_file(step_dir + "/state.json"));
  if (!state.is_object() || !state.contains("step") || !state["step"].is_number_integer())
    throw Error(step_dir + "/state.json: not an mtc checkpoint state (no integer \"step\")");

  Upcycler u{o, in, {}};
  std::mt19937_64 rng(o.seed);
  int64_t layers = 0;
  for (const auto& [name, info] : in.tensors()) {
    std::string rest;
    int64_t l = mlp_layer(name, &rest);
    if (l < 0 || l % o.layer_freq != 0) {
      if (name.find(".mlp.experts.") != std::string::npos || name.find(".mlp.router.") != std::string::npos)
        throw Error(in.path() + ": \"" + name + "\" is already an MoE tensor: the input must be a "
                    "dense checkpoint");
      continue;
    }
    const std::string p = name.substr(0, name.size() - rest.size());  // "layers.L.mlp."
    const std::string ex = p + "experts.";
    if (rest == "fc1.weight" || rest == "gate.weight" || rest == "up.weight" ||
        rest == "fc1.bias" || rest == "gate.bias" || rest == "up.bias") {
      u.split_rows(name, ex + rest);
    } else if (rest == "fc2.weight" || rest == "down.weight") {
      u.split_columns(name, ex + rest);
      u.router(p + "router.weight", info.shape[0], rng);
      ++layers;
    } else if (rest == "fc2.bias" || rest == "down.bias") {
      u.spread_bias(name, ex + rest);
    } else {
      throw Error(in.path() + ": \"" + name + "\" is an MLP tensor mtc-upcycle does not know "
                  "(expected fc1/fc2 or gate/up/down weights and biases)");
    }
  }
  if (layers == 0)
    throw Error(in.path() + ": no dense MLP (layers.N.mlp.fc2.weight or .down.weight) to upcycle");
  // Every tensor not turned into experts is copied.
  for (const auto& [name, info] : in.tensors()) {
    std::string rest;
    int64_t l = mlp_layer(name, &rest);
    if (l >= 0 && l % o.layer_freq == 0) continue;
    u.out.emplace_back(name, u.read(name));
  }

  // The state: the dense run's step, data position, seed and schedule; no
  // optimizer state.
  int64_t numel = 0;
  std::vector<mtc::rt::TensorRef> refs;
  for (const auto& [name, t] : u.out) {
    refs.push_back({name, t.shape, t.data.data(), "F32"});
    numel += int64_t(t.data.size());
  }
  state["has_optimizer"] = false;
  if (state.contains("config") && state["config"].is_object()) {
    state["config"]["num_params"] = numel;
    state["config"]["num_param_tensors"] = refs.size();
  }
  const std::string step_name = mtc::rt::checkpoint_step_name(state["step"].get<int64_t>());
  const fs::path root(o.output), tmp = root / ("." + step_name + ".upcycle.tmp");
  fs::create_directories(tmp, ec);
  if (ec) throw Error(tmp.string() + ": cannot create (" + ec.message() + ")");
  try {
    mtc::rt::write_safetensors((tmp / "model.safetensors").string(), refs,
                               {{"format", "pt"}, {"mtc.upcycled_from", step_dir}});
    mtc::rt::write_file_atomic((tmp / "state.json").string(), state.dump(2) + "\n");
    fs::rename(tmp, root / step_name);
    mtc::rt::write_file_atomic((root / "latest").string(), step_name + "\n");
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  std::printf("upcycled %lld MLP layers of %s to %lld experts (granularity %lld, top-%lld, %s, "
              "%s router, output weight scale %g): %s, %lld parameters; optimizer state reset\n",
              (long long)layers, step_dir.c_str(), (long long)o.experts,
              (long long)o.granularity, (long long)o.topk,
              o.topk_softmax ? "topk-softmax" : "softmax-topk", o.zero_router ? "zero" : "random",
              u.scale(), (root / step_name).string().c_str(), (long long)numel);
  if (o.topk % o.granularity != 0)
    std::printf("note: --topk %lld is not a multiple of --granularity %lld: tokens do not pick "
                "whole virtual groups, so the MoE model does not start equal to the dense one\n",
                (long long)o.topk, (long long)o.granularity);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mtc-upcycle: error: %s\n", e.what());
    return 1;
  }
}
