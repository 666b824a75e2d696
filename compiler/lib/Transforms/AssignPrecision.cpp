//===- AssignPrecision.cpp - -mtc-assign-precision --------------------------===//
//
// Writes mtc.storage on every op with floating-point tensor results (see
// Passes.td): bf16, except attention's log-sum-exp, the loss, a norm's
// weight gradients (mtc-sink-gradients usually sinks them) and the
// collectives of fp32 values, which stay fp32. Ops are visited in program
// order, so a collective reads its operand's decision.
//
// Pipeline modules (mtc/Transforms/Pipeline.h) store what crosses a piece's
// boundary as its producer stores it:
//  1. a piece's arguments (argument attribute mtc.storage) take the storage
//     of the value that feeds them: an activation the previous chunk's
//     result, a gradient the next chunk's backward result, a saved value
//     the forward piece's (result, or argument marked mtc.saved), a wsaved
//     value the backward piece's; tokens and targets none;
//  2. its ops as above; its results (result attribute mtc.storage) the
//     storage of the value returned;
//  3. in the step and eval functions a call's results take the callee's
//     result storage, an mtc.p2p receive the sending piece's (so the loss
//     stays fp32 and the lse a saved value keeps, and activations and
//     gradients travel in bf16).
// Pieces are visited in dependency order (the sender first).
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Lowering.h"
#include "mtc/Transforms/Passes.h"

#include "mtc/Transforms/Pipeline.h"

#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "llvm/ADT/DenseSet.h"

namespace mtc {
#define GEN_PASS_DEF_MTCASSIGNPRECISION
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;

namespace {

bool isFloatTensor(Type t) {
  auto r = dyn_cast<RankedTensorType>(t);
  return r && isa<FloatType>(r.getElementType());
}

bool keptF32(Value v) {
  Operation *def = v.getDefiningOp();
  if (auto a = dyn_cast<mtc::AttentionOp>(def))
    return v == a.getLse();
  // A norm's weight gradients, fp32 partial sums where they do not sink
  // (a zero-bubble pipeline hands them to its weight piece).
  if (auto n = dyn_cast<mtc::LayerNormGradOp>(def))
    return v != n.getDinput();
  if (auto n = dyn_cast<mtc::RmsNormGradOp>(def))
    return v != n.getDinput();
  if (isa<shard::AllReduceOp, shard::AllGatherOp, shard::AllSliceOp,
          shard::ReduceScatterOp>(def))
    return mtc::lowering::storedF32(def->getOperand(0));
  // Mixture of experts: the router's math is fp32 (its logits, the
  // probabilities and weights it saves, the aux loss, the weights'
  // gradient, the aux loss's gradient seed), and expert weight gradients
  // are fp32 partial sums where they do not sink.
  if (auto mm = dyn_cast<mtc::MatmulOp>(def))
    return !mm->use_empty() &&
           llvm::all_of(mm->getUsers(), [](Operation *u) {
             return isa<mtc::MoeRouterOp, mtc::MoeRouterGradOp>(u);
           });
  if (auto c = dyn_cast<arith::ConstantOp>(def))
    return llvm::any_of(c->getUses(), [](OpOperand &u) {
             auto g = dyn_cast<mtc::MoeRouterGradOp>(u.getOwner());
             return g && u.get() == g.getDaux();
           });
  if (auto u = dyn_cast<mtc::MoeUnpermuteGradOp>(def))
    return v == u.getDweights();
  // The sum of two fp32 values (the loss plus MoE aux losses).
  if (auto add = dyn_cast<mtc::AddOp>(def))
    return mtc::lowering::storedF32(add.getLhs()) &&
           mtc::lowering::storedF32(add.getRhs());
  return isa<mtc::CrossEntropyOp, mtc::MoeRouterOp, mtc::GroupedMatmulWgradOp,
             mtc::GroupedBiasGradOp>(def);
}

void assignOp(Operation *op) {
  if (!llvm::any_of(op->getResultTypes(), isFloatTensor))
    return;
  for (Value r : op->getResults())
    mtc::lowering::setResultString(
        r, mtc::lowering::kStorage,
        !isFloatTensor(r.getType()) ? "" : keptF32(r) ? "f32" : "bf16");
}

/// Pipeline modules: pieces first (steps 1 and 2), then the functions that
/// call them (step 3).
class PipelinePrecision {
public:
  explicit PipelinePrecision(ModuleOp module) : module(module) {}

  void run() {
    for (auto fn : module.getOps<func::FuncOp>())
      if (mtc::getPieceInfo(fn))
        assignPiece(fn);
    for (auto fn : module.getOps<func::FuncOp>())
      if (!fn.isExternal() && !mtc::getPieceInfo(fn))
        fn.walk([&](Operation *op) { assignCaller(op); });
  }

private:
  ModuleOp module;
  llvm::DenseSet<Operation *> done;

  func::FuncOp piece(int64_t chunk, mtc::PieceKind kind) {
    return module.lookupSymbol<func::FuncOp>(
        mtc::pieceFunctionName(chunk, kind));
  }

  static StringRef roleOf(func::FuncOp fn, unsigned i, bool result) {
    auto r = result ? fn.getResultAttrOfType<StringAttr>(i, mtc::kRoleAttr)
                    : fn.getArgAttrOfType<StringAttr>(i, mtc::kRoleAttr);
    return r ? r.getValue() : "";
  }
  static int64_t indexOf(func::FuncOp fn, unsigned i, bool result) {
    auto a = result ? fn.getResultAttrOfType<IntegerAttr>(i, mtc::kIndexAttr)
                    : fn.getArgAttrOfType<IntegerAttr>(i, mtc::kIndexAttr);
    return a ? a.getInt() : 0;
  }

  /// The storage of `fn`'s result with `role` and `index` (for a forward
  /// piece's saved values, also an argument marked mtc.saved = index);
  /// bf16 when there is none.
  StringRef resultStorage(func::FuncOp fn, StringRef role, int64_t index) {
    if (!fn)
      return "bf16";
    assignPiece(fn);
    for (unsigned i = 0; i < fn.getNumResults(); ++i)
      if (roleOf(fn, i, true) == role && indexOf(fn, i, true) == index)
        if (auto s = fn.getResultAttrOfType<StringAttr>(
                i, mtc::lowering::kStorage))
          return s.getValue();
    if (role == "saved")
      for (unsigned i = 0; i < fn.getNumArguments(); ++i)
        if (auto s = fn.getArgAttrOfType<IntegerAttr>(i, mtc::kSavedAttr);
            s && s.getInt() == index)
          return mtc::lowering::resultString(fn.getArgument(i),
                                             mtc::lowering::kStorage);
    return "bf16";
  }

  void assignPiece(func::FuncOp fn) {
    if (!done.insert(fn).second || fn.isExternal())
      return;
    mtc::PieceInfo info = *mtc::getPieceInfo(fn);
    using K = mtc::PieceKind;
    // 1.
    for (unsigned i = 0; i < fn.getNumArguments(); ++i) {
      if (!isFloatTensor(fn.getArgument(i).getType()))
        continue;
      StringRef role = roleOf(fn, i, false);
      int64_t index = indexOf(fn, i, false);
      StringRef storage = "bf16";
      if (role == "activation")
        storage = resultStorage(
            piece(info.chunk - 1, info.kind == K::Eval ? K::Eval : K::Forward),
            role, index);
      else if (role == "gradient")
        storage = resultStorage(piece(info.chunk + 1, K::Backward), role,
                                index);
      else if (role == "saved")
        storage = resultStorage(piece(info.chunk, K::Forward), role, index);
      else if (role == "wsaved")
        storage = resultStorage(piece(info.chunk, K::Backward), role, index);
      mtc::lowering::setResultString(fn.getArgument(i),
                                     mtc::lowering::kStorage, storage);
    }
    // 2.
    fn.walk([](Operation *op) { assignOp(op); });
    auto ret = cast<func::ReturnOp>(fn.getBody().front().getTerminator());
    for (auto [i, v] : llvm::enumerate(ret.getOperands())) {
      if (!isFloatTensor(v.getType()))
        continue;
      StringRef s = mtc::lowering::resultString(v, mtc::lowering::kStorage);
      fn.setResultAttr(i, mtc::lowering::kStorage,
                       StringAttr::get(fn.getContext(), s.empty() ? "bf16" : s));
    }
  }

  // 3.
  void assignCaller(Operation *op) {
    using K = mtc::PieceKind;
    if (auto call = dyn_cast<func::CallOp>(op)) {
      auto callee = module.lookupSymbol<func::FuncOp>(call.getCallee());
      if (!callee || !mtc::getPieceInfo(callee))
        return assignOp(op);
      for (auto [i, r] : llvm::enumerate(call.getResults()))
        if (isFloatTensor(r.getType()))
          if (auto s = callee.getResultAttrOfType<StringAttr>(
                  i, mtc::lowering::kStorage))
            mtc::lowering::setResultString(r, mtc::lowering::kStorage,
                                           s.getValue());
      return;
    }
    auto p2p = dyn_cast<mtc::P2POp>(op);
    if (!p2p)
      return assignOp(op);
    bool eval = op->getParentOfType<func::FuncOp>().getSymName().starts_with(
        "pipeline_eval");
    unsigned next = 0;
    for (Attribute a : p2p.getTransfers()) {
      mtc::PipelineTransfer t;
      std::string why;
      if (!mtc::parsePipelineTransfer(a, t, why) || t.send)
        continue;
      if (next >= p2p.getRecvs().size())
        break;
      Value r = p2p.getRecvs()[next++];
      K kind = t.gradient ? K::Backward : eval ? K::Eval : K::Forward;
      mtc::lowering::setResultString(
          r, mtc::lowering::kStorage,
          resultStorage(piece(t.chunk, kind),
                        t.gradient ? "gradient" : "activation", t.index));
    }
  }
};

struct AssignPrecision
    : mtc::impl::MtcAssignPrecisionBase<AssignPrecision> {
  void runOnOperation() override {
    if (mtc::isPipelineModule(getOperation())) {
      PipelinePrecision(getOperation()).run();
      return;
    }
    getOperation().walk([](Operation *op) { assignOp(op); });
  }
};

} // namespace
