//===- CudaPipeline.cpp - pipeline programs on the CUDA target ------------===//
//
// Prints a pipeline module (mtc/Transforms/Pipeline.h) after
// mtc-cuda-lowering, rank by rank, as the host emitter does:
//  1. Each piece @chunk<c>_<kind> of the rank: `float f(st, tokens,
//     targets, void* const* in, void* const* out)`: its float arguments
//     from in[] (stored as mtc-assign-precision decided), its results
//     written straight into out[] (the caller's buffers) when a value is
//     returned once and computed here, copied there otherwise. The pieces'
//     values share the start of the arena.
//  2. @pipeline_step_pp<r> and @pipeline_eval_pp<r>: their values (what is
//     held between pieces: saved activations, transfers) after the pieces'
//     scratch. Before each call st.microbatch / st.global_microbatch (the
//     dropout keys); mtc.p2p as one NCCL group of bf16 words (an fp32
//     value travels as twice as many) on the pp axis's stream: it starts
//     after the compute stream's work so far (the producing piece), marks
//     a slot event, and the compute stream waits for that event before the
//     first call that reads a received value, and, for the sends, after
//     the call that follows the group (the plan keeps the sent buffers
//     until then), so each transfer runs beside a piece and the host never
//     waits inside the step. mtc.pipeline_loss copies the loss into the
//     context's device array of M floats; the step's end joins the pp
//     stream and downloads the losses once (finish_pipeline_step).
//  3. @optimizer_step_pp<r> (CudaProgram.cpp's emitOptimizer over the
//     rank's layout: sum_tied_gradients, the norm summed over pp) and the
//     rank's ProgramDesc stage.
//
//===----------------------------------------------------------------------===//
#include "CudaEmitter.h"

#include "mtc/Transforms/Lowering.h"
#include "mtc/Transforms/Pipeline.h"

using namespace mlir;

namespace mtc::codegen {

namespace {
bool isRole(func::FuncOp fn, unsigned i, StringRef role) {
  auto r = fn.getArgAttrOfType<StringAttr>(i, mtc::kRoleAttr);
  return r && r.getValue() == role;
}
} // namespace

// The p2p groups of the step `fn`: their slot events, and the call after
// each group with sends, until which the sent values stay live.
void CudaEmitter::planTransfers(func::FuncOp fn) {
  p2pSlot.clear();
  sendWaitAfter.clear();
  recvWaited.clear();
  int slot = 0;
  Block &block = fn.getBody().front();
  for (Operation &op : block) {
    auto p = dyn_cast<mtc::P2POp>(op);
    if (!p)
      continue;
    p2pSlot[p] = slot;
    if (!p.getSends().empty()) {
      Operation *until = block.getTerminator();
      for (Operation *n = p->getNextNode(); n; n = n->getNextNode())
        if (isa<func::CallOp>(n)) {
          until = n;
          break;
        }
      hints.concurrentRuns.push_back({p, until});
      if (isa<func::CallOp>(until))
        sendWaitAfter[until].push_back(slot);
    }
    ++slot;
  }
  numP2PSlots = std::max<int64_t>(numP2PSlots, slot);
}

LogicalResult CudaEmitter::emitPiece(func::FuncOp fn) {
  names.clear();
  kind = Kind::Piece;
  const bool eval = mtc::getPieceInfo(fn)->kind == mtc::PieceKind::Eval;
  auto ptr = [](Value v) { return storedF32(v) ? "float*" : "bf16*"; };
  unsigned next = 0;
  for (auto [i, a] : llvm::enumerate(fn.getArguments())) {
    if (isRole(fn, i, "tokens") || isRole(fn, i, "targets"))
      names[a] = isRole(fn, i, "tokens") ? "tokens" : "targets";
    else
      names[a] =
          llvm::formatv("static_cast<{0}>(in[{1}])", ptr(a), next++).str();
  }
  // Results computed here and returned once are written in place; the
  // analyses run first, as in-place and fused values must keep their own
  // storage.
  analyzeGradientSinks(fn);
  analyzeFusions(fn);
  auto ret = cast<func::ReturnOp>(fn.getBody().front().getTerminator());
  llvm::DenseMap<Value, int> uses;
  for (Value v : ret.getOperands())
    ++uses[v];
  llvm::DenseSet<Value> shared;
  for (auto [a, b] : hints.inPlaceOf) {
    shared.insert(a);
    shared.insert(b);
  }
  for (auto [k, v] : llvm::enumerate(ret.getOperands()))
    if (uses[v] == 1 && !isa<BlockArgument>(v) &&
        !v.getDefiningOp<mtc::ParamOp>() && !names.count(v) &&
        !sink.count(v) && !unmaterialized.count(v) && !shared.count(v) &&
        !hints.liveFrom.count(v))
      names[v] = llvm::formatv("static_cast<{0}>(out[{1}])", ptr(v), k).str();
  planFunction(fn, eval);
  pieceArena = std::max(pieceArena, plan.size);
  os << "float " << fn.getSymName()
     << "(HostState& st, const int32_t* tokens, const int32_t* targets, "
        "void* const* in, void* const* out) {\n";
  emitPrologue("reinterpret_cast<char*>(st.arena)");
  line("(void)tokens; (void)targets; (void)in; (void)out;");
  if (!eval && (!gradCollectivesAfter.empty() || !normReduce.empty()))
    line(llvm::formatv("const bool last_microbatch = st.microbatch == {0};  "
                       "(void)last_microbatch;",
                       numMicrobatches - 1));
  return emitBody(fn, eval);
}

LogicalResult CudaEmitter::emitStep(func::FuncOp fn, int64_t base) {
  names.clear();
  kind = Kind::Step;
  names[fn.getArgument(0)] = "tokens";
  names[fn.getArgument(1)] = "targets";
  planFunction(fn, /*eval=*/false);
  arena = std::max(arena, base + plan.size);
  os << "void " << fn.getSymName()
     << "(HostState& st, const int32_t* tokens, const int32_t* targets, "
        "float* losses) {\n";
  line("// The arena after the pieces' own values: what the step holds "
       "between pieces.");
  emitPrologue(
      llvm::formatv("reinterpret_cast<char*>(st.arena) + 2 * {0}", base).str());
  line("(void)losses;");
  return emitBody(fn, /*eval=*/false);
}

LogicalResult CudaEmitter::emitPipelineOp(Operation *op) {
  if (auto c = dyn_cast<func::CallOp>(op)) {
    auto callee = module.lookupSymbol<func::FuncOp>(c.getCallee());
    auto mb = c->getAttrOfType<IntegerAttr>(mtc::kMicrobatchAttr);
    if (kind != Kind::Step || !callee || !mtc::getPieceInfo(callee) || !mb)
      return op->emitOpError("CUDA target: calls only pipeline pieces, each "
                             "with mtc.microbatch, from a pipeline step");
    // The receives this call reads.
    for (Value v : c.getOperands())
      if (auto p = v.getDefiningOp<mtc::P2POp>()) {
        int slot = p2pSlot.lookup(p);
        if (recvWaited.insert(slot).second)
          line(llvm::formatv("axis_wait(pc, 0, {0});  // its receive", slot));
      }
    // Dropout keys: the microbatch's place in the global batch.
    line(llvm::formatv("st.microbatch = {0}; st.global_microbatch = {0} * "
                       "st.comm->size(1) + st.comm->index(1);",
                       mb.getInt()));
    PieceCallArgs args =
        pieceCallArgs(c, callee, [&](Value v) { return buf(v); });
    // train --trace: the piece's time (waiting for the device first).
    mtc::PieceInfo piece = *mtc::getPieceInfo(callee);
    line(llvm::formatv("{{ const double t0 = mtc::rt::trace_now(st); "
                       "void* in[] = {{{0}}; void* out[] = {{{1}}; "
                       "{2}(st, {3}, {4}, in, out); "
                       "mtc::rt::trace_record(st, '{5}', {6}, {7}, t0); }",
                       args.in, args.out, callee.getSymName(), args.tokens,
                       args.targets, traceKind(piece.kind), mb.getInt(),
                       piece.chunk));
    for (int slot : sendWaitAfter.lookup(op))
      if (recvWaited.insert(slot).second)
        line(llvm::formatv("axis_wait(pc, 0, {0});  // the sends' buffers "
                           "are free again",
                           slot));
    return success();
  }
  if (auto p = dyn_cast<mtc::P2POp>(op)) {
    if (kind != Kind::Step)
      return op->emitOpError("CUDA target: mtc.p2p only in a pipeline step");
    std::string ops;
    unsigned si = 0, ri = 0;
    for (Attribute a : p.getTransfers()) {
      mtc::PipelineTransfer t;
      std::string why;
      if (!mtc::parsePipelineTransfer(a, t, why))
        return op->emitOpError(why);
      Value v = t.send ? p.getSends()[si++] : p.getRecvs()[ri++];
      ops += llvm::formatv("{{{0}, {1}, {2}, {3}}, ", t.send ? "true" : "false",
                           buf(v), numel(v) * (storedF32(v) ? 2 : 1), t.peer)
                 .str();
    }
    int slot = p2pSlot.lookup(op);
    line("axis_begin(pc, 0);");
    line(llvm::formatv("{{ mtc::rt::P2PTransfer t[] = {{{0}}; "
                       "axis_comm(st, 0).p2p(t, {1}, mtc::rt::DType::bf16, "
                       "pc.axis_stream[0]); }",
                       ops, p.getTransfers().size()));
    line(llvm::formatv("axis_mark(pc, 0, {0});", slot));
    return success();
  }
  auto l = cast<mtc::PipelineLossOp>(op);
  if (!storedF32(l.getLoss()))
    return op->emitOpError("CUDA target: the loss must be stored in fp32 "
                           "(mtc-assign-precision)");
  line(llvm::formatv("pipeline_loss(pc, {0}, {1});", l.getMicrobatch(),
                     buf(l.getLoss())));
  return success();
}

LogicalResult CudaEmitter::emitPipelineReturn(func::ReturnOp r) {
  if (kind == Kind::Step) {
    bool losses = !r->getParentOfType<func::FuncOp>()
                       .getOps<mtc::PipelineLossOp>()
                       .empty();
    line(llvm::formatv("finish_pipeline_step(st, losses, {0});",
                       losses ? numMicrobatches : 0));
    return success();
  }
  // A piece: results not already written in place go to the caller's
  // buffers.
  for (auto [k, v] : llvm::enumerate(r.getOperands())) {
    std::string src = buf(v);
    if (src.find(llvm::formatv("(out[{0}])", k).str()) != std::string::npos)
      continue;
    line(llvm::formatv("MTC_CUDA_CHECK(cudaMemcpyAsync(out[{0}], {1}, {2}, "
                       "cudaMemcpyDeviceToDevice, ctx.stream));",
                       k, src, numel(v) * (storedF32(v) ? 4 : 2)));
  }
  line("return 0.0f;");
  return success();
}

LogicalResult CudaEmitter::runPipeline(mtc::EmitResult &out) {
  pipeline = true;
  const mtc::PipelineConfig cfg = mtc::getPipelineConfig(module);
  std::vector<ProgramDescStage> stages;
  std::string declarations, stageParams;
  int64_t minArena = -1;
  for (int64_t r = 0; r < cfg.pp; ++r) {
    FailureOr<mtc::RankFunctions> rank = mtc::getRankFunctions(module, r);
    if (failed(rank))
      return failure();
    layout = ParamLayout(module, mtc::functionsOfRank(module, r));
    pieceArena = 0;
    for (func::FuncOp fn : rank->pieces)
      if (failed(emitPiece(fn)))
        return failure();
    func::FuncOp step = rank->step, eval = rank->eval,
                 optimizer = rank->optimizer;
    const int64_t base = (pieceArena + 63) / 64 * 64;
    arena = pieceArena;
    if (failed(emitStep(step, base)) || failed(emitStep(eval, base)))
      return failure();
    kind = Kind::Plain;
    rowsSuffix = "_pp" + std::to_string(r);
    if (failed(emitOptimizer(optimizer)))
      return failure();
    declarations += "extern const k::ParamRow kParamRows" + rowsSuffix +
                    "[];\nextern const size_t kNumParamRows" + rowsSuffix +
                    ";\n";
    stageParams += (r ? ", " : "") + std::to_string(layout.totalElements);
    ProgramDescStage st;
    st.layout = layout;
    st.arenaWords = (arena + 1) / 2;
    st.computeParamBytes = layout.totalElements * 2;
    st.step = step.getSymName().str();
    st.eval = eval.getSymName().str();
    st.optimizer = optimizer.getSymName().str();
    for (auto call : step.getOps<func::CallOp>())
      if (auto callee = module.lookupSymbol<func::FuncOp>(call.getCallee()))
        callee.walk([&](mtc::CostOpInterface c) {
          if (!c->hasAttr(mtc::kRecomputedAttr))
            st.flops += c.getFlops();
        });
    out.arenaElements = std::max(out.arenaElements, arena);
    minArena = minArena < 0 ? arena : std::min(minArena, arena);
    stages.push_back(std::move(st));
  }
  // The copy engines map the arena's first arena_bytes on every rank: the
  // smallest stage's.
  arena = std::max<int64_t>(minArena, 0);
  std::string src = sourceHeader(
      declarations + "const int64_t kStageParams[] = {" + stageParams +
          "};  // per pipeline rank\n\n",
      "kStageParams[st.comm->index(0)]");
  layout = ParamLayout(module);
  src += body + "}  // namespace\n\n";
  ProgramDescExtras extras;
  extras.target = "cuda";
  extras.computeParamBytes = layout.totalElements * 2;
  extras.extraLines = "  p.backend = &mtc::rt::cuda::cuda_backend();\n"
                      "  p.create_context = &create_context;\n"
                      "  p.destroy_context = &destroy_context;\n"
                      "  p.sync_compute_params = &sync_compute_params;\n";
  extras.stages = std::move(stages);
  src += emitProgramDesc(module, layout, extras);
  out.source = std::move(src);
  return success();
}

} // namespace mtc::codegen
