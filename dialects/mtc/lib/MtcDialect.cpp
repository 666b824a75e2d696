//===- MtcDialect.cpp - the mtc dialect -----------------------------------===//
//
// Dialect registration and generated attribute/enum definitions. Op
// verifiers live in MtcOps.cpp, gradient rules in MtcGradients.cpp, costs in
// MtcCost.cpp, sharding rules in MtcSharding.cpp.
//
//===----------------------------------------------------------------------===//
#include "mtc/Dialect/MtcDialect.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/DialectImplementation.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;
using namespace mtc;

#include "mtc/Dialect/MtcDialect.cpp.inc"
#include "mtc/Dialect/MtcEnums.cpp.inc"
#include "mtc/Dialect/MtcInterfaces.cpp.inc"

#define GET_ATTRDEF_CLASSES
#include "mtc/Dialect/MtcAttrs.cpp.inc"

void MtcDialect::initialize() {
  addAttributes<
#define GET_ATTRDEF_LIST
#include "mtc/Dialect/MtcAttrs.cpp.inc"
      >();
  addOperations<
#define GET_OP_LIST
#include "mtc/Dialect/MtcOps.cpp.inc"
      >();
}
