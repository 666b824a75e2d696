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

  os << "double optimizer_step(HostState& st, float lr, int64_t step) {\n";
  line("auto& pc = program_context(st);");
  line("k::Context& ctx = pc.ctx;");
  // This rank's part of the flat buffer: a shard, or all of it.
  if (sharded)
    line(llvm::formatv("const int64_t lo = st.comm->index({0}) * {1}, hi = lo "
                       "+ {1};",
                       layout.shardAxis, layout.shardElements));
  else
    line(llvm::formatv("const int64_t lo = 0, hi = {0};", layout.totalElements));
  line("if (!pc.adamw) build_optimizer_plans(pc, lo, hi);");
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
  if (split.empty() && !sharded) {
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
  os << "// offset, numel, weight decay, split over tp\n"
     << "const ParamRow kParamRows[] = {\n";
  for (const std::string &name : layout.order) {
    if (!decays.count(name))
      continue; // not trained
    ParamSlot slot = layout.slots.lookup(name);
    os << llvm::formatv("    {{{0}, {1}, {2}, {3}},  // {4}\n", slot.offset,
                        slot.op.getType().getNumElements(),
                        decays.lookup(name) ? "true" : "false",
                        split.count(name) ? "true" : "false", name);
  }
  os << "};\n\n";
  return success();
}

// What the generated functions share; sizes from the ops (CudaEmitter.h).
std::string CudaEmitter::emitContext() const {
  std::string s;
  llvm::raw_string_ostream o(s);
  // The forward pass's half-batch lanes (CudaLanes.cpp): lane 1's context
  // and the events that fork and join it.
  const char *lanesMembers =
      usesLanes
          ? "  // Tensor parallelism: the forward pass runs in two lanes of "
            "half the\n"
            "  // batch, lane 1 on ctx1's stream (MTC_TP_LANES=0: both on the "
            "compute\n"
            "  // stream, staggered).\n"
            "  k::Context ctx1;\n"
            "  bool lanes = true;\n"
            "  cudaEvent_t lane_fork_ev = nullptr, lane_join_ev = nullptr;\n"
          : "";
  const char *lanesInit =
      usesLanes
          ? "    lanes = tp_lanes_enabled();\n"
            "    MTC_CUDA_CHECK(cudaEventCreateWithFlags(&lane_fork_ev, "
            "cudaEventDisableTiming));\n"
            "    MTC_CUDA_CHECK(cudaEventCreateWithFlags(&lane_join_ev, "
            "cudaEventDisableTiming));\n"
          : "";
  const char *lanesFree = usesLanes ? "    cudaEventDestroy(lane_fork_ev);\n"
                                      "    cudaEventDestroy(lane_join_ev);\n"
                                    : "";
  o << "struct ParamRow {\n"
    << "  int64_t offset, numel;\n"
    << "  bool decay, split;\n"
    << "};\n"
    << "extern const ParamRow kParamRows[];\n"
    << "extern const size_t kNumParamRows;\n\n"
    << "// One GPU per rank: LOCAL_RANK (set by mtc-launch, torchrun, Slurm)\n"
    << "// picks it among the visible devices.\n"
    << "int local_device() {\n"
    << "  int count = 0;\n"
    << "  MTC_CUDA_CHECK(cudaGetDeviceCount(&count));\n"
    << "  const char* local = std::getenv(\"LOCAL_RANK\");\n"
    << "  return local && count > 0 ? std::atoi(local) % count : 0;\n}\n\n"
    << "// The measurement knobs: a fast path turned off (NAME=0), a count of\n"
    << "// SMs (0 when unset).\n"
    << "bool env_off(const char* name) {\n"
    << "  const char* v = std::getenv(name);\n"
    << "  return v && std::string(v) == \"0\";\n"
    << "}\n\n"
    << "int env_count(const char* name) {\n"
    << "  const char* v = std::getenv(name);\n"
    << "  if (!v || !*v) return 0;\n"
    << "  char* end = nullptr;\n"
    << "  long n = std::strtol(v, &end, 10);\n"
    << "  if (*end != '\\0' || n < 0 || n > 1024) {\n"
    << "    std::fprintf(stderr, \"error: %s=%s: expected a count of SMs "
       "(0..1024)\\n\", name, v);\n"
    << "    std::exit(2);\n"
    << "  }\n"
    << "  return static_cast<int>(n);\n"
    << "}\n\n"
    << (usesLanes
            ? "// The half-batch lanes' stream priorities: lane 0 (the compute "
              "stream)\n"
              "// just below the collectives' streams, lane 1 below it, so "
              "that lane 0\n"
              "// runs ahead and lane 1 fills the GPU while lane 0 waits for "
              "its\n"
              "// all-reduces (MTC_TP_LANES=0: the default priority).\n"
              "bool tp_lanes_enabled() { return !env_off(\"MTC_TP_LANES\"); }\n\n"
              "int lane_priority(int lane) {\n"
              "  if (!tp_lanes_enabled()) return 0;\n"
              "  int least = 0, greatest = 0;\n"
              "  MTC_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, "
              "&greatest));\n"
              "  return lane == 0 ? std::min(greatest + 1, least) : least;\n"
              "}\n\n"
            : "")
    << "// What the program keeps on the device besides HostState.\n"
    << "struct ProgramContext {\n"
    << "  k::Context ctx;\n"
    << lanesMembers
    << "  // Built at the first optimizer step, over [lo, hi) of the flat\n"
    << "  // buffer (this rank's shard with the distributed optimizer).\n"
    << "  std::unique_ptr<k::AdamWPlan> adamw;\n"
    << "  std::unique_ptr<k::SumSquaresPlan> sq_split, sq_whole;\n"
    << "  double* grad_sumsq = nullptr;  // (1) device\n"
    << "  float* loss_host = nullptr;    // (1) pinned\n"
    << "  // Collectives run on one stream per grid axis (high priority),\n"
    << "  // ordered against the compute stream by events: fork[a] (the\n"
    << "  // compute stream's work so far), joined[a] (the axis stream's), and\n"
    << "  // slot events of the tp all-reduces started early and of the dp\n"
    << "  // gradient buckets. MTC_GRAD_OVERLAP=0 holds the buckets until the\n"
    << "  // backward pass ends, MTC_TP_OVERLAP=0 waits for every tp\n"
    << "  // all-reduce at once (to measure what overlap hides).\n"
    << "  cudaStream_t axis_stream[3] = {nullptr, nullptr, nullptr};\n"
    << "  cudaEvent_t fork[3] = {nullptr, nullptr, nullptr};\n"
    << "  cudaEvent_t joined[3] = {nullptr, nullptr, nullptr};\n"
    << "  std::vector<cudaEvent_t> slots[3];\n"
    << "  bool overlap = true, tp_overlap = true;\n"
    << "  // SMs the compute stream's GEMMs leave to NCCL while a tp all-reduce\n"
    << "  // started early is in flight (MTC_TP_SM_MARGIN), and that both\n"
    << "  // lanes' GEMMs leave (MTC_LANES_SM_MARGIN); k::Context::sm_margin.\n"
    << "  int tp_sm_margin = 0, lanes_sm_margin = 0, tp_in_flight = 0;\n"
    << "  bool in_lanes = false;\n"
    << "  // tp = 2: the tp all-reduces started early move through the copy\n"
    << "  // engines (k::PeerAllReduce, set up at the first one; null: NCCL,\n"
    << "  // or MTC_TP_PEER=0).\n"
    << "  std::unique_ptr<k::PeerAllReduce> peer;\n"
    << "  bool peer_decided = false;\n"
    << "  std::vector<int64_t> held;  // (bucket, begin, size) when not "
       "overlapping\n"
    << "  // Tensor parallelism.\n"
    << "  bf16* tp_scratch = nullptr;     // (" << tpScratch << ")\n"
    << "  // Norm weight and row-parallel bias gradients summed over half the\n"
    << "  // rows inside a tp all-reduce, (" << tpPartialElements
    << ") fp32, summed over tp at the step's end.\n"
    << "  float* tp_partial = nullptr;\n"
    << "  int64_t* tp_partial_dst = nullptr;  // each row's offset in grads\n"
    << "  // MTC_TP_BIAS_HALF=0: those bias gradients over all rows instead.\n"
    << "  bool tp_bias_half = true;\n"
    << "  // The tp axis's stream's context, for kernels run inside its\n"
    << "  // collectives (null when none do).\n"
    << "  std::unique_ptr<k::Context> ctx_tp;\n"
    << "  float* ce_stats = nullptr;      // (" << ceRows << ", 3)\n"
    << "  float* ce_all_stats = nullptr;  // (tp, " << ceRows << ", 3)\n"
    << "  ProgramContext() : ctx(local_device()"
    << (usesLanes ? ", 32u << 20, lane_priority(0)), ctx1(local_device(), "
                    "32u << 20, lane_priority(1))"
                  : ")")
    << " {\n"
    << "    MTC_CUDA_CHECK(cudaMalloc(&grad_sumsq, sizeof(double)));\n"
    << "    MTC_CUDA_CHECK(cudaMallocHost(&loss_host, sizeof(float)));\n"
    << "    overlap = !env_off(\"MTC_GRAD_OVERLAP\");\n"
    << "    tp_overlap = !env_off(\"MTC_TP_OVERLAP\");\n"
    << "    tp_sm_margin = env_count(\"MTC_TP_SM_MARGIN\");\n"
    << "    tp_bias_half = !env_off(\"MTC_TP_BIAS_HALF\");\n"
    << "    lanes_sm_margin = env_count(\"MTC_LANES_SM_MARGIN\");\n"
    << lanesInit
    << "    int least = 0, greatest = 0;\n"
    << "    MTC_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, "
       "&greatest));\n"
    << "    const int64_t sizes[3] = {" << grid.pp << ", " << grid.dp << ", "
    << grid.tp << "};\n"
    << "    const size_t num_slots[3] = {0, " << buckets.size() << ", "
    << (usesLanes ? 2 : 1) * numReduceSlots << "};\n"
    << (usesTpContext
            ? "    ctx_tp = std::make_unique<k::Context>(local_device(), 1u << 20, "
              "greatest);\n"
            : "")
    << "    for (int a = 0; a < 3; ++a) {\n"
    << "      if (sizes[a] == 1) continue;\n"
    << "      if (a == 2 && ctx_tp)\n"
    << "        axis_stream[a] = ctx_tp->stream;\n"
    << "      else\n"
    << "        MTC_CUDA_CHECK(cudaStreamCreateWithPriority(&axis_stream[a], "
       "cudaStreamNonBlocking, greatest));\n"
    << "      MTC_CUDA_CHECK(cudaEventCreateWithFlags(&fork[a], "
       "cudaEventDisableTiming));\n"
    << "      MTC_CUDA_CHECK(cudaEventCreateWithFlags(&joined[a], "
       "cudaEventDisableTiming));\n"
    << "      slots[a].resize(num_slots[a]);\n"
    << "      for (cudaEvent_t& e : slots[a])\n"
    << "        MTC_CUDA_CHECK(cudaEventCreateWithFlags(&e, "
       "cudaEventDisableTiming));\n"
    << "    }\n";
  if (tpScratch > 0)
    o << "    MTC_CUDA_CHECK(cudaMalloc(&tp_scratch, " << tpScratch * 2
      << "));\n";
  if (tpPartialElements > 0)
    o << "    MTC_CUDA_CHECK(cudaMalloc(&tp_partial, " << tpPartialElements * 4
      << "));\n"
      << "    MTC_CUDA_CHECK(cudaMemset(tp_partial, 0, " << tpPartialElements * 4
      << "));\n";
  if (ceRows > 0)
    o << "    MTC_CUDA_CHECK(cudaMalloc(&ce_stats, " << ceRows * 12 << "));\n"
      << "    MTC_CUDA_CHECK(cudaMalloc(&ce_all_stats, " << ceRows * 12 * grid.tp
      << "));\n";
  o << "  }\n"
    << "  ~ProgramContext() {\n"
    << lanesFree
    << "    cudaFree(grad_sumsq);\n"
    << "    cudaFreeHost(loss_host);\n"
    << "    if (ctx_tp) axis_stream[2] = nullptr;  // ctx_tp's\n"
    << "    for (int a = 0; a < 3; ++a) {\n"
    << "      for (cudaEvent_t e : slots[a]) cudaEventDestroy(e);\n"
    << "      if (fork[a]) cudaEventDestroy(fork[a]);\n"
    << "      if (joined[a]) cudaEventDestroy(joined[a]);\n"
    << "      if (axis_stream[a]) cudaStreamDestroy(axis_stream[a]);\n"
    << "    }\n"
    << "    cudaFree(tp_scratch);\n"
    << "    cudaFree(tp_partial);\n"
    << "    cudaFree(tp_partial_dst);\n"
    << "    cudaFree(ce_stats);\n"
    << "    cudaFree(ce_all_stats);\n"
    << "  }\n};\n\n"
    << "ProgramContext& program_context(HostState& st) {\n"
    << "  return *static_cast<ProgramContext*>(st.context);\n}\n\n"
    << "// The communicator of a grid axis on device memory (NCCL).\n"
    << "mtc::rt::Communicator& axis_comm(HostState& st, int axis) {\n"
    << "  mtc::rt::Communicator* c = st.comm ? st.comm->program_comm(axis) : "
       "nullptr;\n"
    << "  if (c == nullptr)\n"
    << "    throw mtc::rt::Error(\"grid axis \" + std::to_string(axis) + \" "
       "has no device communicator (the program needs NCCL and its ranks \"\n"
    << "                         \"started by mtc-launch or torchrun)\");\n"
    << "  return *c;\n}\n\n"
    << "// The optimizer's tables over [lo, hi) of the flat buffer: AdamW\n"
    << "// tensors (moments indexed from lo when sharded) and the squared-norm\n"
    << "// ranges, split over tp or not.\n"
    << "void build_optimizer_plans(ProgramContext& pc, int64_t lo, int64_t hi) "
       "{\n"
    << "  const bool sharded = " << (layout.shardElements > 0 ? "true" : "false")
    << ";\n"
    << "  std::vector<k::AdamWTensor> tensors;\n"
    << "  std::vector<std::pair<int64_t, int64_t>> split, whole;\n"
    << "  for (size_t i = 0; i < kNumParamRows; ++i) {\n"
    << "    const ParamRow& r = kParamRows[i];\n"
    << "    const int64_t a = std::max(r.offset, lo), b = std::min(r.offset + "
       "r.numel, hi);\n"
    << "    if (a >= b) continue;\n"
    << "    k::AdamWTensor t;\n"
    << "    t.offset = a;\n"
    << "    t.numel = b - a;\n"
    << "    t.weight_decay = r.decay;\n"
    << "    t.state_offset = sharded ? a - lo : -1;\n"
    << "    tensors.push_back(t);\n"
    << "    (r.split ? split : whole).emplace_back(a, b - a);\n"
    << "  }\n"
    << "  pc.adamw = std::make_unique<k::AdamWPlan>(pc.ctx, tensors);\n"
    << "  pc.sq_split = std::make_unique<k::SumSquaresPlan>(pc.ctx, split);\n"
    << "  pc.sq_whole = std::make_unique<k::SumSquaresPlan>(pc.ctx, whole);\n"
    << "}\n\n"
    << "// Stream s's work so far (default: the compute stream's) happens\n"
    << "// before what is enqueued next on axis a's stream.\n"
    << "void axis_begin(ProgramContext& pc, int a, cudaStream_t s = nullptr) "
       "{\n"
    << "  MTC_CUDA_CHECK(cudaEventRecord(pc.fork[a], s ? s : pc.ctx.stream));\n"
    << "  MTC_CUDA_CHECK(cudaStreamWaitEvent(pc.axis_stream[a], pc.fork[a], "
       "0));\n"
    << "}\n\n"
    << "// The compute stream waits for everything enqueued on axis a's "
       "stream.\n"
    << "void axis_join(ProgramContext& pc, int a) {\n"
    << "  MTC_CUDA_CHECK(cudaEventRecord(pc.joined[a], pc.axis_stream[a]));\n"
    << "  MTC_CUDA_CHECK(cudaStreamWaitEvent(pc.ctx.stream, pc.joined[a], "
       "0));\n"
    << "}\n\n"
    << "// The GEMMs' SM margins (k::Context::sm_margin): the lanes' while\n"
    << "// they run, the compute stream's larger one while an all-reduce it\n"
    << "// started is in flight.\n"
    << "void update_sm_margin(ProgramContext& pc) {\n"
    << "  const int lanes = pc.in_lanes ? pc.lanes_sm_margin : 0;\n"
    << "  pc.ctx.sm_margin = std::max(lanes, pc.tp_in_flight > 0 ? "
       "pc.tp_sm_margin : 0);\n"
    << (usesLanes ? "  pc.ctx1.sm_margin = lanes;\n" : "")
    << "}\n\n"
    << "// Slot event `slot` marks axis a's stream so far; axis_wait makes\n"
    << "// stream s (default: the compute stream) wait for it later.\n"
    << "// (A tp all-reduce marked from the compute stream is in flight from\n"
    << "// its mark to its wait: the compute stream's GEMMs meanwhile leave\n"
    << "// pc.tp_sm_margin SMs to it.)\n"
    << "void axis_wait(ProgramContext& pc, int a, int slot, cudaStream_t s = "
       "nullptr) {\n"
    << "  MTC_CUDA_CHECK(cudaStreamWaitEvent(s ? s : pc.ctx.stream, "
       "pc.slots[a][slot], 0));\n"
    << "  if (a == 2 && (!s || s == pc.ctx.stream) && pc.tp_in_flight > 0) {\n"
    << "    --pc.tp_in_flight;\n"
    << "    update_sm_margin(pc);\n"
    << "  }\n"
    << "}\n\n"
    << "void axis_mark(ProgramContext& pc, int a, int slot, cudaStream_t s = "
       "nullptr) {\n"
    << "  MTC_CUDA_CHECK(cudaEventRecord(pc.slots[a][slot], "
       "pc.axis_stream[a]));\n"
    << "  if (a == 2 && !pc.tp_overlap) {\n"
    << "    axis_wait(pc, a, slot, s);\n"
    << "  } else if (a == 2 && (!s || s == pc.ctx.stream) && pc.tp_sm_margin > 0) {\n"
    << "    ++pc.tp_in_flight;\n"
    << "    update_sm_margin(pc);\n"
    << "  }\n"
    << "}\n\n";
  o << "// tp = 2: the tp all-reduces started early go through the copy\n"
    << "// engines when the two GPUs can map each other's memory (both ranks\n"
    << "// decide together at the first call), else, or with MTC_TP_PEER=0,\n"
    << "// NCCL (null).\n"
    << "k::PeerAllReduce* tp_peer(ProgramContext& pc, HostState& st) {\n"
    << "  if (!pc.peer_decided) {\n"
    << "    pc.peer_decided = true;\n"
    << "    mtc::rt::Communicator& comm = axis_comm(st, 2);\n"
    << "    if (!env_off(\"MTC_TP_PEER\") && comm.size() == 2) {\n"
    << "      std::string why;\n"
    << "      pc.peer = k::PeerAllReduce::create(comm, pc.ctx.device, st.arena, "
    << arena * 2 << ", " << peerMaxElements << ", pc.axis_stream[2], &why);\n"
    << "      if (comm.rank() == 0 && pc.peer)\n"
    << "        std::fprintf(stderr, \"note: tp all-reduces through the copy "
       "engines (MTC_TP_PEER=0: NCCL)\\n\");\n"
    << "      else if (comm.rank() == 0)\n"
    << "        std::fprintf(stderr, \"note: tp all-reduces on NCCL: %s\\n\", "
       "why.c_str());\n"
    << "    }\n"
    << "  }\n"
    << "  return pc.peer.get();\n"
    << "}\n\n"
    << "// A tp all-reduce (sum) of bf16 started early, on the tp stream.\n"
    << "void tp_all_reduce(ProgramContext& pc, HostState& st, bf16* data, "
       "int64_t n) {\n"
    << "  k::PeerAllReduce* peer = tp_peer(pc, st);\n"
    << "  if (peer && peer->covers(data, n))\n"
    << "    peer->all_reduce(data, n, pc.axis_stream[2]);\n"
    << "  else\n"
    << "    axis_comm(st, 2).all_reduce(data, n, mtc::rt::DType::bf16, "
       "mtc::rt::ReduceOp::sum, pc.axis_stream[2]);\n"
    << "}\n\n"
    << "// A tp all-reduce whose sum only feeds row-wise work: this rank's half\n"
    << "// of the rows is summed, then(begin, count) reads it and writes that\n"
    << "// part of out, and out's halves are exchanged (a reduce-scatter, the\n"
    << "// work, an all-gather; on NCCL the same three).\n"
    << "void tp_all_reduce_then(ProgramContext& pc, HostState& st, bf16* data, "
       "bf16* out, int64_t n, const k::PeerAllReduce::HalfWork& then) {\n"
    << "  k::PeerAllReduce* peer = tp_peer(pc, st);\n"
    << "  if (peer && peer->covers(data, n) && peer->covers(out, n)) {\n"
    << "    peer->all_reduce_then(data, out, n, pc.axis_stream[2], then);\n"
    << "    return;\n"
    << "  }\n"
    << "  mtc::rt::Communicator& comm = axis_comm(st, 2);\n"
    << "  const int64_t h = n / 2, begin = comm.rank() == 0 ? 0 : h;\n"
    << "  comm.reduce_scatter(data, data + begin, h, mtc::rt::DType::bf16, "
       "mtc::rt::ReduceOp::sum, pc.axis_stream[2]);\n"
    << "  then(begin, h);\n"
    << "  comm.all_gather(out + begin, out, h, mtc::rt::DType::bf16, "
       "pc.axis_stream[2]);\n"
    << "}\n\n"
    << "// tp_all_reduce adding the replicated residual: out = sum + residual (data\n"
    << "// keeps partial sums). The copy engines' sum pass adds it; on NCCL an\n"
    << "// add on the tp stream follows the in-place all-reduce.\n"
    << "void tp_all_reduce_add(ProgramContext& pc, HostState& st, bf16* data, "
       "const bf16* residual, bf16* out, int64_t n) {\n"
    << "  k::PeerAllReduce* peer = tp_peer(pc, st);\n"
    << "  if (peer && peer->covers(data, n) && peer->covers(out, n)) {\n"
    << "    peer->all_reduce_add(data, residual, out, n, pc.axis_stream[2]);\n"
    << "    return;\n"
    << "  }\n"
    << "  axis_comm(st, 2).all_reduce(data, n, mtc::rt::DType::bf16, "
       "mtc::rt::ReduceOp::sum, pc.axis_stream[2]);\n"
    << "  k::add3_on(pc.axis_stream[2], pc.ctx.sm_count, data, residual, "
       "nullptr, out, n);\n"
    << "}\n\n";
  if (usesLanes)
    o << "// The half-batch lanes: lane 1 starts after the compute stream's "
         "work so\n"
      << "// far (fork) and the compute stream waits for lane 1 (join).\n"
      << "void lane_fork(ProgramContext& pc) {\n"
      << "  if (!pc.lanes) return;\n"
      << "  pc.in_lanes = true;\n"
      << "  update_sm_margin(pc);\n"
      << "  MTC_CUDA_CHECK(cudaEventRecord(pc.lane_fork_ev, pc.ctx.stream));\n"
      << "  MTC_CUDA_CHECK(cudaStreamWaitEvent(pc.ctx1.stream, pc.lane_fork_ev, "
         "0));\n"
      << "}\n\n"
      << "void lane_join(ProgramContext& pc) {\n"
      << "  if (!pc.lanes) return;\n"
      << "  pc.in_lanes = false;\n"
      << "  update_sm_margin(pc);\n"
      << "  MTC_CUDA_CHECK(cudaEventRecord(pc.lane_join_ev, pc.ctx1.stream));\n"
      << "  MTC_CUDA_CHECK(cudaStreamWaitEvent(pc.ctx.stream, pc.lane_join_ev, "
         "0));\n"
      << "}\n\n";
  o
    << "// Data parallelism: bucket `b` of the gradient buffer, complete on\n"
    << "// the compute stream, all-reduced (sum) over dp on the dp stream.\n"
    << "void enqueue_grad_bucket(ProgramContext& pc, HostState& st, int b, "
       "int64_t begin, int64_t size) {\n"
    << "  MTC_CUDA_CHECK(cudaEventRecord(pc.slots[1][b], pc.ctx.stream));\n"
    << "  MTC_CUDA_CHECK(cudaStreamWaitEvent(pc.axis_stream[1], "
       "pc.slots[1][b], 0));\n"
    << "  axis_comm(st, 1).all_reduce(st.grads + begin, size, "
       "mtc::rt::DType::f32, mtc::rt::ReduceOp::sum, pc.axis_stream[1]);\n"
    << "}\n\n"
    << "// At the point where the backward pass completed bucket `b`.\n"
    << "void launch_grad_bucket(ProgramContext& pc, HostState& st, int b, "
       "int64_t begin, int64_t size) {\n"
    << "  if (pc.overlap)\n"
    << "    enqueue_grad_bucket(pc, st, b, begin, size);\n"
    << "  else\n"
    << "    pc.held.insert(pc.held.end(), {b, begin, size});\n"
    << "}\n\n"
    << "// End of the backward pass: held buckets go now; the compute stream\n"
    << "// waits for every bucket.\n"
    << "void finish_grad_buckets(ProgramContext& pc, HostState& st) {\n"
    << "  k::set_current_op(\"shard.all_reduce of the gradient of the dp "
       "buckets (data parallelism)\");\n"
    << "  for (size_t i = 0; i < pc.held.size(); i += 3)\n"
    << "    enqueue_grad_bucket(pc, st, int(pc.held[i]), pc.held[i + 1], "
       "pc.held[i + 2]);\n"
    << "  pc.held.clear();\n"
    << "  axis_join(pc, 1);\n"
    << "}\n\n";
  return s;
}

LogicalResult CudaEmitter::run(mtc::EmitResult &out) {
  FailureOr<TrainingFunctions> fns = getTrainingFunctions(module);
  if (failed(fns))
    return failure();
  // Buckets when dp reduces the whole gradient (not a sharded optimizer).
  bucketed = false;
  fns->optimizer.walk([&](mtc::ReduceGradientsOp r) {
    bucketed = !r.getShardOptimizerState() && r.getGridAxes().size() == 1 &&
               r.getGridAxes()[0] == mtc::kAxisDP;
  });
  if (failed(emitFunction(fns->forward, /*eval=*/true)) ||
      failed(emitFunction(fns->train, /*eval=*/false)))
    return failure();
  std::string funcs = std::move(body);
  body.clear();
  if (failed(emitOptimizer(fns->optimizer)))
    return failure();
  std::string optimizer = std::move(body);

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
    << "#include \"mtc/rt/cuda_peer.h\"\n"
    << "#include \"mtc/rt/cuda_tp_kernels.h\"\n"
    << "#include \"mtc/rt/dropout_hash.h\"\n"
    << "#include \"mtc/rt/program.h\"\n\n"
    << "namespace {\nusing mtc::rt::HostState;\nnamespace k = "
       "mtc::rt::cuda;\nusing k::bf16;\n\n"
    << emitContext()
    << "float data_error(HostState& st, const std::string& message) {\n"
    << "  st.error = message;\n"
    << "  return std::numeric_limits<float>::quiet_NaN();\n}\n\n"
    << "// Copies the (1) fp32 loss to the host; reports recorded data errors.\n"
    << "float finish_loss(HostState& st, const float* loss) {\n"
    << "  auto& pc = program_context(st);\n"
    << "  k::set_current_op(\"loss\");\n"
    << "  MTC_CUDA_CHECK(cudaMemcpyAsync(pc.loss_host, loss, sizeof(float), "
       "cudaMemcpyDeviceToHost, pc.ctx.stream));\n"
    << "  std::string error = pc.ctx.take_data_error();  // synchronizes\n"
    << "  if (!error.empty()) return data_error(st, error);\n"
    << "  return *pc.loss_host;\n}\n\n"
    << "void* create_context() { return new ProgramContext(); }\n"
    << "void destroy_context(void* c) { delete static_cast<ProgramContext*>(c); "
       "}\n"
    << "void sync_compute_params(HostState& st) {\n"
    << "  auto& pc = program_context(st);\n"
    << "  k::set_current_op(\"sync_compute_params\");\n"
    << "  k::convert(pc.ctx, st.params, static_cast<bf16*>(st.compute_params), "
    << layout.totalElements << ");\n"
    << "  pc.ctx.synchronize();\n}\n\n"
    << funcs << optimizer
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
