//===- PlanReport.cpp - parameters, FLOPs and memory of a plan -------------===//
//
// The memory plan (docs/memory.md): per rank, the fp32 parameters,
// gradients and AdamW moments (ParamLayout's flat buffers), the CUDA
// target's bf16 compute copy, the activation arena (the buffer plan of
// @train_step), the batch, and the runtime's workspaces, with the sizes the
// runtime really allocates (runtime/src/cuda/program_context.cpp,
// context.cpp, attention_bwd.cu).
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/PlanReport.h"
#include "mtc/Transforms/Pipeline.h"

#include "mtc/Codegen/BufferPlan.h"
#include "mtc/Dialect/MtcDialect.h"
#include "mtc/Transforms/Grid.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"

using namespace mlir;

namespace {
constexpr int64_t kMiB = 1 << 20;

// runtime/src/cuda/program_context.cpp: kCublasWorkspace, per k::Context.
constexpr int64_t kCublasWorkspace = 32 * kMiB;
// What the CUDA context, the kernels' modules and the cuBLASLt/cuDNN
// handles take before the program allocates anything (measured by
// bench/recompute_gpu.sh as the used memory before the first allocation;
// 520 MiB on an H100 with CUDA 12).
constexpr int64_t kCudaContext = 520 * kMiB;
// NCCL's buffers per communicator of more than one rank: NCCL_BUFFSIZE
// (4 MiB) per channel and peer, both directions, with NCCL's default of
// at most 2 channels per peer over NVLink for p2p and the ring's buffers:
// an estimate NCCL does not expose (docs/memory.md).
constexpr int64_t kNcclPerCommunicator = 2 * 2 * 4 * kMiB * 2;

double sumFlops(func::FuncOp fn, bool recomputed) {
  double flops = 0;
  if (!fn)
    return 0;
  fn.walk([&](mtc::CostOpInterface op) {
    if (op->hasAttr(mtc::kRecomputedAttr) == recomputed)
      flops += op.getFlops();
  });
  return flops;
}

int64_t roundUp(int64_t n, int64_t to) { return (n + to - 1) / to * to; }
} // namespace

std::string mtc::humanBytes(double bytes) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[64];
  snprintf(buf, sizeof(buf), "%.2f %s", bytes, units[u]);
  return buf;
}

int64_t mtc::storedBytes(Value v, StringRef target) {
  auto t = dyn_cast<RankedTensorType>(v.getType());
  if (!t || v.getDefiningOp<mtc::ParamOp>())
    return 0;
  int64_t n = t.getNumElements();
  if (target != "cuda")
    return 4 * n;
  bool f32 = t.getRank() == 0;
  if (auto att = v.getDefiningOp<mtc::AttentionOp>())
    f32 |= v == att.getLse();
  return (f32 ? 4 : 2) * n;
}

int64_t mtc::planActivationBytes(func::FuncOp fn, StringRef target) {
  if (!fn)
    return 0;
  // The emitters' units: 4-byte floats on the host, 2-byte units aligned to
  // 64 on CUDA.
  const int64_t unit = target == "cuda" ? 2 : 4;
  BufferPlan plan = planBuffers(
      fn, [&](Value v) { return storedBytes(v, target) / unit; },
      target == "cuda" ? 64 : 16);
  return plan.size * unit;
}

// Bytes of the AdamW moments on one rank, for `elements` parameter
// elements: 8 each, and a distributed optimizer keeps 1/N of its
// reduction's parameters (with expert parallelism the dense ones over dp,
// the experts' over the expert-data-parallel group).
static int64_t momentBytes(ModuleOp module, int64_t elements) {
  mtc::ReduceGradientsOp dense, experts;
  module.walk([&](mtc::ReduceGradientsOp r) {
    if (r.getShardOptimizerState())
      (r.getParams() ? experts : dense) = r;
  });
  const mtc::GridShape g = mtc::getGridShape(module);
  auto share = [&](int64_t bytes, mtc::ReduceGradientsOp r) {
    int64_t parts = g.size(r.getGrid(), r.getGridAxes());
    return (bytes + parts - 1) / parts;
  };
  if (!dense)
    return 8 * elements;
  if (!experts)
    return share(8 * elements, dense);
  llvm::StringSet<> named, seen;
  ArrayAttr list = *experts.getParams();
  for (Attribute a : list)
    named.insert(cast<StringAttr>(a).getValue());
  int64_t expertElements = 0;
  module.walk([&](mtc::ParamOp p) {
    if (named.contains(p.getName()) && seen.insert(p.getName()).second)
      expertElements += p.getType().getNumElements();
  });
  return share(8 * (elements - expertElements), dense) +
         share(8 * expertElements, experts);
}

mtc::MemoryPlan mtc::planMemory(ModuleOp module, StringRef target,
                                int64_t activations) {
  MemoryPlan m;
  llvm::StringSet<> seen;
  int64_t elements = 0;
  module.walk([&](mtc::ParamOp p) {
    if (seen.insert(p.getName()).second)
      elements += p.getType().getNumElements();
  });
  const bool cuda = target == "cuda";
  m.params = 4 * elements;
  m.grads = m.params;
  m.optimizer = momentBytes(module, elements);
  if (cuda)
    m.computeCopy = 2 * elements;
  m.activations = activations;
  int64_t microbatches = 1;
  if (auto cfg = module->getAttrOfType<DictionaryAttr>("mtc.training"))
    if (auto mb = cfg.getAs<IntegerAttr>("num_microbatches"))
      microbatches = mb.getInt();
  if (auto train = module.lookupSymbol<func::FuncOp>("train_step"))
    if (train.getNumArguments() > 0)
      if (auto t = dyn_cast<RankedTensorType>(train.getArgument(0).getType()))
        m.batch = 2 * 4 * t.getNumElements() * microbatches;
  if (!cuda)
    return m;

  // The runtime's buffers beside the arena.
  GridShape grid = getGridShape(module);
  bool lanes = grid.tp > 1 &&
               (!module->getAttrOfType<StringAttr>(kTpLanesAttr) ||
                module->getAttrOfType<StringAttr>(kTpLanesAttr).getValue() ==
                    "two-streams");
  if (auto par = module->getAttrOfType<DictionaryAttr>("mtc.parallel"))
    if (auto sp = par.getAs<BoolAttr>("sp"))
      lanes &= !sp.getValue();
  m.workspaces.push_back(
      {"cuBLASLt", kCublasWorkspace * (lanes ? 2 : 1)});
  // Context::scratch: the largest request (the attention backward's fp32
  // dQ accumulator and row sums; with grouped KV heads, 1 < kv_heads <
  // heads, also the packed bf16 q and dq of the cuDNN path), grown by 1/4
  // and rounded to 1 MiB.
  int64_t scratch = 0;
  module.walk([&](mtc::AttentionGradOp g) {
    auto t = cast<RankedTensorType>(g.getOut().getType()); // (B, S, H*Dh)
    int64_t b = t.getDimSize(0), s = t.getDimSize(1), hd = t.getDimSize(2);
    int64_t heads = g.getHeads(), kvHeads = g.getKvHeads();
    int64_t bytes = roundUp(4 * b * s * hd, 256) + 4 * b * heads * s;
    if (kvHeads > 1 && kvHeads < heads)
      bytes = roundUp(bytes, 256) + 2 * roundUp(2 * b * s * hd, 256);
    scratch = std::max(scratch, bytes);
  });
  if (scratch)
    m.workspaces.push_back(
        {"attention scratch", roundUp(scratch + scratch / 4, kMiB)});
  int64_t communicators = (grid.tp > 1) + (grid.dp > 1) + (grid.pp > 1);
  if (communicators)
    m.workspaces.push_back({"NCCL", communicators * kNcclPerCommunicator});
  m.workspaces.push_back({"CUDA context", kCudaContext});
  return m;
}

std::string mtc::describeMemory(const MemoryPlan &m) {
  std::string s;
  llvm::raw_string_ostream os(s);
  os << "params " << humanBytes(m.params);
  if (m.computeCopy)
    os << " (+ bf16 copy " << humanBytes(m.computeCopy) << ")";
  os << ", grads " << humanBytes(m.grads) << ", optimizer "
     << humanBytes(m.optimizer) << ", activations "
     << humanBytes(m.activations) << ", batch " << humanBytes(m.batch);
  if (!m.workspaces.empty()) {
    os << ", workspaces " << humanBytes(m.workspaceBytes()) << " (";
    llvm::interleaveComma(m.workspaces, os, [&](const auto &w) {
      os << w.first << " " << humanBytes(w.second);
    });
    os << ")";
  }
  os << ", peak " << humanBytes(m.peak());
  return s;
}

mtc::PlanReport mtc::computePlanReport(ModuleOp module, StringRef target,
                                       int64_t activationBytes) {
  PlanReport r;
  r.target = target.str();
  if (auto name = module->getAttrOfType<StringAttr>("mtc.model"))
    r.modelName = name.str();
  if (auto policy = module->getAttrOfType<StringAttr>("mtc.recompute"))
    r.recompute = policy.str();
  if (auto cfg = module->getAttrOfType<DictionaryAttr>("mtc.training"))
    if (auto mb = cfg.getAs<IntegerAttr>("num_microbatches"))
      r.numMicrobatches = mb.getInt();
  auto forward = module.lookupSymbol<func::FuncOp>("forward");
  auto train = module.lookupSymbol<func::FuncOp>("train_step");
  llvm::StringSet<> seen;
  int64_t bytes = 0;
  module.walk([&](mtc::ParamOp p) {
    if (!seen.insert(p.getName()).second)
      return;
    r.numParams += p.getType().getNumElements();
    bytes += p.getType().getNumElements() * 4; // fp32 master copy
  });
  if (forward && forward.getNumArguments() > 0)
    if (auto t = dyn_cast<RankedTensorType>(forward.getArgument(0).getType()))
      r.tokensPerMicrobatch = t.getNumElements();
  r.forwardFlops = sumFlops(forward, false);
  r.trainStepFlops = sumFlops(train, false);
  r.recomputedFlops = sumFlops(train, true);
  if (train)
    train.walk([&](Operation *op) {
      r.recomputedOps += op->hasAttr(mtc::kRecomputedAttr);
    });
  // A pipeline program: the pieces of every chunk make one microbatch.
  for (auto fn : module.getOps<func::FuncOp>()) {
    std::optional<mtc::PieceInfo> piece = mtc::getPieceInfo(fn);
    if (!piece)
      continue;
    r.pipelineRanks = mtc::getPipelineConfig(module).pp;
    if (piece->kind == mtc::PieceKind::Eval) {
      r.forwardFlops += sumFlops(fn, false);
      if (piece->chunk == 0 && fn.getNumArguments() > 0)
        if (auto t = dyn_cast<RankedTensorType>(fn.getArgument(0).getType()))
          r.tokensPerMicrobatch = t.getNumElements();
      continue;
    }
    r.trainStepFlops += sumFlops(fn, false);
    r.recomputedFlops += sumFlops(fn, true);
    fn.walk([&](Operation *op) {
      r.recomputedOps += op->hasAttr(mtc::kRecomputedAttr);
    });
  }
  if (r.pipelineRanks > 1)
    train = module.lookupSymbol<func::FuncOp>(
        mtc::pieceFunctionName(0, mtc::PieceKind::Forward));
  r.flopsPerStep = r.trainStepFlops * double(r.numMicrobatches);
  r.paramBytes = bytes;
  r.gradBytes = train ? bytes : 0;
  r.optimizerBytes = train ? momentBytes(module, r.numParams) : 0;
  r.activationBytes = activationBytes >= 0
                          ? activationBytes
                          : planActivationBytes(train, target);
  r.memory = planMemory(module, target, r.activationBytes);
  return r;
}

void mtc::printPlanReportText(const PlanReport &r, llvm::raw_ostream &os) {
  const MemoryPlan &m = r.memory;
  os << "plan: " << r.modelName << "\n";
  os << "  parameters            " << r.numParams << " ("
     << llvm::format("%.1f", double(r.numParams) / 1e6) << " M)\n";
  os << "  microbatches per step " << r.numMicrobatches << " x "
     << r.tokensPerMicrobatch << " tokens\n";
  os << "  FLOPs per step        " << llvm::format("%.4g", r.flopsPerStep)
     << " (forward " << llvm::format("%.4g", r.forwardFlops)
     << " per microbatch)\n";
  os << "  recompute             " << r.recompute;
  if (r.recomputedOps)
    os << ": " << r.recomputedOps << " ops, "
       << llvm::format("%.4g", r.recomputedFlops)
       << " FLOPs per microbatch ("
       << llvm::format("%.1f", 100.0 * r.recomputedFlops /
                                   std::max(r.trainStepFlops, 1.0))
       << "% more than the model's)";
  os << "\n";
  if (r.pipelineRanks > 1)
    os << "  memory of the whole model (" << r.target
       << "; each pipeline rank's share is under \"pipeline\" below)\n";
  else
    os << "  memory per rank (" << r.target << ")\n";
  auto row = [&](StringRef name, int64_t bytes) {
    os << "    " << llvm::left_justify(name, 20) << humanBytes(double(bytes))
       << "\n";
  };
  row("parameters", m.params);
  if (m.computeCopy)
    row("bf16 compute copy", m.computeCopy);
  row("gradients", m.grads);
  row("optimizer state", m.optimizer);
  row("activations", m.activations);
  row("batch", m.batch);
  for (auto &w : m.workspaces)
    row(w.first, w.second);
  row("peak", m.peak());
}

void mtc::printPlanReportJson(const PlanReport &r, llvm::raw_ostream &os) {
  const MemoryPlan &m = r.memory;
  llvm::json::Object workspaces;
  for (auto &w : m.workspaces)
    workspaces[w.first] = w.second;
  llvm::json::Object o{
      {"model", r.modelName},
      {"target", r.target},
      {"recompute", r.recompute},
      {"num_params", r.numParams},
      {"num_microbatches", r.numMicrobatches},
      {"tokens_per_microbatch", r.tokensPerMicrobatch},
      {"forward_flops_per_microbatch", r.forwardFlops},
      {"train_flops_per_microbatch", r.trainStepFlops},
      {"recomputed_flops_per_microbatch", r.recomputedFlops},
      {"recomputed_ops", r.recomputedOps},
      {"flops_per_step", r.flopsPerStep},
      {"memory_bytes",
       llvm::json::Object{{"params", m.params},
                          {"compute_copy", m.computeCopy},
                          {"grads", m.grads},
                          {"optimizer", m.optimizer},
                          {"activations", m.activations},
                          {"batch", m.batch},
                          {"workspaces", std::move(workspaces)},
                          {"peak", m.peak()}}}};
  os << llvm::formatv("{0:2}", llvm::json::Value(std::move(o))) << "\n";
}
