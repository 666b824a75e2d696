//===- VerifyPipeline.cpp - -mtc-verify-pipeline: the compile-time proof --===//
//
// Steps:
//  1. Read every @pipeline_step_pp<r> back into a schedule: a `func.call`
//     of a piece is a compute step (its chunk and kind from the callee's
//     `mtc.piece`, its microbatch from `mtc.microbatch`), an `mtc.p2p` is a
//     transfer group (its boundary tensors folded into one transfer per
//     (direction, payload, microbatch, chunk, peer), each with indices
//     0..n-1 exactly once).
//  2. Costs per chunk from the pieces' FLOPs (CostOpInterface); the bytes a
//     forward piece saves for its backward piece.
//  3. Simulate all ranks together (mtc/Pipeline/Schedule.h, rendezvous
//     semantics): a failure (a deadlock, a send that meets a receive
//     expecting something else, a piece run before its inputs exist or
//     twice) is an error naming the ranks and their steps, with notes at
//     the ops. The read-back schedule, not the one the schedule pass
//     started from, is what is proven: a hand-edited step is checked as
//     strictly.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Passes.h"
#include "mtc/Transforms/Pipeline.h"

#include "mtc/Pipeline/Schedule.h"
#include "mtc/Transforms/ParamLayout.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/ADT/StringExtras.h"

#include <map>
#include <tuple>

namespace mtc {
#define GEN_PASS_DEF_MTCVERIFYPIPELINE
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;
namespace pl = mtc::pipeline;

namespace {

double pieceFlops(func::FuncOp fn) {
  double f = 0;
  if (fn)
    fn.walk([&](mtc::CostOpInterface op) { f += op.getFlops(); });
  return f;
}

double bytesOf(Type t) {
  auto r = dyn_cast<RankedTensorType>(t);
  return r ? 4.0 * double(r.getNumElements()) : 0.0;
}

} // namespace

FailureOr<mtc::PipelineAnalysis> mtc::analyzePipeline(ModuleOp module) {
  PipelineAnalysis a;
  a.config = getPipelineConfig(module);
  const PipelineConfig &cfg = a.config;
  pl::Schedule s;
  if (!pl::parseScheduleKind(cfg.schedule, s.spec.kind))
    return module.emitError("mtc-verify-pipeline: unknown schedule '")
           << cfg.schedule << "'";
  s.spec.stages = int(cfg.pp);
  s.spec.virtualStages = int(cfg.virtualStages);
  s.spec.microbatches = int(cfg.microbatches);
  s.ranks.resize(cfg.pp);
  std::vector<std::vector<Operation *>> opOfStep(cfg.pp);

  // Step 1.
  for (int64_t r = 0; r < cfg.pp; ++r) {
    auto fn = module.lookupSymbol<func::FuncOp>(stepFunctionName(r));
    if (!fn)
      return module.emitError("mtc-verify-pipeline: no @pipeline_step_pp")
             << r << " (run mtc-pipeline-schedule first)";
    for (Operation &op : fn.getBody().front()) {
      if (auto call = dyn_cast<func::CallOp>(op)) {
        auto callee = module.lookupSymbol<func::FuncOp>(call.getCallee());
        std::optional<PieceInfo> p = callee ? getPieceInfo(callee) : std::nullopt;
        auto mb = call->getAttrOfType<IntegerAttr>(kMicrobatchAttr);
        if (!p || !mb || p->kind == PieceKind::Eval)
          return call.emitOpError("mtc-verify-pipeline: a pipeline step calls "
                                  "only training pieces, each with "
                                  "mtc.microbatch");
        pl::Step st{true,
                    p->kind == PieceKind::Forward    ? pl::PieceKind::Forward
                    : p->kind == PieceKind::Backward ? pl::PieceKind::Backward
                                                     : pl::PieceKind::Weight,
                    int(mb.getInt()), int(p->chunk), {}};
        s.ranks[r].push_back(st);
        opOfStep[r].push_back(call);
        continue;
      }
      auto p2p = dyn_cast<P2POp>(op);
      if (!p2p)
        continue;
      // (send, gradient, mb, chunk, peer) -> indices seen.
      std::map<std::tuple<bool, bool, int64_t, int64_t, int64_t>,
               std::vector<int64_t>>
          groups;
      std::vector<std::tuple<bool, bool, int64_t, int64_t, int64_t>> order;
      for (Attribute t : p2p.getTransfers()) {
        PipelineTransfer e;
        std::string why;
        if (!parsePipelineTransfer(t, e, why))
          return p2p.emitOpError(why);
        auto key = std::make_tuple(e.send, e.gradient, e.microbatch, e.chunk,
                                   e.peer);
        if (!groups.count(key))
          order.push_back(key);
        groups[key].push_back(e.index);
      }
      pl::Step st{false, pl::PieceKind::Forward, 0, 0, {}};
      for (auto &key : order) {
        std::vector<int64_t> idx = groups[key];
        llvm::sort(idx);
        for (int64_t i = 0; i < int64_t(idx.size()); ++i)
          if (idx[i] != i)
            return p2p.emitOpError("mtc-verify-pipeline: the tensors of one "
                                   "transfer must have indices 0..n-1 once each");
        auto [send, gradient, mb, chunk, peer] = key;
        st.transfers.push_back({send,
                                gradient ? pl::Payload::Gradient
                                         : pl::Payload::Activation,
                                int(mb), int(chunk), int(peer)});
      }
      s.ranks[r].push_back(st);
      opOfStep[r].push_back(p2p);
    }
  }

  // Step 2.
  const int64_t C = cfg.chunks();
  pl::Costs costs;
  costs.forward.assign(C, 0);
  costs.backward.assign(C, 0);
  costs.weight.assign(C, 0);
  costs.activationBytes.assign(C, 0);
  costs.weightHeldBytes.assign(C, 0);
  for (int64_t c = 0; c < C; ++c) {
    auto f = module.lookupSymbol<func::FuncOp>(
        pieceFunctionName(c, PieceKind::Forward));
    auto bw = module.lookupSymbol<func::FuncOp>(
        pieceFunctionName(c, PieceKind::Backward));
    auto w = module.lookupSymbol<func::FuncOp>(
        pieceFunctionName(c, PieceKind::Weight));
    costs.forward[c] = pieceFlops(f);
    costs.backward[c] = pieceFlops(bw);
    costs.weight[c] = pieceFlops(w);
    if (!w) { // the whole backward is one piece
      costs.backward[c] += costs.weight[c];
      costs.weight[c] = 0;
    }
    if (f) {
      for (unsigned i = 0; i < f.getNumResults(); ++i)
        if (auto r = f.getResultAttrOfType<StringAttr>(i, kRoleAttr);
            r && r.getValue() == "saved")
          costs.activationBytes[c] += bytesOf(f.getResultTypes()[i]);
      for (unsigned i = 0; i < f.getNumArguments(); ++i)
        if (f.getArgAttr(i, kSavedAttr))
          costs.activationBytes[c] += bytesOf(f.getArgumentTypes()[i]);
    }
    if (w && bw)
      for (unsigned i = 0; i < bw.getNumResults(); ++i)
        if (auto r = bw.getResultAttrOfType<StringAttr>(i, kRoleAttr);
            r && r.getValue() == "wsaved")
          costs.weightHeldBytes[c] += bytesOf(bw.getResultTypes()[i]);
  }

  // Step 3.
  pl::Simulation sim = pl::simulate(s, costs);
  if (!sim.ok) {
    InFlightDiagnostic d = module.emitError("mtc-verify-pipeline: ")
                           << sim.error;
    // Notes at the ops of the steps the message names: "rank R" and the
    // first "step N" after it, before the next rank ("rank R step N",
    // "rank R waits at step N", "rank R, whose matching send at step N").
    StringRef msg = sim.error;
    for (size_t at = msg.find("rank "); at != StringRef::npos;
         at = msg.find("rank ", at + 5)) {
      int64_t r, n;
      StringRef rest = msg.drop_front(at + 5);
      if (rest.consumeInteger(10, r))
        continue;
      rest = rest.take_front(rest.find("rank "));
      size_t step = rest.find("step ");
      if (step == StringRef::npos ||
          rest.drop_front(step + 5).consumeInteger(10, n))
        continue;
      if (r >= 0 && r < cfg.pp && n >= 0 && n < int64_t(opOfStep[r].size()))
        d.attachNote(opOfStep[r][n]->getLoc())
            << "rank " << r << " step " << n << " is this op";
    }
    return failure();
  }
  a.stageFlops.assign(cfg.pp, 0);
  for (int64_t r = 0; r < cfg.pp; ++r)
    for (const pl::Step &st : s.ranks[r])
      if (st.isCompute)
        a.stageFlops[r] += st.piece == pl::PieceKind::Forward ? costs.forward[st.chunk]
                           : st.piece == pl::PieceKind::Backward ? costs.backward[st.chunk]
                                                                 : costs.weight[st.chunk];
  a.bubble = sim.bubble;
  a.peakInFlight = sim.peakInFlight;
  a.heldBytes = sim.peakActivationBytes;
  const double p = double(cfg.pp), m = double(cfg.microbatches),
               v = double(cfg.virtualStages);
  a.idealBubble = cfg.schedule == "interleaved" ? (p - 1) / (v * m)
                  : cfg.schedule == "zb-h1"     ? (p - 1) / (3 * m)
                                                : (p - 1) / m;
  a.ordersText = pl::formatOrders(s);
  a.svg = pl::renderSvg(s, sim);
  return a;
}

void mtc::printPipelineReport(ModuleOp module, const PipelineAnalysis &a,
                              ArrayRef<int64_t> arenaBytes, StringRef target,
                              llvm::raw_ostream &os) {
  const PipelineConfig &cfg = a.config;
  auto human = [](double b) {
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
      b /= 1024;
      ++u;
    }
    return llvm::formatv("{0:F2} {1}", b, units[u]).str();
  };
  double total = 0;
  for (double f : a.stageFlops)
    total += f;
  auto layout = module->getAttrOfType<ArrayAttr>(kPipelineLayoutAttr);
  os << "pipeline: pp " << cfg.pp << ", " << cfg.virtualStages
     << " chunk(s) per rank, " << cfg.microbatches << " microbatches, schedule "
     << cfg.schedule << "; the schedule's bubble "
     << llvm::format("%.3f", a.idealBubble) << " of the ideal step"
     << (cfg.schedule == "zb-h1" ? " (with equal F, B and W times)" : "")
     << "\n";
  // Bytes per parameter element: fp32 master + gradient + two moments (the
  // distributed optimizer's share aside), and the bf16 compute copy on CUDA.
  const double perParam = target == "cuda" ? 18 : 16;
  for (int64_t r = 0; r < cfg.pp; ++r) {
    ParamLayout pl(module, functionsOfRank(module, r));
    int64_t elems = 0;
    for (auto &e : pl.slots)
      elems += e.second.op.getType().getNumElements();
    std::string chunks;
    for (int64_t c = r; layout && c < int64_t(layout.size()); c += cfg.pp)
      chunks += (chunks.empty() ? "" : " | ") +
                cast<StringAttr>(layout[c]).getValue().str();
    const double act = r < int64_t(arenaBytes.size()) ? double(arenaBytes[r]) : 0;
    os << "  rank " << r << "  " << llvm::left_justify(chunks, 16) << " FLOPs "
       << llvm::format("%5.1f%%", total > 0 ? 100 * a.stageFlops[r] / total : 0)
       << "  idle " << llvm::format("%.3f", a.bubble[r]) << "  in flight "
       << a.peakInFlight[r] << " microbatch-chunks (" << human(a.heldBytes[r])
       << " saved)  memory: " << elems << " parameters ("
       << human(perParam * double(elems))
       << " with gradients and AdamW), activations " << human(act) << "\n";
  }
  os << "  (idle: the simulated fraction of the step each rank waits, with "
        "each piece's time taken from its FLOPs; schedule.svg draws it)\n";
}

namespace {
struct VerifyPipelinePass
    : public mtc::impl::MtcVerifyPipelineBase<VerifyPipelinePass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (mtc::getPipelineConfig(module).pp == 1)
      return;
    if (failed(mtc::analyzePipeline(module)))
      signalPassFailure();
  }
};
} // namespace
