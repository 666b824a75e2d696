//===- CudaEmitter.cpp - training program -> CUDA C++ ----------------------===//
//
// Lowers the training program to calls of the CUDA kernel library
// (runtime/include/mtc/rt/cuda_kernels.h) with Megatron's mixed precision:
// bf16 activations and compute copies of the weights, fp32 master weights,
// gradients and AdamW state, fp32 statistics and loss.
//
// Its input is the lowered module: every decision is already on the ops
// (mtc-cuda-lowering: precision, gradient sinks, fusions, collective
// placement, lanes, dp buckets; compiler/include/mtc/Transforms/Lowering.h),
// read by CudaAnalysis.cpp and CudaLanes.cpp. Steps:
//  1. Read the decisions into ExecutionHints for the buffer plan and the
//     tables the printer uses (the dp buckets: mtc-plan-buckets).
//  2. Buffer planning in 2-byte units (bf16 tensors; f32 tensors take two;
//     gradient sinks and fused-away values take none).
//  3. One kernel call per op that is not fused into another, each preceded
//     by set_current_op with the op's IR location, so a CUDA error names
//     the op: the kernel table (KernelOpInterface) for plain ops, the rules
//     below for fused groups, gradient sinks and `shard.*` collectives (on
//     their grid axis's stream, fenced by events; the early ones started
//     after their producer, CudaLanes.cpp for the lanes); dp buckets are
//     launched where the backward pass completes them.
//  4. @optimizer_step (CudaProgram.cpp): the dp reduction left to do, the
//     squared gradient norm on the device, one multi-tensor AdamW launch
//     (groups are a per-tensor weight-decay flag), the distributed
//     optimizer's gather.
//
//===----------------------------------------------------------------------===//
#include "CudaEmitter.h"

#include "mtc/Transforms/Lowering.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;

namespace mtc::codegen {

bool storedF32(Value v) { return lowering::storedF32(v); }
bool isIntegerTensor(Value v) {
  auto t = dyn_cast<RankedTensorType>(v.getType());
  return t && t.getElementType().isInteger();
}

namespace {
/// Product of the leading `d` dimensions.
int64_t outerOf(ArrayRef<int64_t> shape, int64_t d) {
  int64_t outer = 1;
  for (int64_t i = 0; i < d; ++i)
    outer *= shape[i];
  return outer;
}

} // namespace

CudaEmitter::CudaEmitter(ModuleOp module)
    : module(module), layout(module), grid(mtc::getGridShape(module)) {
  if (auto cfg = module->getAttrOfType<DictionaryAttr>("mtc.training"))
    if (auto n = cfg.getAs<IntegerAttr>("num_microbatches"))
      numMicrobatches = n.getInt();
  backwardLanes = module->hasAttr(kTpBackwardLanesAttr);
}

std::string CudaEmitter::gradOffset(StringRef param) const {
  auto it = gatheredChunk.find(param);
  if (it == gatheredChunk.end())
    return std::to_string(layout.offset(param));
  // This rank's rows of a gathered gradient (gather along dim 0).
  return llvm::formatv("{0} + st.comm->index(2) * {1}", layout.offset(param),
                       it->second)
      .str();
}

std::string CudaEmitter::grad(StringRef param) const {
  return "(G + " + gradOffset(param) + ")";
}

std::string CudaEmitter::buf(Value v) {
  if (auto p = v.getDefiningOp<mtc::ParamOp>())
    return llvm::formatv("(PB + {0})", layout.offset(p.getName())).str();
  auto it = names.find(v);
  if (it != names.end())
    return it->second;
  const char *view = isIntegerTensor(v) ? "I" : storedF32(v) ? "F" : "B";
  return llvm::formatv("{0}({1})", view, plan.offset.lookup(v)).str();
}

// The set_current_op line that names `op` (and its location) before its
// kernels.
std::string CudaEmitter::opLabel(Operation *op, StringRef suffix) {
  return llvm::formatv("k::set_current_op(\"{0} {1}{2}\");",
                       op->getName().getStringRef(),
                       escape(locString(op->getLoc())), suffix)
      .str();
}

// A matmul's bias argument: its own, or, for a row-parallel GEMM whose bias
// add follows the all-reduce, the bias on the tp axis's rank 0 only.
std::string CudaEmitter::matmulBias(mtc::MatmulOp m) {
  if (auto rz = rankZeroBias.find(m); rz != rankZeroBias.end())
    return llvm::formatv("(st.comm->index({0}) == 0 ? {1} : nullptr)",
                         rz->second.axis, buf(rz->second.bias));
  return m.getBias() ? buf(m.getBias()) : "nullptr";
}

// The all-reduces of `producer`'s result that start early (see
// analyzeFusions), on axis stream order: the whole value after the compute
// stream's work (lane < 0), or lane `lane`'s half after that lane's work,
// each half with its own slot event.
void CudaEmitter::emitReduceStarts(Operation *producer, int lane) {
  auto early = earlyReduces.find(producer);
  if (early == earlyReduces.end())
    return;
  const bool lanes = lane >= 0;
  for (Operation *r : early->second) {
    auto ar = cast<shard::AllReduceOp>(r);
    int axis = ar.getGridAxes()[0], slot = reduceSlot.lookup(r);
    const char *dtype = storedF32(ar.getResult()) ? "mtc::rt::DType::f32"
                                                  : "mtc::rt::DType::bf16";
    line(opLabel(r, " (started)"));
    std::string stream =
        !lanes ? ""
               : llvm::formatv(", {0}.stream", lane == 0 ? "ctx" : lane1Ctx)
                     .str();
    line(llvm::formatv("axis_begin(pc, {0}{1});", axis, stream));
    // The value's part this call reduces: the whole, or the lane's half.
    auto part = [&](Value v) { return lanes ? half(v, lane) : buf(v); };
    std::string data = part(ar.getResult());
    int64_t n = numel(ar.getResult()) / (lanes ? 2 : 1);
    if (auto nr = normReduce.find(r); nr != normReduce.end()) {
      emitNormReduce(nr->second, part, data, n);
    } else if (auto rr = residualReduce.find(r); rr != residualReduce.end()) {
      line(llvm::formatv("tp_all_reduce_add(pc, st, {0}, {1}, {2}, {3});",
                         data, part(rr->second.residual),
                         part(rr->second.out), n));
    } else if (axis == 2 && !storedF32(ar.getResult())) {
      line(llvm::formatv("tp_all_reduce(pc, st, {0}, {1});", data, n));
    } else {
      line(llvm::formatv("axis_comm(st, {0}).all_reduce({1}, {2}, {3}, "
                         "mtc::rt::ReduceOp::sum, pc.axis_stream[{0}]);",
                         axis, data, n, dtype));
    }
    line(llvm::formatv("axis_mark(pc, {0}, {1}{2});", axis,
                       lanes ? 2 * slot + lane : slot, stream));
  }
}

namespace {
/// `base` offset by the element e0 of a half-rows lambda (tp_all_reduce_*).
std::string atE0(StringRef base) { return ("(" + base + " + e0)").str(); }
} // namespace

// The all-reduce of a norm's input gradient that runs the norm's backward
// on its half of the rows (reduce_norm_backward), on the tp stream's context.
void CudaEmitter::emitNormReduce(
    const NormReduce &nr, llvm::function_ref<std::string(Value)> part,
    StringRef data, int64_t n) {
  Operation *norm = nr.norm;
  Value x = norm->getOperand(0), gamma = norm->getOperand(1);
  int64_t d = shapeOf(x).back();
  auto partial = [](int64_t slot) {
    return slot < 0 ? std::string("nullptr")
                    : llvm::formatv("(pc.tp_partial + {0})", slot).str();
  };
  std::string call;
  if (auto ln = dyn_cast<mtc::LayerNormGradOp>(norm))
    call = llvm::formatv(
        "k::layer_norm_backward_add(*pc.ctx_tp, {0}, {1}, {2}, {3}, {4}, "
        "{5}, {6}, ne / {7}, {7}, {8}f);",
        atE0(part(x)), buf(gamma), atE0(data), atE0(part(nr.residual)),
        atE0(part(nr.out)), partial(nr.gammaSlot), partial(nr.betaSlot), d,
        fmt(ln.getEps().convertToDouble()));
  else
    call = llvm::formatv(
        "k::rms_norm_backward_add(*pc.ctx_tp, {0}, {1}, {2}, {3}, {4}, {5}, "
        "ne / {6}, {6}, {7}f);",
        atE0(part(x)), buf(gamma), atE0(data), atE0(part(nr.residual)),
        atE0(part(nr.out)), partial(nr.gammaSlot), d,
        fmt(cast<mtc::RmsNormGradOp>(norm).getEps().convertToDouble()));
  line(opLabel(norm, " (half the rows, in the all-reduce)"));
  line(llvm::formatv("tp_all_reduce_then(pc, st, {0}, {1}, {2}, [&](int64_t "
                     "e0, int64_t ne) {{",
                     data, part(nr.out), n));
  line("  " + call);
  if (nr.bias)
    line(llvm::formatv("  k::reduce_rows_accumulate("
                       "*pc.ctx_tp, {0}, (pc.tp_partial + {1}), ne / {2}, {2});",
                       atE0(part(nr.out)), nr.biasSlot, d));
  line("});");
}

// On the step's last microbatch: the norms' dgamma/dbeta partial sums over
// half the rows (reduce_norm_backward), summed over tp and added to their
// gradients; then the partial buffer is cleared for the next step.
void CudaEmitter::emitTpPartialFlush() {
  // One launch adds every row to its own gradient (mtc-place-collectives keeps
  // them distinct); the table of destinations goes to the GPU at the first
  // step (tp_partial_flush).
  line("if (last_microbatch) {");
  line("  const int64_t dst[] = {");
  for (size_t i = 0; i < tpPartialRows.size(); i += 8) {
    std::string row = "     ";
    for (size_t j = i; j < std::min(i + 8, tpPartialRows.size()); ++j)
      row += " " + gradOffset(tpPartialRows[j]) + ",";
    line(row);
  }
  line("  };");
  line(llvm::formatv("  tp_partial_flush(pc, st, dst, {0}, {1});",
                     tpPartialRows.size(), tpPartialWidth));
  line("}");
}

// Steps 1 and 2 for `fn`: the decisions read, the buffers planned. Values
// already named (a pipeline piece's arguments and the results it writes
// straight into its caller's buffers, microbatch views) take no storage.
void CudaEmitter::planFunction(func::FuncOp fn, bool eval) {
  analyzeGradientSinks(fn);
  analyzeFusions(fn);
  buckets.clear();
  bucketsAfter.clear();
  if (!eval)
    readBuckets(fn);
  analyzeLanes(fn);
  if (kind == Kind::Step)
    planTransfers(fn);
  plan = mtc::planBuffers(
      fn,
      [&](Value v) -> int64_t {
        auto t = dyn_cast<RankedTensorType>(v.getType());
        if (!t || v.getDefiningOp<mtc::ParamOp>() || sink.count(v) ||
            unmaterialized.count(v) || names.count(v) ||
            v.getDefiningOp<mtc::MicrobatchOp>())
          return 0;
        if (auto c = v.getDefiningOp<arith::ConstantOp>())
          if (noOps.count(c))
            return 0;
        // In 2-byte units: bf16 1, fp32 and int32 (MoE indices) 2.
        return t.getNumElements() *
               (storedF32(v) || isIntegerTensor(v) ? 2 : 1);
      },
      /*align=*/64, hints);
}

LogicalResult CudaEmitter::emitFunction(func::FuncOp fn, bool eval) {
  names.clear();
  kind = Kind::Plain;
  planFunction(fn, eval);
  arena = std::max(arena, plan.size);

  os << "float " << fn.getSymName()
     << "(HostState& st, const int32_t* tokens, const int32_t* targets) {\n";
  names[fn.getArgument(0)] = "tokens";
  names[fn.getArgument(1)] = "targets";
  emitPrologue("reinterpret_cast<char*>(st.arena)");
  if (!eval && (bucketed || !gradCollectivesAfter.empty() || !normReduce.empty()))
    line(llvm::formatv("const bool last_microbatch = st.microbatch == {0};  "
                       "(void)last_microbatch;",
                       numMicrobatches - 1));
  return emitBody(fn, eval);
}

// The pointers every function's body uses: the arena (`arenaBase`, a char*
// expression), the compute copy of the parameters, the gradients.
void CudaEmitter::emitPrologue(StringRef arenaBase) {
  line("auto& pc = program_context(st);");
  line("k::Context& ctx = pc.ctx;");
  line("char* A = " + arenaBase + ";");
  line("const bf16* PB = static_cast<const bf16*>(st.compute_params);");
  line("float* G = st.grads;");
  line("auto B = [A](int64_t u) { return reinterpret_cast<bf16*>(A + 2 * u); "
       "};");
  line("auto F = [A](int64_t u) { return reinterpret_cast<float*>(A + 2 * u); "
       "};");
  line("auto I = [A](int64_t u) { return reinterpret_cast<int32_t*>(A + 2 * "
       "u); };");
  line("(void)PB; (void)G; (void)B; (void)F; (void)I;");
}

// Step 3 for `fn`'s ops, and the closing brace.
LogicalResult CudaEmitter::emitBody(func::FuncOp fn, bool eval) {
  if (!laneOps.empty())
    line("k::Context& ctx1 = pc.ctx1;  // lane 1 (half "
         "the batch)");
  // Runs of ops in two half-batch lanes (CudaLanes.cpp, emitLaneRun): a
  // forward run forks lane 1's stream before its first op and joins it
  // after its last; a backward run stays on the compute stream.
  llvm::DenseMap<Operation *, bool> runFirst; // -> one stream
  llvm::DenseSet<Operation *> runLast;
  for (const LaneRun &r : laneRuns) {
    runFirst[r.first] = r.oneStream;
    runLast.insert(r.last);
  }
  Block &block = fn.getBody().front();
  for (auto it = block.begin(); it != block.end(); ++it) {
    if (auto first = runFirst.find(&*it); first != runFirst.end()) {
      // A run of lane ops: the ops in it that are neither lane ops nor
      // work done whole between them (parameters, index arithmetic, ops
      // fused into others) come first, then the lanes.
      const bool oneStream = first->second;
      SmallVector<Operation *> run;
      for (;; ++it) {
        Operation *op = &*it;
        if (laneOps.count(op) || laneWholeOps.count(op)) {
          run.push_back(op);
        } else {
          if (failed(emitOp(op, eval)))
            return failure();
          emitAfterGradient(op, eval);
        }
        if (runLast.count(op))
          break;
      }
      if (failed(emitLaneRun(run, oneStream, eval)))
        return failure();
      continue;
    }
    if (isa<func::ReturnOp>(*it) && !normReduce.empty())
      emitTpPartialFlush();
    if (failed(emitOp(&*it, eval)))
      return failure();
    emitAfterGradient(&*it, eval);
  }
  os << "}\n\n";
  return success();
}

// A collective on `axis`'s stream: it starts after the compute stream's
// work so far, and the compute stream waits for it to end (axis_begin,
// axis_join in the generated code). AXIS_STREAM in `call` names the stream.
// Every collective of an axis runs on that axis's stream, in program
// order, so each communicator is used from one stream only.
void CudaEmitter::axisCall(int axis, const std::string &call,
                           StringRef guard) {
  std::string stream = llvm::formatv("pc.axis_stream[{0}]", axis).str();
  std::string c = call;
  for (size_t at; (at = c.find("AXIS_STREAM")) != std::string::npos;)
    c.replace(at, 11, stream);
  std::string indent = guard.empty() ? "" : "  ";
  if (!guard.empty())
    line("if (" + guard + ") {");
  line(indent + llvm::formatv("axis_begin(pc, {0});", axis).str());
  line(indent + c);
  line(indent + llvm::formatv("axis_join(pc, {0});", axis).str());
  if (!guard.empty())
    line("}");
}

// After an op: the tensor-parallel all-reduces of its result that start
// early (see analyzeFusions), then, after a parameter's last
// accumulate_grad on the step's last microbatch, its gradient collective
// over tp and the dp buckets it completes.
void CudaEmitter::emitAfterGradient(Operation *op, bool eval) {
  emitReduceStarts(op, /*lane=*/-1);
  auto gc = gradCollectivesAfter.find(op);
  if (gc != gradCollectivesAfter.end())
    for (const GradCollective &g : gc->second) {
      line(llvm::formatv("k::set_current_op(\"{0} of the gradient of {1} "
                         "(sequence parallelism)\");",
                         g.gather ? "shard.all_gather" : "shard.all_reduce",
                         g.param));
      if (g.gather)
        axisCall(g.axis,
                 llvm::formatv("axis_comm(st, {0}).all_gather({1}, G + {2}, "
                               "{3}, mtc::rt::DType::f32, AXIS_STREAM);",
                               g.axis, grad(g.param), layout.offset(g.param),
                               g.chunk),
                 "last_microbatch");
      else
        axisCall(
            g.axis,
            llvm::formatv(
                "axis_comm(st, {0}).all_reduce({1}, {2}, mtc::rt::DType::f32, "
                "mtc::rt::ReduceOp::sum, AXIS_STREAM);",
                g.axis, grad(g.param),
                layout.slots.lookup(g.param).op.getType().getNumElements()),
            "last_microbatch");
    }
  if (eval)
    return;
  auto bk = bucketsAfter.find(op);
  if (bk != bucketsAfter.end())
    for (int b : bk->second)
      line(llvm::formatv("if (last_microbatch) launch_grad_bucket(pc, st, "
                         "{0}, {1}, {2});  // dp all-reduce, bucket {0}",
                         b, buckets[b].begin, buckets[b].size));
}

LogicalResult CudaEmitter::emitOp(Operation *op, bool eval) {
  if (noOps.count(op) || isa<mtc::ParamOp>(op))
    return success();
  if (isIndexOp(op))
    return nameIndexOp(op, names, [&](Value v) { return buf(v); });
  if (auto m = dyn_cast<mtc::MicrobatchOp>(op)) {
    // A view of the step's (M, B, S) tokens or targets.
    names[m] = llvm::formatv("({0} + {1})", buf(m.getBatch()),
                             m.getIndex() * numel(m))
                   .str();
    return success();
  }
  if (!isa<func::ReturnOp>(op))
    line(opLabel(op));
  // The op's kernel-table row (KernelOpInterface), after the Context.
  auto shared = [&]() -> LogicalResult {
    line(formatCall(*kernelCall(op, [&](Value v) { return buf(v); }), "ctx"));
    return success();
  };
  auto sinkOf = [&](Value v) -> std::string {
    auto it = sink.find(v);
    return it == sink.end() ? std::string() : grad(it->second);
  };
  // A weight gradient computed in fp32 by accumulation (a norm's, an MoE
  // layer's grouped weight or bias gradient): into its parameter's
  // gradient (a sink), or into its own fp32 storage, zeroed first (a
  // zero-bubble pipeline's backward piece, an unsunk expert gradient).
  auto fp32GradTarget = [&](Value v) -> std::string {
    std::string g = sinkOf(v);
    if (!g.empty() || v.use_empty() || !storedF32(v))
      return g;
    line(llvm::formatv("MTC_CUDA_CHECK(cudaMemsetAsync({0}, 0, {1}, "
                       "ctx.stream));",
                       buf(v), numel(v) * 4));
    return buf(v);
  };

  return llvm::TypeSwitch<Operation *, LogicalResult>(op)
      .Case([&](arith::ConstantOp c) -> LogicalResult {
        auto dense = dyn_cast<DenseFPElementsAttr>(c.getValue());
        if (!dense || !dense.isSplat())
          return op->emitOpError("CUDA target supports only splat float "
                                 "constants");
        line(llvm::formatv(
            "k::fill(ctx, {0}, {1}f, {2});", buf(c),
            fmt(dense.getSplatValue<APFloat>().convertToDouble()), numel(c)));
        return success();
      })
      .Case([&](mtc::EmbeddingOp e) -> LogicalResult {
        auto t = shapeOf(e.getTable());
        if (Value start = e.getVocabStart()) {
          // This rank's rows of the vocabulary; the sum over tp follows.
          line(llvm::formatv(
              "k::embedding_forward_shard(ctx, {0}, {1}, {2}, {3}, {4}, {5}, "
              "{6}, {7});",
              buf(e.getTokens()), buf(e.getTable()), buf(e),
              numel(e.getTokens()), t[0], t[1], buf(start), t[0] * grid.tp));
          return success();
        }
        line(llvm::formatv(
            "k::embedding_forward(ctx, {0}, {1}, nullptr, {2}, {3}, {4}, {5}, "
            "{6});",
            buf(e.getTokens()), buf(e.getTable()), buf(e), numel(e.getTokens()),
            t[0], t[1], shapeOf(e.getTokens()).back()));
        return success();
      })
      .Case([&](mtc::EmbeddingGradOp e) -> LogicalResult {
        std::string g = sinkOf(e);
        if (g.empty())
          return op->emitOpError("CUDA target: an embedding gradient must "
                                 "flow into mtc.accumulate_grad");
        auto t = shapeOf(e);
        if (Value start = e.getVocabStart()) {
          line(llvm::formatv("k::embedding_backward_shard(ctx, {0}, {1}, {2}, "
                             "{3}, {4}, {5}, {6});",
                             buf(e.getTokens()), buf(e.getDout()), g,
                             numel(e.getTokens()), t[0], t[1], buf(start)));
          return success();
        }
        line(llvm::formatv(
            "k::embedding_backward(ctx, {0}, {1}, {2}, {3}, {4}, {5});",
            buf(e.getTokens()), buf(e.getDout()), g, numel(e.getTokens()),
            t[0], t[1]));
        return success();
      })
      .Case([&](mtc::AddOp a) -> LogicalResult {
        if (sink.count(a))
          return success(); // both operands already accumulated
        if (auto partner = fusedPartner.lookup(op)) {
          auto e = cast<mtc::EmbeddingOp>(partner);
          auto t = shapeOf(e.getTable());
          line(llvm::formatv(
              "k::embedding_forward(ctx, {0}, {1}, {2}, {3}, {4}, {5}, {6}, "
              "{7});",
              buf(e.getTokens()), buf(e.getTable()), buf(a.getRhs()), buf(a),
              numel(e.getTokens()), t[0], t[1], shapeOf(e.getTokens()).back()));
          return success();
        }
        line(llvm::formatv("k::add(ctx, {0}, {1}, {2}, {3}, {4});",
                           buf(a.getLhs()), buf(a.getRhs()), buf(a), numel(a),
                           numel(a.getRhs())));
        return success();
      })
      .Case([&](mtc::ReduceLeadingOp r) -> LogicalResult {
        std::string g = sinkOf(r);
        if (g.empty())
          return op->emitOpError("CUDA target: a reduction must be a "
                                 "parameter gradient (bias, position table)");
        line(llvm::formatv("k::reduce_rows_accumulate(ctx, {0}, {1}, {2}, {3});",
                           buf(r.getInput()), g,
                           numel(r.getInput()) / numel(r), numel(r)));
        return success();
      })
      .Case([&](mtc::GeluOp g) -> LogicalResult {
        if (auto partner = fusedPartner.lookup(op)) {
          auto m = cast<mtc::MatmulOp>(partner);
          line(llvm::formatv(
              "k::matmul_gelu(ctx, {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, "
              "false, {8});",
              buf(m.getLhs()), buf(m.getRhs()),
              matmulBias(m), buf(g), buf(m),
              m.getM(), m.getN(), m.getK(), m.getTransposeB()));
          return success();
        }
        return shared();
      })
      .Case([&](mtc::DropoutOp d) -> LogicalResult {
        double p = eval ? 0.0 : d.getP().convertToDouble();
        if (auto slice = d->getAttrOfType<DictionaryAttr>("mtc.slice_of")) {
          // This rank's part of the global tensor (dropout_slice).
          int64_t dim = slice.getAs<IntegerAttr>("dim").getInt();
          int64_t outer = outerOf(shapeOf(d), dim);
          line(llvm::formatv(
              "k::dropout_slice(ctx, {0}, {1}, {2}, {3}, {4}, "
              "st.comm->index({5}), {6}f, st.seed, "
              "mtc::rt::dropout_site_key({7}, st.step, st.global_microbatch));",
              buf(d.getInput()), buf(d), outer, numel(d) / outer,
              slice.getAs<IntegerAttr>("parts").getInt(),
              slice.getAs<IntegerAttr>("axis").getInt(), fmt(p), d.getKey()));
          return success();
        }
        line(llvm::formatv("k::dropout(ctx, {0}, {1}, {2}, {3}f, st.seed, "
                           "mtc::rt::dropout_site_key({4}, st.step, st.global_microbatch), 0);",
                           buf(d.getInput()), buf(d), numel(d), fmt(p),
                           d.getKey()));
        return success();
      })
      .Case([&](mtc::MatmulOp m) -> LogicalResult {
        if (storedF32(m)) {
          // An fp32 result (an MoE router's logits): fp32 output, no bias.
          if (m.getBias())
            return op->emitOpError("CUDA target: a matmul with an fp32 "
                                   "result takes no bias");
          line(llvm::formatv("k::matmul_f32(ctx, {0}, {1}, {2}, nullptr, {3}, "
                             "{4}, {5}, {6}, {7}, false);",
                             buf(m.getLhs()), buf(m.getRhs()), buf(m),
                             m.getM(), m.getN(), m.getK(), m.getTransposeA(),
                             m.getTransposeB()));
          return success();
        }
        if (std::string g = sinkOf(m); !g.empty()) {
          line(llvm::formatv("k::matmul_f32(ctx, {0}, {1}, {2}, nullptr, {3}, "
                             "{4}, {5}, true, {6}, true);",
                             buf(m.getLhs()), buf(m.getRhs()), g, m.getM(),
                             m.getN(), m.getK(), m.getTransposeB()));
          return success();
        }
        line(llvm::formatv(
            "k::matmul(ctx, {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8});",
            buf(m.getLhs()), buf(m.getRhs()), matmulBias(m), buf(m), m.getM(),
            m.getN(), m.getK(), m.getTransposeA(), m.getTransposeB()));
        return success();
      })
      .Case([&](mtc::LayerNormGradOp n) -> LogicalResult {
        std::string dg = fp32GradTarget(n.getDgamma());
        std::string db = fp32GradTarget(n.getDbeta());
        if (dg.empty() || (db.empty() && !n.getDbeta().use_empty()))
          return op->emitOpError("CUDA target: norm weight gradients must "
                                 "flow into mtc.accumulate_grad");
        line(llvm::formatv(
            "k::layer_norm_backward(ctx, {0}, {1}, {2}, {3}, {4}, {5}, {6}, "
            "{7}, {8}f{9});",
            buf(n.getInput()), buf(n.getGamma()), buf(n.getDout()),
            buf(n.getDinput()), dg, db.empty() ? "nullptr" : db,
            rows(n.getInput()), shapeOf(n.getInput()).back(),
            fmt(n.getEps().convertToDouble()),
            normIntoResidual.count(op) ? ", true" : ""));
        return success();
      })
      .Case([&](mtc::RmsNormGradOp n) -> LogicalResult {
        std::string dg = fp32GradTarget(n.getDgamma());
        if (dg.empty())
          return op->emitOpError("CUDA target: norm weight gradients must "
                                 "flow into mtc.accumulate_grad");
        line(llvm::formatv(
            "k::rms_norm_backward(ctx, {0}, {1}, {2}, {3}, {4}, {5}, {6}, "
            "{7}f{8});",
            buf(n.getInput()), buf(n.getGamma()), buf(n.getDout()),
            buf(n.getDinput()), dg, rows(n.getInput()),
            shapeOf(n.getInput()).back(), fmt(n.getEps().convertToDouble()),
            normIntoResidual.count(op) ? ", true" : ""));
        return success();
      })
      .Case([&](mtc::AttentionOp a) -> LogicalResult {
        if (a.getHeadDim() != 64 && a.getHeadDim() != 128)
          return op->emitOpError("CUDA target: the attention kernels take "
                                 "head_dim 64 or 128, this model has ")
                 << a.getHeadDim() << " (hidden_size / num_heads)";
        return shared();
      })
      .Case([&](mtc::CrossEntropyOp c) -> LogicalResult {
        std::string dlogits = "nullptr";
        double dloss = 1.0;
        if (auto partner = fusedPartner.lookup(op)) {
          auto ceg = cast<mtc::CrossEntropyGradOp>(partner);
          auto cst = ceg.getDloss().getDefiningOp<arith::ConstantOp>();
          auto dense = dyn_cast<DenseFPElementsAttr>(cst.getValue());
          if (!dense || !dense.isSplat())
            return op->emitOpError("CUDA target: the loss gradient seed must "
                                   "be a splat constant");
          dloss = dense.getSplatValue<APFloat>().convertToDouble();
          dlogits = buf(ceg.getResult());
        }
        if (Value start = c.getVocabStart()) {
          // The softmax completed over tp: every rank's (max, sum, target
          // logit) per row, gathered, then the loss and gradient.
          int64_t t = numel(c.getTargets());
          int axis = *c.getGridAxis();
          ceRows = std::max(ceRows, t);
          line(llvm::formatv("k::vp_cross_entropy_stats(ctx, {0}, {1}, "
                             "pc.ce_stats, {2}, {3}, {4}, {5}, {6});",
                             buf(c.getLogits()), buf(c.getTargets()), t,
                             shapeOf(c.getLogits()).back(), buf(start),
                             c.getNumValidClasses(),
                             int64_t(c.getIgnoreIndex())));
          axisCall(axis, llvm::formatv("axis_comm(st, {0}).all_gather("
                                       "pc.ce_stats, pc.ce_all_stats, {1}, "
                                       "mtc::rt::DType::f32, AXIS_STREAM);",
                                       axis, 3 * t));
          line(llvm::formatv(
              "k::vp_cross_entropy_finish(ctx, {0}, {1}, pc.ce_all_stats, {2}, "
              "{3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}f);",
              buf(c.getLogits()), buf(c.getTargets()), grid.size(axis), buf(c),
              dlogits, t, shapeOf(c.getLogits()).back(), buf(start),
              c.getNumValidClasses(), int64_t(c.getIgnoreIndex()), fmt(dloss)));
          return success();
        }
        line(llvm::formatv("k::cross_entropy(ctx, {0}, {1}, {2}, {3}, {4}, "
                           "{5}, {6}, {7}, {8}f);",
                           buf(c.getLogits()), buf(c.getTargets()), buf(c),
                           dlogits, numel(c.getTargets()),
                           shapeOf(c.getLogits()).back(),
                           c.getNumValidClasses(),
                           int64_t(c.getIgnoreIndex()), fmt(dloss)));
        return success();
      })
      .Case([&](mtc::CrossEntropyGradOp g) -> LogicalResult {
        auto cst = g.getDloss().getDefiningOp<arith::ConstantOp>();
        auto dense =
            cst ? dyn_cast<DenseFPElementsAttr>(cst.getValue()) : nullptr;
        if (kind != Kind::Piece || !dense || !dense.isSplat())
          return op->emitOpError("CUDA target: cross_entropy_grad must follow "
                                 "its cross_entropy with a constant seed (it "
                                 "is fused into it)");
        // A pipeline's backward piece: the softmax again from the saved
        // logits, the loss into a scratch float.
        double dloss = dense.getSplatValue<APFloat>().convertToDouble();
        int64_t t = numel(g.getTargets()), v = shapeOf(g.getLogits()).back();
        if (Value start = g.getVocabStart()) {
          int axis = *g.getGridAxis();
          ceRows = std::max(ceRows, t);
          line(llvm::formatv("k::vp_cross_entropy_stats(ctx, {0}, {1}, "
                             "pc.ce_stats, {2}, {3}, {4}, {5}, {6});",
                             buf(g.getLogits()), buf(g.getTargets()), t, v,
                             buf(start), g.getNumValidClasses(),
                             int64_t(g.getIgnoreIndex())));
          axisCall(axis, llvm::formatv("axis_comm(st, {0}).all_gather("
                                       "pc.ce_stats, pc.ce_all_stats, {1}, "
                                       "mtc::rt::DType::f32, AXIS_STREAM);",
                                       axis, 3 * t));
          line(llvm::formatv(
              "k::vp_cross_entropy_finish(ctx, {0}, {1}, pc.ce_all_stats, {2}, "
              "pc.loss_scratch, {3}, {4}, {5}, {6}, {7}, {8}, {9}f);",
              buf(g.getLogits()), buf(g.getTargets()), grid.size(axis),
              buf(g.getResult()), t, v, buf(start), g.getNumValidClasses(),
              int64_t(g.getIgnoreIndex()), fmt(dloss)));
          return success();
        }
        line(llvm::formatv("k::cross_entropy(ctx, {0}, {1}, pc.loss_scratch, "
                           "{2}, {3}, {4}, {5}, {6}, {7}f);",
                           buf(g.getLogits()), buf(g.getTargets()),
                           buf(g.getResult()), t, v,
                           g.getNumValidClasses(),
                           int64_t(g.getIgnoreIndex()), fmt(dloss)));
        return success();
      })
      .Case<mtc::GroupedMatmulWgradOp, mtc::GroupedBiasGradOp>(
          [&](Operation *) -> LogicalResult {
            // Expert weight and bias gradients accumulate into fp32.
            Value r = op->getResult(0);
            std::string g = fp32GradTarget(r);
            if (g.empty())
              return op->emitOpError("CUDA target: an expert gradient must "
                                     "sink or be stored in fp32");
            line(formatCall(
                *kernelCall(op, [&](Value v) { return v == r ? g : buf(v); }),
                "ctx"));
            return success();
          })
      .Case([&](mtc::AccumulateGradOp a) -> LogicalResult {
        if (sink.count(a.getGrad()))
          return success();
        line(llvm::formatv("k::accumulate(ctx, {0}, {1}, {2});",
                           grad(a.getParam()), buf(a.getGrad()),
                           numel(a.getGrad())));
        return success();
      })
      .Case([&](func::ReturnOp r) -> LogicalResult {
        if (kind != Kind::Plain)
          return emitPipelineReturn(r);
        if (bucketed && !eval)
          line("if (last_microbatch) finish_grad_buckets(pc);");
        line(llvm::formatv("return finish_loss(st, {0});",
                           buf(r.getOperand(0))));
        return success();
      })
      .Case<func::CallOp, mtc::P2POp, mtc::PipelineLossOp>(
          [&](Operation *) { return emitPipelineOp(op); })
      .Case<shard::AllReduceOp, shard::AllGatherOp, shard::AllSliceOp,
            shard::ReduceScatterOp>(
          [&](Operation *) { return emitCollective(op); })
      .Default([&](Operation *other) -> LogicalResult {
        if (isa<mtc::KernelOpInterface>(other))
          return shared();
        return other->emitOpError("has no lowering to the CUDA target");
      });
}

// Tensor-parallel collectives on activations, stream-ordered on the compute
// stream through the axis's NCCL communicator. NCCL gathers and scatters
// along the leading dimension: along another one the data goes through the
// context's scratch in (parts, outer, chunk) order (permute_parts).
LogicalResult CudaEmitter::emitCollective(Operation *op) {
  Value in = op->getOperand(0), out = op->getResult(0);
  if (sink.count(out))
    return success(); // a gradient collective, run on the accumulated buffer
  ArrayRef<int16_t> axes;
  if (auto a = dyn_cast<shard::AllReduceOp>(op)) {
    if (a.getReduction() != shard::ReductionKind::Sum)
      return op->emitOpError("CUDA target: only sum reductions");
    axes = a.getGridAxes();
  } else if (auto g = dyn_cast<shard::AllGatherOp>(op)) {
    axes = g.getGridAxes();
  } else if (auto sl = dyn_cast<shard::AllSliceOp>(op)) {
    axes = sl.getGridAxes();
  } else {
    auto rs = cast<shard::ReduceScatterOp>(op);
    if (rs.getReduction() != shard::ReductionKind::Sum)
      return op->emitOpError("CUDA target: only sum reductions");
    axes = rs.getGridAxes();
  }
  if (axes.size() != 1)
    return op->emitOpError("CUDA target: a collective over one grid axis");
  int axis = axes[0];
  int64_t parts = grid.size(axis);
  bool f32 = storedF32(out);
  const char *dt = f32 ? "mtc::rt::DType::f32" : "mtc::rt::DType::bf16";
  int64_t esize = f32 ? 4 : 2;
  auto needBf16 = [&]() -> LogicalResult {
    if (f32)
      return op->emitOpError("CUDA target: fp32 values are gathered and "
                             "scattered along the leading dimension only");
    return success();
  };

  if (isa<shard::AllReduceOp>(op)) {
    auto slot = reduceSlot.find(op);
    if (slot != reduceSlot.end()) {
      // Started right after its input was computed: wait for it here.
      line(llvm::formatv("axis_wait(pc, {0}, {1});", axis, slot->second));
      return success();
    }
    if (!inPlaceReduce.count(op))
      line(llvm::formatv("MTC_CUDA_CHECK(cudaMemcpyAsync({0}, {1}, {2}, "
                         "cudaMemcpyDeviceToDevice, ctx.stream));",
                         buf(out), buf(in), numel(out) * esize));
    axisCall(axis, llvm::formatv("axis_comm(st, {0}).all_reduce({1}, {2}, "
                                 "{3}, mtc::rt::ReduceOp::sum, AXIS_STREAM);",
                                 axis, buf(out), numel(out), dt));
    return success();
  }
  if (auto g = dyn_cast<shard::AllGatherOp>(op)) {
    int64_t outer = outerOf(shapeOf(in), g.getGatherAxis().getSExtValue());
    int64_t n = numel(in);
    if (outer == 1) {
      axisCall(axis, llvm::formatv("axis_comm(st, {0}).all_gather({1}, {2}, "
                                   "{3}, {4}, AXIS_STREAM);",
                                   axis, buf(in), buf(out), n, dt));
      return success();
    }
    if (failed(needBf16()))
      return failure();
    tpScratch = std::max(tpScratch, numel(out));
    // (parts, outer, chunk) in the scratch, then (outer, parts, chunk).
    axisCall(axis, llvm::formatv("axis_comm(st, {0}).all_gather({1}, "
                                 "pc.tp_scratch, {2}, {3}, AXIS_STREAM);",
                                 axis, buf(in), n, dt));
    line(llvm::formatv("k::permute_parts(ctx, pc.tp_scratch, {0}, {1}, {2}, "
                       "{3}, false);",
                       buf(out), outer, parts, n / outer));
    return success();
  }
  if (auto sl = dyn_cast<shard::AllSliceOp>(op)) {
    int64_t outer = outerOf(shapeOf(out), sl.getSliceAxis().getSExtValue());
    int64_t chunk = numel(out) / outer;
    // out (outer, chunk) = in (outer, parts, chunk)[:, index, :].
    line(llvm::formatv("MTC_CUDA_CHECK(cudaMemcpy2DAsync({0}, {1}, {2} + "
                       "st.comm->index({3}) * {4}, {5}, {1}, {6}, "
                       "cudaMemcpyDeviceToDevice, ctx.stream));",
                       buf(out), chunk * esize, buf(in), axis, chunk,
                       parts * chunk * esize, outer));
    return success();
  }
  auto rs = cast<shard::ReduceScatterOp>(op);
  int64_t outer = outerOf(shapeOf(out), rs.getScatterAxis().getSExtValue());
  int64_t n = numel(out);
  if (outer == 1) {
    axisCall(axis, llvm::formatv("axis_comm(st, {0}).reduce_scatter({1}, {2}, "
                                 "{3}, {4}, mtc::rt::ReduceOp::sum, "
                                 "AXIS_STREAM);",
                                 axis, buf(in), buf(out), n, dt));
    return success();
  }
  if (failed(needBf16()))
    return failure();
  tpScratch = std::max(tpScratch, numel(in));
  line(llvm::formatv("k::permute_parts(ctx, {0}, pc.tp_scratch, {1}, {2}, "
                     "{3}, true);  // (parts, outer, chunk)",
                     buf(in), outer, parts, n / outer));
  axisCall(axis, llvm::formatv("axis_comm(st, {0}).reduce_scatter("
                               "pc.tp_scratch, {1}, {2}, {3}, "
                               "mtc::rt::ReduceOp::sum, AXIS_STREAM);",
                               axis, buf(out), n, dt));
  return success();
}

} // namespace mtc::codegen
