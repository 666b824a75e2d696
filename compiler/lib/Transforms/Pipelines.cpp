//===- Pipelines.cpp - the one place pipelines are assembled ---------------===//
#include "mtc/Transforms/Passes.h"

#include "mlir/Dialect/Shard/IR/ShardDialect.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Pass/PassRegistry.h"

using namespace mlir;

void mtc::registerMtcDialects(DialectRegistry &registry) {
  registry.insert<mtc::MtcDialect, func::FuncDialect, arith::ArithDialect,
                  shard::ShardDialect, tensor::TensorDialect>();
  registerShardingInterfaceExternalModels(registry);
}

void mtc::buildTrainingPipeline(OpPassManager &pm) {
  pm.addPass(createMtcAutodiff());
  // Policy: annotations only.
  pm.addPass(createMtcShardTensorParallel());
  pm.addPass(createMtcShardDataParallel());
  // Mechanism: local shapes and collectives.
  pm.addPass(createMtcPartition());
}

void mtc::registerMtcPipelines() {
  PassPipelineRegistration<>(
      "mtc-train-pipeline",
      "Forward program -> training program ready for code generation",
      [](OpPassManager &pm) { buildTrainingPipeline(pm); });
}
