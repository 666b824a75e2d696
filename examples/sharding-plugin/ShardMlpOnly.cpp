//===- ShardMlpOnly.cpp - an out-of-tree mtc sharding pass -----------------===//
//
// A sharding pass is policy only: it decides which parameters are split over
// which grid axis and writes that as upstream `shard` annotations
// (mtc::annotateSplit); mtc-partition turns the annotations into per-rank
// shapes and collectives. This one splits only the MLPs:
//  1. find each activation (mtc.gelu / mtc.swiglu);
//  2. the linear layers feeding it are column-parallel: their (out, in)
//     weights and biases split on dimension 0;
//  3. the linear layer consuming it is row-parallel: its weight split on
//     dimension 1 (its bias stays whole; the partitioner adds it after the
//     all_reduce).
//
//===----------------------------------------------------------------------===//
#include "mlir/Pass/Pass.h"
#include "mlir/Tools/Plugins/PassPlugin.h"
#include "mtc/Dialect/MtcDialect.h"
#include "mtc/Transforms/Grid.h"

namespace example {
#define GEN_PASS_DECL
#define GEN_PASS_DEF_EXAMPLESHARDMLPONLY
#define GEN_PASS_REGISTRATION
#include "Passes.h.inc"
} // namespace example

using namespace mlir;

namespace {

/// The parameter behind a matmul's weight, or null.
Value weightOf(mtc::MatmulOp mm) {
  Value w = mm.getRhs();
  if (auto s = w.getDefiningOp<shard::ShardOp>())
    w = s.getSrc();
  return w.getDefiningOp<mtc::ParamOp>() ? w : Value();
}

struct ShardMlpOnly
    : public example::impl::ExampleShardMlpOnlyBase<ShardMlpOnly> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (mtc::getGridShape(module).tp <= 1)
      return;
    mtc::getOrCreateGrid(module);
    bool ok = true;
    auto split = [&](Value param, int64_t dim) {
      if (param)
        ok &= succeeded(mtc::annotateSplit(param, {dim, mtc::kAxisTP}));
    };
    auto column = [&](Value activationInput) {
      auto mm = activationInput.getDefiningOp<mtc::MatmulOp>();
      if (!mm || mm.getTransposeA() || !mm.getTransposeB())
        return;
      split(weightOf(mm), 0);
      if (Value b = mm.getBias())
        if (b.getDefiningOp<mtc::ParamOp>())
          split(b, 0);
    };
    auto row = [&](Value activation) {
      for (Operation *user : activation.getUsers())
        if (auto mm = dyn_cast<mtc::MatmulOp>(user))
          if (mm.getLhs() == activation && mm.getTransposeB())
            split(weightOf(mm), 1);
    };
    module.walk([&](Operation *op) {
      if (auto g = dyn_cast<mtc::GeluOp>(op)) {
        column(g.getInput());
        row(g.getResult());
      } else if (auto s = dyn_cast<mtc::SwigluOp>(op)) {
        column(s.getGate());
        column(s.getUp());
        row(s.getResult());
      }
    });
    if (!ok)
      signalPassFailure();
  }
};

} // namespace

extern "C" LLVM_ATTRIBUTE_WEAK ::mlir::PassPluginLibraryInfo
mlirGetPassPluginInfo() {
  return {MLIR_PLUGIN_API_VERSION, "ShardMlpOnly", LLVM_VERSION_STRING,
          []() { example::registerExampleShardMlpOnly(); }};
}
