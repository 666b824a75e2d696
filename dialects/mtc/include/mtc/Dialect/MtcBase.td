//===- MtcBase.td - the mtc dialect and its attributes -----*- tablegen -*-===//

#ifndef MTC_BASE_TD
#define MTC_BASE_TD

include "mlir/IR/OpBase.td"
include "mlir/IR/AttrTypeBase.td"
include "mlir/IR/EnumAttr.td"

def Mtc_Dialect : Dialect {
  let name = "mtc";
  let cppNamespace = "::mtc";
  let summary = "Coarse ops of transformer training, one per library kernel.";
  let description = [{
    The mtc dialect holds the units a kernel library implements: embedding,
    norms, matmul, attention core, activations, rope, dropout, residual add,
    softmax cross-entropy and AdamW, plus their gradients. Values are ranked
    tensors with the global (unsharded) shape; parameters are named like
    checkpoint keys. Sharding passes annotate these ops with upstream
    `shard` dialect shardings; the partitioner rewrites them to per-rank
    shapes with explicit collectives.
  }];
  let useDefaultAttributePrinterParser = 1;
  // The module's mtc.* attributes (MtcModuleAttrs.cpp).
  let hasOperationAttrVerify = 1;
  let dependentDialects = ["::mlir::func::FuncDialect"];
}

class Mtc_Op<string mnemonic, list<Trait> traits = []>
    : Op<Mtc_Dialect, mnemonic, traits>;

def Mtc_InitKind : I32EnumAttr<"InitKind", "parameter initialization", [
    I32EnumAttrCase<"zeros", 0>,
    I32EnumAttrCase<"ones", 1>,
    I32EnumAttrCase<"normal", 2>
  ]> {
  let cppNamespace = "::mtc";
  let genSpecializedAttr = 0;
}
def Mtc_InitKindAttr : EnumAttr<Mtc_Dialect, Mtc_InitKind, "init">;

def Mtc_GeluApprox : I32EnumAttr<"GeluApprox", "GELU formula", [
    I32EnumAttrCase<"none", 0>,
    I32EnumAttrCase<"tanh", 1>
  ]> {
  let cppNamespace = "::mtc";
  let genSpecializedAttr = 0;
}
def Mtc_GeluApproxAttr : EnumAttr<Mtc_Dialect, Mtc_GeluApprox, "gelu_approx">;

def Mtc_RouterKind : I32EnumAttr<"RouterKind", "mixture-of-experts router", [
    I32EnumAttrCase<"softmax_topk", 0>,
    I32EnumAttrCase<"topk_softmax", 1>
  ]> {
  let cppNamespace = "::mtc";
  let genSpecializedAttr = 0;
}
def Mtc_RouterKindAttr : EnumAttr<Mtc_Dialect, Mtc_RouterKind, "router">;

#endif // MTC_BASE_TD
