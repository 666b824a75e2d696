//===- Lowering.h - the decisions the CUDA lowering passes write -*- C++ -*-===//
//
// The CUDA target's lowering passes (mtc-assign-precision,
// mtc-sink-gradients, mtc-fuse-kernels, mtc-place-collectives,
// mtc-assign-lanes, mtc-plan-buckets; pipeline mtc-cuda-lowering) decide
// how each op of the training step runs and write the decision on the op as
// a discardable attribute; the CUDA code generator reads them and decides
// nothing of its own. `mtc compile --emit=lowered` prints them.
//
//   mtc.storage = ["bf16", "f32", "none", ...]   per result: how the value
//       is stored (mixed precision; the IR's types stay the math's fp32);
//       "none": never stored (a gradient sink)
//   mtc.sink = ["layers.0.mlp.fc1.weight", "", ...]   per result: the
//       parameter whose fp32 gradient buffer the producer accumulates the
//       value into; such a value is never stored ("" for a stored result)
//   mtc.fusion = "KIND"   on the op that executes a fused group
//   mtc.fused = "KIND"    on an op executed by another op of its group
//   mtc.in_place = array<i64: ...>   per result: the operand whose storage
//       the result takes over (-1: its own)
//   mtc.early_start (unit, on a collective)   started right after its
//       input's producer, on its axis's stream, and waited for where it
//       stands (mtc-place-collectives)
//   mtc.reduce_then = "KIND"   on an early tp all-reduce: row-wise work run
//       inside it on each rank's half of the rows (the op doing it is
//       mtc.fused = "KIND")
//   mtc.partial_rows = array<i64: gamma, beta, bias>   with
//       reduce_norm_backward: the rows of the fp32 partial-gradient buffer
//       (summed over tp once per step) of the norm's dgamma, dbeta and the
//       row-parallel bias gradient (-1: none)
//   mtc.dp_buckets = array<i64: bucket, begin, size, ...>   on the op after
//       which data-parallel gradient buckets are complete: each bucket's
//       number and its range of the flat gradient buffer, all-reduced over
//       dp there on the step's last microbatch (mtc-plan-buckets)
//   mtc.lane = "split" | "whole"   an op of a half-batch lane run: run as
//       two halves (lane 0, lane 1), or whole once both lanes passed it
//       (mtc-assign-lanes)
//   mtc.lane_run = "forward" | "backward"   on a run's first op: lane 1 on
//       its own stream (forward) or both lanes on the compute stream,
//       staggered (backward); mtc.lane_run_end (unit) on its last op
//
// Fusion kinds (FuseKernels.cpp says when each applies):
//   matmul_gelu         gelu(tanh) in its matmul's cuBLASLt epilogue (the
//                       gelu runs the group; the matmul is fused)
//   embedding_position  the position table added by the embedding kernel
//                       (the add runs it; the embedding is fused)
//   cross_entropy_grad  the loss and the logits' gradient in one kernel,
//                       in place over the logits (the cross_entropy runs
//                       it; the gradient op and its seed constant are fused)
//   norm_into_residual  a norm's backward adds its input gradient into the
//                       residual stream's gradient (the norm runs it; the
//                       add is fused, in place over that gradient)
//   rank_zero_bias      a row-parallel linear's bias added by the GEMM of
//                       the tp axis's rank 0, before the all-reduce (the
//                       matmul runs it; the add is fused, in place)
// Work inside an all-reduce (mtc.reduce_then):
//   reduce_residual_add  the residual added in the all-reduce's sum pass
//                        (the add is fused)
//   reduce_norm_backward the norm's backward on each rank's half of the
//                        rows between the sum and the exchange (the norm
//                        and the bias gradient's reduce_leading are fused)
//
//===----------------------------------------------------------------------===//
#ifndef MTC_TRANSFORMS_LOWERING_H
#define MTC_TRANSFORMS_LOWERING_H

#include "mlir/IR/Operation.h"
#include "llvm/ADT/StringRef.h"
#include <optional>

namespace mtc::lowering {

inline constexpr llvm::StringLiteral kStorage = "mtc.storage";
inline constexpr llvm::StringLiteral kSink = "mtc.sink";
inline constexpr llvm::StringLiteral kFusion = "mtc.fusion";
inline constexpr llvm::StringLiteral kFused = "mtc.fused";
inline constexpr llvm::StringLiteral kInPlace = "mtc.in_place";
inline constexpr llvm::StringLiteral kEarlyStart = "mtc.early_start";
inline constexpr llvm::StringLiteral kReduceThen = "mtc.reduce_then";
inline constexpr llvm::StringLiteral kPartialRows = "mtc.partial_rows";
inline constexpr llvm::StringLiteral kDpBuckets = "mtc.dp_buckets";
inline constexpr llvm::StringLiteral kLane = "mtc.lane";
inline constexpr llvm::StringLiteral kLaneRun = "mtc.lane_run";
inline constexpr llvm::StringLiteral kLaneRunEnd = "mtc.lane_run_end";
inline constexpr llvm::StringLiteral kLaneSplit = "split";
inline constexpr llvm::StringLiteral kLaneWhole = "whole";
inline constexpr llvm::StringLiteral kLaneRunForward = "forward";
inline constexpr llvm::StringLiteral kLaneRunBackward = "backward";

inline constexpr llvm::StringLiteral kMatmulGelu = "matmul_gelu";
inline constexpr llvm::StringLiteral kEmbeddingPosition = "embedding_position";
inline constexpr llvm::StringLiteral kCrossEntropyGrad = "cross_entropy_grad";
inline constexpr llvm::StringLiteral kNormIntoResidual = "norm_into_residual";
inline constexpr llvm::StringLiteral kRankZeroBias = "rank_zero_bias";
inline constexpr llvm::StringLiteral kReduceResidualAdd = "reduce_residual_add";
inline constexpr llvm::StringLiteral kReduceNormBackward = "reduce_norm_backward";

/// The per-result string of `attr` for `v` ("" when absent).
llvm::StringRef resultString(mlir::Value v, llvm::StringRef attr);
/// Sets the per-result string of `attr` for `v` (other results: "").
void setResultString(mlir::Value v, llvm::StringRef attr,
                     llvm::StringRef value);

/// mtc.storage of `v` is "f32".
inline bool storedF32(mlir::Value v) {
  return resultString(v, kStorage) == "f32";
}
/// The parameter `v` sinks into (mtc.sink), or "".
inline llvm::StringRef sinkOf(mlir::Value v) {
  return resultString(v, kSink);
}
inline bool sinks(mlir::Value v) { return !sinkOf(v).empty(); }
/// mtc.fusion / mtc.fused of `op`, or "".
llvm::StringRef fusionOf(mlir::Operation *op);
llvm::StringRef fusedOf(mlir::Operation *op);
/// `v` is never stored: the op that uses it computes it (its producer is
/// fused away: embedding_position).
bool fusedAway(mlir::Value v);
/// The operand whose storage result `v` takes over (mtc.in_place).
std::optional<unsigned> inPlaceOperand(mlir::Value v);
void setInPlace(mlir::Value v, unsigned operand);

} // namespace mtc::lowering

#endif // MTC_TRANSFORMS_LOWERING_H
