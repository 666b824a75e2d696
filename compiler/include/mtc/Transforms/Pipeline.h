//===- Pipeline.h - pipeline parallelism in the IR --------------*- C++ -*-===//
//
// What the pipeline passes write, and what the verifier, the plan report and
// the code generators read:
//
//  mtc-pipeline-stages   `mtc.chunk = c` on every op of @forward and
//                        @train_step: the model chunk (0 .. pp * V - 1, in
//                        model order) that runs it; chunk c runs on
//                        pipeline rank c % pp. The module's
//                        `mtc.pipeline_layout` lists each chunk's layers in
//                        Megatron's layout syntax.
//  mtc-pipeline-split    one function per piece: @chunk<c>_forward,
//                        @chunk<c>_backward (and @chunk<c>_weight under a
//                        zero-bubble schedule: the weight-gradient half of
//                        the backward pass), @chunk<c>_eval (from @forward),
//                        and @optimizer_step_pp<r> per pipeline rank.
//                        Pieces carry `mtc.piece = {chunk, kind}`; their
//                        arguments and results `mtc.role` and `mtc.index`
//                        (which activation, gradient or saved value).
//  mtc-pipeline-schedule @pipeline_step_pp<r>(tokens (M,B,S), targets): rank
//                        r's whole step, the pieces called in schedule order
//                        (`mtc.microbatch` on each call) between `mtc.p2p`
//                        groups; @pipeline_eval_pp<r> for validation.
//  mtc-verify-pipeline   proves each step deadlock-free (simulation of every
//                        rank's order, mtc/Pipeline/Schedule.h).
//
//===----------------------------------------------------------------------===//
#ifndef MTC_TRANSFORMS_PIPELINE_H
#define MTC_TRANSFORMS_PIPELINE_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mtc/Dialect/MtcDialect.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/raw_ostream.h"

#include <optional>
#include <string>
#include <vector>

namespace mtc {

inline constexpr llvm::StringLiteral kChunkAttr = "mtc.chunk";
inline constexpr llvm::StringLiteral kPieceAttr = "mtc.piece";
inline constexpr llvm::StringLiteral kRoleAttr = "mtc.role";
inline constexpr llvm::StringLiteral kIndexAttr = "mtc.index";
/// On a forward piece's input activation that the backward piece needs
/// too: its index among the chunk's saved values.
inline constexpr llvm::StringLiteral kSavedAttr = "mtc.saved";
inline constexpr llvm::StringLiteral kPipelineRankAttr = "mtc.pipeline_rank";
inline constexpr llvm::StringLiteral kMicrobatchAttr = "mtc.microbatch";
/// On @optimizer_step_pp<r>'s mtc.grad_norm: the norm is summed over the
/// pipeline ranks; parameters listed in `mtc.pp_skip_params` are counted
/// on another rank (a tied copy).
inline constexpr llvm::StringLiteral kPpSumAttr = "mtc.pp_sum";
inline constexpr llvm::StringLiteral kPpSkipParamsAttr = "mtc.pp_skip_params";

enum class PieceKind { Forward, Backward, Weight, Eval };
llvm::StringRef pieceKindName(PieceKind k);
std::optional<PieceKind> parsePieceKind(llvm::StringRef s);

/// A piece function's `mtc.piece`.
struct PieceInfo {
  int64_t chunk = 0;
  PieceKind kind = PieceKind::Forward;
};
std::optional<PieceInfo> getPieceInfo(mlir::func::FuncOp fn);
std::string pieceFunctionName(int64_t chunk, PieceKind kind);

/// Pipeline configuration from the module's `mtc.parallel`.
struct PipelineConfig {
  int64_t pp = 1, virtualStages = 1, microbatches = 1;
  std::string schedule = "1f1b", layout;
  int64_t chunks() const { return pp * virtualStages; }
};
PipelineConfig getPipelineConfig(mlir::ModuleOp module);

/// True once mtc-pipeline-split ran: the module's step is a pipeline's.
bool isPipelineModule(mlir::ModuleOp module);

/// The pipeline rank of @pipeline_step_pp<r>, @pipeline_eval_pp<r>,
/// @optimizer_step_pp<r>.
std::optional<int64_t> getPipelineRank(mlir::func::FuncOp fn);

/// Every function of pipeline rank `rank`: its pieces (chunks c with
/// c % pp == rank), step, eval and optimizer functions.
std::vector<mlir::func::FuncOp> functionsOfRank(mlir::ModuleOp module,
                                                int64_t rank);

/// @pipeline_step_pp<r>, @pipeline_eval_pp<r>, @optimizer_step_pp<r>.
std::string stepFunctionName(int64_t rank);
std::string evalFunctionName(int64_t rank);
std::string optimizerFunctionName(int64_t rank);

/// What a code generator emits for one pipeline rank.
struct RankFunctions {
  std::vector<mlir::func::FuncOp> pieces; // in module order
  mlir::func::FuncOp step, eval, optimizer;
};
/// Fails (with an error on the module) when the rank lacks its step, eval
/// or optimizer function.
mlir::FailureOr<RankFunctions> getRankFunctions(mlir::ModuleOp module,
                                                int64_t rank);

/// The schedule of every rank, its simulation and the per-stage figures
/// the plan report prints; filled by analyzePipeline.
struct PipelineAnalysis {
  PipelineConfig config;
  std::vector<double> stageFlops;        // per rank, one step, its pieces
  std::vector<double> bubble;            // per rank, from the simulation (costs = FLOPs)
  std::vector<int> peakInFlight;         // per rank, microbatch-chunks held
  std::vector<double> heldBytes;         // per rank, peak bytes of held values
  double idealBubble = 0;                // the schedule's own figure
  std::string ordersText;                // formatOrders
  std::string svg;                       // renderSvg
};
/// Reads every rank's @pipeline_step back into a schedule and simulates it
/// (Schedule.h: rendezvous semantics). Reports a deadlock, a mismatched
/// transfer or a broken dataflow at the offending rank's op and fails.
mlir::FailureOr<PipelineAnalysis> analyzePipeline(mlir::ModuleOp module);

/// The plan report's pipeline section: per pipeline rank its layers, its
/// share of the step's FLOPs, the simulated idle fraction against the
/// schedule's own figure, its peak of microbatches in flight, and its
/// memory (parameters, gradients and optimizer state of its own
/// parameters; `arenaBytes[r]`, the emitter's activation arena of rank r,
/// which holds every value in flight).
void printPipelineReport(mlir::ModuleOp module, const PipelineAnalysis &a,
                         llvm::ArrayRef<int64_t> arenaBytes,
                         llvm::StringRef target, llvm::raw_ostream &os);

} // namespace mtc

#endif // MTC_TRANSFORMS_PIPELINE_H
