//===- EmitterCommon.h - what the host and CUDA emitters share --*- C++ -*-===//
//
// Both emitters lay parameters out the same way (so checkpoints and the
// runtime's ParamDesc table do not depend on the target), describe the
// program to the runtime the same way (ProgramDesc), and print IR locations
// into the generated code the same way.
//
//===----------------------------------------------------------------------===//
#ifndef MTC_CODEGEN_EMITTERCOMMON_H
#define MTC_CODEGEN_EMITTERCOMMON_H

#include "mtc/Dialect/MtcDialect.h"
#include "mtc/Transforms/ParamLayout.h"
#include "mtc/Transforms/Pipeline.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/StringMap.h"
#include <string>

namespace mtc::codegen {

// Parameters are laid out the same way by both emitters and the passes
// that need offsets (ParamLayout, mtc/Transforms/ParamLayout.h).
using mtc::OptimizerShard;
using mtc::ParamLayout;
using mtc::ParamSlot;

int64_t numel(mlir::Value v);
llvm::ArrayRef<int64_t> shapeOf(mlir::Value v);
/// Rows of an activation flattened to (rows, last dim).
int64_t rows(mlir::Value v);
std::string fmt(double d);
std::string escape(llvm::StringRef s);
std::string locString(mlir::Location loc);

/// Integer index arithmetic (a rank's vocabulary offset under tensor
/// parallelism) is not a statement but a C++ expression both targets name
/// alike: an integer arith.constant, arith.muli, shard.process_multi_index
/// (`st.comm->index(axis)`). True for those ops.
bool isIndexOp(mlir::Operation *op);
/// The expression of an index op's result, or an error at the op.
mlir::FailureOr<std::string> indexExpr(mlir::Operation *op, BufferName buf);
/// Names an index op's result by its expression in `names` (it emits no
/// statement), or an error at the op.
mlir::LogicalResult
nameIndexOp(mlir::Operation *op,
            llvm::DenseMap<mlir::Value, std::string> &names, BufferName buf);

/// The kernel-table row of `op` (KernelOpInterface), or nullopt for ops the
/// code generators lower by their own rules.
std::optional<KernelCall> kernelCall(mlir::Operation *op, BufferName buf);

/// `k::name(args...);`, with `context` (e.g. "ctx") as first argument when
/// not empty.
std::string formatCall(const KernelCall &call, llvm::StringRef context);

/// The three functions the training pipeline produced, or an error.
struct TrainingFunctions {
  mlir::func::FuncOp forward, train, optimizer;
};
mlir::FailureOr<TrainingFunctions> getTrainingFunctions(mlir::ModuleOp module);

/// A pipeline step's call of a piece, as the code generators print it: the
/// microbatch's tokens and targets (by the callee's argument roles), the
/// other operands as the `in` list and the results as the `out` list
/// ("nullptr" when empty, so the printed arrays are never empty).
struct PieceCallArgs {
  std::string tokens = "nullptr", targets = "nullptr", in, out;
};
PieceCallArgs pieceCallArgs(mlir::func::CallOp call, mlir::func::FuncOp callee,
                            BufferName buf);

/// The event kind `train --trace` records for a piece (mtc/rt/trace.h).
char traceKind(mtc::PieceKind kind);

/// The runtime's axis (GridComm, program.h: 0 pp, 1 dp, 2 tp, 3 ep, 4
/// expert data parallel) of axis `axis` of grid `grid` (@mtc_grid's are
/// the same numbers; @mtc_expert_grid's pp x dp/ep x ep x tp map to 0, 4,
/// 3, 2).
int runtimeAxis(llvm::StringRef grid, int64_t axis);

/// The runs [offset, offset + n) of the flat gradient buffer whose
/// gradients `r` reduces: its `params`, or every parameter that no other
/// mtc.reduce_gradients of its function names (then all of them, one run,
/// unless expert parallelism names the experts'). Padding between the
/// parameters of a run is included (it stays zero).
llvm::SmallVector<std::pair<int64_t, int64_t>>
reducedRuns(mtc::ReduceGradientsOp r, const ParamLayout &layout);

/// One pipeline rank's part of a pipeline program's ProgramDesc.
struct ProgramDescStage {
  ParamLayout layout;          // the rank's parameters
  int64_t arenaWords = 0;
  int64_t computeParamBytes = 0;
  double flops = 0;            // its pieces over one step
  std::string step, eval, optimizer; // emitted function names
};

/// What differs between targets in the ProgramDesc.
struct ProgramDescExtras {
  std::string target;          // "host" | "cuda"
  int64_t arenaWords = 0;      // 4-byte words
  int64_t computeParamBytes = 0;
  std::string extraLines;      // more `p.x = ...;` lines (backend, context)
  /// Pipeline programs: one per pipeline rank (the `layout` given to
  /// emitProgramDesc then lists every parameter once, for checkpoints).
  std::vector<ProgramDescStage> stages;
};

/// `static mtc::rt::ProgramDesc make_program()` and `main()`.
std::string emitProgramDesc(mlir::ModuleOp module, const ParamLayout &layout,
                            const ProgramDescExtras &extras);

} // namespace mtc::codegen

#endif // MTC_CODEGEN_EMITTERCOMMON_H
