//===- Lowering.cpp - reading and writing the lowering attributes ---------===//
#include "mtc/Transforms/Lowering.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"

using namespace mlir;

namespace mtc::lowering {

// A function argument's decision is an argument attribute (a pipeline
// piece's inputs: mtc-assign-precision).
StringRef resultString(Value v, StringRef attr) {
  if (auto a = dyn_cast<BlockArgument>(v)) {
    auto fn = dyn_cast_or_null<func::FuncOp>(a.getOwner()->getParentOp());
    auto s = fn ? fn.getArgAttrOfType<StringAttr>(a.getArgNumber(), attr)
                : StringAttr();
    return s ? s.getValue() : "";
  }
  auto r = dyn_cast<OpResult>(v);
  if (!r)
    return "";
  auto a = r.getOwner()->getAttrOfType<ArrayAttr>(attr);
  if (!a || r.getResultNumber() >= a.size())
    return "";
  auto s = dyn_cast<StringAttr>(a[r.getResultNumber()]);
  return s ? s.getValue() : "";
}

void setResultString(Value v, StringRef attr, StringRef value) {
  if (auto a = dyn_cast<BlockArgument>(v)) {
    auto fn = cast<func::FuncOp>(a.getOwner()->getParentOp());
    fn.setArgAttr(a.getArgNumber(), attr,
                  StringAttr::get(fn.getContext(), value));
    return;
  }
  auto r = cast<OpResult>(v);
  Operation *op = r.getOwner();
  Builder b(op->getContext());
  SmallVector<Attribute> values(op->getNumResults(), b.getStringAttr(""));
  if (auto old = op->getAttrOfType<ArrayAttr>(attr))
    for (auto [i, a] : llvm::enumerate(old))
      if (i < values.size())
        values[i] = a;
  values[r.getResultNumber()] = b.getStringAttr(value);
  op->setAttr(attr, b.getArrayAttr(values));
}

StringRef fusionOf(Operation *op) {
  auto a = op->getAttrOfType<StringAttr>(kFusion);
  return a ? a.getValue() : "";
}

StringRef fusedOf(Operation *op) {
  auto a = op->getAttrOfType<StringAttr>(kFused);
  return a ? a.getValue() : "";
}

bool fusedAway(Value v) {
  Operation *def = v.getDefiningOp();
  return def && fusedOf(def) == kEmbeddingPosition;
}

std::optional<unsigned> inPlaceOperand(Value v) {
  auto r = dyn_cast<OpResult>(v);
  if (!r)
    return std::nullopt;
  auto a = r.getOwner()->getAttrOfType<DenseI64ArrayAttr>(kInPlace);
  if (!a || r.getResultNumber() >= a.size() || a[r.getResultNumber()] < 0)
    return std::nullopt;
  return unsigned(a[r.getResultNumber()]);
}

void setInPlace(Value v, unsigned operand) {
  auto r = cast<OpResult>(v);
  Operation *op = r.getOwner();
  SmallVector<int64_t> values(op->getNumResults(), -1);
  if (auto old = op->getAttrOfType<DenseI64ArrayAttr>(kInPlace))
    for (auto [i, x] : llvm::enumerate(old.asArrayRef()))
      if (i < values.size())
        values[i] = x;
  values[r.getResultNumber()] = operand;
  op->setAttr(kInPlace, DenseI64ArrayAttr::get(op->getContext(), values));
}

} // namespace mtc::lowering
