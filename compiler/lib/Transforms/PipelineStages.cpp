//===- PipelineStages.cpp - -mtc-pipeline-stages: ops -> model chunks ------===//
//
// Assigns every op of @forward and @train_step to one model chunk
// (`mtc.chunk`), for pp * V chunks (V virtual chunks per pipeline rank).
//
// Steps:
//  1. Resolve the layout from the module's `mtc.parallel`: even (the
//     default), the user's (Megatron's syntax, checked against the model by
//     the spec library's resolvePipelineLayout) or "auto": the sequence
//     [embedding, layer 0 .. layer n-1, head] cut into pp * V contiguous,
//     non-empty chunks so that the costliest chunk's FLOPs (forward and
//     backward of one microbatch, CostOpInterface) are smallest — a linear
//     partition solved exactly by dynamic programming, so the embedding's
//     and the LM head's work count like a layer's.
//  2. Each op's part of the model comes from its location, which the
//     importer sets to the model path and autodiff copies onto the gradient
//     ops: "embedding..." (E), "layers.<i>...." (layer i), "final_norm",
//     "lm_head", "loss" (L). An op without one (none today; hand-written
//     IR) takes the chunk of its operands, else of its users.
//  3. Write `mtc.chunk` on every op but parameters (a parameter is copied
//     into each piece that reads it) and the module's `mtc.pipeline_layout`.
// No-op when pp = 1.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Passes.h"
#include "mtc/Transforms/Pipeline.h"

#include "mtc/Spec/Spec.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/StringExtras.h"

namespace mtc {
#define GEN_PASS_DEF_MTCPIPELINESTAGES
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;
namespace spec = mtc::spec;

namespace {

/// The model part an op belongs to: -1 the embedding, 0..n-1 a layer, n the
/// head (final norm, LM head, loss); nullopt when its location names none.
std::optional<int64_t> modelPart(Location loc, int64_t numLayers) {
  std::optional<StringRef> name;
  loc->walk([&](Location l) {
    if (auto n = dyn_cast<NameLoc>(l)) {
      name = n.getName().getValue();
      return WalkResult::interrupt();
    }
    return WalkResult::advance();
  });
  if (!name)
    return std::nullopt;
  StringRef s = *name;
  if (s.starts_with("embedding"))
    return -1;
  if (s.consume_front("layers.")) {
    int64_t layer;
    StringRef digits = s.take_until([](char c) { return c == '.'; });
    if (!digits.getAsInteger(10, layer) && layer >= 0 && layer < numLayers)
      return layer;
    return std::nullopt;
  }
  if (s.starts_with("final_norm") || s.starts_with("lm_head") ||
      s.starts_with("loss"))
    return numLayers;
  return std::nullopt;
}

/// Layers of the model: one more than the highest "layers.<i>" parameter.
int64_t countLayers(ModuleOp module) {
  int64_t n = 0;
  module.walk([&](mtc::ParamOp p) {
    StringRef s = p.getName();
    if (!s.consume_front("layers."))
      return;
    int64_t layer;
    if (!s.take_until([](char c) { return c == '.'; }).getAsInteger(10, layer))
      n = std::max(n, layer + 1);
  });
  return n;
}

/// "auto": contiguous, non-empty chunks of the parts [E, t0 .. t(n-1), L]
/// minimizing the largest chunk's cost (exact DP over cut points).
std::vector<spec::LayoutChunk> balance(const std::vector<double> &cost,
                                       int64_t chunks) {
  const int64_t n = static_cast<int64_t>(cost.size()); // parts
  std::vector<double> prefix(n + 1, 0);
  for (int64_t i = 0; i < n; ++i)
    prefix[i + 1] = prefix[i] + cost[i];
  const double inf = std::numeric_limits<double>::infinity();
  // best[k][i]: the smallest max over the first i parts in k chunks.
  std::vector<std::vector<double>> best(chunks + 1,
                                        std::vector<double>(n + 1, inf));
  std::vector<std::vector<int64_t>> cut(chunks + 1,
                                        std::vector<int64_t>(n + 1, 0));
  best[0][0] = 0;
  for (int64_t k = 1; k <= chunks; ++k)
    for (int64_t i = k; i <= n; ++i)
      for (int64_t j = k - 1; j < i; ++j) {
        double v = std::max(best[k - 1][j], prefix[i] - prefix[j]);
        if (v < best[k][i]) {
          best[k][i] = v;
          cut[k][i] = j;
        }
      }
  std::vector<int64_t> ends(chunks);
  for (int64_t k = chunks, i = n; k >= 1; --k) {
    ends[k - 1] = i;
    i = cut[k][i];
  }
  // Parts are E (0), layers (1..n-2), L (n-1).
  std::vector<spec::LayoutChunk> out;
  int64_t begin = 0;
  for (int64_t k = 0; k < chunks; ++k) {
    spec::LayoutChunk c;
    for (int64_t p = begin; p < ends[k]; ++p) {
      if (p == 0)
        c.embedding = true;
      else if (p == n - 1)
        c.head = true;
      else {
        if (c.num_layers == 0)
          c.first_layer = p - 1;
        ++c.num_layers;
      }
    }
    if (c.num_layers == 0)
      c.first_layer = begin == 0 ? 0 : begin - 1;
    begin = ends[k];
    out.push_back(c);
  }
  return out;
}

std::string describe(const spec::LayoutChunk &c) {
  SmallVector<std::string> items;
  if (c.embedding)
    items.push_back("E");
  if (c.num_layers == 1)
    items.push_back("t");
  else if (c.num_layers > 1)
    items.push_back("t*" + std::to_string(c.num_layers));
  if (c.head)
    items.push_back("L");
  return llvm::join(items, ",");
}

struct PipelineStagesPass
    : public mtc::impl::MtcPipelineStagesBase<PipelineStagesPass> {
  void runOnOperation() override;
};

void PipelineStagesPass::runOnOperation() {
  ModuleOp module = getOperation();
  mtc::PipelineConfig cfg = mtc::getPipelineConfig(module);
  if (cfg.pp == 1)
    return;
  auto train = module.lookupSymbol<func::FuncOp>("train_step");
  auto forward = module.lookupSymbol<func::FuncOp>("forward");
  if (!train || !forward) {
    module.emitError("mtc-pipeline-stages: needs @forward and @train_step "
                     "(run mtc-autodiff first)");
    return signalPassFailure();
  }
  const int64_t numLayers = countLayers(module);
  const int64_t chunks = cfg.chunks();

  // Model part of every op (step 2); parts are numbered -1 .. numLayers.
  llvm::DenseMap<Operation *, int64_t> part;
  auto assignParts = [&](func::FuncOp fn) -> LogicalResult {
    SmallVector<Operation *> open;
    fn.walk([&](Operation *op) {
      if (op == fn || isa<mtc::ParamOp, func::ReturnOp>(op))
        return;
      if (auto p = modelPart(op->getLoc(), numLayers))
        part[op] = *p;
      else
        open.push_back(op);
    });
    // Unnamed ops: the latest part among their operands, else the earliest
    // among their users; repeated until nothing changes.
    for (bool changed = true; changed && !open.empty();) {
      changed = false;
      SmallVector<Operation *> still;
      for (Operation *op : open) {
        std::optional<int64_t> p;
        for (Value v : op->getOperands())
          if (Operation *d = v.getDefiningOp())
            if (auto it = part.find(d); it != part.end())
              p = std::max(p.value_or(it->second), it->second);
        if (!p)
          for (Operation *u : op->getUsers())
            if (auto it = part.find(u); it != part.end())
              p = std::min(p.value_or(it->second), it->second);
        if (p) {
          part[op] = *p;
          changed = true;
        } else {
          still.push_back(op);
        }
      }
      open = std::move(still);
    }
    if (!open.empty())
      return open.front()->emitOpError(
          "mtc-pipeline-stages: cannot tell which part of the model this op "
          "belongs to (its location names no embedding, layers.<i>, "
          "final_norm, lm_head or loss, and no neighbour does)");
    return success();
  };
  if (failed(assignParts(forward)) || failed(assignParts(train)))
    return signalPassFailure();

  // Step 1: the layout.
  std::vector<spec::LayoutChunk> layout;
  if (cfg.layout == "auto") {
    if (numLayers + 2 < chunks) {
      module.emitError("mtc-pipeline-stages: 'auto' needs at least one part "
                       "(embedding, layer or head) per chunk: ")
          << numLayers + 2 << " parts for " << chunks << " chunks";
      return signalPassFailure();
    }
    std::vector<double> cost(numLayers + 2, 0);
    train.walk([&](mtc::CostOpInterface op) {
      if (auto it = part.find(op); it != part.end())
        cost[it->second + 1] += op.getFlops();
    });
    layout = balance(cost, chunks);
  } else {
    std::string why;
    if (!spec::resolvePipelineLayout(cfg.layout, numLayers, chunks, layout,
                                     why)) {
      module.emitError("mtc-pipeline-stages: layout '")
          << cfg.layout << "' " << why;
      return signalPassFailure();
    }
  }
  // Part -> chunk.
  std::vector<int64_t> chunkOfPart(numLayers + 2, -1);
  for (int64_t c = 0; c < chunks; ++c) {
    const spec::LayoutChunk &k = layout[c];
    if (k.embedding)
      chunkOfPart[0] = c;
    for (int64_t l = 0; l < k.num_layers; ++l)
      chunkOfPart[k.first_layer + l + 1] = c;
    if (k.head)
      chunkOfPart[numLayers + 1] = c;
  }

  // Step 3.
  Builder b(module.getContext());
  for (auto [op, p] : part)
    op->setAttr(mtc::kChunkAttr, b.getI64IntegerAttr(chunkOfPart[p + 1]));
  SmallVector<Attribute> names;
  for (const spec::LayoutChunk &k : layout)
    names.push_back(b.getStringAttr(describe(k)));
  module->setAttr(mtc::kPipelineLayoutAttr, b.getArrayAttr(names));
}

} // namespace
