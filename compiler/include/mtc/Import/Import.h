//===- Import.h - model spec -> mtc IR --------------------------*- C++ -*-===//
//
// Builds the forward program of a validated Spec: one function
// `@forward(tokens, targets[, mask]) -> loss` over one microbatch, global
// (unsharded) shapes, parameters named like checkpoint keys. The module
// carries the model name (`mtc.model`), the training configuration
// (`mtc.training`), the parallel plan (`mtc.parallel`) and the recompute
// policy (`mtc.recompute`) as attributes for later passes.
//
//===----------------------------------------------------------------------===//
#ifndef MTC_IMPORT_IMPORT_H
#define MTC_IMPORT_IMPORT_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"
#include "mtc/Spec/Spec.h"

namespace mtc {

/// Returns null after emitting an error at a location naming the spec file
/// when the spec asks for something the importer cannot build.
mlir::OwningOpRef<mlir::ModuleOp> importSpec(const spec::Spec &spec,
                                             mlir::MLIRContext &context,
                                             llvm::StringRef filename);

} // namespace mtc

#endif // MTC_IMPORT_IMPORT_H
