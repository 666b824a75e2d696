//===- Passes.h - mtc compiler passes ---------------------------*- C++ -*-===//
//
// Pass declarations (generated from Passes.td) and the pipelines assembled
// from them (Pipelines.cpp).
//
//===----------------------------------------------------------------------===//
#ifndef MTC_TRANSFORMS_PASSES_H
#define MTC_TRANSFORMS_PASSES_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Shard/IR/ShardDialect.h"
#include "mlir/Pass/Pass.h"
#include "mlir/Pass/PassManager.h"
#include "mtc/Dialect/MtcDialect.h"

namespace mtc {

#define GEN_PASS_DECL
#include "mtc/Transforms/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "mtc/Transforms/Passes.h.inc"

/// Registers the named pipelines (`mtc-train-pipeline`, ...).
void registerMtcPipelines();

/// The passes that turn an imported forward program into the program the
/// emitter lowers: autodiff, the sharding passes (policy: annotations only),
/// the partitioner (mechanism).
///
/// `shardingPipeline`, when not empty, is a textual pass pipeline (e.g.
/// "my-sharding-pass{opt=1}", from a plugin) that replaces the built-in
/// tensor-parallel plan; it runs on the module after autodiff and must only
/// write sharding annotations. Returns failure (with a message) if it does
/// not parse. `scheduleWeightGradients` adds mtc-schedule-weight-gradients
/// after the partitioner (`mtc compile --delay-wgrad-compute`, on by
/// default). Last, mtc-plan-recompute with `recompute` (by default the
/// module's `mtc.recompute` policy).
mlir::LogicalResult
buildTrainingPipeline(mlir::OpPassManager &pm,
                      llvm::StringRef shardingPipeline = "",
                      bool scheduleWeightGradients = true,
                      const MtcPlanRecomputeOptions &recompute = {});

/// The CUDA target's lowering passes (mtc-cuda-lowering): precision,
/// gradient sinks, fusions, each written on the ops (Lowering.h). Runs on
/// the training pipeline's output, before the CUDA code generator.
void buildCudaLoweringPipeline(mlir::OpPassManager &pm);

/// Registers every dialect mtc programs and tools use (mtc, func, arith,
/// shard, tensor) plus mtc's ShardingInterface models.
void registerMtcDialects(mlir::DialectRegistry &registry);

} // namespace mtc

#endif // MTC_TRANSFORMS_PASSES_H
