//===- PlanRecompute.cpp - which activations are kept, which recomputed ---===//
//
// Runs on the partitioned @train_step. A policy names, per transformer
// layer, which forward ops are recomputed; the mechanism clones them into
// the backward pass (Passes.td has the steps). docs/memory.md describes the
// policies, what `selective` means for mtc's flash-style attention, and the
// `auto` algorithm (implemented in chooseAuto below).
//
// Assumes what the importer writes: each op of layer N has a NameLoc
// "layers.N.<module path>" (e.g. "layers.3.mlp.fc1"), and the forward ops
// are the ones the returned loss depends on.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Passes.h"
#include "mtc/Transforms/PlanReport.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/StringExtras.h"

#include <limits>

namespace mtc {
#define GEN_PASS_DEF_MTCPLANRECOMPUTE
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;
using mtc::describeMemory;
using mtc::humanBytes;
using mtc::MemoryPlan;
using mtc::planActivationBytes;
using mtc::planMemory;

namespace {

/// Module bits: what Megatron's `recompute_modules` name.
enum Module : unsigned {
  kCoreAttn = 1,   // the attention core and its dropout
  kLayerNorm = 2,  // the layer's norms
  kActivation = 4, // GELU / SwiGLU / squared ReLU
  kMlp = 8,        // fc1 (gate, up), the activation, fc2, the MLP's dropout
  kFull = 1u << 30 // every op of the layer but its output
};

/// Per layer: the modules recomputed (0: none), and the checkpoint group
/// (for `full` with several layers per checkpoint).
struct Choice {
  llvm::SmallVector<unsigned> modules; // by layer
  llvm::SmallVector<int64_t> group;    // by layer: layers sharing a checkpoint
};

/// The layer and module bits of a forward op, from its location.
struct Place {
  int64_t layer = -1;
  unsigned modules = 0;
  bool layerOutput = false; // the layer's last residual add
};

Place placeOf(Operation *op) {
  Place p;
  auto name = dyn_cast<NameLoc>(op->getLoc());
  if (!name)
    return p;
  StringRef path = name.getName().getValue();
  if (!path.consume_front("layers."))
    return p;
  auto [num, rest] = path.split('.');
  if (num.getAsInteger(10, p.layer))
    return Place();
  if (rest == "attn.core" || rest == "attn.core_dropout")
    p.modules |= kCoreAttn;
  if (rest.ends_with("_norm"))
    p.modules |= kLayerNorm;
  if (rest == "mlp.gelu" || rest == "mlp.swiglu" || rest == "mlp.squared_relu")
    p.modules |= kActivation | kMlp;
  if (rest.starts_with("mlp.") && rest != "mlp.residual")
    p.modules |= kMlp;
  return p;
}

/// The parts of @train_step the planner works on.
struct Program {
  func::FuncOp fn;
  llvm::DenseMap<Operation *, int64_t> pos;
  llvm::DenseSet<Operation *> forward;
  /// Forward ops that may be recomputed, with their place.
  llvm::SmallVector<std::pair<Operation *, Place>> candidates;
  int64_t numLayers = 0;
};

bool isCollective(Operation *op) {
  return op->getDialect() &&
         op->getDialect()->getNamespace() == "shard";
}

Program analyze(func::FuncOp fn) {
  Program p;
  p.fn = fn;
  Block &body = fn.getBody().front();
  int64_t i = 0;
  for (Operation &op : body)
    p.pos[&op] = i++;
  // 1. The forward ops: the loss's backward slice.
  llvm::SmallVector<Operation *> work;
  for (Value v : body.getTerminator()->getOperands())
    if (Operation *d = v.getDefiningOp())
      work.push_back(d);
  while (!work.empty()) {
    Operation *op = work.pop_back_val();
    if (!p.forward.insert(op).second)
      continue;
    for (Value v : op->getOperands())
      if (Operation *d = v.getDefiningOp())
        work.push_back(d);
  }
  // The candidates, and which op ends each layer (its output is the next
  // layer's input: kept, never recomputed).
  llvm::DenseMap<int64_t, Operation *> last;
  for (Operation &op : body) {
    if (!p.forward.count(&op) || isa<mtc::ParamOp>(op) || isCollective(&op) ||
        !isMemoryEffectFree(&op) || op.getNumResults() == 0 ||
        !isa<mtc::MtcDialect>(op.getDialect()))
      continue;
    Place pl = placeOf(&op);
    if (pl.layer < 0)
      continue;
    p.numLayers = std::max(p.numLayers, pl.layer + 1);
    last[pl.layer] = &op;
    p.candidates.push_back({&op, pl});
  }
  for (auto &[op, pl] : p.candidates)
    pl.layerOutput = last.lookup(pl.layer) == op;
  return p;
}

/// Steps 2 and 3 of the pass on `p.fn` (which `analyze` saw): clones the
/// chosen ops before their first backward need and rewires the backward
/// users. Returns the number of clones.
int64_t applyChoice(Program &p, const Choice &c) {
  // The chosen ops and their checkpoint group.
  llvm::DenseMap<Operation *, int64_t> chosen;
  for (auto &[op, pl] : p.candidates) {
    unsigned m = c.modules[pl.layer];
    if (!m)
      continue;
    bool take = (m & kFull) ? !pl.layerOutput : (m & pl.modules) != 0;
    // Checkpoint groups: a full group's layers, or one layer's modules.
    if (take)
      chosen[op] = (m & kFull) ? 2 * c.group[pl.layer] + 1 : 2 * pl.layer;
  }
  // A clone uses the clones of its own group, the kept originals otherwise.
  auto sameGroup = [&](Operation *a, Operation *b) {
    auto ia = chosen.find(a), ib = chosen.find(b);
    return ia != chosen.end() && ib != chosen.end() && ia->second == ib->second;
  };
  // The last layer of a group ends it; only its output stays kept: the
  // output of a layer inside a multi-layer group is recomputed too.
  for (auto &[op, pl] : p.candidates) {
    unsigned m = c.modules[pl.layer];
    if (!(m & kFull) || !pl.layerOutput)
      continue;
    int64_t l = pl.layer;
    if (l + 1 < int64_t(c.group.size()) && c.group[l + 1] == c.group[l] &&
        (c.modules[l + 1] & kFull))
      chosen[op] = 2 * c.group[l] + 1;
  }
  // 2. Where each chosen op is first needed, in reverse program order.
  constexpr int64_t kNever = std::numeric_limits<int64_t>::max();
  llvm::DenseMap<Operation *, int64_t> need;
  llvm::SmallVector<Operation *> order;
  for (auto &[op, g] : chosen)
    order.push_back(op);
  llvm::sort(order, [&](Operation *a, Operation *b) {
    return p.pos[a] < p.pos[b];
  });
  for (Operation *op : llvm::reverse(order)) {
    int64_t n = kNever;
    for (Operation *user : op->getUsers()) {
      if (!p.forward.count(user))
        n = std::min(n, p.pos.lookup(user));
      else if (sameGroup(op, user))
        n = std::min(n, need.lookup(user));
    }
    need[op] = n;
  }
  // 3. Clone before the need, producers first; rewire.
  llvm::SmallVector<Operation *> cloned;
  for (Operation *op : order)
    if (need[op] != kNever)
      cloned.push_back(op);
  llvm::stable_sort(cloned, [&](Operation *a, Operation *b) {
    return need[a] < need[b];
  });
  llvm::SmallVector<Operation *> byPos(p.pos.size());
  for (auto &[op, i] : p.pos)
    byPos[i] = op;
  IRMapping map;
  for (Operation *op : cloned) {
    OpBuilder b(byPos[need[op]]);
    IRMapping local;
    for (Value v : op->getOperands())
      if (Operation *d = v.getDefiningOp(); d && sameGroup(d, op))
        local.map(v, map.lookup(v));
    Operation *copy = b.clone(*op, local);
    copy->setAttr(mtc::kRecomputedAttr, b.getUnitAttr());
    for (auto [orig, rc] : llvm::zip(op->getResults(), copy->getResults())) {
      map.map(orig, rc);
      orig.replaceUsesWithIf(rc, [&](OpOperand &use) {
        Operation *owner = use.getOwner();
        return p.pos.count(owner) && !p.forward.count(owner);
      });
    }
  }
  return cloned.size();
}

double recomputedFlops(func::FuncOp fn) {
  double f = 0;
  fn.walk([&](mtc::CostOpInterface op) {
    if (op->hasAttr(mtc::kRecomputedAttr))
      f += op.getFlops();
  });
  return f;
}

struct PlanRecomputePass
    : public mtc::impl::MtcPlanRecomputeBase<PlanRecomputePass> {
  using MtcPlanRecomputeBase::MtcPlanRecomputeBase;
  void runOnOperation() override;
  LogicalResult selectiveModules(unsigned &bits);
  LogicalResult chooseAuto(ModuleOp module, func::FuncOp fn, Choice &c);
};

LogicalResult PlanRecomputePass::selectiveModules(unsigned &bits) {
  bits = 0;
  if (modules.empty()) {
    bits = kCoreAttn;
    return success();
  }
  for (const std::string &m : modules) {
    if (m == "core_attn")
      bits |= kCoreAttn;
    else if (m == "mlp")
      bits |= kMlp | kActivation;
    else if (m == "layernorm")
      bits |= kLayerNorm;
    else if (m == "activation")
      bits |= kActivation;
    else
      return getOperation().emitError()
             << "mtc-plan-recompute: unknown module '" << m
             << "' in modules (valid: core_attn, mlp, layernorm, activation)";
  }
  return success();
}

/// `auto`: the candidate levels per layer, cheapest first, from which a
/// plan of fewest recomputed FLOPs under the budget is chosen
/// (docs/memory.md, "The auto policy").
LogicalResult PlanRecomputePass::chooseAuto(ModuleOp module, func::FuncOp fn,
                                            Choice &c) {
  Program p = analyze(fn);
  const int64_t layers = p.numLayers;
  c.modules.assign(layers, 0);
  c.group.resize(layers);
  for (int64_t l = 0; l < layers; ++l)
    c.group[l] = l;
  if (memoryBudget <= 0)
    return module.emitError()
           << "mtc-plan-recompute: the auto policy needs a memory budget "
              "(mtc compile --memory-budget 60GiB, or a fraction of "
              "--gpu-memory)";
  // Evaluates a choice on a copy of the function: (peak bytes, activation
  // bytes, recomputed FLOPs).
  MemoryPlan fixed = planMemory(module, target, 0);
  struct Eval {
    int64_t peak, activations;
    double flops;
  };
  auto evaluate = [&](const Choice &ch) {
    auto copy = cast<func::FuncOp>(fn->clone());
    Program q = analyze(copy);
    applyChoice(q, ch);
    Eval e;
    e.activations = planActivationBytes(copy, target);
    e.peak = fixed.peak() + e.activations;
    e.flops = recomputedFlops(copy);
    copy->erase();
    return e;
  };
  // Levels, each a module set for every layer: the paper's selective
  // first, then what adds the least FLOPs per byte saved, full last.
  const unsigned levels[] = {0,
                             kCoreAttn,
                             kCoreAttn | kActivation,
                             kCoreAttn | kActivation | kLayerNorm,
                             kCoreAttn | kMlp | kActivation | kLayerNorm,
                             kFull};
  struct Level {
    unsigned bits;
    double bytes, flops; // per layer: saved bytes and recomputed FLOPs
  };
  llvm::SmallVector<Level> measured;
  Eval none = evaluate(c);
  if (none.peak <= memoryBudget)
    return success();
  Eval best = none;
  for (unsigned bits : levels) {
    Choice all = c;
    all.modules.assign(layers, bits);
    Eval e = bits ? evaluate(all) : none;
    measured.push_back({bits, double(none.activations - e.activations) / layers,
                        e.flops / layers});
    if (bits == kFull)
      best = e;
  }
  if (best.peak > memoryBudget) {
    // Nothing fits: say what each rank needs and what would help.
    MemoryPlan m = planMemory(module, target, best.activations);
    InFlightDiagnostic d = module.emitError();
    d << "mtc-plan-recompute: the plan does not fit the memory budget of "
      << humanBytes(double(memoryBudget)) << " per rank under any "
      << "recomputation policy: with full recomputation each rank needs "
      << describeMemory(m) << " (without recomputation: activations "
      << humanBytes(double(none.activations)) << ", peak "
      << humanBytes(double(none.peak)) << "). To fit: ";
    int64_t over = best.peak - memoryBudget;
    SmallVector<std::string> hints;
    if (best.activations > 0 && best.activations > over) {
      // Activations scale with the micro-batch.
      auto cfg = module->getAttrOfType<DictionaryAttr>("mtc.training");
      auto mb = cfg ? cfg.getAs<IntegerAttr>("micro_batch_size") : nullptr;
      if (mb && mb.getInt() > 1) {
        int64_t fit = int64_t(double(mb.getInt()) *
                              double(best.activations - over) /
                              double(best.activations));
        if (fit >= 1 && fit < mb.getInt())
          hints.push_back("a smaller micro-batch (--micro-batch-size at "
                          "most " + std::to_string(fit) + ", with more "
                          "microbatches to keep the global batch)");
      }
    }
    hints.push_back("more tensor parallelism (--tp; parameters, gradients, "
                    "optimizer state and activations shrink about 1/tp)");
    hints.push_back("more pipeline stages (--pp; each stage holds its "
                    "layers only)");
    if (m.optimizer > 0)
      hints.push_back("data parallelism with the distributed optimizer "
                      "(--dp; the optimizer state shrinks 1/dp)");
    hints.push_back("a larger --memory-budget");
    d << llvm::join(hints, ", or ");
    return failure();
  }
  // The lower convex hull of the levels in (bytes saved, FLOPs): a level
  // above it is never in an optimal choice (a mix of its neighbours saves
  // as much for fewer FLOPs).
  llvm::SmallVector<Level> hull;
  llvm::SmallVector<Level> sorted(measured);
  llvm::stable_sort(sorted, [](const Level &a, const Level &b) {
    return a.bytes < b.bytes || (a.bytes == b.bytes && a.flops < b.flops);
  });
  for (const Level &l : sorted) {
    if (!hull.empty() && l.flops <= hull.back().flops && l.bytes <= hull.back().bytes)
      continue;
    if (!hull.empty() && l.bytes <= hull.back().bytes)
      continue;
    while (hull.size() >= 2) {
      const Level &a = hull[hull.size() - 2], &b = hull.back();
      // b is above segment a-l (or on it): drop b.
      double cross = (b.bytes - a.bytes) * (l.flops - a.flops) -
                     (b.flops - a.flops) * (l.bytes - a.bytes);
      if (cross <= 0)
        hull.pop_back();
      else
        break;
    }
    if (!hull.empty() && l.flops < hull.back().flops)
      hull.pop_back(); // saves more for less: dominates
    hull.push_back(l);
  }
  // Walk the hull: between neighbours a and b, n layers at b and the rest
  // at a, the smallest n that fits (binary search on the exact plan).
  auto mix = [&](unsigned a, unsigned b, int64_t n) {
    Choice ch = c;
    for (int64_t l = 0; l < layers; ++l)
      ch.modules[l] = l < n ? b : a;
    return ch;
  };
  for (size_t k = 0; k + 1 < hull.size(); ++k) {
    unsigned a = hull[k].bits, b = hull[k + 1].bits;
    if (evaluate(mix(a, b, layers)).peak > memoryBudget)
      continue;
    int64_t lo = 0, hi = layers; // mix(a, b, hi) fits
    while (lo + 1 < hi) {
      int64_t mid = (lo + hi) / 2;
      if (evaluate(mix(a, b, mid)).peak <= memoryBudget)
        hi = mid;
      else
        lo = mid;
    }
    c = mix(a, b, hi);
    return success();
  }
  c.modules.assign(layers, kFull);
  return success();
}

void PlanRecomputePass::runOnOperation() {
  ModuleOp module = getOperation();
  auto fn = module.lookupSymbol<func::FuncOp>("train_step");
  std::string name = policy;
  if (name.empty())
    if (auto a = module->getAttrOfType<StringAttr>("mtc.recompute"))
      name = a.str();
  if (name.empty() || name == "none" || !fn)
    return;
  if (target != "host" && target != "cuda") {
    module.emitError() << "mtc-plan-recompute: unknown target '" << target
                       << "' (valid: host, cuda)";
    return signalPassFailure();
  }
  Program p = analyze(fn);
  Choice c;
  c.modules.assign(p.numLayers, 0);
  c.group.resize(p.numLayers);
  for (int64_t l = 0; l < p.numLayers; ++l)
    c.group[l] = l;
  if (name == "selective") {
    unsigned bits;
    if (failed(selectiveModules(bits)))
      return signalPassFailure();
    c.modules.assign(p.numLayers, bits);
  } else if (name == "full") {
    if (numLayers < 1) {
      module.emitError() << "mtc-plan-recompute: num-layers must be at least "
                            "1, got "
                         << int64_t(numLayers);
      return signalPassFailure();
    }
    if (method == "uniform") {
      c.modules.assign(p.numLayers, kFull);
      for (int64_t l = 0; l < p.numLayers; ++l)
        c.group[l] = l / numLayers;
    } else if (method == "block") {
      for (int64_t l = 0; l < std::min<int64_t>(numLayers, p.numLayers); ++l)
        c.modules[l] = kFull;
    } else {
      module.emitError() << "mtc-plan-recompute: unknown method '" << method
                         << "' (valid: uniform, block)";
      return signalPassFailure();
    }
  } else if (name == "auto") {
    if (failed(chooseAuto(module, fn, c)))
      return signalPassFailure();
  } else {
    module.emitError() << "mtc-plan-recompute: unknown policy '" << name
                       << "' (valid: none, selective, full, auto)";
    return signalPassFailure();
  }
  p = analyze(fn);
  if (p.numLayers == 0) {
    module.emitWarning()
        << "mtc-plan-recompute: no op of @train_step has a layer's location "
           "(\"layers.N...\", as the importer writes them), so nothing is "
           "recomputed; print IR for mtc-opt with --mlir-print-debuginfo";
    return;
  }
  applyChoice(p, c);
}

} // namespace
