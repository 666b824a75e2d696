//===- EmitterCommon.cpp - parameter layout and ProgramDesc emission -------===//
#include "EmitterCommon.h"

#include "llvm/ADT/StringSet.h"

#include "mtc/Transforms/Grid.h"
#include "mtc/Transforms/PlanReport.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/FormatVariadic.h"

using namespace mlir;

namespace mtc::codegen {

int64_t numel(Value v) {
  return cast<RankedTensorType>(v.getType()).getNumElements();
}
ArrayRef<int64_t> shapeOf(Value v) {
  return cast<RankedTensorType>(v.getType()).getShape();
}
int64_t rows(Value v) { return numel(v) / shapeOf(v).back(); }
std::string fmt(double d) { return llvm::formatv("{0:e9}", d).str(); }

std::string escape(StringRef s) {
  std::string out;
  for (char c : s) {
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    if (c == '"' || c == '\\')
      out += '\\';
    out += c;
  }
  return out;
}

std::string locString(Location loc) {
  std::string s;
  llvm::raw_string_ostream os(s);
  loc.print(os);
  return s;
}

bool isIndexOp(Operation *op) {
  if (auto c = dyn_cast<arith::ConstantOp>(op))
    return isa<IntegerAttr>(c.getValue());
  return isa<arith::MulIOp, shard::ProcessMultiIndexOp>(op);
}

LogicalResult nameIndexOp(Operation *op,
                          llvm::DenseMap<Value, std::string> &names,
                          BufferName buf) {
  FailureOr<std::string> e = indexExpr(op, buf);
  if (failed(e))
    return failure();
  names[op->getResult(0)] = *e;
  return success();
}

FailureOr<std::string> indexExpr(Operation *op, BufferName buf) {
  if (auto c = dyn_cast<arith::ConstantOp>(op))
    return "int64_t(" + std::to_string(cast<IntegerAttr>(c.getValue()).getInt()) + ")";
  if (auto m = dyn_cast<arith::MulIOp>(op))
    return "(" + buf(m.getLhs()) + " * " + buf(m.getRhs()) + ")";
  auto p = cast<shard::ProcessMultiIndexOp>(op);
  if (p->getNumResults() != 1 || p.getAxes().size() != 1)
    return p->emitOpError("one grid axis per index");
  return llvm::formatv("st.comm->index({0})", p.getAxes()[0]).str();
}

std::optional<KernelCall> kernelCall(Operation *op, BufferName buf) {
  if (auto k = dyn_cast<KernelOpInterface>(op))
    return k.getKernelCall(buf);
  return std::nullopt;
}

std::string formatCall(const KernelCall &call, StringRef context) {
  std::string s = "k::" + call.name + "(";
  bool first = context.empty();
  if (!first)
    s += context.str();
  for (const std::string &a : call.args) {
    s += first ? "" : ", ";
    s += a;
    first = false;
  }
  return s + ");";
}

FailureOr<TrainingFunctions> getTrainingFunctions(ModuleOp module) {
  TrainingFunctions f{module.lookupSymbol<func::FuncOp>("forward"),
                      module.lookupSymbol<func::FuncOp>("train_step"),
                      module.lookupSymbol<func::FuncOp>("optimizer_step")};
  if (!f.forward || !f.train || !f.optimizer)
    return module.emitError("the emitter needs @forward, @train_step and "
                            "@optimizer_step; run the training pipeline "
                            "(mtc-autodiff) first");
  for (func::FuncOp fn : {f.forward, f.train})
    if (fn.getNumArguments() != 2)
      return fn.emitError("code generation handles models whose @")
             << fn.getSymName() << " takes (tokens, targets); this one takes "
             << fn.getNumArguments()
             << " arguments (BERT's attention mask needs the masked-LM data "
                "pipeline, which the runtime does not have yet)";
  if (f.optimizer.getNumArguments() != 2)
    return f.optimizer.emitError("@optimizer_step must take (lr, step)");
  return f;
}

PieceCallArgs pieceCallArgs(func::CallOp call, func::FuncOp callee,
                            BufferName buf) {
  PieceCallArgs a;
  std::string in, out;
  for (auto [i, v] : llvm::enumerate(call.getOperands())) {
    auto role = callee.getArgAttrOfType<StringAttr>(i, mtc::kRoleAttr);
    if (role && role.getValue() == "tokens")
      a.tokens = buf(v);
    else if (role && role.getValue() == "targets")
      a.targets = buf(v);
    else
      in += (in.empty() ? "" : ", ") + buf(v);
  }
  for (Value r : call.getResults())
    out += (out.empty() ? "" : ", ") + buf(r);
  a.in = in.empty() ? "nullptr" : in;
  a.out = out.empty() ? "nullptr" : out;
  return a;
}

char traceKind(mtc::PieceKind kind) {
  switch (kind) {
  case mtc::PieceKind::Forward:
    return 'F';
  case mtc::PieceKind::Backward:
    return 'B';
  case mtc::PieceKind::Weight:
    return 'W';
  case mtc::PieceKind::Eval:
    return 'E';
  }
  return 'F';
}

std::string emitProgramDesc(ModuleOp module, const ParamLayout &layout,
                            const ProgramDescExtras &extras) {
  auto cfg = module->getAttrOfType<DictionaryAttr>("mtc.training");
  auto getI = [&](StringRef k) -> int64_t {
    auto a = cfg ? cfg.getAs<IntegerAttr>(k) : IntegerAttr();
    return a ? a.getInt() : 0;
  };
  auto getF = [&](StringRef k) -> double {
    auto a = cfg ? cfg.getAs<FloatAttr>(k) : FloatAttr();
    return a ? a.getValueAsDouble() : 0.0;
  };
  auto getS = [&](StringRef k) -> std::string {
    auto a = cfg ? cfg.getAs<StringAttr>(k) : StringAttr();
    return a ? a.str() : "";
  };
  PlanReport report = computePlanReport(module, extras.target, /*activationBytes=*/0);

  std::string src;
  llvm::raw_string_ostream s(src);
  s << "static mtc::rt::ProgramDesc make_program() {\n"
    << "  mtc::rt::ProgramDesc p;\n"
    << "  p.model_name = \"" << escape(report.modelName) << "\";\n"
    << "  p.target = \"" << extras.target << "\";\n";
  // A parameter held by several pipeline ranks is primary on the lowest.
  llvm::StringSet<> seenOnEarlierStage;
  auto paramRows = [&](const ParamLayout &layout, StringRef into,
                       const llvm::StringSet<> *secondary) {
    for (const std::string &name : layout.order) {
      ParamSlot slot = layout.slots.lookup(name);
      auto t = slot.op.getType();
      // Checkpoints hold global tensors: a split parameter records its global
      // shape and which slice this rank holds (mtc-partition's `mtc.shard`).
      SmallVector<int64_t> global(t.getShape());
      int64_t splitDim = -1, splitAxis = -1, split2Dim = -1, split2Axis = -1;
      if (auto sh = slot.op->getAttrOfType<DictionaryAttr>("mtc.shard")) {
        global.assign(
            sh.getAs<DenseI64ArrayAttr>("global_shape").asArrayRef().begin(),
            sh.getAs<DenseI64ArrayAttr>("global_shape").asArrayRef().end());
        splitDim = sh.getAs<IntegerAttr>("dim").getInt();
        auto grid = sh.getAs<FlatSymbolRefAttr>("grid");
        splitAxis = runtimeAxis(grid ? grid.getValue() : StringRef(kGridName),
                                sh.getAs<IntegerAttr>("axis").getInt());
        // Expert parallelism over a tensor-parallel split: the tp split of
        // the ep slice (mtc-shard-expert-parallel's `then`).
        if (auto then = sh.getAs<DictionaryAttr>("then")) {
          split2Dim = then.getAs<IntegerAttr>("dim").getInt();
          split2Axis = runtimeAxis(kGridName, then.getAs<IntegerAttr>("axis").getInt());
        }
      }
      std::string dims;
      for (int64_t d : global)
        dims += (dims.empty() ? "" : ", ") + std::to_string(d);
      const char *init = slot.op.getInit() == InitKind::zeros  ? "zeros"
                         : slot.op.getInit() == InitKind::ones ? "ones"
                                                               : "normal";
      s << llvm::formatv(
          "  {{ mtc::rt::ParamDesc d; d.name = \"{0}\"; d.shape = {{{1}}; "
          "d.offset = {2}; d.numel = {3}; d.split_dim = {4}; d.split_axis = "
          "{5}; d.init = mtc::rt::InitKind::{6}; d.init_std = {7}; "
          "d.weight_decay = {8};{9}{11} {10}.push_back(d); }\n",
          escape(name), dims, slot.offset, t.getNumElements(), splitDim,
          splitAxis, init, fmt(slot.op.getStd().convertToDouble()),
          global.size() >= 2 ? "true" : "false",
          secondary && secondary->contains(name)
              ? " d.pipeline_primary = false;"
              : "",
          into,
          split2Dim >= 0 ? llvm::formatv(" d.split2_dim = {0}; d.split2_axis = {1};",
                                         split2Dim, split2Axis)
                               .str()
                         : std::string());
    }
  };
  paramRows(layout, "p.params", nullptr);
  for (const ProgramDescStage &st : extras.stages) {
    s << "  {\n    mtc::rt::PipelineStageDesc s;\n";
    llvm::StringSet<> secondary;
    for (const std::string &name : st.layout.order)
      if (seenOnEarlierStage.contains(name))
        secondary.insert(name);
    paramRows(st.layout, "s.params", &secondary);
    for (const std::string &name : st.layout.order)
      seenOnEarlierStage.insert(name);
    s << llvm::formatv(
        "    s.num_param_elems = {0};\n    s.optimizer_shard_elems = {1};\n"
        "    s.arena_floats = {2};\n    s.compute_param_bytes = {3};\n"
        "    s.flops_per_step = {4};\n    s.step = &{5};\n    s.eval = &{6};\n"
        "    s.optimizer_step = &{7};\n    p.pipeline.push_back(s);\n  }\n",
        st.layout.totalElements, st.layout.shardElements, st.arenaWords,
        st.computeParamBytes, fmt(st.flops), st.step, st.eval, st.optimizer);
  }
  GridShape grid = getGridShape(module);
  s << "  p.grid[0] = " << grid.pp << "; p.grid[1] = " << grid.dp
    << "; p.grid[2] = " << grid.tp << ";\n";
  if (grid.ep > 1)
    s << "  p.grid[3] = " << grid.ep << ";  // expert parallel, within dp\n";
  std::string decay = getS("decay");
  s << "  p.num_param_elems = " << layout.totalElements << ";\n"
    << "  p.optimizer_shard_elems = " << layout.shardElements << ";\n"
    << (layout.shards.size() > 1
            ? llvm::formatv("  p.expert_optimizer_shard_elems = {0};  // over "
                            "the expert-data-parallel group, from element {1}\n",
                            layout.shards[1].elements, layout.shards[1].begin)
                  .str()
            : std::string())
    << "  p.arena_floats = " << extras.arenaWords << ";\n"
    << "  p.compute_param_bytes = " << extras.computeParamBytes << ";\n"
    << "  p.flops_per_step = " << fmt(report.flopsPerStep) << ";\n"
    << "  auto& t = p.train;\n"
    << "  t.micro_batch = " << getI("micro_batch_size") << ";\n"
    << "  t.seq_length = " << getI("seq_length") << ";\n"
    << "  t.vocab_size = " << getI("vocab_size") << ";\n"
    << "  t.num_microbatches = " << getI("num_microbatches") << ";\n"
    << "  t.global_batch = " << getI("global_batch_size") << ";\n"
    << "  t.train_steps = " << getI("train_steps") << ";\n"
    << "  t.lr = " << fmt(getF("lr")) << ";\n"
    << "  t.min_lr = " << fmt(getF("min_lr")) << ";\n"
    << "  t.warmup_steps = " << getI("warmup_steps") << ";\n"
    << "  t.decay_steps = " << getI("decay_steps") << ";\n"
    << "  t.decay = mtc::rt::LrDecay::"
    << (decay.empty() ? std::string("cosine") : decay) << ";\n"
    << "  t.beta1 = " << fmt(getF("beta1")) << ";\n"
    << "  t.beta2 = " << fmt(getF("beta2")) << ";\n"
    << "  t.eps = " << fmt(getF("eps")) << ";\n"
    << "  t.weight_decay = " << fmt(getF("weight_decay")) << ";\n"
    << "  t.grad_clip = " << fmt(getF("grad_clip")) << ";\n"
    << "  t.seed = " << getI("seed") << "ull;\n"
    << (extras.stages.empty() ? "  p.forward_loss = &forward;\n"
                                "  p.forward_backward = &train_step;\n"
                                "  p.optimizer_step = &optimizer_step;\n"
                              : "")
    << extras.extraLines << "  return p;\n}\n\n"
    << "int main(int argc, char** argv) {\n"
    << "  static const mtc::rt::ProgramDesc program = make_program();\n"
    << "  return mtc::rt::train_main(argc, argv, program);\n}\n";
  return src;
}

} // namespace mtc::codegen

int mtc::codegen::runtimeAxis(StringRef grid, int64_t axis) {
  if (grid == mtc::kExpertGridName) {
    static const int kMap[4] = {0, 4, 3, 2};
    return kMap[axis];
  }
  return int(axis);
}

SmallVector<std::pair<int64_t, int64_t>>
mtc::codegen::reducedRuns(mtc::ReduceGradientsOp r, const ParamLayout &layout) {
  llvm::StringSet<> mine, others;
  if (auto p = r.getParams()) {
    for (Attribute a : *p)
      mine.insert(cast<StringAttr>(a).getValue());
  } else if (Block *block = r->getBlock()) {
    // A sharded reduction keeps the untrained parameters' slots (MoE expert
    // biases' loads, summed by their own reduction and zeroed by their
    // update before it) inside its region: it reduces their zeros and
    // gathers their values, the same on every rank.
    auto untrained = [&](StringRef name) {
      auto it = layout.slots.find(name);
      return it != layout.slots.end() &&
             mtc::ParamOp(it->second.op).getNotTrained();
    };
    for (auto other : block->getOps<mtc::ReduceGradientsOp>())
      if (auto p = other.getParams())
        for (Attribute a : *p) {
          StringRef name = cast<StringAttr>(a).getValue();
          if (!(r.getShardOptimizerState() && untrained(name)))
            others.insert(name);
        }
  }
  SmallVector<std::pair<int64_t, int64_t>> runs;
  for (size_t i = 0; i < layout.order.size(); ++i) {
    const std::string &name = layout.order[i];
    bool take = r.getParams() ? mine.contains(name) : !others.contains(name);
    if (!take)
      continue;
    int64_t begin = layout.slots.lookup(name).offset;
    int64_t end = i + 1 < layout.order.size()
                      ? layout.slots.lookup(layout.order[i + 1]).offset
                      : layout.totalElements;
    if (!runs.empty() && runs.back().first + runs.back().second == begin)
      runs.back().second += end - begin;
    else
      runs.push_back({begin, end - begin});
  }
  return runs;
}
