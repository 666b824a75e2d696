// mtc-upcycle: a dense mtc checkpoint -> a mixture-of-experts checkpoint
// that an MoE program (model.moe, docs/moe.md) resumes from. The upcycling
// construction of He et al., "Upcycling Large Language Models into Mixture
// of Experts" (arXiv 2410.07524), as Megatron-LM's upcycling_utils applies
// it, with one difference stated below.
//
//   mtc-upcycle DENSE_CKPT --experts E --topk K [--granularity G]
//       [--router softmax-topk|topk-softmax] [--router-init random|zero]
//       [--router-std S] [--optimizer reset|copy] [--layer-freq N] [--seed N]
//       [--expert-bias] -o MOE_CKPT
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
// --expert-bias (for a program with model.moe.expert_bias): every MoE
// layer also gets router.expert_bias (E), zero (its start in any run), with
// zero moments (it is not trained; the checkpoint holds them all the same).
// Every other tensor is copied. The step, data position, seed and
// learning-rate schedule are kept, so the MoE program resumes the dense
// run's schedule and data order where it stopped. The AdamW moments:
//   copy (default): every copied tensor keeps its moments, the routers'
//     start at zero, and each expert takes its shard of the dense MLP's
//     moments, selected exactly as its weights, times r (exp_avg) and r^2 (exp_avg_sq), r the
//     ratio of the expert's gradient to the dense tensor's at the upcycled
//     point. Derivation: a token t sent to expert e with routing weight w
//     contributes w dy_t to its output gradient, so fc2's weight and bias
//     get w times the dense gradient (the factor c on fc2 does not enter
//     its own gradient), and fc1's get c w times it (the backward through
//     c * fc2). w c = G / k for both routers (w = 1/E with c = E G / k,
//     w = 1/k with c = G), and an expert receives a fraction f of the
//     tokens: f = 1 with the zero router (experts 0..k-1 take every token),
//     k / E with the random one (balanced routing). Hence
//       r = f G / k        fc1 / gate / up, weights and biases
//       r = f G / (k c)    fc2 / down, weights and biases.
//     Scaling the moments like the weights (c, c^2 on fc2) is not this:
//     under P = c W the gradient is dL/dW / c. AdamW's first update,
//     m / sqrt(v), does not depend on a common r, so r only sets how fast
//     new gradients replace the copied moments (docs/moe.md measures the
//     choices). The bias corrections use the kept step, as for the dense
//     run's own moments. The dense checkpoint must hold its moments.
//   reset (Megatron's): none (state.json says has_optimizer false and the
//     program starts the moments at zero). Measured on tiny-gpt
//     (test/e2e/upcycle_demo.sh), this makes the loss jump after upcycling
//     and copy does not.
// Output: MOE_CKPT/step_NNNNNN/{model.safetensors, state.json, and with
// copy optimizer.safetensors} and MOE_CKPT/latest, written to a temporary directory and renamed.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
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
  bool topk_softmax = false, zero_router = false, copy_optimizer = true, expert_bias = false;
  double router_std = 0.02;
  uint64_t seed = 1234;
};

[[noreturn]] void usage(const std::string& why) {
  throw Error(why + "\nusage: mtc-upcycle DENSE_CKPT --experts E --topk K [--granularity G] "
              "[--router softmax-topk|topk-softmax] [--router-init random|zero] "
              "[--router-std S] [--optimizer reset|copy] [--layer-freq N] [--seed N] [--expert-bias] "
              "-o MOE_CKPT");
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
    else if (a == "--expert-bias") o.expert_bias = true;
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
    } else if (a == "--optimizer") {
      std::string v = value();
      if (v != "reset" && v != "copy")
        usage("--optimizer must be copy or reset, got \"" + v + "\"");
      o.copy_optimizer = v == "copy";
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

// How a dense MLP tensor becomes a stacked expert tensor.
enum class Part {
  rows,      // fc1 / gate / up weight (F, D) or bias (F) -> (E, f, D) / (E, f)
  columns,   // fc2 / down weight (D, F) -> (E, D, f)
  out_bias,  // fc2 / down bias (D) -> (E, D)
};

struct Upcycler {
  const Options& o;
  const mtc::rt::SafetensorsReader& in;
  const mtc::rt::SafetensorsReader* opt;  // the dense moments (--optimizer copy)
  std::vector<std::pair<std::string, Tensor>> out, exp_avg, exp_avg_sq;
  double scale() const {
    return o.topk_softmax ? double(o.granularity)
                          : double(o.experts * o.granularity) / double(o.topk);
  }
  // The factor on the weights of a part: c on the output linear, c / G on
  // its bias (each of a group's G experts adds it), 1 on the input linears.
  double weight_scale(Part p) const {
    return p == Part::rows ? 1.0 : p == Part::columns ? scale() : scale() / double(o.granularity);
  }
  // The factor r on exp_avg (r^2 on exp_avg_sq) of a part: the expert's
  // gradient over the dense one's (the header), r = a f G / k with a = 1
  // before the activation and 1 / c after it.
  double moment_scale(Part p) const {
    const double E = double(o.experts), G = double(o.granularity), k = double(o.topk);
    const double f = o.zero_router ? 1.0 : k / E;
    return f * G / k / (p == Part::rows ? 1.0 : scale());
  }
  static Tensor read(const mtc::rt::SafetensorsReader& file, const std::string& name) {
    Tensor t;
    t.shape = file.info(name).shape;
    t.data.resize(size_t(mtc::rt::shape_numel(t.shape)));
    file.read_f32(name, t.data.data(), int64_t(t.data.size()));
    return t;
  }
  int64_t shard_size(const std::string& name, int64_t f) const {
    if (f % o.granularity != 0)
      throw Error(in.path() + ": \"" + name + "\" has a hidden size of " + std::to_string(f) +
                  ", not divisible by --granularity " + std::to_string(o.granularity));
    return f / o.granularity;
  }
  // t (dense) -> the stacked (E, ...) tensor of part p, times `scale`.
  Tensor stack(const std::string& name, const Tensor& t, Part p, double scale) const {
    const float a = float(scale);
    Tensor r;
    if (p == Part::rows) {  // rows of shard e mod G
      int64_t f = shard_size(name, t.shape[0]);
      int64_t inner = t.shape.size() == 2 ? t.shape[1] : 1;
      r.shape = {o.experts, f};
      if (t.shape.size() == 2) r.shape.push_back(inner);
      for (int64_t e = 0; e < o.experts; ++e) {
        const float* src = t.data.data() + (e % o.granularity) * f * inner;
        for (int64_t i = 0; i < f * inner; ++i) r.data.push_back(a * src[i]);
      }
    } else if (p == Part::columns) {  // columns of shard e mod G
      int64_t d = t.shape[0], f = shard_size(name, t.shape[1]);
      r.shape = {o.experts, d, f};
      for (int64_t e = 0; e < o.experts; ++e) {
        int64_t s = e % o.granularity;
        for (int64_t i = 0; i < d; ++i)
          for (int64_t j = 0; j < f; ++j) r.data.push_back(a * t.data[i * t.shape[1] + s * f + j]);
      }
    } else {  // the whole bias for every expert
      r.shape = {o.experts, t.shape[0]};
      for (int64_t e = 0; e < o.experts; ++e)
        for (float v : t.data) r.data.push_back(a * v);
    }
    return r;
  }
  void expert(const std::string& name, const std::string& to, Part p) {
    out.emplace_back(to, stack(name, read(in, name), p, weight_scale(p)));
    if (opt == nullptr) return;
    const double r = moment_scale(p);
    exp_avg.emplace_back(to, stack(name, read(*opt, name + ".exp_avg"), p, r));
    exp_avg_sq.emplace_back(to, stack(name, read(*opt, name + ".exp_avg_sq"), p, r * r));
  }
  void copy(const std::string& name) {
    out.emplace_back(name, read(in, name));
    if (opt == nullptr) return;
    exp_avg.emplace_back(name, read(*opt, name + ".exp_avg"));
    exp_avg_sq.emplace_back(name, read(*opt, name + ".exp_avg_sq"));
  }
  void router(const std::string& to, int64_t d, std::mt19937_64& rng) {
    Tensor r;
    r.shape = {o.experts, d};
    r.data.assign(size_t(o.experts * d), 0.0f);
    if (opt != nullptr) {  // the router's moments start at zero
      exp_avg.emplace_back(to, r);
      exp_avg_sq.emplace_back(to, r);
    }
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
  // A zero (E) tensor with zero moments: an expert bias's start.
  void zeros(const std::string& to) {
    Tensor z;
    z.shape = {o.experts};
    z.data.assign(size_t(o.experts), 0.0f);
    if (opt != nullptr) {
      exp_avg.emplace_back(to, z);
      exp_avg_sq.emplace_back(to, z);
    }
    out.emplace_back(to, std::move(z));
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

  std::unique_ptr<mtc::rt::SafetensorsReader> opt;
  if (o.copy_optimizer) {
    if (!state.contains("has_optimizer") || state["has_optimizer"] != true)
      throw Error(step_dir + "/state.json: the checkpoint has no optimizer state (has_optimizer "
                  "is not true): --optimizer copy needs the dense run's AdamW moments; use "
                  "--optimizer reset");
    opt = std::make_unique<mtc::rt::SafetensorsReader>(step_dir + "/optimizer.safetensors");
    for (const auto& [name, info] : in.tensors())
      for (const char* suffix : {".exp_avg", ".exp_avg_sq"})
        if (!opt->has(name + suffix) || opt->info(name + suffix).shape != info.shape)
          throw Error(opt->path() + ": no tensor \"" + name + suffix + "\" of shape " +
                      mtc::rt::shape_string(info.shape) + " (the moments of " + in.path() +
                      "'s \"" + name + "\")");
  }
  Upcycler u{o, in, opt.get(), {}, {}, {}};
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
      u.expert(name, ex + rest, Part::rows);
    } else if (rest == "fc2.weight" || rest == "down.weight") {
      u.expert(name, ex + rest, Part::columns);
      u.router(p + "router.weight", info.shape[0], rng);
      if (o.expert_bias) u.zeros(p + "router.expert_bias");
      ++layers;
    } else if (rest == "fc2.bias" || rest == "down.bias") {
      u.expert(name, ex + rest, Part::out_bias);
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
    u.copy(name);
  }

  // The state: the dense run's step, data position, seed and schedule; the
  // moments (--optimizer copy, in the trainer's order: each parameter's
  // exp_avg then exp_avg_sq) or none.
  int64_t numel = 0;
  std::vector<mtc::rt::TensorRef> refs, moments;
  for (const auto& [name, t] : u.out) {
    refs.push_back({name, t.shape, t.data.data(), "F32"});
    numel += int64_t(t.data.size());
  }
  for (size_t i = 0; i < u.exp_avg.size(); ++i) {
    const auto& [name, m] = u.exp_avg[i];
    moments.push_back({name + ".exp_avg", m.shape, m.data.data(), "F32"});
    moments.push_back({name + ".exp_avg_sq", m.shape, u.exp_avg_sq[i].second.data.data(), "F32"});
  }
  state["has_optimizer"] = o.copy_optimizer;
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
    if (o.copy_optimizer)
      mtc::rt::write_safetensors((tmp / "optimizer.safetensors").string(), moments,
                                 {{"format", "pt"}, {"mtc.upcycled_from", step_dir}});
    mtc::rt::write_file_atomic((tmp / "state.json").string(), state.dump(2) + "\n");
    fs::rename(tmp, root / step_name);
    mtc::rt::write_file_atomic((root / "latest").string(), step_name + "\n");
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  std::printf("upcycled %lld MLP layers of %s to %lld experts (granularity %lld, top-%lld, %s, "
              "%s router, output weight scale %g): %s, %lld parameters; optimizer state %s\n",
              (long long)layers, step_dir.c_str(), (long long)o.experts,
              (long long)o.granularity, (long long)o.topk,
              o.topk_softmax ? "topk-softmax" : "softmax-topk", o.zero_router ? "zero" : "random",
              u.scale(), (root / step_name).string().c_str(), (long long)numel,
              o.copy_optimizer ? "copied (the experts' moments scaled, the routers' zero)"
                               : "reset");
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
