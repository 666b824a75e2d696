//===- PlanReport.cpp - parameters, FLOPs and memory of a plan -------------===//
#include "mtc/Transforms/PlanReport.h"

#include "mtc/Dialect/MtcDialect.h"
#include "mtc/Transforms/Grid.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/JSON.h"

using namespace mlir;

namespace {
double sumFlops(func::FuncOp fn) {
  double flops = 0;
  if (!fn)
    return 0;
  fn.walk([&](mtc::CostOpInterface op) { flops += op.getFlops(); });
  return flops;
}

std::string human(double bytes) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[64];
  snprintf(buf, sizeof(buf), "%.2f %s", bytes, units[u]);
  return buf;
}
} // namespace

mtc::PlanReport mtc::computePlanReport(ModuleOp module) {
  PlanReport r;
  if (auto name = module->getAttrOfType<StringAttr>("mtc.model"))
    r.modelName = name.str();
  if (auto cfg = module->getAttrOfType<DictionaryAttr>("mtc.training"))
    if (auto mb = cfg.getAs<IntegerAttr>("num_microbatches"))
      r.numMicrobatches = mb.getInt();
  auto forward = module.lookupSymbol<func::FuncOp>("forward");
  auto train = module.lookupSymbol<func::FuncOp>("train_step");
  llvm::StringSet<> seen;
  int64_t bytes = 0;
  module.walk([&](mtc::ParamOp p) {
    if (!seen.insert(p.getName()).second)
      return;
    r.numParams += p.getType().getNumElements();
    bytes += p.getType().getNumElements() * 4; // fp32 master copy
  });
  if (forward && forward.getNumArguments() > 0)
    if (auto t = dyn_cast<RankedTensorType>(forward.getArgument(0).getType()))
      r.tokensPerMicrobatch = t.getNumElements();
  r.forwardFlops = sumFlops(forward);
  r.trainStepFlops = sumFlops(train);
  r.flopsPerStep = r.trainStepFlops * double(r.numMicrobatches);
  r.paramBytes = bytes;
  r.gradBytes = train ? bytes : 0;
  r.optimizerBytes = train ? 2 * bytes : 0;
  // A distributed optimizer keeps the moments of 1/N of the parameters.
  module.walk([&](mtc::ReduceGradientsOp g) {
    if (!g.getShardOptimizerState())
      return;
    int64_t parts = mtc::getGridShape(module).size(g.getGridAxes());
    r.optimizerBytes = (r.optimizerBytes + parts - 1) / parts;
  });
  return r;
}

void mtc::printPlanReportText(const PlanReport &r, llvm::raw_ostream &os) {
  os << "plan: " << r.modelName << "\n";
  os << "  parameters            " << r.numParams << " ("
     << llvm::format("%.1f", double(r.numParams) / 1e6) << " M)\n";
  os << "  microbatches per step " << r.numMicrobatches << " x "
     << r.tokensPerMicrobatch << " tokens\n";
  os << "  FLOPs per step        " << llvm::format("%.4g", r.flopsPerStep)
     << " (forward " << llvm::format("%.4g", r.forwardFlops)
     << " per microbatch)\n";
  os << "  memory per rank       params " << human(r.paramBytes) << ", grads "
     << human(r.gradBytes) << ", optimizer " << human(r.optimizerBytes)
     << ", activations " << human(r.activationBytes) << ", peak "
     << human(r.peakBytes()) << "\n";
}

void mtc::printPlanReportJson(const PlanReport &r, llvm::raw_ostream &os) {
  llvm::json::Object o{
      {"model", r.modelName},
      {"num_params", r.numParams},
      {"num_microbatches", r.numMicrobatches},
      {"tokens_per_microbatch", r.tokensPerMicrobatch},
      {"forward_flops_per_microbatch", r.forwardFlops},
      {"train_flops_per_microbatch", r.trainStepFlops},
      {"flops_per_step", r.flopsPerStep},
      {"memory_bytes",
       llvm::json::Object{{"params", r.paramBytes},
                          {"grads", r.gradBytes},
                          {"optimizer", r.optimizerBytes},
                          {"activations", r.activationBytes},
                          {"peak", r.peakBytes()}}}};
  os << llvm::formatv("{0:2}", llvm::json::Value(std::move(o))) << "\n";
}
