//===- Pipelines.cpp - the one place pipelines are assembled ---------------===//
#include "mtc/Transforms/Passes.h"

#include "mlir/Dialect/Shard/IR/ShardDialect.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Pass/PassRegistry.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;

void mtc::registerMtcDialects(DialectRegistry &registry) {
  registry.insert<mtc::MtcDialect, func::FuncDialect, arith::ArithDialect,
                  shard::ShardDialect, tensor::TensorDialect>();
  registerShardingInterfaceExternalModels(registry);
}

LogicalResult mtc::buildTrainingPipeline(OpPassManager &pm,
                                         StringRef shardingPipeline,
                                         bool scheduleWeightGradients,
                                         const MtcPlanRecomputeOptions &recompute) {
  pm.addPass(createMtcAutodiff());
  // Policy: annotations only. A user's sharding passes replace Megatron's
  // tensor-parallel plan.
  if (shardingPipeline.empty())
    pm.addPass(createMtcShardTensorParallel());
  else if (failed(parsePassPipeline(shardingPipeline, pm, llvm::errs())))
    return failure();
  pm.addPass(createMtcShardSequenceParallel());
  pm.addPass(createMtcShardDataParallel());
  // Mechanism: local shapes and collectives.
  pm.addPass(createMtcPartition());
  // Expert parallelism: the experts' rows routed between ranks (no-op when
  // ep = 1).
  pm.addPass(createMtcShardExpertParallel());
  // Scheduling: weight-gradient work beside the collectives in flight.
  if (scheduleWeightGradients)
    pm.addPass(createMtcScheduleWeightGradients());
  // Memory: which activations are kept, on the per-rank program in its
  // final order (a policy of "none" changes nothing), before the pipeline
  // cuts it into pieces: a recomputed op carries its forward op's location,
  // so it lands in its chunk's backward piece.
  pm.addPass(createMtcPlanRecompute(recompute));
  // Pipeline parallelism (no-ops when pp = 1): chunks, pieces, each rank's
  // step in schedule order, and the proof that the steps cannot deadlock.
  pm.addPass(createMtcPipelineStages());
  pm.addPass(createMtcPipelineSplit());
  pm.addPass(createMtcPipelineSchedule());
  pm.addPass(createMtcVerifyPipeline());
  return success();
}

void mtc::buildCudaLoweringPipeline(OpPassManager &pm) {
  // Each pass decides one thing and writes it on the ops
  // (mtc/Transforms/Lowering.h); the CUDA code generator only reads.
  pm.addPass(createMtcAssignPrecision());
  pm.addPass(createMtcSinkGradients());
  pm.addPass(createMtcFuseKernels());
  pm.addPass(createMtcPlaceCollectives());
  pm.addPass(createMtcAssignLanes());
  pm.addPass(createMtcPlanBuckets());
}

void mtc::registerMtcPipelines() {
  PassPipelineRegistration<>(
      "mtc-train-pipeline",
      "Forward program -> training program ready for code generation",
      [](OpPassManager &pm) { (void)buildTrainingPipeline(pm); });
  PassPipelineRegistration<>(
      "mtc-cuda-lowering",
      "Training program -> the CUDA code generator's decisions on the ops "
      "(precision, gradient sinks, fusions, collective placement, lanes, "
      "dp buckets)",
      buildCudaLoweringPipeline);
}
