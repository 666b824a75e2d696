//===- Emitter.h - training program -> C++ source ---------------*- C++ -*-===//
//
// Lowers a module that went through the training pipeline (@forward,
// @train_step, @optimizer_step) to one C++ file calling the runtime's
// kernels, plus the ProgramDesc the runtime's trainer drives
// (runtime/include/mtc/rt/program.h), and the CMake project that builds it.
//
//===----------------------------------------------------------------------===//
#ifndef MTC_CODEGEN_EMITTER_H
#define MTC_CODEGEN_EMITTER_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/raw_ostream.h"
#include <string>
#include <vector>

namespace mtc {

// The code-generation options reach the emitters as module attributes
// (kTpLanesAttr, ..., mtc/Dialect/MtcDialect.h).

struct EmitResult {
  std::string source;       // program.cpp
  int64_t arenaElements = 0; // activation arena of the largest function
  /// Pipeline programs: each pipeline rank's arena (its pieces' scratch and
  /// the values its step holds between pieces), in the same units.
  std::vector<int64_t> stageArenaElements;
};

/// Emits the host (fp32 CPU) program. Fails with an error at the offending
/// op's location when an op has no host lowering.
llvm::LogicalResult emitHostProgram(mlir::ModuleOp module, EmitResult &out);

/// Emits the CUDA program (bf16 compute, fp32 master weights) calling
/// runtime/include/mtc/rt/cuda_kernels.h.
llvm::LogicalResult emitCudaProgram(mlir::ModuleOp module, EmitResult &out);

/// The CMake project that builds `program.cpp` against the mtc runtime
/// package found in `mtcPackageDir`.
std::string emitCMakeProject(llvm::StringRef target,
                             llvm::StringRef mtcPackageDir);

} // namespace mtc

#endif // MTC_CODEGEN_EMITTER_H
