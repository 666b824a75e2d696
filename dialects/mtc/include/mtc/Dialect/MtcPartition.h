//===- MtcPartition.h - what an op's partition rule may ask -----*- C++ -*-===//
//
// mtc-partition rewrites the global program into the program one rank runs.
// Along the tensor-parallel axis every value is, on each rank, whole (R), a
// slice of one dimension (S(d)) or a partial sum (P). How an op runs on
// distributed operands is the op's rule (PartitionOpInterface, implemented
// in dialects/mtc/lib/MtcPartition.cpp); the partitioner
// (compiler/lib/Transforms/Partition.cpp) implements the Partitioner below:
// the values' distributions, the conversions between them (collectives),
// local types. Ops without a rule: the Elementwise trait's (any one
// distribution all operands share, not P), else everything whole.
//
//===----------------------------------------------------------------------===//
#ifndef MTC_DIALECT_MTCPARTITION_H
#define MTC_DIALECT_MTCPARTITION_H

#include "mlir/IR/Builders.h"
#include "llvm/ADT/STLFunctionalExtras.h"
#include <optional>

namespace mtc {

/// How a value is held along the tensor-parallel axis.
struct Dist {
  enum Kind { R, S, P } kind = R;
  int64_t dim = -1; // the split dimension of S
  static Dist r() { return {}; }
  static Dist s(int64_t d) { return {S, d}; }
  static Dist p() { return {P, -1}; }
  bool operator==(const Dist &o) const {
    return kind == o.kind && (kind != S || dim == o.dim);
  }
  bool operator!=(const Dist &o) const { return !(*this == o); }
};

/// What an op's partition rule may ask of mtc-partition. "old" values are
/// the global program's; the rule builds the rank's ops with builder().
class Partitioner {
public:
  virtual ~Partitioner() = default;
  /// The tensor-parallel size and its grid axis.
  virtual int64_t tp() const = 0;
  virtual int16_t tpAxis() const = 0;
  virtual mlir::OpBuilder &builder() = 0;
  /// The distribution the old value `v` has been given.
  virtual Dist distOf(mlir::Value v) = 0;
  /// The rank's value of old `v` in distribution `want`, converted with a
  /// collective if it has another (once per value and distribution).
  virtual mlir::Value get(mlir::Value v, Dist want) = 0;
  /// Old `v` was converted to whole already (a gather is free to reuse).
  virtual bool gathered(mlir::Value v) = 0;
  /// Converts the rank's value `local` from `from` to `to` (a collective).
  virtual mlir::Value convert(mlir::Value local, Dist from, Dist to,
                              mlir::Location loc) = 0;
  /// Records that old `v` is `local` on the rank, in distribution `d`.
  virtual void set(mlir::Value v, mlir::Value local, Dist d) = 0;
  /// Old `v`'s type on the rank in distribution `d`.
  virtual mlir::Type localType(mlir::Value v, Dist d) = 0;
  /// How a value outside the tensor-parallel regions is held: whole, or
  /// with sequence parallelism a (B, S, D) activation split on S.
  virtual Dist whole(mlir::Value v) = 0;
  /// This rank's index along the tensor-parallel axis (an index value).
  virtual mlir::Value tpRank(mlir::Location loc) = 0;
  /// This rank's first row of a vocabulary split into `localRows` rows.
  virtual mlir::Value vocabStart(mlir::Location loc, int64_t localRows) = 0;
  /// The distribution of the parameter a gradient value accumulates into.
  virtual std::optional<Dist> gradientTarget(mlir::Value v) = 0;
  /// A parameter's annotated distribution, and the split parameters' names
  /// in order.
  virtual Dist paramDist(llvm::StringRef name) = 0;
  virtual llvm::SmallVector<llvm::StringRef> splitParams() = 0;
  /// Clones `op` with its operands in `operands` and its results in
  /// `results` (local types); `adjust` edits the clone (local attributes).
  virtual mlir::LogicalResult
  rebuild(mlir::Operation *op, llvm::ArrayRef<Dist> operands,
          llvm::ArrayRef<Dist> results,
          llvm::function_ref<void(mlir::Operation *)> adjust = nullptr) = 0;
};

} // namespace mtc

#endif // MTC_DIALECT_MTCPARTITION_H
