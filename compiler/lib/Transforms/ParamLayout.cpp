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

template <typename Walk>
void build(mtc::ParamLayout &l, ModuleOp module, Walk walk) {
  for (bool experts : {false, true})
    walk([&](mtc::ParamOp p) {
      if (l.slots.count(p.getName()) || isExpertParam(p) != experts)
        return;
      l.slots[p.getName()] = {p, l.totalElements};
      l.order.push_back(p.getName().str());
      l.totalElements += (p.getType().getNumElements() + 15) / 16 * 16;
    });
  walk([&](mtc::ReduceGradientsOp r) {
    if (!r.getShardOptimizerState())
      return;
    const int64_t parts = mtc::getGridShape(module).size(r.getGridAxes());
    l.shardAxis = r.getGridAxes()[0];
    // Shards 16-aligned like the parameters, so vector loads stay aligned.
    l.shardElements = (l.totalElements + parts * 16 - 1) / (parts * 16) * 16;
    l.totalElements = l.shardElements * parts;
  });
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
