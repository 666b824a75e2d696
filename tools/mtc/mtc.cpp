//===- mtc.cpp - the mtc driver --------------------------------------------===//
//
//   mtc compile SPEC [--target host|cuda] [--emit=mlir|train|source] -o DIR
//               [--tp N --pp N --dp N --sp --use-distributed-optimizer
//                --micro-batch-size N
//                --global-batch-size N --recompute none
//                --train-iters N] [--pass-plugin LIB.so]
//               [--sharding-passes PIPELINE] [--no-build]
//   mtc --version | --help
//
// Flags use Megatron-LM's names and override the spec's values; the
// overridden spec is validated as a whole, so a flag that breaks the plan is
// reported with the flag's name (--recompute selective|full among them: not
// implemented yet). A flag for a stage that --emit stops before is refused,
// not ignored.
//
//===----------------------------------------------------------------------===//
#include "Compile.h"

#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/raw_ostream.h"

namespace cl = llvm::cl;

static cl::SubCommand compileCmd("compile",
                                 "Compile a model spec to a training program");
static cl::OptionCategory flagsCat("Compile options");
static cl::OptionCategory planCat(
    "Parallel plan and training overrides (Megatron-LM names)");

static cl::opt<std::string> specPath(cl::Positional, cl::desc("<spec.json>"),
                                     cl::Required, cl::sub(compileCmd));
static cl::opt<std::string> outputDir("o", cl::desc("Output directory"),
                                      cl::value_desc("dir"),
                                      cl::sub(compileCmd), cl::cat(flagsCat));
static cl::opt<std::string>
    target("target", cl::desc("Code generation target: host (fp32 CPU, the "
                              "reference) or cuda"),
           cl::init("host"), cl::sub(compileCmd), cl::cat(flagsCat));
static cl::opt<mtc::EmitStage> emit(
    "emit", cl::desc("Stop at a stage and print it"), cl::init(mtc::EmitStage::all),
    cl::values(
        clEnumValN(mtc::EmitStage::mlir, "mlir", "the imported forward program"),
        clEnumValN(mtc::EmitStage::train, "train",
                   "after the training pipeline (autodiff, optimizer)"),
        clEnumValN(mtc::EmitStage::lowered, "lowered",
                   "after the target's lowering passes: the program the "
                   "code generator prints, every decision on its ops"),
        clEnumValN(mtc::EmitStage::source, "source",
                   "the generated program source"),
        clEnumValN(mtc::EmitStage::all, "all",
                   "write -o DIR and build the binary (default)")),
    cl::sub(compileCmd), cl::cat(flagsCat));
static cl::opt<bool> noBuild("no-build",
                             cl::desc("Write the sources but do not build"),
                             cl::sub(compileCmd), cl::cat(flagsCat));
static cl::list<std::string>
    passPlugins("pass-plugin", cl::desc("Load a pass plugin (.so)"),
                cl::value_desc("lib"), cl::sub(compileCmd), cl::cat(flagsCat));
static cl::opt<std::string> shardingPasses(
    "sharding-passes",
    cl::desc("Pass pipeline that writes the sharding annotations instead of "
             "Megatron's tensor-parallel plan (e.g. a plugin's pass)"),
    cl::value_desc("pipeline"), cl::sub(compileCmd), cl::cat(flagsCat));
static cl::opt<std::string> mtcDir(
    "mtc-package-dir",
    cl::desc("Directory with mtcConfig.cmake used to build the program "
             "(default: this mtc's build or install tree)"),
    cl::sub(compileCmd), cl::cat(flagsCat));
static cl::opt<bool> printIR("print-ir-after-all",
                             cl::desc("Print the IR after every pass"),
                             cl::sub(compileCmd), cl::cat(flagsCat));

static cl::opt<int64_t> tp("tp", cl::desc("Tensor-parallel size"),
                           cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<int64_t> pp("pp", cl::desc("Pipeline-parallel size"),
                           cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<int64_t> dp("dp", cl::desc("Data-parallel size"),
                           cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<int64_t> ep(
    "expert-model-parallel-size",
    cl::desc("Expert-parallel size: the experts of MoE layers split over ep "
             "consecutive data-parallel ranks (divides dp)"),
    cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<double> moeCapacityFactor(
    "moe-expert-capacity-factor",
    cl::desc("Token dropping in MoE layers: each expert takes at most "
             "capacity_factor * tokens * top_k / num_experts rows per "
             "microbatch (model.moe.capacity_factor; 0: dropless)"),
    cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<bool> moeExpertBias(
    "moe-router-enable-expert-bias",
    cl::desc("Aux-loss-free load balancing: a per-expert bias on the router's "
             "scores for the top-k selection, moved after each step toward "
             "balanced loads (model.moe.expert_bias)"),
    cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<double> moeBiasUpdateRate(
    "moe-router-bias-update-rate",
    cl::desc("How far each expert bias moves per step, rate * sign(mean load "
             "- load) (model.moe.bias_update_rate; default 1e-3)"),
    cl::sub(compileCmd), cl::cat(planCat));
static cl::alias epShort("ep", cl::desc("Alias for --expert-model-parallel-size"),
                         cl::aliasopt(ep), cl::cat(planCat));
static cl::opt<bool> sp("sp", cl::desc("Sequence parallelism (needs tp > 1)"),
                        cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<bool> distOpt(
    "use-distributed-optimizer",
    cl::desc("Shard the optimizer state over the data-parallel ranks "
             "(ZeRO-1; needs dp > 1 to have an effect)"),
    cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<int64_t> microBatch("micro-batch-size",
                                   cl::desc("Sequences per microbatch"),
                                   cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<int64_t> globalBatch("global-batch-size",
                                    cl::desc("Sequences per optimizer step"),
                                    cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<std::string> recompute(
    "recompute",
    cl::desc("Activation recomputation: none, selective (the attention "
             "core, or --recompute-modules), full (layer inputs only), auto "
             "(fewest recomputed FLOPs within --memory-budget); "
             "docs/memory.md"),
                                      cl::sub(compileCmd), cl::cat(planCat));
static cl::list<std::string> recomputeModules(
    "recompute-modules",
    cl::desc("--recompute selective: the modules recomputed, of core_attn, "
             "mlp, layernorm, activation (default core_attn)"),
    cl::CommaSeparated, cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<std::string> recomputeMethod(
    "recompute-method",
    cl::desc("--recompute full: 'uniform' (every layer, "
             "--recompute-num-layers per checkpoint) or 'block' (the first "
             "--recompute-num-layers layers)"),
    cl::init("uniform"), cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<int64_t> recomputeNumLayers(
    "recompute-num-layers",
    cl::desc("--recompute full: layers per checkpoint (uniform) or layers "
             "recomputed (block); default 1"),
    cl::init(1), cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<std::string> memoryBudget(
    "memory-budget",
    cl::desc("--recompute auto: memory per rank the plan must fit: bytes "
             "with a unit (60GiB, 500MiB, 80GB) or a fraction of "
             "--gpu-memory (0.9)"),
    cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<std::string> gpuMemory(
    "gpu-memory",
    cl::desc("The memory of one GPU, for a fractional --memory-budget "
             "(default 80GiB, an H100's)"),
    cl::init("80GiB"), cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<bool> printDebugInfo(
    "mlir-print-debuginfo",
    cl::desc("Print locations with --emit=mlir|train|lowered (and in "
             "train.mlir), so that mtc-opt passes that read them "
             "(mtc-plan-recompute: the layer of each op) see them"),
    cl::sub(compileCmd), cl::cat(flagsCat));
static cl::opt<bool> delayWgrad(
    "delay-wgrad-compute",
    cl::desc("Run weight-gradient work while the tensor-parallel "
             "collectives of input gradients are in flight "
             "(mtc-schedule-weight-gradients; default true, =false keeps "
             "autodiff's order)"),
    cl::init(true), cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<bool> backwardLanes(
    "tp-backward-lanes",
    cl::desc("CUDA target, tp > 1 without sp: run the backward pass in two "
             "half-batch lanes too, staggered on the compute stream, so "
             "that each lane's tensor-parallel all-reduces run beside the "
             "other lane's work (default true where the plan has forward "
             "lanes; =false keeps one backward lane)"),
    cl::init(true), cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<std::string> tpLanes(
    "tp-lanes",
    cl::desc("CUDA target, tp > 1 without sp: where the forward pass's two "
             "half-batch lanes run: 'two-streams' (default: lane 1 on a "
             "second, lower-priority stream) or 'one-stream' (both on the "
             "compute stream, staggered at the all-reduce waits)"),
    cl::init("two-streams"), cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<std::string> tpAllReduce(
    "tp-allreduce",
    cl::desc("CUDA target, tp = 2: 'auto' (default: the tensor-parallel "
             "all-reduces started early move through the GPUs' copy engines "
             "when the two GPUs can map each other's memory, else NCCL) or "
             "'nccl' (always NCCL)"),
    cl::init("auto"), cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<int64_t> trainSteps("train-iters",
                                   cl::desc("Default number of training steps"),
                                   cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<std::string> pipelineSchedule(
    "pipeline-schedule",
    cl::desc("Pipeline schedule (pp > 1): 1f1b (default), gpipe, interleaved "
             "(with --virtual-pipeline-model-parallel-size > 1) or zb-h1 "
             "(zero bubble, Qi et al. 2024: 1F1B's memory, a third of its "
             "bubble)"),
    cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<int64_t> virtualStages(
    "virtual-pipeline-model-parallel-size",
    cl::desc("Virtual pipeline chunks per pipeline rank (interleaved 1F1B)"),
    cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<int64_t> layersPerVirtualStage(
    "num-layers-per-virtual-pipeline-stage",
    cl::desc("Layers per virtual pipeline chunk (Megatron's older flag: "
             "virtual chunks per rank = layers / pp / this)"),
    cl::sub(compileCmd), cl::cat(planCat));
static cl::opt<std::string> pipelineLayout(
    "pipeline-model-parallel-layout",
    cl::desc("Layers of each pipeline chunk: 'auto' (balanced by cost, "
             "embedding and LM head included) or Megatron's syntax, chunks "
             "separated by '|': \"E,t*3|t*4|t*4|t*3,L\" (E embedding, t a "
             "layer, L final norm + LM head + loss); default even"),
    cl::sub(compileCmd), cl::cat(planCat));

/// Where mtcConfig.cmake is: the build tree this mtc came from, or the
/// install tree next to the binary.
static std::string defaultPackageDir(const char *argv0) {
  std::string exe = llvm::sys::fs::getMainExecutable(
      argv0, reinterpret_cast<void *>(&defaultPackageDir));
  llvm::SmallString<256> installed(llvm::sys::path::parent_path(
      llvm::sys::path::parent_path(exe)));
  llvm::sys::path::append(installed, "lib", "cmake", "mtc");
  llvm::SmallString<256> cfg(installed);
  llvm::sys::path::append(cfg, "mtcConfig.cmake");
  if (llvm::sys::fs::exists(cfg))
    return std::string(installed);
  return MTC_BUILD_PACKAGE_DIR;
}

/// Refuses a flag given with an --emit stage that stops before the flag acts
/// (it would be silently ignored): -o at --emit=mlir, say.
static bool checkStageFlags() {
  struct StageFlag {
    const cl::Option &flag;
    mtc::EmitStage actsAt; // the first stage that uses it
    const char *what;
  };
  const StageFlag flags[] = {
      {outputDir, mtc::EmitStage::all, "the output directory"},
      {noBuild, mtc::EmitStage::all, "the build of the output directory"},
      {mtcDir, mtc::EmitStage::all, "the build of the output directory"},
      {passPlugins, mtc::EmitStage::train, "the training pipeline"},
      {shardingPasses, mtc::EmitStage::train, "the training pipeline"},
      {printIR, mtc::EmitStage::train, "the training pipeline"},
      {delayWgrad, mtc::EmitStage::train, "the training pipeline"},
      {recomputeModules, mtc::EmitStage::train, "the training pipeline"},
      {recomputeMethod, mtc::EmitStage::train, "the training pipeline"},
      {recomputeNumLayers, mtc::EmitStage::train, "the training pipeline"},
      {memoryBudget, mtc::EmitStage::train, "the training pipeline"},
      {gpuMemory, mtc::EmitStage::train, "the training pipeline"},
      {backwardLanes, mtc::EmitStage::lowered, "code generation"},
      {tpLanes, mtc::EmitStage::lowered, "code generation"},
      {tpAllReduce, mtc::EmitStage::lowered, "code generation"},
  };
  static const char *const stageNames[] = {"mlir", "train", "lowered", "source",
                                           "all"};
  for (const StageFlag &f : flags) {
    if (!f.flag.getNumOccurrences() || emit >= f.actsAt)
      continue;
    llvm::errs() << "mtc: error: " << (f.flag.ArgStr.size() == 1 ? "-" : "--")
                 << f.flag.ArgStr << " has no effect with --emit="
                 << stageNames[int(emit.getValue())]
                 << ", which stops before " << f.what
                 << "; drop it or use --emit=" << stageNames[int(f.actsAt)]
                 << (f.actsAt == mtc::EmitStage::all ? " (the default)"
                                                     : " or later")
                 << "\n";
    return false;
  }
  return true;
}

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  cl::SetVersionPrinter([](llvm::raw_ostream &os) {
    os << "mtc " << MTC_VERSION << " (MLIR " << LLVM_VERSION_STRING << ")\n";
  });
  // --help lists mtc's options only, not the hundreds LLVM's libraries
  // register (still accepted, no longer listed).
  cl::HideUnrelatedOptions({&flagsCat, &planCat});
  cl::HideUnrelatedOptions({&flagsCat, &planCat}, compileCmd);
  if (!cl::ParseCommandLineOptions(
          argc, argv,
          "mtc: compile transformer training programs\n\n"
          "  mtc compile examples/tiny-gpt.json --target host -o out/tiny\n"
          "  out/tiny/train --data data/fortunes --steps 300\n",
          &llvm::errs()))
    return 1;
  if (!compileCmd) {
    llvm::errs() << "mtc: error: no command given; try 'mtc compile --help'\n";
    return 1;
  }

  if (!checkStageFlags())
    return 1;

  mtc::CompileOptions opts;
  opts.specPath = specPath;
  opts.outputDir = outputDir;
  opts.target = target;
  opts.emit = emit;
  opts.build = !noBuild;
  opts.passPlugins.assign(passPlugins.begin(), passPlugins.end());
  opts.shardingPipeline = shardingPasses;
  opts.scheduleWeightGradients = delayWgrad;
  opts.backwardLanes = backwardLanes;
  opts.tpLanes = tpLanes;
  opts.tpLanesAsked = tpLanes.getNumOccurrences() > 0;
  opts.tpAllReduce = tpAllReduce;
  opts.tpAllReduceAsked = tpAllReduce.getNumOccurrences() > 0;
  opts.backwardLanesAsked =
      backwardLanes.getNumOccurrences() > 0 && backwardLanes;
  opts.mtcPackageDir = mtcDir.empty() ? defaultPackageDir(argv[0]) : mtcDir;
  opts.printIRAfterAll = printIR;
  opts.printDebugInfo = printDebugInfo;
  opts.recomputeModules.assign(recomputeModules.begin(), recomputeModules.end());
  opts.recomputeModulesAsked = recomputeModules.getNumOccurrences() > 0;
  opts.recomputeMethod = recomputeMethod;
  opts.recomputeMethodAsked = recomputeMethod.getNumOccurrences() > 0 ||
                              recomputeNumLayers.getNumOccurrences() > 0;
  opts.recomputeNumLayers = recomputeNumLayers;
  opts.memoryBudget = memoryBudget;
  opts.gpuMemory = gpuMemory;
  auto &o = opts.overrides;
  if (tp.getNumOccurrences())
    o.tp = tp;
  if (pp.getNumOccurrences())
    o.pp = pp;
  if (dp.getNumOccurrences())
    o.dp = dp;
  if (ep.getNumOccurrences())
    o.ep = ep;
  if (moeCapacityFactor.getNumOccurrences())
    o.moe_capacity_factor = moeCapacityFactor;
  if (moeExpertBias.getNumOccurrences())
    o.moe_expert_bias = moeExpertBias;
  if (moeBiasUpdateRate.getNumOccurrences())
    o.moe_bias_update_rate = moeBiasUpdateRate;
  if (sp.getNumOccurrences())
    o.sp = sp;
  if (distOpt.getNumOccurrences())
    o.distributed_optimizer = distOpt;
  if (microBatch.getNumOccurrences())
    o.micro_batch_size = microBatch;
  if (globalBatch.getNumOccurrences())
    o.global_batch_size = globalBatch;
  if (trainSteps.getNumOccurrences())
    o.train_steps = trainSteps;
  if (pipelineSchedule.getNumOccurrences()) {
    o.schedule = mtc::spec::parseSchedule(pipelineSchedule);
    if (!o.schedule) {
      llvm::errs() << "mtc: error: --pipeline-schedule '" << pipelineSchedule
                   << "' is not one of gpipe, 1f1b, interleaved, zb-h1\n";
      return 1;
    }
  }
  if (virtualStages.getNumOccurrences() &&
      layersPerVirtualStage.getNumOccurrences()) {
    llvm::errs() << "mtc: error: give --virtual-pipeline-model-parallel-size "
                    "or --num-layers-per-virtual-pipeline-stage, not both\n";
    return 1;
  }
  if (virtualStages.getNumOccurrences())
    o.virtual_stages = virtualStages;
  if (layersPerVirtualStage.getNumOccurrences())
    o.layers_per_virtual_stage = layersPerVirtualStage;
  if (pipelineLayout.getNumOccurrences())
    o.pipeline_layout = pipelineLayout;
  if (recompute.getNumOccurrences()) {
    o.recompute = mtc::spec::parseRecompute(recompute);
    if (!o.recompute) {
      llvm::errs() << "mtc: error: --recompute '" << recompute
                   << "' is not one of none, selective, full, auto\n";
      return 1;
    }
  }
  return mtc::runCompile(opts);
}
