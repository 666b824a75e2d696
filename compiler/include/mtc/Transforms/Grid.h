//===- Grid.h - the device grid and sharding annotations --------*- C++ -*-===//
//
// mtc programs run on one upstream `shard.grid @mtc_grid(shape = PPxDPxTP)`:
// axis 0 is pipeline, axis 1 data, axis 2 tensor parallel, so the grid's
// row-major linear index is Megatron's rank order (tp fastest, then dp, then
// pp): rank = tp_rank + tp * (dp_rank + dp * pp_rank).
//
// Sharding passes (policy) only write annotations with upstream ops:
//   %s = shard.sharding @mtc_grid split_axes = [[2]] : !shard.sharding
//   %w_tp = shard.shard %w to %s : tensor<2304x768xf32>
// on parameters (and on function arguments for data parallelism); the
// partitioner (mtc-partition, the mechanism) reads them.
//
//===----------------------------------------------------------------------===//
#ifndef MTC_TRANSFORMS_GRID_H
#define MTC_TRANSFORMS_GRID_H

#include "mlir/Dialect/Shard/IR/ShardDialect.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mtc/Dialect/MtcDialect.h"

#include <optional>

namespace mtc {

// kGridName, the grid's symbol, is in MtcDialect.h (the verifier uses it).
enum GridAxis : int16_t { kAxisPP = 0, kAxisDP = 1, kAxisTP = 2 };

// With expert parallelism (ep > 1) the experts live on a second grid over the
// same devices, `shard.grid @mtc_expert_grid(shape = PPx(DP/EP)xEPxTP)`
// (kExpertGridName, MtcDialect.h): its linear index is the same rank, since
// dp_rank = ep_rank + ep * edp_rank (Megatron's expert rank order: ep groups
// are ep consecutive dp ranks). Axis 1 is expert-data-parallel (the ranks
// holding the same experts, whose expert gradients are averaged), axis 2
// expert-parallel (the all-to-all of tokens).
enum ExpertGridAxis : int16_t { kExpertAxisEDP = 1, kExpertAxisEP = 2 };

/// Sizes of the grid's axes, from the module's `mtc.parallel` attribute
/// (1 where absent).
struct GridShape {
  int64_t pp = 1, dp = 1, tp = 1;
  int64_t ep = 1; // expert parallel, divides dp
  int64_t size(int axis) const { return axis == 0 ? pp : axis == 1 ? dp : tp; }
  /// Ranks in a group along several axes: the product of their sizes.
  int64_t size(llvm::ArrayRef<int16_t> axes) const {
    int64_t n = 1;
    for (int16_t a : axes)
      n *= size(a);
    return n;
  }
  /// The same on the axes of `grid`: @mtc_grid's, or @mtc_expert_grid's
  /// (pp, dp / ep, ep, tp).
  int64_t size(llvm::StringRef grid, llvm::ArrayRef<int16_t> axes) const {
    if (grid != kExpertGridName)
      return size(axes);
    int64_t n = 1;
    for (int16_t a : axes)
      n *= a == 0 ? pp : a == kExpertAxisEDP ? dp / ep : a == kExpertAxisEP ? ep : tp;
    return n;
  }
};
GridShape getGridShape(mlir::ModuleOp module);

/// The module's grid, created at the start of the module on first use.
mlir::shard::GridOp getOrCreateGrid(mlir::ModuleOp module);
/// The experts' grid (pp, dp / ep, ep, tp), created after the module's grid
/// on first use.
mlir::shard::GridOp getOrCreateExpertGrid(mlir::ModuleOp module);

/// A value's split: tensor dimension `dim` split evenly over grid axis
/// `axis`.
struct Split {
  int64_t dim;
  int16_t axis;
};

/// Annotates `value` (a parameter or a function argument) as split on
/// `split.dim` over `split.axis`: all other uses of `value` now use the
/// annotated value. Idempotent for the same split; returns failure (with an
/// error) if `value` already carries a different one.
mlir::LogicalResult annotateSplit(mlir::Value value, Split split);

/// The split annotated on `value` by annotateSplit, if any.
std::optional<Split> getAnnotatedSplit(mlir::Value value);

/// The parameter behind `v` (looking through a split annotation), or null;
/// null for a null `v`.
ParamOp paramOf(mlir::Value v);

} // namespace mtc

#endif // MTC_TRANSFORMS_GRID_H
