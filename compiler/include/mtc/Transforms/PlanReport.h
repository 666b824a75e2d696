//===- PlanReport.h - what a compiled plan costs ----------------*- C++ -*-===//
//
// The numbers `mtc compile` prints and writes to plan.json: parameters,
// FLOPs per step (model FLOPs, from each op's CostOpInterface) and memory.
//
//===----------------------------------------------------------------------===//
#ifndef MTC_TRANSFORMS_PLANREPORT_H
#define MTC_TRANSFORMS_PLANREPORT_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/raw_ostream.h"
#include <cstdint>
#include <string>

namespace mtc {

struct PlanReport {
  std::string modelName;
  int64_t numParams = 0;          // unique parameter elements
  int64_t numMicrobatches = 1;
  int64_t tokensPerMicrobatch = 0;
  double forwardFlops = 0;        // one microbatch, @forward
  double trainStepFlops = 0;      // one microbatch, @train_step (fwd + bwd)
  double flopsPerStep = 0;        // trainStepFlops * microbatches
  int64_t paramBytes = 0, gradBytes = 0, optimizerBytes = 0;
  int64_t activationBytes = 0;    // the static arena, filled by the emitter
  int64_t peakBytes() const {
    return paramBytes + gradBytes + optimizerBytes + activationBytes;
  }
};

/// Counts parameters and FLOPs of a module that went through mtc-autodiff.
PlanReport computePlanReport(mlir::ModuleOp module);

void printPlanReportText(const PlanReport &r, llvm::raw_ostream &os);
void printPlanReportJson(const PlanReport &r, llvm::raw_ostream &os);

} // namespace mtc

#endif // MTC_TRANSFORMS_PLANREPORT_H
