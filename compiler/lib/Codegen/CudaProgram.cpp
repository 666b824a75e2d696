//===- CudaProgram.cpp - the CUDA program around its functions ------------===//
//
// The optimizer step and the program's frame (see CudaEmitter.h):
//
//  - @optimizer_step: the gradient reduction over dp that is left to do
//    (none when the backward pass all-reduced the buckets; a
//    reduce-scatter for the distributed optimizer), the squared gradient
//    norm on the device (split tensor-parallel parameters summed over tp,
//    replicated ones counted once; a sharded optimizer sums its shard and
//    then over dp), one multi-tensor AdamW launch over the parameters this
//    rank updates (groups are a per-tensor weight-decay flag; the
//    distributed optimizer keeps moments for its shard only), and for the
//    distributed optimizer the all-gather of the updated parameters.
//    Nothing synchronizes the host but the final copy of the norm.
//  - The ProgramContext the generated functions share: the kernel Context,
//    the optimizer's plans (built at the first step, when the rank's shard
//    is known), one stream per grid axis with the events that order its
//    collectives against the compute stream, and the buffers of the
//    tensor-parallel collectives.
//
//===----------------------------------------------------------------------===//
#include "CudaEmitter.h"

#include "mtc/Transforms/Lowering.h"
#include "mtc/Transforms/Pipeline.h"
#include "llvm/ADT/StringSet.h"

using namespace mlir;

namespace mtc::codegen {

LogicalResult CudaEmitter::emitOptimizer(func::FuncOp fn) {
  SmallVector<mtc::AdamWOp> groups;
  fn.walk([&](mtc::AdamWOp a) { groups.push_back(a); });
  mtc::GradNormOp norm;
  fn.walk([&](mtc::GradNormOp g) { norm = g; });
  if (groups.empty() || !norm)
    return fn.emitError("@optimizer_step must hold mtc.grad_norm and "
                        "mtc.adamw");
  mtc::AdamWOp first = groups.front();
  double decay = 0;
  for (mtc::AdamWOp g : groups) {
    double wd = g.getWeightDecay().convertToDouble();
    auto same = [](FloatAttr a, FloatAttr b) { return a == b; };
    if (!same(g.getBeta1Attr(), first.getBeta1Attr()) ||
        !same(g.getBeta2Attr(), first.getBeta2Attr()) ||
        !same(g.getEpsAttr(), first.getEpsAttr()) ||
        !same(g.getMaxGradNormAttr(), first.getMaxGradNormAttr()) ||
        !same(g.getGradScaleAttr(), first.getGradScaleAttr()))
      return g.emitOpError("CUDA target: parameter groups may differ only in "
                           "weight decay (one multi-tensor launch)");
    if (wd > 0 && decay > 0 && wd != decay)
      return g.emitOpError("CUDA target: one non-zero weight decay for all "
                           "decaying groups");
    if (wd > 0)
      decay = wd;
  }
  double gradScale = norm.getGradScale().convertToDouble();
  llvm::StringSet<> split;
  if (auto attr = norm->getAttrOfType<ArrayAttr>("tp_split_params"))
    for (Attribute a : attr)
      split.insert(cast<StringAttr>(a).getValue());
  bool sharded = layout.shardElements > 0;
  // Pipeline: the norm summed over the pipeline ranks, a tied copy counted
  // on one of them only.
  const bool ppSum = norm->hasAttr(mtc::kPpSumAttr);
  llvm::StringSet<> skip;
  if (auto a = norm->getAttrOfType<ArrayAttr>(mtc::kPpSkipParamsAttr))
    for (Attribute n : a)
      skip.insert(cast<StringAttr>(n).getValue());
  const std::string rows = "kParamRows" + rowsSuffix;

  os << "double " << fn.getSymName()
     << "(HostState& st, float lr, int64_t step) {\n";
  line("auto& pc = program_context(st);");
  line("k::Context& ctx = pc.ctx;");
  // This rank's part of the flat buffer: a shard, or all of it.
  if (sharded)
    line(llvm::formatv("const int64_t lo = st.comm->index({0}) * {1}, hi = lo "
                       "+ {1};",
                       layout.shardAxis, layout.shardElements));
  else
    line(llvm::formatv("const int64_t lo = 0, hi = {0};", layout.totalElements));
  line(llvm::formatv("if (!pc.adamw) build_optimizer_plans(pc, {1}, "
                     "kNumParamRows{2}, lo, hi, {0});",
                     sharded ? "true" : "false", rows, rowsSuffix));
  // Pipeline: a parameter several pipeline ranks hold (the tied word
  // embedding) has its gradients summed over them first; a rank without it
  // adds zeros.
  for (auto t : fn.getOps<mtc::SumTiedGradientsOp>()) {
    line(llvm::formatv("k::set_current_op(\"mtc.sum_tied_gradients {0}\");",
                       t.getParam()));
    std::string data = "pc.pp_zeros";
    if (layout.slots.count(t.getParam())) {
      data = "(st.grads + " + gradOffset(t.getParam()) + ")";
    } else {
      ppZeroElements = std::max<int64_t>(ppZeroElements, t.getElements());
      line(llvm::formatv("MTC_CUDA_CHECK(cudaMemsetAsync(pc.pp_zeros, 0, {0} "
                         "* sizeof(float), ctx.stream));",
                         t.getElements()));
    }
    axisCall(0, llvm::formatv("axis_comm(st, 0).all_reduce({0}, {1}, "
                              "mtc::rt::DType::f32, mtc::rt::ReduceOp::sum, "
                              "AXIS_STREAM);",
                              data, t.getElements()));
  }
  // The 1/dp of the mean folds into the gradient scale, so the norm and
  // AdamW see the global batch's gradient without another pass.
  for (auto r : fn.getOps<mtc::ReduceGradientsOp>()) {
    if (r.getGridAxes().size() != 1)
      return r.emitOpError("CUDA target: a gradient reduction over one grid "
                           "axis");
    int axis = r.getGridAxes()[0];
    gradScale /= double(grid.size(axis));
    if (r.getShardOptimizerState()) {
      line("k::set_current_op(\"mtc.reduce_gradients (reduce_scatter over "
           "dp)\");");
      axisCall(axis, llvm::formatv("axis_comm(st, {0}).reduce_scatter("
                                   "st.grads, st.grads + lo, {1}, "
                                   "mtc::rt::DType::f32, "
                                   "mtc::rt::ReduceOp::sum, AXIS_STREAM);",
                                   axis, layout.shardElements));
    } else if (bucketed) {
      line("// mtc.reduce_gradients: the backward pass of the last "
           "microbatch all-reduced the gradient buckets over dp.");
    } else {
      line("k::set_current_op(\"mtc.reduce_gradients (all_reduce over "
           "dp)\");");
      axisCall(axis, llvm::formatv("axis_comm(st, {0}).all_reduce(st.grads, "
                                   "{1}, mtc::rt::DType::f32, "
                                   "mtc::rt::ReduceOp::sum, AXIS_STREAM);",
                                   axis, layout.totalElements));
    }
  }
  line("k::set_current_op(\"mtc.grad_norm\");");
  if (split.empty() && !sharded && !ppSum) {
    // Padding between parameters is never written, so it stays zero.
    line(llvm::formatv("k::sum_squares(ctx, st.grads, {0}, pc.grad_sumsq, "
                       "false);",
                       layout.totalElements));
  } else {
    line("k::sum_squares(ctx, *pc.sq_split, st.grads, pc.grad_sumsq, false);");
    if (!split.empty())
      axisCall(2, "axis_comm(st, 2).all_reduce(pc.grad_sumsq, 1, "
                  "mtc::rt::DType::f64, mtc::rt::ReduceOp::sum, AXIS_STREAM);");
    line("k::sum_squares(ctx, *pc.sq_whole, st.grads, pc.grad_sumsq, true);");
    if (sharded)
      axisCall(layout.shardAxis,
               llvm::formatv("axis_comm(st, {0}).all_reduce(pc.grad_sumsq, 1, "
                             "mtc::rt::DType::f64, mtc::rt::ReduceOp::sum, "
                             "AXIS_STREAM);",
                             layout.shardAxis));
    if (ppSum)
      axisCall(0, "axis_comm(st, 0).all_reduce(pc.grad_sumsq, 1, "
                  "mtc::rt::DType::f64, mtc::rt::ReduceOp::sum, AXIS_STREAM);");
  }
  line("k::set_current_op(\"mtc.adamw\");");
  line("k::AdamWHyper h;");
  line("h.lr = lr;");
  line(llvm::formatv("h.beta1 = {0}f;", fmt(first.getBeta1().convertToDouble())));
  line(llvm::formatv("h.beta2 = {0}f;", fmt(first.getBeta2().convertToDouble())));
  line(llvm::formatv("h.eps = {0}f;", fmt(first.getEps().convertToDouble())));
  line(llvm::formatv("h.weight_decay = {0}f;", fmt(decay)));
  line("h.step = step;");
  line(llvm::formatv("h.grad_scale = {0}f;", fmt(gradScale)));
  line(llvm::formatv("h.max_grad_norm = {0}f;",
                     fmt(first.getMaxGradNorm().convertToDouble())));
  // The distributed optimizer writes the bf16 copy after the gather.
  line(llvm::formatv("k::adamw(ctx, *pc.adamw, st.params, st.grads, "
                     "st.exp_avg, st.exp_avg_sq, {0}, h, pc.grad_sumsq);",
                     sharded ? "nullptr"
                             : "static_cast<bf16*>(st.compute_params)"));
  for (auto g : fn.getOps<mtc::AllGatherParamsOp>()) {
    line("k::set_current_op(\"mtc.all_gather_params\");");
    axisCall(g.getGridAxes()[0],
             llvm::formatv("axis_comm(st, {0}).all_gather(st.params + lo, "
                           "st.params, {1}, mtc::rt::DType::f32, AXIS_STREAM);",
                           g.getGridAxes()[0], layout.shardElements));
    line(llvm::formatv("k::convert(ctx, st.params, "
                       "static_cast<bf16*>(st.compute_params), {0});",
                       layout.totalElements));
  }
  line("double sumsq = 0;");
  line("MTC_CUDA_CHECK(cudaMemcpyAsync(&sumsq, pc.grad_sumsq, sizeof(double), "
       "cudaMemcpyDeviceToHost, ctx.stream));");
  line("ctx.synchronize(/*end_of_step=*/true);");
  line(llvm::formatv("return std::sqrt(sumsq) * {0};", fmt(gradScale)));
  os << "}\n\n";

  // The parameter table: where each tensor is, whether it decays, whether
  // it is split over tp (its squared norm is then summed over tp).
  llvm::StringMap<bool> decays;
  for (mtc::AdamWOp g : groups)
    for (Attribute n : g.getParams()) {
      StringRef name = cast<StringAttr>(n).getValue();
      if (!layout.slots.count(name))
        return g.emitOpError("updates unknown parameter '") << name << "'";
      decays[name] = g.getWeightDecay().convertToDouble() > 0;
    }
  os << "// offset, numel, weight decay, split over tp"
     << (skip.empty() ? "" : "[, counted in the norm]") << "\n"
     << "const k::ParamRow " << rows << "[] = {\n";
  for (const std::string &name : layout.order) {
    if (!decays.count(name))
      continue; // not trained
    ParamSlot slot = layout.slots.lookup(name);
    os << llvm::formatv("    {{{0}, {1}, {2}, {3}{5}},  // {4}\n", slot.offset,
                        slot.op.getType().getNumElements(),
                        decays.lookup(name) ? "true" : "false",
                        split.count(name) ? "true" : "false", name,
                        skip.contains(name) ? ", false" : "");
  }
  os << "};\n";
  if (pipeline)
    os << "const size_t kNumParamRows" << rowsSuffix << " = sizeof(" << rows
       << ") / sizeof(" << rows << "[0]);\n";
  os << "\n";
  return success();
}

// The ProgramConfig of this program's runtime ProgramContext
// (mtc/rt/cuda_program.h): sizes from the ops, choices from the module's
// compile options.
std::string CudaEmitter::emitConfig() const {
  std::string s;
  llvm::raw_string_ostream o(s);
  auto option = [&](StringRef attr, StringRef value) {
    auto a = module->getAttrOfType<StringAttr>(attr);
    return a && a.getValue() == value;
  };
  o << "// What this program needs of the runtime's ProgramContext.\n"
    << "k::ProgramConfig program_config() {\n"
    << "  k::ProgramConfig c;\n"
    << llvm::formatv("  c.grid[0] = {0};  // pp\n  c.grid[1] = {1};  // dp\n"
                     "  c.grid[2] = {2};  // tp\n",
                     grid.pp, grid.dp, grid.tp)
    << llvm::formatv("  c.dp_buckets = {0};\n", buckets.size())
    << llvm::formatv("  c.tp_slots = {0};\n", (usesLanes ? 2 : 1) * numReduceSlots)
    << llvm::formatv("  c.lanes = {0};\n", usesLanes ? "true" : "false")
    << llvm::formatv("  c.lanes_two_streams = {0};  // --tp-lanes\n",
                     option(kTpLanesAttr, "one-stream") ? "false" : "true")
    << llvm::formatv("  c.tp_copy_engines = {0};  // --tp-allreduce\n",
                     option(kTpAllReduceAttr, "nccl") ? "false" : "true")
    << llvm::formatv("  c.tp_context = {0};\n", usesTpContext ? "true" : "false")
    << llvm::formatv("  c.tp_scratch = {0};\n", tpScratch)
    << llvm::formatv("  c.tp_partial = {0};\n", tpPartialElements)
    << llvm::formatv("  c.ce_rows = {0};\n", ceRows)
    << llvm::formatv("  c.arena_bytes = {0};\n", arena * 2)
    << llvm::formatv("  c.peer_max_elements = {0};\n", peerMaxElements);
  if (pipeline)
    o << llvm::formatv("  c.pp_slots = {0};\n", numP2PSlots)
      << llvm::formatv("  c.pipeline_microbatches = {0};\n", numMicrobatches)
      << llvm::formatv("  c.pp_zeros = {0};\n", ppZeroElements);
  o << "  return c;\n}\n\n";
  return s;
}

// The program's includes, its ProgramConfig and context functions:
// `declarations` of the parameter tables, `syncParams` the expression of
// how many parameters this rank holds.
std::string CudaEmitter::sourceHeader(StringRef declarations,
                                      StringRef syncParams) const {
  auto name = module->getAttrOfType<StringAttr>("mtc.model");
  std::string src;
  llvm::raw_string_ostream s(src);
  s << "// Generated by mtc from model '" << escape(name ? name.str() : "")
    << "' for the CUDA target (bf16 compute, fp32 master weights).\n"
    << "// Do not edit: recompile the spec. Each kernel call is preceded by\n"
    << "// the IR op and location it lowers.\n"
    << "#include <algorithm>\n#include <cmath>\n#include <cstdint>\n#include <cstdio>\n"
    << "#include <cstdlib>\n#include <limits>\n#include <memory>\n"
    << "#include <string>\n#include <utility>\n#include <vector>\n\n"
    << "#include \"mtc/rt/comm.h\"\n"
    << "#include \"mtc/rt/cuda_backend.h\"\n"
    << "#include \"mtc/rt/cuda_kernels.h\"\n"
    << "#include \"mtc/rt/cuda_program.h\"\n"
    << "#include \"mtc/rt/cuda_tp_kernels.h\"\n"
    << "#include \"mtc/rt/dropout_hash.h\"\n"
    << "#include \"mtc/rt/program.h\"\n"
    << (mtc::isPipelineModule(module) ? "#include \"mtc/rt/trace.h\"\n" : "")
    << "\n"
    << "namespace {\nusing mtc::rt::HostState;\nnamespace k = "
       "mtc::rt::cuda;\nusing k::bf16;\n"
    << "using namespace mtc::rt::cuda;  // the program helpers "
       "(mtc/rt/cuda_program.h)\n\n"
    << declarations
    << emitConfig()
    << "void* create_context() { return new k::ProgramContext(program_config()); "
       "}\n"
    << "void destroy_context(void* c) { delete static_cast<k::ProgramContext*>(c); "
       "}\n"
    << "void sync_compute_params(HostState& st) {\n"
    << "  k::sync_compute_params(st, " << syncParams << ");\n}\n\n";
  return src;
}

LogicalResult CudaEmitter::run(mtc::EmitResult &out) {
  if (mtc::isPipelineModule(module))
    return runPipeline(out);
  FailureOr<TrainingFunctions> fns = getTrainingFunctions(module);
  if (failed(fns))
    return failure();
  // The lowering passes' decisions are the emitter's input.
  WalkResult lowered = fns->train.walk([](Operation *op) {
    if (isa<mtc::ParamOp>(op) || !op->hasAttr(lowering::kStorage))
      for (Type t : op->getResultTypes())
        if (auto r = dyn_cast<RankedTensorType>(t);
            r && isa<FloatType>(r.getElementType()) && !isa<mtc::ParamOp>(op))
          return op->emitOpError("has no mtc.storage: the CUDA code "
                                 "generator reads the decisions of the "
                                 "lowering passes (run mtc-cuda-lowering "
                                 "first)"),
                 WalkResult::interrupt();
    return WalkResult::advance();
  });
  if (lowered.wasInterrupted())
    return failure();
  // Buckets when dp reduces the whole gradient (not a sharded optimizer).
  // The gradient is all-reduced over dp during the backward pass when
  // mtc-plan-buckets planned buckets.
  bucketed = false;
  fns->train.walk(
      [&](Operation *op) { bucketed |= op->hasAttr(lowering::kDpBuckets); });
  if (failed(emitFunction(fns->forward, /*eval=*/true)) ||
      failed(emitFunction(fns->train, /*eval=*/false)))
    return failure();
  std::string funcs = std::move(body);
  body.clear();
  if (failed(emitOptimizer(fns->optimizer)))
    return failure();
  std::string optimizer = std::move(body);

  std::string src = sourceHeader(
      "extern const k::ParamRow kParamRows[];\n"
      "extern const size_t kNumParamRows;\n\n",
      std::to_string(layout.totalElements));
  llvm::raw_string_ostream s(src);
  s << funcs << optimizer
    << "const size_t kNumParamRows = sizeof(kParamRows) / "
       "sizeof(kParamRows[0]);\n\n"
    << "}  // namespace\n\n";
  ProgramDescExtras extras;
  extras.target = "cuda";
  extras.arenaWords = (arena + 1) / 2;
  extras.computeParamBytes = layout.totalElements * 2;
  extras.extraLines = "  p.backend = &mtc::rt::cuda::cuda_backend();\n"
                      "  p.create_context = &create_context;\n"
                      "  p.destroy_context = &destroy_context;\n"
                      "  p.sync_compute_params = &sync_compute_params;\n";
  if (bucketed)
    extras.extraLines += "  p.grads_summed_in_backward = true;\n";
  s << emitProgramDesc(module, layout, extras);
  out.source = std::move(src);
  out.arenaElements = arena;
  return success();
}

} // namespace mtc::codegen

LogicalResult mtc::emitCudaProgram(ModuleOp module, EmitResult &out) {
  return mtc::codegen::CudaEmitter(module).run(out);
}
