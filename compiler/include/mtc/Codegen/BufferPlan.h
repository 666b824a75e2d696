//===- BufferPlan.h - static arena offsets for a function's values -*- C++ -*-===//
//
// Straight-line programs have exact lifetimes: a value lives from the op
// that defines it to its last use. The plan gives every value that needs
// memory an offset in one arena so that no two live values overlap, by
// first-fit over the free intervals in program order. The arena's size is
// the function's exact activation peak.
//
//===----------------------------------------------------------------------===//
#ifndef MTC_CODEGEN_BUFFERPLAN_H
#define MTC_CODEGEN_BUFFERPLAN_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/SmallVector.h"
#include "llvm/ADT/STLFunctionalExtras.h"

namespace mtc {

struct BufferPlan {
  llvm::DenseMap<mlir::Value, int64_t> offset; // in elements
  int64_t size = 0;                            // arena elements needed
};

/// How an emitter executes the function, when it is not one op at a time.
struct ExecutionHints {
  /// Ops executed as part of a later op (a fused group runs at its last
  /// op): their operands stay live until that op.
  llvm::DenseMap<mlir::Operation *, mlir::Operation *> fusedInto;
  /// Values computed in place in another value's storage (e.g. the logits'
  /// gradient over the logits): they get no storage of their own, and the
  /// storage lives until the last use of either.
  llvm::DenseMap<mlir::Value, mlir::Value> inPlaceOf;
  /// Runs of ops [first, last] that execute out of step with each other
  /// (the CUDA emitter's half-batch lanes): every value an op of the run
  /// defines or uses stays live at least until `last`.
  llvm::SmallVector<std::pair<mlir::Operation *, mlir::Operation *>>
      concurrentRuns;
  /// Values written before the op that defines them (e.g. by a collective
  /// started earlier): their storage is taken when `op` runs.
  llvm::DenseMap<mlir::Value, mlir::Operation *> liveFrom;
};

/// `elements(v)` returns how many arena elements value v needs, or 0 when it
/// lives elsewhere (parameters, function arguments). Offsets are aligned to
/// `align` elements.
BufferPlan planBuffers(mlir::func::FuncOp fn,
                       llvm::function_ref<int64_t(mlir::Value)> elements,
                       int64_t align = 16,
                       const ExecutionHints &hints = ExecutionHints());

} // namespace mtc

#endif // MTC_CODEGEN_BUFFERPLAN_H
