//===- PipelineSplit.cpp - -mtc-pipeline-split: chunks -> piece functions --===//
//
// Cuts the training program into the pieces a pipeline schedule orders,
// from the `mtc.chunk` that mtc-pipeline-stages wrote.
//
// Steps:
//  1. Split gradient sums across chunks: a parameter used by two chunks (the
//     word embedding tied to the LM head) gets its gradient summed by
//     autodiff (`mtc.add`) before one `mtc.accumulate_grad`; each chunk now
//     accumulates its own part into its own copy (the optimizer sums the
//     copies over the pipeline ranks, mtc.sum_tied_gradients).
//  2. Forward ops of @train_step are those the returned loss depends on; the
//     rest is the backward pass. Under a zero-bubble schedule the backward
//     ops of a chunk are split again: its weight-gradient part (W) is every
//     op whose results only reach `mtc.accumulate_grad` within the chunk, the
//     rest (B) computes the input gradients.
//  3. Boundaries: the activations a chunk's forward ops hand to the next
//     chunk, the gradients a chunk's backward ops hand to the previous one,
//     the values a chunk's backward (and W) pieces need from its forward
//     piece ("saved": its results or its input activations) and the ones W
//     needs from B. A value crossing anything else (two chunks apart,
//     backward to forward) is refused at its user.
//  4. One function per piece: @chunk<c>_forward(tokens, targets,
//     activations...) -> (activations..., [loss], saved...),
//     @chunk<c>_backward(tokens, targets, saved..., gradients...) ->
//     (gradients..., [W's values]...), @chunk<c>_weight(tokens, targets,
//     saved..., W's values..., gradients...), and @chunk<c>_eval from
//     @forward. Parameters and constants are copied into each piece that
//     reads them. Arguments and results carry `mtc.role` and their index.
//  5. @optimizer_step_pp<r> per pipeline rank: AdamW over the rank's
//     parameters, the gradient norm summed over the pipeline ranks (a tied
//     copy counted once), and `mtc.sum_tied_gradients` for each parameter
//     held by several ranks. @forward, @train_step and @optimizer_step go.
// No-op when pp = 1.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Passes.h"
#include "mtc/Transforms/Pipeline.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/ADT/StringSet.h"

namespace mtc {
#define GEN_PASS_DEF_MTCPIPELINESPLIT
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;
using mtc::PieceKind;

namespace {

int64_t chunkOf(Operation *op) {
  auto a = op->getAttrOfType<IntegerAttr>(mtc::kChunkAttr);
  return a ? a.getInt() : -1;
}

bool copiedIntoPieces(Operation *op) {
  return isa<mtc::ParamOp, arith::ConstantOp>(op);
}

/// Step 1.
LogicalResult splitTiedAccumulation(func::FuncOp train) {
  SmallVector<mtc::AccumulateGradOp> accs;
  train.walk([&](mtc::AccumulateGradOp a) { accs.push_back(a); });
  for (mtc::AccumulateGradOp acc : accs) {
    // Leaves of the single-use mtc.add tree feeding it.
    SmallVector<Value> leaves, work{acc.getGrad()};
    SmallVector<Operation *> adds;
    while (!work.empty()) {
      Value v = work.pop_back_val();
      auto add = v.getDefiningOp<mtc::AddOp>();
      if (add && v.hasOneUse() && add.getLhs().getType() == v.getType() &&
          add.getRhs().getType() == v.getType()) {
        adds.push_back(add);
        work.push_back(add.getLhs());
        work.push_back(add.getRhs());
      } else {
        leaves.push_back(v);
      }
    }
    llvm::MapVector<int64_t, SmallVector<Value>> byChunk;
    for (Value v : leaves) {
      Operation *d = v.getDefiningOp();
      byChunk[d ? chunkOf(d) : -1].push_back(v);
    }
    if (byChunk.size() < 2)
      continue;
    for (auto &[chunk, vals] : byChunk) {
      // After the latest leaf of this chunk.
      Operation *last = nullptr;
      for (Value v : vals)
        if (Operation *d = v.getDefiningOp())
          if (!last || last->isBeforeInBlock(d))
            last = d;
      if (!last)
        return acc.emitOpError("mtc-pipeline-split: a gradient of '")
               << acc.getParam() << "' is a function argument";
      OpBuilder b(last->getContext());
      b.setInsertionPointAfter(last);
      Value sum = vals.front();
      for (Value v : ArrayRef<Value>(vals).drop_front()) {
        sum = mtc::AddOp::create(b, acc.getLoc(), sum.getType(), sum, v);
        sum.getDefiningOp()->setAttr(mtc::kChunkAttr,
                                     b.getI64IntegerAttr(chunk));
      }
      auto part = mtc::AccumulateGradOp::create(b, acc.getLoc(), sum,
                                                acc.getParamAttr());
      part->setAttr(mtc::kChunkAttr, b.getI64IntegerAttr(chunk));
    }
    acc.erase();
    for (Operation *add : adds)
      if (add->use_empty())
        add->erase();
  }
  return success();
}

/// An input or output of a piece and what the schedule wires it to.
struct Port {
  Value value;
  StringRef role; // tokens, targets, activation, gradient, saved, wsaved, loss
  int64_t index = 0;
  int64_t alsoSaved = -1; // an input activation that is saved value k too
};

/// Builds `name` from `ops` (program order), its inputs and outputs.
func::FuncOp buildPiece(ModuleOp module, func::FuncOp source, StringRef name,
                        int64_t chunk, PieceKind kind, ArrayRef<Operation *> ops,
                        ArrayRef<Port> inputs, ArrayRef<Port> outputs) {
  OpBuilder b(module.getContext());
  b.setInsertionPointToEnd(module.getBody());
  SmallVector<Type> argTypes, resTypes;
  for (const Port &p : inputs)
    argTypes.push_back(p.value.getType());
  for (const Port &p : outputs)
    resTypes.push_back(p.value.getType());
  auto fn = func::FuncOp::create(b, source.getLoc(), name,
                                 b.getFunctionType(argTypes, resTypes));
  fn.setPrivate();
  fn->setAttr(mtc::kPieceAttr,
              b.getDictionaryAttr(
                  {b.getNamedAttr("chunk", b.getI64IntegerAttr(chunk)),
                   b.getNamedAttr("kind", b.getStringAttr(
                                              mtc::pieceKindName(kind)))}));
  auto portAttrs = [&](const Port &p) {
    SmallVector<NamedAttribute> attrs = {
        b.getNamedAttr(mtc::kRoleAttr, b.getStringAttr(p.role)),
        b.getNamedAttr(mtc::kIndexAttr, b.getI64IntegerAttr(p.index))};
    if (p.alsoSaved >= 0)
      attrs.push_back(
          b.getNamedAttr(mtc::kSavedAttr, b.getI64IntegerAttr(p.alsoSaved)));
    return b.getDictionaryAttr(attrs);
  };
  for (auto [i, p] : llvm::enumerate(inputs))
    fn.setArgAttrs(i, portAttrs(p));
  for (auto [i, p] : llvm::enumerate(outputs))
    fn.setResultAttrs(i, portAttrs(p));
  Block *body = fn.addEntryBlock();
  b.setInsertionPointToStart(body);
  IRMapping map;
  for (auto [i, p] : llvm::enumerate(inputs))
    map.map(p.value, body->getArgument(i));
  for (Operation *op : ops) {
    for (Value v : op->getOperands())
      if (!map.contains(v))
        if (Operation *d = v.getDefiningOp(); d && copiedIntoPieces(d))
          b.clone(*d, map)->removeAttr(mtc::kChunkAttr);
    Operation *c = b.clone(*op, map);
    c->removeAttr(mtc::kChunkAttr);
  }
  SmallVector<Value> results;
  for (const Port &p : outputs)
    results.push_back(map.lookupOrDefault(p.value));
  func::ReturnOp::create(b, source.getLoc(), results);
  return fn;
}

struct Splitter {
  ModuleOp module;
  mtc::PipelineConfig cfg;
  bool zeroBubble = false;

  LogicalResult splitTrain(func::FuncOp train);
  LogicalResult splitForward(func::FuncOp forward);
  LogicalResult buildOptimizers(func::FuncOp optimizer);
};

LogicalResult crossError(Operation *user, Value v, int64_t from, int64_t to,
                         StringRef what) {
  InFlightDiagnostic d = user->emitOpError("mtc-pipeline-split: ")
                         << what << " defined in chunk " << from
                         << " is used in chunk " << to
                         << "; a pipeline hands activations only to the next "
                            "chunk and gradients only to the previous one";
  if (Operation *def = v.getDefiningOp())
    d.attachNote(def->getLoc()) << "defined here";
  return failure();
}

LogicalResult Splitter::splitTrain(func::FuncOp train) {
  if (failed(splitTiedAccumulation(train)))
    return failure();
  Block &body = train.getBody().front();
  auto ret = cast<func::ReturnOp>(body.getTerminator());
  const int64_t C = cfg.chunks();
  Value tokens = train.getArgument(0), targets = train.getArgument(1);
  Value loss = ret.getOperand(0);

  // Step 2: forward = what the loss depends on.
  llvm::DenseSet<Operation *> isForward;
  SmallVector<Operation *> work;
  if (Operation *d = loss.getDefiningOp())
    work.push_back(d);
  while (!work.empty()) {
    Operation *op = work.pop_back_val();
    if (!isForward.insert(op).second)
      continue;
    for (Value v : op->getOperands())
      if (Operation *d = v.getDefiningOp())
        work.push_back(d);
  }
  // W: results reach only accumulate_grad of the same chunk (reverse
  // program order). A value another chunk reads is an input gradient that
  // B sends: without the chunk test the whole chain down to the word
  // embedding's accumulate_grad would count as W, and B_c would send
  // nothing.
  llvm::DenseSet<Operation *> isWeight;
  if (zeroBubble)
    for (Operation &op : llvm::reverse(body)) {
      if (isForward.count(&op) || copiedIntoPieces(&op) || &op == ret)
        continue;
      bool weight = isa<mtc::AccumulateGradOp>(op);
      if (!weight && op.getNumResults() > 0) {
        weight = true;
        for (Operation *u : op.getUsers())
          weight &= isWeight.count(u) > 0 && chunkOf(u) == chunkOf(&op);
      }
      if (weight)
        isWeight.insert(&op);
    }
  auto kindOf = [&](Operation *op) {
    return isForward.count(op)  ? PieceKind::Forward
           : isWeight.count(op) ? PieceKind::Weight
                                : PieceKind::Backward;
  };
  std::vector<SmallVector<Operation *>> fwd(C), bwd(C), wgt(C);
  for (Operation &op : body) {
    if (&op == ret || copiedIntoPieces(&op))
      continue;
    int64_t c = chunkOf(&op);
    if (c < 0 || c >= C)
      return op.emitOpError("mtc-pipeline-split: no valid mtc.chunk (run "
                            "mtc-pipeline-stages first)");
    (kindOf(&op) == PieceKind::Forward    ? fwd
     : kindOf(&op) == PieceKind::Backward ? bwd
                                          : wgt)[c]
        .push_back(&op);
  }

  // Step 3: where each external operand comes from.
  // act[c]: values of chunk c's forward ops used by chunk c + 1's;
  // grad[c]: values of chunk c + 1's backward ops used by chunk c's B or W;
  // saved[c]: values of F_c (or its input activations) used by B_c or W_c;
  // wsaved[c]: values of B_c used by W_c.
  std::vector<llvm::SetVector<Value>> act(C), grad(C), saved(C), wsaved(C);
  auto external = [&](Value v) -> Operation * {
    if (v == tokens || v == targets)
      return nullptr;
    Operation *d = v.getDefiningOp();
    if (!d || copiedIntoPieces(d))
      return nullptr;
    return d;
  };
  // A value of chunk `from` read by chunk `to` > from + 1 (a chunk between
  // them is empty, "E,t*2||t*2,L"): each chunk between passes it on.
  auto passForward = [&](Value v, int64_t from, int64_t to) {
    for (int64_t j = from; j < to; ++j)
      act[j].insert(v);
  };
  for (Operation &op : body) {
    if (&op == ret || copiedIntoPieces(&op))
      continue;
    const int64_t c = chunkOf(&op);
    const PieceKind k = kindOf(&op);
    for (Value v : op.getOperands()) {
      Operation *d = external(v);
      if (!d)
        continue;
      const int64_t dc = chunkOf(d);
      const PieceKind dk = kindOf(d);
      if (dc == c && dk == k)
        continue; // inside the piece
      if (k == PieceKind::Forward) {
        if (dk != PieceKind::Forward || dc >= c)
          return crossError(&op, v, dc, c, "a forward value");
        passForward(v, dc, c);
        continue;
      }
      // B or W.
      if (dk == PieceKind::Forward) {
        if (dc == c) {
          saved[c].insert(v);
          continue;
        }
        if (dc < c) { // F_c's input activation, kept from F_c to here
          saved[c].insert(v);
          passForward(v, dc, c);
          continue;
        }
        return crossError(&op, v, dc, c, "a forward value");
      }
      if (dc > c && dk != PieceKind::Weight) {
        for (int64_t j = c; j < dc; ++j) // passed back by the chunks between
          grad[j].insert(v);
        continue;
      }
      if (dc == c && dk == PieceKind::Backward && k == PieceKind::Weight) {
        wsaved[c].insert(v);
        continue;
      }
      return crossError(&op, v, dc, c, "a gradient");
    }
  }
  // A saved value that is an input activation must really be one: F_c reads
  // it, or it is passed through (F_c has no use; still received).
  if (loss.getDefiningOp() == nullptr || chunkOf(loss.getDefiningOp()) != C - 1)
    return ret.emitOpError("mtc-pipeline-split: the loss must be computed by "
                           "the last chunk");

  // Step 4: the pieces.
  auto base = [&](SmallVector<Port> &ports) {
    ports.push_back({tokens, "tokens", 0});
    ports.push_back({targets, "targets", 0});
  };
  for (int64_t c = 0; c < C; ++c) {
    // Forward.
    SmallVector<Port> in, out;
    base(in);
    if (c > 0)
      for (auto [i, v] : llvm::enumerate(act[c - 1])) {
        Port p{v, "activation", int64_t(i)};
        if (int64_t k = llvm::find(saved[c], v) - saved[c].begin();
            k < int64_t(saved[c].size()))
          p.alsoSaved = k;
        in.push_back(p);
      }
    if (c + 1 < C)
      for (auto [i, v] : llvm::enumerate(act[c]))
        out.push_back({v, "activation", int64_t(i)});
    if (c == C - 1)
      out.push_back({loss, "loss", 0});
    for (auto [i, v] : llvm::enumerate(saved[c]))
      if (chunkOf(v.getDefiningOp()) == c)
        out.push_back({v, "saved", int64_t(i)});
    buildPiece(module, train, mtc::pieceFunctionName(c, PieceKind::Forward), c,
               PieceKind::Forward, fwd[c], in, out);

    // Backward (input gradients, or everything without zero bubble).
    in.clear();
    out.clear();
    base(in);
    auto addSaved = [&](ArrayRef<Operation *> ops) {
      llvm::DenseSet<Value> used;
      for (Operation *op : ops)
        for (Value v : op->getOperands())
          used.insert(v);
      for (auto [i, v] : llvm::enumerate(saved[c]))
        if (used.count(v))
          in.push_back({v, "saved", int64_t(i)});
      return used;
    };
    llvm::DenseSet<Value> usedB = addSaved(bwd[c]);
    if (c + 1 < C)
      for (auto [i, v] : llvm::enumerate(grad[c]))
        if (usedB.count(v) || (c > 0 && grad[c - 1].contains(v)))
          in.push_back({v, "gradient", int64_t(i)}); // used or passed on
    if (c > 0)
      for (auto [i, v] : llvm::enumerate(grad[c - 1]))
        out.push_back({v, "gradient", int64_t(i)});
    for (auto [i, v] : llvm::enumerate(wsaved[c]))
      out.push_back({v, "wsaved", int64_t(i)});
    buildPiece(module, train, mtc::pieceFunctionName(c, PieceKind::Backward),
               c, PieceKind::Backward, bwd[c], in, out);

    if (!zeroBubble)
      continue;
    in.clear();
    out.clear();
    base(in);
    llvm::DenseSet<Value> usedW = addSaved(wgt[c]);
    for (auto [i, v] : llvm::enumerate(wsaved[c]))
      in.push_back({v, "wsaved", int64_t(i)});
    if (c + 1 < C)
      for (auto [i, v] : llvm::enumerate(grad[c]))
        if (usedW.count(v))
          in.push_back({v, "gradient", int64_t(i)});
    buildPiece(module, train, mtc::pieceFunctionName(c, PieceKind::Weight), c,
               PieceKind::Weight, wgt[c], in, out);
  }
  // A gradient B_c needs but B_(c+1) does not produce would be an error
  // caught above; one only W_c needs is received by B_c's rank all the same.
  return success();
}

LogicalResult Splitter::splitForward(func::FuncOp forward) {
  Block &body = forward.getBody().front();
  auto ret = cast<func::ReturnOp>(body.getTerminator());
  const int64_t C = cfg.chunks();
  Value tokens = forward.getArgument(0), targets = forward.getArgument(1);
  std::vector<SmallVector<Operation *>> ops(C);
  std::vector<llvm::SetVector<Value>> act(C);
  for (Operation &op : body) {
    if (&op == ret || copiedIntoPieces(&op))
      continue;
    const int64_t c = chunkOf(&op);
    if (c < 0 || c >= C)
      return op.emitOpError("mtc-pipeline-split: no valid mtc.chunk");
    ops[c].push_back(&op);
    for (Value v : op.getOperands()) {
      Operation *d = v.getDefiningOp();
      if (!d || copiedIntoPieces(d) || chunkOf(d) == c)
        continue;
      if (chunkOf(d) > c)
        return crossError(&op, v, chunkOf(d), c, "a forward value");
      for (int64_t j = chunkOf(d); j < c; ++j) // passed on by empty chunks
        act[j].insert(v);
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    SmallVector<Port> in{{tokens, "tokens", 0}, {targets, "targets", 0}}, out;
    if (c > 0)
      for (auto [i, v] : llvm::enumerate(act[c - 1]))
        in.push_back({v, "activation", int64_t(i)});
    if (c + 1 < C)
      for (auto [i, v] : llvm::enumerate(act[c]))
        out.push_back({v, "activation", int64_t(i)});
    else
      out.push_back({ret.getOperand(0), "loss", 0});
    buildPiece(module, forward, mtc::pieceFunctionName(c, PieceKind::Eval), c,
               PieceKind::Eval, ops[c], in, out);
  }
  return success();
}

LogicalResult Splitter::buildOptimizers(func::FuncOp optimizer) {
  const int64_t P = cfg.pp;
  // Parameters of each rank, with their local element counts.
  llvm::StringMap<llvm::SmallSetVector<int64_t, 4>> ranksOf;
  llvm::StringMap<int64_t> elements;
  std::vector<llvm::StringSet<>> onRank(P);
  for (auto fn : module.getOps<func::FuncOp>()) {
    std::optional<mtc::PieceInfo> piece = mtc::getPieceInfo(fn);
    if (!piece)
      continue;
    const int64_t r = piece->chunk % P;
    fn.walk([&](mtc::ParamOp p) {
      ranksOf[p.getName()].insert(r);
      elements[p.getName()] = p.getType().getNumElements();
      onRank[r].insert(p.getName());
    });
  }
  OpBuilder b(module.getContext());
  for (int64_t r = 0; r < P; ++r) {
    b.setInsertionPointToEnd(module.getBody());
    auto fn = cast<func::FuncOp>(b.clone(*optimizer));
    fn.setSymName(mtc::optimizerFunctionName(r));
    fn->setAttr(mtc::kPipelineRankAttr, b.getI64IntegerAttr(r));
    // AdamW over this rank's parameters.
    SmallVector<mtc::AdamWOp> adams;
    fn.walk([&](mtc::AdamWOp a) { adams.push_back(a); });
    for (mtc::AdamWOp a : adams) {
      SmallVector<Attribute> keep;
      for (Attribute n : a.getParams())
        if (onRank[r].contains(cast<StringAttr>(n).getValue()))
          keep.push_back(n);
      if (keep.empty())
        a.erase();
      else
        a.setParamsAttr(b.getArrayAttr(keep));
    }
    // Tied copies: summed first; the norm counts each on its lowest rank.
    Block &entry = fn.getBody().front();
    b.setInsertionPointToStart(&entry);
    SmallVector<Attribute> skip;
    SmallVector<std::string> names;
    for (auto &e : ranksOf)
      names.push_back(e.getKey().str());
    llvm::sort(names);
    for (const std::string &name : names) {
      const auto &ranks = ranksOf[name];
      if (ranks.size() < 2)
        continue;
      SmallVector<int64_t> stages(ranks.begin(), ranks.end());
      llvm::sort(stages);
      mtc::SumTiedGradientsOp::create(b, optimizer.getLoc(), name,
                                      elements[name], stages);
      if (ranks.contains(r) && stages.front() != r)
        skip.push_back(b.getStringAttr(name));
    }
    fn.walk([&](mtc::GradNormOp g) {
      g->setAttr(mtc::kPpSumAttr, b.getUnitAttr());
      if (!skip.empty())
        g->setAttr(mtc::kPpSkipParamsAttr, b.getArrayAttr(skip));
      // Split over tp: only names this rank holds matter to the emitter.
    });
  }
  return success();
}

struct PipelineSplitPass
    : public mtc::impl::MtcPipelineSplitBase<PipelineSplitPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    Splitter s{module, mtc::getPipelineConfig(module)};
    if (s.cfg.pp == 1)
      return;
    s.zeroBubble = s.cfg.schedule == "zb-h1";
    auto train = module.lookupSymbol<func::FuncOp>("train_step");
    auto forward = module.lookupSymbol<func::FuncOp>("forward");
    auto optimizer = module.lookupSymbol<func::FuncOp>("optimizer_step");
    if (!train || !forward || !optimizer) {
      module.emitError("mtc-pipeline-split: needs @forward, @train_step and "
                       "@optimizer_step (run mtc-autodiff first)");
      return signalPassFailure();
    }
    if (failed(s.splitTrain(train)) || failed(s.splitForward(forward)) ||
        failed(s.buildOptimizers(optimizer)))
      return signalPassFailure();
    train.erase();
    forward.erase();
    optimizer.erase();
  }
};

} // namespace
