//===- FuseKernels.cpp - -mtc-fuse-kernels ---------------------------------===//
//
// Marks the groups of ops the CUDA kernels execute as one and the values
// computed in place (mtc.fusion, mtc.fused, mtc.in_place; the kinds are
// listed in mtc/Transforms/Lowering.h). Runs after mtc-assign-precision and
// mtc-sink-gradients, whose decisions it reads. One walk in program order;
// for each op, the rules below in turn:
//  1. an all-reduce whose input dies with it (and is stored, not a
//     parameter, not fused away) runs in place over its input;
//  2. an add of a parameter bias (N) to an in-place tp sum of a
//     row-parallel matmul's partial products: rank_zero_bias;
//  3. an add of an (S, D) position table to a single-use embedding:
//     embedding_position;
//  4. a tanh GELU of a matmul (not transposed on the left):
//     matmul_gelu;
//  5. an add of a norm's input gradient (single use) and another stored
//     value at its last use: norm_into_residual;
//  6. a cross_entropy_grad of a cross_entropy's logits and targets with a
//     constant seed: cross_entropy_grad (the seed copied when other
//     gradients, MoE aux losses', use it too).
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Lowering.h"
#include "mtc/Transforms/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/IR/Builders.h"

namespace mtc {
#define GEN_PASS_DEF_MTCFUSEKERNELS
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;
namespace lw = mtc::lowering;
using lw::fusedAway;
using lw::sinks;

namespace {

void mark(Operation *runs, Operation *fused, StringRef kind) {
  Builder b(runs->getContext());
  runs->setAttr(lw::kFusion, b.getStringAttr(kind));
  fused->setAttr(lw::kFused, b.getStringAttr(kind));
}

void fuse(Block &block) {
  for (Operation &op : block) {
    // 1. In-place all-reduce.
    if (auto ar = dyn_cast<shard::AllReduceOp>(op)) {
      Value in = ar.getInput();
      if (!sinks(ar.getResult()) && in.hasOneUse() && in.getDefiningOp() &&
          !in.getDefiningOp<mtc::ParamOp>() && in.getType() == ar.getType() &&
          !fusedAway(in) && !sinks(in))
        lw::setInPlace(ar.getResult(), 0);
    }
    if (auto add = dyn_cast<mtc::AddOp>(op)) {
      // 2. The bias of a row-parallel linear, on rank 0 before the sum.
      auto ar = add.getLhs().getDefiningOp<shard::AllReduceOp>();
      auto bias = add.getRhs().getDefiningOp<mtc::ParamOp>();
      auto mm = ar ? ar.getInput().getDefiningOp<mtc::MatmulOp>() : nullptr;
      if (ar && bias && mm && lw::inPlaceOperand(ar.getResult()) &&
          ar.getGridAxes().size() == 1 &&
          ar.getReduction() == shard::ReductionKind::Sum &&
          ar.getResult().hasOneUse() && !mm.getBias() && !mm.getTransposeA() &&
          !sinks(mm.getResult()) && !lw::storedF32(ar.getResult()) &&
          bias.getType().getRank() == 1 &&
          bias.getType().getNumElements() == mm.getN() &&
          add.getType() == ar.getType()) {
        mark(mm, add, lw::kRankZeroBias);
        lw::setInPlace(add.getResult(), 0);
      }
      // 3. Embedding + position table.
      auto emb = add.getLhs().getDefiningOp<mtc::EmbeddingOp>();
      auto pos = add.getRhs().getDefiningOp<mtc::ParamOp>();
      if (emb && !emb.getVocabStart() && pos && emb.getResult().hasOneUse() &&
          pos.getType().getRank() == 2 &&
          pos.getType().getDimSize(0) ==
              cast<RankedTensorType>(emb.getType()).getDimSize(1))
        mark(add, emb, lw::kEmbeddingPosition);
    }
    // 4. matmul + tanh GELU (the pre-activation stays for gelu_grad).
    if (auto gelu = dyn_cast<mtc::GeluOp>(op)) {
      auto mm = gelu.getInput().getDefiningOp<mtc::MatmulOp>();
      if (mm && !mm.getTransposeA() &&
          gelu.getApproximate() == mtc::GeluApprox::tanh &&
          mm->getBlock() == gelu->getBlock())
        mark(gelu, mm, lw::kMatmulGelu);
    }
    // 5. A norm's input gradient added to the residual stream's gradient
    // (the other operand, at its last use).
    if (auto add = dyn_cast<mtc::AddOp>(op)) {
      for (auto [mine, other, otherIndex] :
           {std::tuple(add.getRhs(), add.getLhs(), 0u),
            std::tuple(add.getLhs(), add.getRhs(), 1u)}) {
        Operation *norm = mine.getDefiningOp();
        if (!norm || !isa<mtc::LayerNormGradOp, mtc::RmsNormGradOp>(norm) ||
            mine != norm->getResult(0) || !mine.hasOneUse() ||
            mine == other || mine.getType() != add.getType() ||
            other.getType() != add.getType() || !other.getDefiningOp() ||
            other.getDefiningOp<mtc::ParamOp>() || fusedAway(other) ||
            sinks(other) || sinks(add.getResult()) ||
            !llvm::all_of(other.getUsers(), [&](Operation *u) {
              return u == add || u->isBeforeInBlock(norm);
            }))
          continue;
        mark(norm, add, lw::kNormIntoResidual);
        lw::setInPlace(add.getResult(), otherIndex);
        break;
      }
    }
    // 6. cross_entropy + its gradient, in place over the logits.
    if (auto ceg = dyn_cast<mtc::CrossEntropyGradOp>(op)) {
      auto cst = ceg.getDloss().getDefiningOp<arith::ConstantOp>();
      mtc::CrossEntropyOp ce;
      for (Operation *u : ceg.getLogits().getUsers())
        if (auto c = dyn_cast<mtc::CrossEntropyOp>(u))
          if (c.getTargets() == ceg.getTargets())
            ce = c;
      if (ce && cst && ce->isBeforeInBlock(ceg)) {
        // A seed shared with other gradients (MoE layers' aux losses): the
        // fused pair takes its own copy, the others keep the original.
        if (!cst->hasOneUse()) {
          OpBuilder b(ceg);
          cst = cast<arith::ConstantOp>(b.clone(*cst));
          ceg.getDlossMutable().assign(cst);
        }
        mark(ce, ceg, lw::kCrossEntropyGrad);
        cst->setAttr(lw::kFused, ceg->getAttr(lw::kFused));
        lw::setInPlace(ceg.getResult(), 0);
      }
    }
  }
}

struct FuseKernels : mtc::impl::MtcFuseKernelsBase<FuseKernels> {
  void runOnOperation() override {
    for (auto fn : getOperation().getOps<func::FuncOp>())
      if (!fn.isExternal())
        fuse(fn.getBody().front());
  }
};

} // namespace
