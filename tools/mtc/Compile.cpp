//===- Compile.cpp - `mtc compile` -----------------------------------------===//
//
// Steps:
//  1. Read and validate the spec (every error with its JSON path).
//  2. Import it into the mtc dialect (@forward); --emit=mlir stops here.
//  3. Load pass plugins, run the training pipeline; --emit=train stops here.
//  4. The target's lowering passes (CUDA: mtc-cuda-lowering); the
//     code-generation options become module attributes; --emit=lowered
//     stops here.
//  5. Emit the program source; --emit=source stops here.
//  6. Write the output directory: program source, CMakeLists.txt, the IR
//     (train.mlir), the plan report (plan.txt, plan.json), the resolved
//     spec (spec.json: every default filled in); then build the
//     binary `train` with CMake. Files are written to a temporary directory
//     that is renamed into place only when everything was emitted, so a
//     failed compile never leaves a half-written output. An existing DIR is
//     replaced only if it is a previous output (it holds nothing but the
//     files above); anything else is refused, never emptied.
//
//===----------------------------------------------------------------------===//
#include "Compile.h"

#include "mtc/Codegen/Emitter.h"
#include "mtc/Import/Import.h"
#include "mtc/Transforms/Passes.h"
#include "mtc/Transforms/PlanReport.h"
#include "mtc/Transforms/Pipeline.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Tools/Plugins/PassPlugin.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/raw_ostream.h"

#include <algorithm>
#include <filesystem>
#include <iterator>

using namespace mlir;

namespace {

int fail(const llvm::Twine &msg) {
  llvm::errs() << "mtc: error: " << msg << "\n";
  return 1;
}

bool writeFile(llvm::StringRef path, llvm::StringRef contents) {
  std::error_code ec;
  llvm::raw_fd_ostream os(path, ec);
  if (ec) {
    llvm::errs() << "mtc: error: cannot write " << path << ": "
                 << ec.message() << "\n";
    return false;
  }
  os << contents;
  return true;
}

/// What `mtc compile -o DIR` writes into DIR (and DIR.partial): a previous
/// output holds only these, so replacing it loses nothing of anyone else's.
const char *const kOutputNames[] = {"program.cpp", "CMakeLists.txt", "train.mlir",
                                    "plan.txt",    "plan.json",      "spec.json",
                                    "schedule.txt", "schedule.svg",
                                    "build",       "build.log",      "train"};

/// "" if `dir` does not exist or is a directory (not a link) holding only
/// kOutputNames; else why it is someone else's and must not be replaced.
std::string foreignOutput(const std::string &dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(dir, ec);
  if (st.type() == fs::file_type::not_found)
    return "";
  if (st.type() == fs::file_type::symlink)
    return "is a symbolic link";
  if (st.type() != fs::file_type::directory)
    return "exists and is not a directory";
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (std::find(std::begin(kOutputNames), std::end(kOutputNames), name) ==
        std::end(kOutputNames))
      return "holds '" + name + "', which mtc compile does not write";
  }
  if (ec)
    return "cannot be listed (" + ec.message() + ")";
  return "";
}

std::string printModule(ModuleOp module, bool debugInfo) {
  std::string s;
  llvm::raw_string_ostream os(s);
  module.print(os, OpPrintingFlags().enableDebugInfo(debugInfo));
  return s;
}

/// Runs a command, echoing its output to stderr only on failure.
bool runTool(llvm::ArrayRef<llvm::StringRef> args, llvm::StringRef logPath) {
  auto exe = llvm::sys::findProgramByName(args[0]);
  if (!exe) {
    llvm::errs() << "mtc: error: '" << args[0]
                 << "' not found on PATH (needed to build the program)\n";
    return false;
  }
  std::optional<llvm::StringRef> redirects[] = {std::nullopt, logPath,
                                                logPath};
  std::string err;
  int rc = llvm::sys::ExecuteAndWait(*exe, args, std::nullopt, redirects, 0,
                                     0, &err);
  if (rc != 0) {
    llvm::errs() << "mtc: error: '";
    llvm::interleave(args, llvm::errs(), " ");
    llvm::errs() << "' failed" << (err.empty() ? "" : ": " + err)
                 << "; its output is in " << logPath << ":\n";
    if (auto buf = llvm::MemoryBuffer::getFile(logPath))
      llvm::errs() << (*buf)->getBuffer().take_back(4000) << "\n";
    return false;
  }
  return true;
}

/// "60GiB", "500 MiB", "80GB", "1e9B" -> bytes; "0.9" -> 0.9 of `whole`
/// (a fraction in (0, 1]). Empty optional, with `why`, if it is neither.
std::optional<int64_t> parseBytes(llvm::StringRef text, int64_t whole,
                                  std::string &why) {
  llvm::StringRef t = text.trim();
  size_t numEnd = t.find_first_not_of("0123456789.eE+-");
  llvm::StringRef num = t.substr(0, numEnd), unit = t.substr(num.size()).trim();
  double v = 0;
  if (num.empty() || num.getAsDouble(v) || !(v > 0)) {
    why = "expected a positive size with a unit (60GiB, 500MiB, 80GB) or a "
          "fraction of the GPU's memory (0.9)";
    return std::nullopt;
  }
  static const std::pair<const char *, double> units[] = {
      {"B", 1},          {"KiB", 1024.0},   {"MiB", 1048576.0},
      {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}, {"KB", 1e3},
      {"MB", 1e6},       {"GB", 1e9},       {"TB", 1e12}};
  if (unit.empty()) {
    if (v > 1) {
      why = "a number without a unit is a fraction of the GPU's memory and "
            "must be at most 1; give a unit for bytes (60GiB)";
      return std::nullopt;
    }
    return int64_t(v * double(whole));
  }
  for (auto [name, scale] : units)
    if (unit == name)
      return int64_t(v * scale);
  why = "unknown unit '" + unit.str() +
        "' (valid: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)";
  return std::nullopt;
}

} // namespace

int mtc::runCompile(const CompileOptions &opts) {
  // 1. The spec.
  auto file = llvm::MemoryBuffer::getFile(opts.specPath);
  if (!file)
    return fail("cannot read spec '" + opts.specPath +
                "': " + file.getError().message());
  std::vector<spec::Diagnostic> diags;
  std::optional<spec::Spec> parsed =
      spec::parseSpec((*file)->getBuffer().str(), diags);
  if (parsed)
    spec::applyOverridesAndValidate(*parsed, opts.overrides, diags);
  if (!parsed || !diags.empty()) {
    llvm::errs() << spec::formatDiagnostics(opts.specPath, diags);
    return 1;
  }
  if (opts.target != "host" && opts.target != "cuda")
    return fail("unknown --target '" + opts.target + "' (valid: host, cuda)");
  // The host target is fp32 by design (it is the reference); the CUDA target
  // computes in bf16 with fp32 master weights and has no other mode yet.
  if (opts.target == "cuda" &&
      parsed->training.precision != spec::Precision::bf16)
    return fail(opts.specPath + ": training.precision is '" +
                spec::toString(parsed->training.precision) +
                "', but the CUDA target computes in bf16 only (fp16 with "
                "loss scaling and an fp32 mode are not implemented); set it "
                "to \"bf16\"");

  // The MoE ops have CUDA kernels; the expert-parallel exchange does not.
  if (opts.target == "cuda" && parsed->model.moe.enabled() &&
      parsed->parallel.ep > 1)
    return fail(opts.specPath + ": at parallel.ep: expert parallelism on the "
                "CUDA target needs the token exchange over NCCL (moe_dispatch "
                "/ moe_combine), which is not implemented; compile with "
                "--target host, or with ep = 1 (docs/moe.md)");
  // Aux-loss-free balancing has host kernels only.
  if (opts.target == "cuda" && parsed->model.moe.enabled() &&
      parsed->model.moe.expert_bias)
    return fail(opts.specPath + ": at model.moe.expert_bias: the CUDA target "
                "has no expert-bias kernels yet (the biased router, "
                "moe_accumulate_load, moe_update_expert_bias); compile with "
                "--target host, or without the expert bias (docs/moe.md)");

  // Backward lanes are the default where they apply (CUDA, tp > 1, no sp);
  // asked for by name on another plan, they are an error.
  const bool lanesApply = opts.target == "cuda" && parsed->parallel.tp > 1 &&
                          !parsed->parallel.sp;
  const std::string plan = "tp = " + std::to_string(parsed->parallel.tp) +
                           (parsed->parallel.sp ? ", sp on" : "") +
                           ", target " + opts.target;
  if (opts.backwardLanesAsked && !lanesApply)
    return fail("--tp-backward-lanes needs --target cuda and tensor "
                "parallelism without sp (" + plan + ")");
  if (opts.tpLanes != "two-streams" && opts.tpLanes != "one-stream")
    return fail("unknown --tp-lanes '" + opts.tpLanes +
                "' (valid: two-streams, one-stream)");
  if (opts.tpLanesAsked && !lanesApply)
    return fail("--tp-lanes needs --target cuda and tensor parallelism "
                "without sp (" + plan + ")");
  if (opts.tpAllReduce != "auto" && opts.tpAllReduce != "nccl")
    return fail("unknown --tp-allreduce '" + opts.tpAllReduce +
                "' (valid: auto, nccl)");
  if (opts.tpAllReduceAsked &&
      (opts.target != "cuda" || parsed->parallel.tp != 2))
    return fail("--tp-allreduce needs --target cuda and tp = 2 (" + plan +
                ")");

  // Recomputation: the spec's policy, refined by flags that apply to it.
  const spec::Recompute policy = parsed->recompute;
  const std::string policyName = spec::toString(policy);
  if (opts.recomputeModulesAsked && policy != spec::Recompute::selective)
    return fail("--recompute-modules applies to --recompute selective, but "
                "the policy is '" + policyName + "'");
  if (opts.recomputeMethodAsked && policy != spec::Recompute::full)
    return fail("--recompute-method and --recompute-num-layers apply to "
                "--recompute full, but the policy is '" + policyName + "'");
  if (!opts.memoryBudget.empty() && policy != spec::Recompute::auto_)
    return fail("--memory-budget applies to --recompute auto, but the policy "
                "is '" + policyName + "'");
  MtcPlanRecomputeOptions recompute;
  recompute.target = opts.target;
  recompute.modules.assign(opts.recomputeModules.begin(),
                           opts.recomputeModules.end());
  recompute.method = opts.recomputeMethod;
  recompute.numLayers = opts.recomputeNumLayers;
  if (policy == spec::Recompute::auto_) {
    std::string why;
    std::optional<int64_t> gpu = parseBytes(opts.gpuMemory, 0, why);
    if (!gpu || *gpu == 0)
      return fail("--gpu-memory '" + opts.gpuMemory + "': " +
                  (why.empty() ? "give a size with a unit (80GiB)" : why));
    std::optional<int64_t> budget =
        opts.memoryBudget.empty() ? gpu : parseBytes(opts.memoryBudget, *gpu, why);
    if (!budget)
      return fail("--memory-budget '" + opts.memoryBudget + "': " + why);
    recompute.memoryBudget = *budget;
  }

  // 2. Import.
  DialectRegistry registry;
  registerMtcDialects(registry);
  MLIRContext context(registry);
  context.loadAllAvailableDialects();
  OwningOpRef<ModuleOp> module = importSpec(*parsed, context, opts.specPath);
  if (!module)
    return 1;
  if (opts.emit == EmitStage::mlir) {
    llvm::outs() << printModule(*module, opts.printDebugInfo);
    return 0;
  }

  // 3. Plugins and the training pipeline.
  for (const std::string &path : opts.passPlugins) {
    auto plugin = PassPlugin::load(path);
    if (!plugin) {
      llvm::errs() << "mtc: error: cannot load pass plugin '" << path
                   << "': " << llvm::toString(plugin.takeError()) << "\n";
      return 1;
    }
    plugin->registerPassRegistryCallbacks();
  }
  PassManager pm(&context);
  if (opts.printIRAfterAll) {
    context.disableMultithreading();
    pm.enableIRPrinting();
  }
  if (failed(buildTrainingPipeline(pm, opts.shardingPipeline,
                                   opts.scheduleWeightGradients, recompute)))
    return fail("--sharding-passes '" + opts.shardingPipeline +
                "' is not a valid pass pipeline (are its plugins loaded with "
                "--pass-plugin?)");
  if (failed(pm.run(*module)))
    return 1;
  if (opts.emit == EmitStage::train) {
    llvm::outs() << printModule(*module, opts.printDebugInfo);
    return 0;
  }

  // 4. Lowering: the target's decisions, as passes over the IR.
  // Code-generation options, as module attributes (mtc/Codegen/Emitter.h).
  if (opts.backwardLanes && lanesApply)
    (*module)->setAttr(kTpBackwardLanesAttr, UnitAttr::get(&context));
  if (opts.tpLanes != "two-streams")
    (*module)->setAttr(kTpLanesAttr, StringAttr::get(&context, opts.tpLanes));
  if (opts.tpAllReduce != "auto")
    (*module)->setAttr(kTpAllReduceAttr,
                       StringAttr::get(&context, opts.tpAllReduce));
  if (opts.target == "cuda") {
    PassManager lowering(&context);
    if (opts.printIRAfterAll)
      lowering.enableIRPrinting();
    buildCudaLoweringPipeline(lowering);
    if (failed(lowering.run(*module)))
      return 1;
  }
  if (opts.emit == EmitStage::lowered) {
    llvm::outs() << printModule(*module, opts.printDebugInfo);
    return 0;
  }

  // 5. Source.
  EmitResult emitted;
  if (failed(opts.target == "cuda" ? emitCudaProgram(*module, emitted)
                                   : emitHostProgram(*module, emitted)))
    return 1;
  if (opts.emit == EmitStage::source) {
    llvm::outs() << emitted.source;
    return 0;
  }

  // 6. Output directory, written atomically.
  if (opts.outputDir.empty())
    return fail("-o DIR is required to write and build the program (or use "
                "--emit=mlir|train|source to print a stage)");
  // Host arenas count fp32 elements, CUDA arenas 2-byte units.
  PlanReport report = computePlanReport(
      *module, opts.target,
      emitted.arenaElements * (opts.target == "cuda" ? 2 : 4));
  std::string reportText, reportJson;
  {
    llvm::raw_string_ostream t(reportText), j(reportJson);
    printPlanReportText(report, t);
    printPlanReportJson(report, j);
  }
  // Pipelines: per-rank balance and memory, the orders, and the picture.
  std::string scheduleText, scheduleSvg;
  if (isPipelineModule(*module)) {
    FailureOr<PipelineAnalysis> a = analyzePipeline(*module);
    if (failed(a))
      return 1;
    SmallVector<int64_t> arenaBytes;
    for (int64_t e : emitted.stageArenaElements)
      arenaBytes.push_back(e * (opts.target == "cuda" ? 2 : 4));
    llvm::raw_string_ostream t(reportText);
    printPipelineReport(*module, *a, arenaBytes, opts.target, t);
    scheduleText = a->ordersText;
    scheduleSvg = a->svg;
  }
  llvm::SmallString<256> outDir(opts.outputDir);
  llvm::sys::fs::make_absolute(outDir);
  std::string tmpDir = (outDir + ".partial").str();
  // Only a previous output (or a leftover .partial) is replaced, never a
  // directory of other files, a link, or `-o .` in a source tree.
  for (const std::string &dir : {std::string(outDir), tmpDir})
    if (std::string why = foreignOutput(dir); !why.empty())
      return fail("-o " + opts.outputDir + ": '" + dir + "' " + why +
                  "; refusing to replace it (give a new or empty directory, or "
                  "a previous mtc compile output)");
  llvm::sys::fs::remove_directories(tmpDir);
  if (std::error_code ec = llvm::sys::fs::create_directories(tmpDir))
    return fail("cannot create '" + tmpDir + "': " + ec.message());
  auto in = [&](llvm::StringRef name) {
    llvm::SmallString<256> p(tmpDir);
    llvm::sys::path::append(p, name);
    return std::string(p);
  };
  if (!writeFile(in("program.cpp"), emitted.source) ||
      !writeFile(in("CMakeLists.txt"),
                 emitCMakeProject(opts.target, opts.mtcPackageDir)) ||
      !writeFile(in("train.mlir"), printModule(*module, opts.printDebugInfo)) ||
      !writeFile(in("plan.txt"), reportText) ||
      !writeFile(in("plan.json"), reportJson) ||
      !writeFile(in("spec.json"), spec::toJson(*parsed)))
    return 1;
  if (!scheduleSvg.empty() && (!writeFile(in("schedule.txt"), scheduleText) ||
                               !writeFile(in("schedule.svg"), scheduleSvg)))
    return 1;
  // Keep a previous build directory (incremental rebuilds), replace the rest.
  llvm::SmallString<256> oldBuild(outDir);
  llvm::sys::path::append(oldBuild, "build");
  if (llvm::sys::fs::is_directory(oldBuild))
    llvm::sys::fs::rename(oldBuild, in("build"));
  llvm::sys::fs::remove_directories(outDir);
  if (std::error_code ec = llvm::sys::fs::rename(tmpDir, outDir))
    return fail("cannot move '" + tmpDir + "' to '" + outDir +
                "': " + ec.message());
  llvm::outs() << reportText;
  llvm::outs() << "wrote " << outDir << "/{program.cpp, CMakeLists.txt, "
               << "train.mlir, plan.txt, plan.json, spec.json"
               << (scheduleSvg.empty() ? "" : ", schedule.txt, schedule.svg")
               << "}\n";
  if (!opts.build)
    return 0;

  llvm::SmallString<256> buildDir(outDir), log(outDir);
  llvm::sys::path::append(buildDir, "build");
  llvm::sys::path::append(log, "build.log");
  std::string pkg = "-Dmtc_DIR=" + opts.mtcPackageDir;
  llvm::outs() << "building " << outDir << "/train ...\n";
  llvm::outs().flush();
  if (!runTool({"cmake", "-S", outDir, "-B", buildDir, "-G", "Ninja", pkg,
                "-DCMAKE_BUILD_TYPE=Release"},
               log) ||
      !runTool({"cmake", "--build", buildDir}, log))
    return 1;
  llvm::SmallString<256> binary(buildDir), link(outDir);
  llvm::sys::path::append(binary, "train");
  llvm::sys::path::append(link, "train");
  llvm::sys::fs::remove(link);
  if (std::error_code ec = llvm::sys::fs::copy_file(binary, link))
    return fail("cannot copy the binary to " + link + ": " + ec.message());
  llvm::sys::fs::setPermissions(link, llvm::sys::fs::all_read |
                                          llvm::sys::fs::all_exe |
                                          llvm::sys::fs::owner_write);
  llvm::outs() << "built " << link << "\n";
  return 0;
}
