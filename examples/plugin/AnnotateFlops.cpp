//===- AnnotateFlops.cpp - an example mtc pass plugin ----------------------===//
//
// A pass plugin loaded by `mtc-opt --load-pass-plugin=MtcExamplePlugin.so`.
// It registers `mtc-example-annotate-flops`, which writes each mtc op's FLOP
// count (from CostOpInterface) as an `mtc.flops` attribute, and reports the
// total as a remark. It shows the three things a plugin needs: a pass class,
// a registration function, and the exported `mlirGetPassPluginInfo`.
//
//===----------------------------------------------------------------------===//
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/Pass/Pass.h"
#include "mlir/Tools/Plugins/PassPlugin.h"
#include "mtc/Dialect/MtcDialect.h"

using namespace mlir;

namespace {
struct AnnotateFlopsPass
    : public PassWrapper<AnnotateFlopsPass, OperationPass<func::FuncOp>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(AnnotateFlopsPass)

  StringRef getArgument() const final { return "mtc-example-annotate-flops"; }
  StringRef getDescription() const final {
    return "Annotates every mtc op with its FLOP count (example plugin)";
  }
  void runOnOperation() override {
    func::FuncOp fn = getOperation();
    Builder b(fn.getContext());
    double total = 0;
    fn.walk([&](mtc::CostOpInterface op) {
      double flops = op.getFlops();
      total += flops;
      op->setAttr("mtc.flops", b.getF64FloatAttr(flops));
    });
    fn.emitRemark() << "total FLOPs " << llvm::format("%.6g", total);
  }
};
} // namespace

extern "C" LLVM_ATTRIBUTE_WEAK ::mlir::PassPluginLibraryInfo
mlirGetPassPluginInfo() {
  return {MLIR_PLUGIN_API_VERSION, "MtcExamplePlugin", LLVM_VERSION_STRING,
          []() { PassRegistration<AnnotateFlopsPass>(); }};
}
