//===- ParamLayout.h - where each parameter lives in the flat buffers -*- C++ -*-===//
//
// Parameters, their gradients and AdamW moments each live in one allocation
// with one layout: unique parameters in program order, each at a 16-aligned
// offset (so checkpoints and the runtime's ParamDesc table do not depend on
// the target). The code generators and the passes that plan over the flat
// buffer (mtc-plan-buckets) share it.
//
//===----------------------------------------------------------------------===//
#ifndef MTC_TRANSFORMS_PARAMLAYOUT_H
#define MTC_TRANSFORMS_PARAMLAYOUT_H

#include "mtc/Dialect/MtcDialect.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/StringMap.h"

namespace mtc {

struct ParamSlot {
  ParamOp op;
  int64_t offset = 0; // elements, 16-aligned
};

/// One region of the flat buffer whose optimizer state a distributed
/// optimizer shards (`mtc.reduce_gradients ... shard_optimizer_state`): the
/// `parts` members of the group along `axes` of `grid` each own `elements`
/// consecutive elements, member r [begin + r * elements, begin + (r + 1) *
/// elements), and keep the AdamW moments of their share at `stateOffset` of
/// the moment buffers.
struct OptimizerShard {
  std::string grid;
  llvm::SmallVector<int16_t, 1> axes;
  int64_t begin = 0, elements = 0, parts = 1, stateOffset = 0;
  /// The experts' region (expert parallelism: sharded over the
  /// expert-data-parallel group instead of dp).
  bool experts = false;
  int64_t end() const { return begin + elements * parts; }
};

/// Unique parameters in program order, each at an offset of one allocation.
/// With expert parallelism the experts' parameters (split over
/// @mtc_expert_grid) come after every other parameter.
struct ParamLayout {
  llvm::StringMap<ParamSlot> slots;
  llvm::SmallVector<std::string> order;
  int64_t totalElements = 0;
  /// Distributed optimizer: the regions whose optimizer state is sharded, in
  /// buffer order. One, the whole buffer over dp (totalElements padded to dp
  /// shards), or with expert parallelism two: the dense parameters over dp,
  /// then the experts over the expert-data-parallel group (each region
  /// padded to its group's shards); the moment buffers hold this rank's
  /// share of each, in that order. Empty without a distributed optimizer.
  llvm::SmallVector<OptimizerShard, 2> shards;
  /// The first region's share (0 without a distributed optimizer) and the
  /// grid axis of its group: the whole buffer over dp where there is one
  /// region, rank r [r * shardElements, (r + 1) * shardElements).
  int64_t shardElements = 0;
  int shardAxis = -1;

  ParamLayout() = default;
  explicit ParamLayout(mlir::ModuleOp module);
  /// The layout of one pipeline rank: the parameters (and the sharded
  /// optimizer) of `fns` only (mtc/Transforms/Pipeline.h: functionsOfRank).
  ParamLayout(mlir::ModuleOp module, llvm::ArrayRef<mlir::func::FuncOp> fns);
  int64_t offset(llvm::StringRef name) const {
    return slots.lookup(name).offset;
  }
  /// Elements of each AdamW moment buffer on one rank: the sum of the
  /// shards' shares, or totalElements without a distributed optimizer.
  int64_t momentElements() const;
  /// The sharded region over `axes` of `grid` (a sharded reduce_gradients'
  /// or an all_gather_params'), or null.
  const OptimizerShard *shardOn(llvm::StringRef grid,
                                llvm::ArrayRef<int16_t> axes) const;
  /// The sharded region holding the element at `offset`, or null.
  const OptimizerShard *shardAt(int64_t offset) const;
};

} // namespace mtc

#endif // MTC_TRANSFORMS_PARAMLAYOUT_H
