//===- PipelineSchedule.cpp - -mtc-pipeline-schedule: ranks' steps as IR ---===//
//
// Turns the pieces of mtc-pipeline-split into each pipeline rank's step.
//
// Steps:
//  1. Build the schedule (mtc/Pipeline/Schedule.h) for the module's kind,
//     pp, virtual_stages and microbatches: every rank's ordered compute
//     pieces and transfer groups.
//  2. For rank r, @pipeline_step_pp<r>(tokens (M, B, S), targets (M, B, S)):
//     walk its steps, and for
//       - a piece: `func.call @chunk<c>_<kind>` on microbatch mb
//         (`mtc.microbatch = mb`), each argument found by its role: the
//         microbatch's tokens and targets (`mtc.microbatch`), the
//         activations that chunk c - 1 sent (received, or computed here
//         when this rank holds it), the gradients from chunk c + 1, the
//         values its own forward (and backward) piece saved; a loss result
//         is recorded with `mtc.pipeline_loss`;
//       - a transfer group: one `mtc.p2p` whose sends are the values named
//         by (payload, microbatch, chunk) and whose results are what the
//         group receives, one transfer per boundary tensor.
//     Every value a piece saves lives in this function until the piece that
//     reads it, so the buffer plan of the step counts exactly the
//     activations of the microbatches in flight.
//  3. @pipeline_eval_pp<r>: validation, the eval pieces one microbatch after
//     another in model order (a chain, so it cannot deadlock).
// No-op when pp = 1 (the module keeps @train_step).
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Passes.h"
#include "mtc/Transforms/Pipeline.h"

#include "mtc/Pipeline/Schedule.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/DenseMap.h"

#include <map>
#include <tuple>

namespace mtc {
#define GEN_PASS_DEF_MTCPIPELINESCHEDULE
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;
namespace pl = mtc::pipeline;

namespace {

// (microbatch, chunk, index)
using Key = std::tuple<int64_t, int64_t, int64_t>;

struct StepBuilder {
  ModuleOp module;
  mtc::PipelineConfig cfg;
  OpBuilder b;
  Location loc;
  Value tokens, targets;
  std::map<int64_t, std::pair<Value, Value>> batch; // mb -> (tokens, targets)
  std::map<Key, Value> act, grad, saved, wsaved;
  bool eval = false; // activations come from the eval pieces

  StepBuilder(ModuleOp m, mtc::PipelineConfig c)
      : module(m), cfg(c), b(m.getContext()), loc(m.getLoc()) {}

  func::FuncOp piece(int64_t chunk, mtc::PieceKind kind) {
    return module.lookupSymbol<func::FuncOp>(
        mtc::pieceFunctionName(chunk, kind));
  }

  std::pair<Value, Value> microbatch(int64_t mb) {
    auto it = batch.find(mb);
    if (it != batch.end())
      return it->second;
    auto slice = [&](Value all) -> Value {
      auto t = cast<RankedTensorType>(all.getType());
      auto one = RankedTensorType::get(t.getShape().drop_front(),
                                       t.getElementType());
      return mtc::MicrobatchOp::create(b, loc, one, all, mb);
    };
    return batch[mb] = {slice(tokens), slice(targets)};
  }

  static StringRef role(func::FuncOp fn, unsigned i, bool result,
                        int64_t *index) {
    DictionaryAttr d = result ? fn.getResultAttrDict(i) : fn.getArgAttrDict(i);
    auto r = d ? d.getAs<StringAttr>(mtc::kRoleAttr) : StringAttr();
    auto x = d ? d.getAs<IntegerAttr>(mtc::kIndexAttr) : IntegerAttr();
    *index = x ? x.getInt() : 0;
    return r ? r.getValue() : StringRef();
  }

  LogicalResult call(int64_t mb, int64_t chunk, mtc::PieceKind kind);
  LogicalResult transfers(const pl::Step &step);
  /// The boundary tensors (activation of chunk c, or gradient chunk c
  /// sends), from the producing piece's results.
  SmallVector<Type> boundaryTypes(bool gradient, int64_t chunk);
};

LogicalResult StepBuilder::call(int64_t mb, int64_t chunk,
                                mtc::PieceKind kind) {
  func::FuncOp fn = piece(chunk, kind);
  if (!fn)
    return module.emitError("mtc-pipeline-schedule: no @")
           << mtc::pieceFunctionName(chunk, kind)
           << " (run mtc-pipeline-split first)";
  SmallVector<Value> args;
  for (unsigned i = 0; i < fn.getNumArguments(); ++i) {
    int64_t x;
    StringRef r = role(fn, i, false, &x);
    std::map<Key, Value> *from = nullptr;
    Key key{mb, chunk, x};
    if (r == "tokens" || r == "targets") {
      auto [t, g] = microbatch(mb);
      args.push_back(r == "tokens" ? t : g);
      continue;
    }
    if (r == "activation") {
      from = &act;
      key = {mb, chunk - 1, x};
    } else if (r == "gradient") {
      from = &grad;
      key = {mb, chunk + 1, x};
    } else if (r == "saved") {
      from = &saved;
    } else if (r == "wsaved") {
      from = &wsaved;
    } else {
      return fn.emitOpError("argument ") << i << " has no pipeline role";
    }
    auto it = from->find(key);
    if (it == from->end())
      return fn.emitOpError("mtc-pipeline-schedule: the schedule runs @")
             << fn.getSymName() << " on microbatch " << mb << " before its "
             << r << " " << x << " exists";
    args.push_back(it->second);
  }
  auto c = func::CallOp::create(b, loc, fn, args);
  c->setAttr(mtc::kMicrobatchAttr, b.getI64IntegerAttr(mb));
  // Input activations the backward piece needs too.
  for (unsigned i = 0; i < fn.getNumArguments(); ++i)
    if (auto k = fn.getArgAttrOfType<IntegerAttr>(i, mtc::kSavedAttr))
      saved[{mb, chunk, k.getInt()}] = args[i];
  for (unsigned i = 0; i < fn.getNumResults(); ++i) {
    int64_t x;
    StringRef r = role(fn, i, true, &x);
    Value v = c.getResult(i);
    if (r == "activation")
      act[{mb, chunk, x}] = v;
    else if (r == "gradient")
      grad[{mb, chunk, x}] = v;
    else if (r == "saved")
      saved[{mb, chunk, x}] = v;
    else if (r == "wsaved")
      wsaved[{mb, chunk, x}] = v;
    else if (r == "loss")
      mtc::PipelineLossOp::create(b, loc, v, mb);
    else
      return fn.emitOpError("result ") << i << " has no pipeline role";
  }
  return success();
}

SmallVector<Type> StepBuilder::boundaryTypes(bool gradient, int64_t chunk) {
  SmallVector<Type> types;
  func::FuncOp fn = piece(chunk, gradient ? mtc::PieceKind::Backward
                                 : eval   ? mtc::PieceKind::Eval
                                          : mtc::PieceKind::Forward);
  if (!fn)
    return types;
  for (unsigned i = 0; i < fn.getNumResults(); ++i) {
    int64_t x;
    if (role(fn, i, true, &x) == (gradient ? "gradient" : "activation"))
      types.push_back(fn.getResultTypes()[i]);
  }
  return types;
}

LogicalResult StepBuilder::transfers(const pl::Step &step) {
  SmallVector<Value> sends;
  SmallVector<Type> recvTypes;
  SmallVector<Attribute> entries;
  SmallVector<Key> recvKeys;
  SmallVector<bool> recvGradient;
  for (const pl::Transfer &t : step.transfers) {
    const bool gradient = t.what == pl::Payload::Gradient;
    SmallVector<Type> types = boundaryTypes(gradient, t.chunk);
    for (int64_t i = 0; i < int64_t(types.size()); ++i) {
      mtc::PipelineTransfer e;
      e.send = t.isSend;
      e.gradient = gradient;
      e.microbatch = t.microbatch;
      e.chunk = t.chunk;
      e.index = i;
      e.peer = t.peer;
      entries.push_back(mtc::buildPipelineTransfer(b.getContext(), e));
      Key key{t.microbatch, t.chunk, i};
      if (t.isSend) {
        auto &from = gradient ? grad : act;
        auto it = from.find(key);
        if (it == from.end())
          return module.emitError("mtc-pipeline-schedule: the schedule sends ")
                 << (gradient ? "gradient" : "activation") << " (microbatch "
                 << t.microbatch << ", chunk " << t.chunk
                 << ") before computing it";
        sends.push_back(it->second);
      } else {
        recvTypes.push_back(types[i]);
        recvKeys.push_back(key);
        recvGradient.push_back(gradient);
      }
    }
  }
  if (entries.empty())
    return success(); // a boundary without tensors (an empty model part)
  auto p2p = mtc::P2POp::create(b, loc, recvTypes, sends,
                                b.getArrayAttr(entries));
  for (auto [i, key] : llvm::enumerate(recvKeys))
    (recvGradient[i] ? grad : act)[key] = p2p.getResult(i);
  return success();
}

struct PipelineSchedulePass
    : public mtc::impl::MtcPipelineScheduleBase<PipelineSchedulePass> {
  void runOnOperation() override;
};

void PipelineSchedulePass::runOnOperation() {
  ModuleOp module = getOperation();
  mtc::PipelineConfig cfg = mtc::getPipelineConfig(module);
  if (cfg.pp == 1)
    return;
  pl::ScheduleSpec spec;
  if (!pl::parseScheduleKind(cfg.schedule, spec.kind)) {
    module.emitError("mtc-pipeline-schedule: unknown schedule '")
        << cfg.schedule << "' (gpipe, 1f1b, interleaved, zb-h1)";
    return signalPassFailure();
  }
  spec.stages = int(cfg.pp);
  spec.virtualStages = int(cfg.virtualStages);
  spec.microbatches = int(cfg.microbatches);
  pl::Schedule sched;
  std::string error;
  if (!pl::buildSchedule(spec, sched, error)) {
    module.emitError("mtc-pipeline-schedule: ") << error;
    return signalPassFailure();
  }
  // The token batch of one step: (M, B, S).
  func::FuncOp first =
      module.lookupSymbol<func::FuncOp>(mtc::pieceFunctionName(0, mtc::PieceKind::Forward));
  if (!first || first.getNumArguments() < 2) {
    module.emitError("mtc-pipeline-schedule: no @chunk0_forward (run "
                     "mtc-pipeline-split first)");
    return signalPassFailure();
  }
  auto mbType = cast<RankedTensorType>(first.getArgument(0).getType());
  SmallVector<int64_t> shape{cfg.microbatches};
  llvm::append_range(shape, mbType.getShape());
  auto batchType = RankedTensorType::get(shape, mbType.getElementType());

  auto makeFunction = [&](StepBuilder &sb, StringRef name, int64_t r) {
    sb.b.setInsertionPointToEnd(module.getBody());
    auto fn = func::FuncOp::create(
        sb.b, module.getLoc(), name,
        sb.b.getFunctionType({batchType, batchType}, {}));
    fn->setAttr(mtc::kPipelineRankAttr, sb.b.getI64IntegerAttr(r));
    fn.setArgAttr(0, "mtc.name", sb.b.getStringAttr("tokens"));
    fn.setArgAttr(1, "mtc.name", sb.b.getStringAttr("targets"));
    Block *body = fn.addEntryBlock();
    sb.b.setInsertionPointToStart(body);
    sb.tokens = body->getArgument(0);
    sb.targets = body->getArgument(1);
    return fn;
  };

  for (int64_t r = 0; r < cfg.pp; ++r) {
    StepBuilder sb(module, cfg);
    makeFunction(sb, mtc::stepFunctionName(r), r);
    for (const pl::Step &step : sched.ranks[r]) {
      LogicalResult ok = success();
      if (step.isCompute) {
        mtc::PieceKind k = step.piece == pl::PieceKind::Forward
                               ? mtc::PieceKind::Forward
                           : step.piece == pl::PieceKind::Backward
                               ? mtc::PieceKind::Backward
                               : mtc::PieceKind::Weight;
        ok = sb.call(step.microbatch, step.chunk, k);
      } else {
        ok = sb.transfers(step);
      }
      if (failed(ok))
        return signalPassFailure();
    }
    func::ReturnOp::create(sb.b, module.getLoc());

    // Validation: microbatch after microbatch, chunks in model order.
    StepBuilder eb(module, cfg);
    eb.eval = true;
    makeFunction(eb, mtc::evalFunctionName(r), r);
    const int64_t C = cfg.chunks();
    auto rankOf = [&](int64_t c) { return c % cfg.pp; };
    for (int64_t mb = 0; mb < cfg.microbatches; ++mb)
      for (int64_t c = r; c < C; c += cfg.pp) {
        pl::Step recv{false, pl::PieceKind::Forward, 0, 0, {}};
        if (c > 0 && rankOf(c - 1) != r) {
          recv.transfers.push_back({false, pl::Payload::Activation, int(mb),
                                    int(c - 1), int(rankOf(c - 1))});
          if (failed(eb.transfers(recv)))
            return signalPassFailure();
        }
        if (failed(eb.call(mb, c, mtc::PieceKind::Eval)))
          return signalPassFailure();
        if (c + 1 < C && rankOf(c + 1) != r) {
          pl::Step send{false, pl::PieceKind::Forward, 0, 0, {}};
          send.transfers.push_back({true, pl::Payload::Activation, int(mb),
                                    int(c), int(rankOf(c + 1))});
          if (failed(eb.transfers(send)))
            return signalPassFailure();
        }
      }
    func::ReturnOp::create(eb.b, module.getLoc());
  }
}

} // namespace
