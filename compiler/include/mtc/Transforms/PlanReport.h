//===- PlanReport.h - what a compiled plan costs ----------------*- C++ -*-===//
//
// The numbers `mtc compile` prints and writes to plan.json: parameters,
// FLOPs per step (model FLOPs, from each op's CostOpInterface) and memory.
//
//===----------------------------------------------------------------------===//
#ifndef MTC_TRANSFORMS_PLANREPORT_H
#define MTC_TRANSFORMS_PLANREPORT_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/SmallVector.h"
#include "llvm/Support/raw_ostream.h"
#include <cstdint>
#include <string>

namespace mtc {

/// What one rank holds at its peak, in bytes, by category
/// (docs/memory.md). `activations` is the buffer plan's arena for the
/// training step (the static, liveness-based plan: exact for the program
/// the emitter prints); `workspaces` are the runtime's buffers beside it
/// (CUDA: cuBLASLt workspaces, the attention backward's scratch, NCCL's
/// buffers, the CUDA context), each named.
struct MemoryPlan {
  int64_t params = 0;      // fp32 master copy
  int64_t computeCopy = 0; // CUDA: the bf16 copy the kernels read
  int64_t grads = 0;       // fp32 accumulation buffer
  int64_t optimizer = 0;   // AdamW moments (1/dp with the distributed optimizer)
  int64_t activations = 0; // the arena
  int64_t batch = 0;       // tokens and targets of every microbatch (int32)
  llvm::SmallVector<std::pair<std::string, int64_t>> workspaces;
  int64_t workspaceBytes() const {
    int64_t n = 0;
    for (auto &w : workspaces)
      n += w.second;
    return n;
  }
  int64_t peak() const {
    return params + computeCopy + grads + optimizer + activations + batch +
           workspaceBytes();
  }
};

struct PlanReport {
  std::string modelName;
  std::string target = "host";
  std::string recompute = "none"; // the module's mtc.recompute
  int64_t numParams = 0;          // unique parameter elements
  int64_t numMicrobatches = 1;
  int64_t tokensPerMicrobatch = 0;
  int64_t numLayers = 0;
  double forwardFlops = 0;        // one microbatch, @forward
  double trainStepFlops = 0;      // one microbatch, @train_step (fwd + bwd),
                                  // model FLOPs: recomputation not counted
  double recomputedFlops = 0;     // one microbatch, ops marked mtc.recomputed
  double flopsPerStep = 0;        // trainStepFlops * microbatches
  int64_t recomputedOps = 0;
  int64_t pipelineRanks = 1;      // > 1: memory below is the whole model's
  MemoryPlan memory;
  int64_t paramBytes = 0, gradBytes = 0, optimizerBytes = 0;
  int64_t activationBytes = 0;    // the static arena, filled by the emitter
  int64_t peakBytes() const {
    return paramBytes + gradBytes + optimizerBytes + activationBytes;
  }
};

/// Bytes of one value as the target stores it: fp32 on the host; on CUDA
/// bf16, but fp32 for attention's log-sum-exp and scalars (the loss), as
/// mtc-assign-precision decides.
int64_t storedBytes(mlir::Value v, llvm::StringRef target);

/// The buffer plan of `fn` before the target's lowering (no fusions, no
/// lanes): the arena bytes. On the host it is exactly the emitter's plan;
/// on CUDA an estimate the lowering changes by a few percent (fusions
/// store fewer values, lanes keep some longer), used to choose a recompute
/// policy before lowering; the report prints the emitter's exact arena.
int64_t planActivationBytes(mlir::func::FuncOp fn, llvm::StringRef target);

/// Parameters, gradients, optimizer state, batch and workspaces of a
/// partitioned module on `target`, with `activations` as given.
MemoryPlan planMemory(mlir::ModuleOp module, llvm::StringRef target,
                      int64_t activations);

/// "params 1.2 GiB, grads ..., workspaces ... (cuBLASLt 32.0 MiB, ...),
/// peak 5.0 GiB".
std::string describeMemory(const MemoryPlan &m);

/// "1.50 GiB".
std::string humanBytes(double bytes);

/// Counts parameters and FLOPs of a module that went through mtc-autodiff,
/// and plans its memory on `target` ("host" or "cuda") with
/// `activationBytes` (the emitter's arena) or, when negative, the
/// pre-lowering buffer plan of @train_step.
PlanReport computePlanReport(mlir::ModuleOp module,
                             llvm::StringRef target = "host",
                             int64_t activationBytes = -1);

void printPlanReportText(const PlanReport &r, llvm::raw_ostream &os);
void printPlanReportJson(const PlanReport &r, llvm::raw_ostream &os);

} // namespace mtc

#endif // MTC_TRANSFORMS_PLANREPORT_H
