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

/// Unique parameters in program order, each at an offset of one allocation.
struct ParamLayout {
  llvm::StringMap<ParamSlot> slots;
  llvm::SmallVector<std::string> order;
  int64_t totalElements = 0;
  /// Distributed optimizer (`mtc.reduce_gradients ... shard_optimizer_state`):
  /// the ranks along `shardAxis` each own `shardElements` consecutive
  /// elements of the flat buffer, rank r [r * shardElements, (r + 1) *
  /// shardElements); totalElements is padded to a multiple of shardElements.
  /// shardElements is 0 without one.
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
};

} // namespace mtc

#endif // MTC_TRANSFORMS_PARAMLAYOUT_H
