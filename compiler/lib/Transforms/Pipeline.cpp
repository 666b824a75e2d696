//===- Pipeline.cpp - the pipeline passes' shared reading of the IR -------===//
#include "mtc/Transforms/Pipeline.h"

#include "mtc/Dialect/MtcDialect.h"
#include "mlir/IR/BuiltinAttributes.h"

using namespace mlir;

llvm::StringRef mtc::pieceKindName(PieceKind k) {
  switch (k) {
  case PieceKind::Forward:
    return "forward";
  case PieceKind::Backward:
    return "backward";
  case PieceKind::Weight:
    return "weight";
  case PieceKind::Eval:
    return "eval";
  }
  return "forward";
}

std::optional<mtc::PieceKind> mtc::parsePieceKind(llvm::StringRef s) {
  for (PieceKind k : {PieceKind::Forward, PieceKind::Backward,
                      PieceKind::Weight, PieceKind::Eval})
    if (pieceKindName(k) == s)
      return k;
  return std::nullopt;
}

std::optional<mtc::PieceInfo> mtc::getPieceInfo(func::FuncOp fn) {
  auto d = fn->getAttrOfType<DictionaryAttr>(kPieceAttr);
  if (!d)
    return std::nullopt;
  auto chunk = d.getAs<IntegerAttr>("chunk");
  auto kind = d.getAs<StringAttr>("kind");
  if (!chunk || !kind)
    return std::nullopt;
  std::optional<PieceKind> k = parsePieceKind(kind.getValue());
  if (!k)
    return std::nullopt;
  return PieceInfo{chunk.getInt(), *k};
}

std::string mtc::pieceFunctionName(int64_t chunk, PieceKind kind) {
  return "chunk" + std::to_string(chunk) + "_" + pieceKindName(kind).str();
}

mtc::PipelineConfig mtc::getPipelineConfig(ModuleOp module) {
  PipelineConfig c;
  if (auto p = module->getAttrOfType<DictionaryAttr>("mtc.parallel")) {
    if (auto a = p.getAs<IntegerAttr>("pp"))
      c.pp = a.getInt();
    if (auto a = p.getAs<IntegerAttr>("virtual_stages"))
      c.virtualStages = a.getInt();
    if (auto a = p.getAs<StringAttr>("schedule"))
      c.schedule = a.str();
    if (auto a = p.getAs<StringAttr>("layout"))
      c.layout = a.str();
  }
  if (auto t = module->getAttrOfType<DictionaryAttr>("mtc.training"))
    if (auto a = t.getAs<IntegerAttr>("num_microbatches"))
      c.microbatches = a.getInt();
  return c;
}

bool mtc::isPipelineModule(ModuleOp module) {
  for (auto fn : module.getOps<func::FuncOp>())
    if (getPipelineRank(fn) || getPieceInfo(fn))
      return true;
  return false;
}

std::optional<int64_t> mtc::getPipelineRank(func::FuncOp fn) {
  if (auto a = fn->getAttrOfType<IntegerAttr>(kPipelineRankAttr))
    return a.getInt();
  return std::nullopt;
}

std::vector<func::FuncOp> mtc::functionsOfRank(ModuleOp module, int64_t rank) {
  const int64_t pp = getPipelineConfig(module).pp;
  std::vector<func::FuncOp> out;
  for (auto fn : module.getOps<func::FuncOp>()) {
    if (std::optional<PieceInfo> p = getPieceInfo(fn)) {
      if (p->chunk % pp == rank)
        out.push_back(fn);
    } else if (getPipelineRank(fn) == rank) {
      out.push_back(fn);
    }
  }
  return out;
}

std::string mtc::stepFunctionName(int64_t rank) {
  return "pipeline_step_pp" + std::to_string(rank);
}
std::string mtc::evalFunctionName(int64_t rank) {
  return "pipeline_eval_pp" + std::to_string(rank);
}
std::string mtc::optimizerFunctionName(int64_t rank) {
  return "optimizer_step_pp" + std::to_string(rank);
}

FailureOr<mtc::RankFunctions> mtc::getRankFunctions(ModuleOp module,
                                                    int64_t rank) {
  RankFunctions f;
  for (func::FuncOp fn : functionsOfRank(module, rank))
    if (getPieceInfo(fn))
      f.pieces.push_back(fn);
  f.step = module.lookupSymbol<func::FuncOp>(stepFunctionName(rank));
  f.eval = module.lookupSymbol<func::FuncOp>(evalFunctionName(rank));
  f.optimizer = module.lookupSymbol<func::FuncOp>(optimizerFunctionName(rank));
  if (!f.step || !f.eval || !f.optimizer)
    return module.emitError("pipeline rank ")
           << rank << " lacks its step, eval or optimizer function (run "
           << "mtc-pipeline-schedule)";
  return f;
}
