//===- Compile.h - `mtc compile`: spec -> IR -> program --------*- C++ -*-===//
#ifndef MTC_TOOLS_COMPILE_H
#define MTC_TOOLS_COMPILE_H

#include "mtc/Spec/Spec.h"
#include <string>
#include <vector>

namespace mtc {

/// Where `mtc compile` stops. `mlir`: the imported forward program; `train`:
/// after the training pipeline; `source`: the generated C++; `all`: write
/// the output directory and build the binary.
enum class EmitStage { mlir, train, lowered, source, all };

struct CompileOptions {
  std::string specPath;
  std::string outputDir;          // -o; required for EmitStage::all
  std::string target = "host";    // host | cuda
  EmitStage emit = EmitStage::all;
  bool build = true;              // run cmake on the output directory
  std::string mtcPackageDir;      // where mtcConfig.cmake is
  std::vector<std::string> passPlugins;
  std::string shardingPipeline;   // replaces mtc-shard-tensor-parallel
  spec::Overrides overrides;
  bool printIRAfterAll = false;
  bool printDebugInfo = false;    // --mlir-print-debuginfo
  bool scheduleWeightGradients = true; // --delay-wgrad-compute
  bool backwardLanes = true;            // --tp-backward-lanes (where it applies)
  bool backwardLanesAsked = false;      // given on the command line: refuse
                                        // a plan it cannot apply to
  std::string tpLanes = "two-streams";  // --tp-lanes
  bool tpLanesAsked = false;
  std::string tpAllReduce = "auto";     // --tp-allreduce
  bool tpAllReduceAsked = false;
  // Recomputation beyond the spec's policy (mtc-plan-recompute's options).
  std::vector<std::string> recomputeModules; // --recompute-modules
  bool recomputeModulesAsked = false;
  std::string recomputeMethod = "uniform";   // --recompute-method
  int64_t recomputeNumLayers = 1;            // --recompute-num-layers
  bool recomputeMethodAsked = false;
  std::string memoryBudget;                  // --memory-budget, unparsed
  std::string gpuMemory = "80GiB";           // --gpu-memory
};

/// Runs the whole compilation; prints errors to stderr. Returns the process
/// exit code.
int runCompile(const CompileOptions &options);

} // namespace mtc

#endif // MTC_TOOLS_COMPILE_H
