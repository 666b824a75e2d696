//===- AnnotateFlops.cpp - an example mtc pass plugin ----------------------===//
//
// A pass plugin loaded by `mtc-opt --load-pass-plugin=MtcExamplePlugin.so`
// (or `mtc compile --pass-plugin`). It registers
// `mtc-example-annotate-flops`, which writes each mtc op's FLOP count (from
// CostOpInterface) as an `mtc.flops` attribute and reports the total as a
// remark. It shows the three things a plugin needs: a pass declared in ODS
// (Passes.td), its registration, and the exported `mlirGetPassPluginInfo`.
//
//===----------------------------------------------------------------------===//
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/Pass/Pass.h"
#include "mlir/Tools/Plugins/PassPlugin.h"
#include "mtc/Dialect/MtcDialect.h"
#include "llvm/Support/Format.h"

namespace mtc::example {
#define GEN_PASS_DECL
#define GEN_PASS_DEF_MTCEXAMPLEANNOTATEFLOPS
#define GEN_PASS_REGISTRATION
#include "Passes.h.inc"
} // namespace mtc::example

using namespace mlir;

namespace {
struct AnnotateFlopsPass
    : public mtc::example::impl::MtcExampleAnnotateFlopsBase<
          AnnotateFlopsPass> {
  void runOnOperation() override {
    func::FuncOp fn = getOperation();
    Builder b(fn.getContext());
    double total = 0;
    fn.walk([&](mtc::CostOpInterface op) {
      double flops = op.getFlops();
      total += flops;
      op->setAttr("mtc.flops", b.getF64FloatAttr(flops));
    });
    std::string text;
    llvm::raw_string_ostream(text) << llvm::format("%.6g", total);
    fn.emitRemark() << "total FLOPs " << text;
  }
};
} // namespace

extern "C" LLVM_ATTRIBUTE_WEAK ::mlir::PassPluginLibraryInfo
mlirGetPassPluginInfo() {
  return {MLIR_PLUGIN_API_VERSION, "MtcExamplePlugin", LLVM_VERSION_STRING,
          []() { mtc::example::registerMtcExampleAnnotateFlops(); }};
}
