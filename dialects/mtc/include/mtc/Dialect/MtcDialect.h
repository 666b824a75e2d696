//===- MtcDialect.h - the mtc dialect ---------------------------*- C++ -*-===//
//
// Include this one header to use the mtc dialect: dialect, attributes,
// interfaces and ops.
//
//===----------------------------------------------------------------------===//
#ifndef MTC_DIALECT_MTCDIALECT_H
#define MTC_DIALECT_MTCDIALECT_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

namespace mtc {
/// The symbol of the module's device grid, `shard.grid @mtc_grid` (axes
/// pp x dp x tp; mtc/Transforms/Grid.h). The module verifier checks it
/// against the module's `mtc.parallel`.
constexpr llvm::StringLiteral kGridName = "mtc_grid";

/// Bytes of every operand and result at their element sizes: the default
/// answer of CostOpInterface::getBytesMoved.
double defaultBytesMoved(mlir::Operation *op);
} // namespace mtc

#include "mtc/Dialect/MtcDialect.h.inc"
#include "mtc/Dialect/MtcEnums.h.inc"
#include "mtc/Dialect/MtcInterfaces.h.inc"

#define GET_ATTRDEF_CLASSES
#include "mtc/Dialect/MtcAttrs.h.inc"

#define GET_OP_CLASSES
#include "mtc/Dialect/MtcOps.h.inc"

namespace mtc {
/// Registers the upstream ShardingInterface models of mtc ops
/// (MtcSharding.cpp). Call on a DialectRegistry before creating a context.
void registerShardingInterfaceExternalModels(mlir::DialectRegistry &registry);
} // namespace mtc

#endif // MTC_DIALECT_MTCDIALECT_H
