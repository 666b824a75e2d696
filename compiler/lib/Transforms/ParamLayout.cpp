//===- ParamLayout.cpp - the flat buffers' layout --------------------------===//
#include "mtc/Transforms/ParamLayout.h"

#include "mtc/Transforms/Grid.h"

using namespace mlir;

namespace {
/// Split over @mtc_expert_grid (expert parallelism): laid out after every
/// other parameter, so that their gradients, reduced over another group,
/// are one run of the flat buffer.
bool isExpertParam(mtc::ParamOp p) {
  auto sh = p->getAttrOfType<DictionaryAttr>("mtc.shard");
  auto grid = sh ? sh.getAs<FlatSymbolRefAttr>("grid") : FlatSymbolRefAttr();
  return grid && grid.getValue() == mtc::kExpertGridName;
}

// Pads [begin, totalElements) to `r`'s group: equal shares, 16-aligned
// like the parameters, so vector loads stay aligned.
void closeShard(mtc::ParamLayout &l, ModuleOp module, mtc::ReduceGradientsOp r,
                int64_t begin, bool experts) {
  mtc::OptimizerShard s;
  s.grid = r.getGrid().str();
  s.axes.assign(r.getGridAxes().begin(), r.getGridAxes().end());
  s.parts = mtc::getGridShape(module).size(s.grid, s.axes);
  s.begin = begin;
  s.elements = (l.totalElements - begin + s.parts * 16 - 1) / (s.parts * 16) * 16;
  s.stateOffset = l.shards.empty() ? 0 : l.shards.back().stateOffset +
                                             l.shards.back().elements;
  s.experts = experts;
  l.totalElements = s.end();
  l.shards.push_back(s);
}

template <typename Walk>
void build(mtc::ParamLayout &l, ModuleOp module, Walk walk) {
  // A distributed optimizer's reductions: the one over every parameter no
  // other names (dp), and with expert parallelism the experts' (edp).
  mtc::ReduceGradientsOp dense, experts;
  walk([&](mtc::ReduceGradientsOp r) {
    if (r.getShardOptimizerState())
      (r.getParams() ? experts : dense) = r;
  });
  int64_t expertsBegin = 0;
  for (bool expertGroup : {false, true}) {
    if (expertGroup) {
      // Two regions: the dense one ends before the experts.
      if (dense && experts)
        closeShard(l, module, dense, 0, false);
      expertsBegin = l.totalElements;
    }
    walk([&](mtc::ParamOp p) {
      if (l.slots.count(p.getName()) || isExpertParam(p) != expertGroup)
        return;
      l.slots[p.getName()] = {p, l.totalElements};
      l.order.push_back(p.getName().str());
      l.totalElements += (p.getType().getNumElements() + 15) / 16 * 16;
    });
  }
  // The experts' state is sharded only beside the dense parameters' (the
  // emitters refuse a sharded experts' reduction without a region).
  if (dense && experts)
    closeShard(l, module, experts, expertsBegin, true);
  else if (dense)
    closeShard(l, module, dense, 0, false);
  if (!l.shards.empty()) {
    l.shardElements = l.shards.front().elements;
    l.shardAxis = l.shards.front().axes.front();
  }
}
} // namespace

mtc::ParamLayout::ParamLayout(ModuleOp module) {
  build(*this, module, [&](auto fn) { module.walk(fn); });
}

mtc::ParamLayout::ParamLayout(ModuleOp module, ArrayRef<func::FuncOp> fns) {
  build(*this, module, [&](auto fn) {
    for (func::FuncOp f : fns)
      f.walk(fn);
  });
}

int64_t mtc::ParamLayout::momentElements() const {
  if (shards.empty())
    return totalElements;
  return shards.back().stateOffset + shards.back().elements;
}

const mtc::OptimizerShard *
mtc::ParamLayout::shardOn(llvm::StringRef grid,
                          llvm::ArrayRef<int16_t> axes) const {
  for (const OptimizerShard &s : shards)
    if (s.grid == grid && llvm::ArrayRef<int16_t>(s.axes) == axes)
      return &s;
  return nullptr;
}

const mtc::OptimizerShard *mtc::ParamLayout::shardAt(int64_t offset) const {
  for (const OptimizerShard &s : shards)
    if (offset >= s.begin && offset < s.end())
      return &s;
  return nullptr;
}
