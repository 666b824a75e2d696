//===- ParamLayout.cpp - the flat buffers' layout --------------------------===//
#include "mtc/Transforms/ParamLayout.h"

#include "mtc/Transforms/Grid.h"

using namespace mlir;

mtc::ParamLayout::ParamLayout(ModuleOp module) {
  module.walk([&](ParamOp p) {
    if (slots.count(p.getName()))
      return;
    slots[p.getName()] = {p, totalElements};
    order.push_back(p.getName().str());
    totalElements += (p.getType().getNumElements() + 15) / 16 * 16;
  });
  module.walk([&](ReduceGradientsOp r) {
    if (!r.getShardOptimizerState())
      return;
    const int64_t parts = getGridShape(module).size(r.getGridAxes());
    shardAxis = r.getGridAxes()[0];
    // Shards 16-aligned like the parameters, so vector loads stay aligned.
    shardElements = (totalElements + parts * 16 - 1) / (parts * 16) * 16;
    totalElements = shardElements * parts;
  });
}
