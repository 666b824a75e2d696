//===- mtc-opt.cpp - run mtc and upstream passes on IR ---------------------===//
//
// mlir-opt with the mtc dialect, its passes and pipelines, and the upstream
// dialects and passes mtc programs use (func, arith, tensor, shard). Pass
// plugins load with --load-pass-plugin=lib.so (see examples/plugin).
//
//===----------------------------------------------------------------------===//
#include "mlir/Dialect/Shard/Transforms/Passes.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"
#include "mlir/Transforms/Passes.h"
#include "mtc/Transforms/Passes.h"

int main(int argc, char **argv) {
  mlir::DialectRegistry registry;
  mtc::registerMtcDialects(registry);
  mtc::registerMtcPasses();
  mtc::registerMtcPipelines();
  mlir::shard::registerShardPasses();
  mlir::registerTransformsPasses();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "mtc optimizer driver\n", registry));
}
