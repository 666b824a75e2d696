//===- CudaEmitter.h - the CUDA emitter's state, shared by its parts -*- C++ -*-===//
//
// The CUDA emitter prints a module that went through mtc-cuda-lowering
// (mtc/Transforms/Lowering.h): CudaAnalysis.cpp reads the lowering
// passes' decisions into the tables below,
// CudaEmitter.cpp prints the forward and training functions op by op,
// CudaLanes.cpp the half-batch lanes, CudaProgram.cpp the optimizer step,
// the program_config() of the runtime's ProgramContext and the
// ProgramDesc.
//
//===----------------------------------------------------------------------===//
#ifndef MTC_CODEGEN_CUDAEMITTER_H
#define MTC_CODEGEN_CUDAEMITTER_H

#include "EmitterCommon.h"
#include "mtc/Codegen/BufferPlan.h"
#include "mtc/Codegen/Emitter.h"
#include "mtc/Transforms/Grid.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/Support/FormatVariadic.h"

namespace mtc::codegen {

/// mtc-assign-precision's decision (mtc.storage): the value is stored in
/// fp32 (else bf16).
bool storedF32(mlir::Value v);
/// An integer tensor (int32: MoE indices, positions and counts), stored as
/// it is.
bool isIntegerTensor(mlir::Value v);

class CudaEmitter {
public:
  explicit CudaEmitter(mlir::ModuleOp module);
  mlir::LogicalResult run(mtc::EmitResult &out);

private:
  // CudaEmitter.cpp
  void analyzeGradientSinks(mlir::func::FuncOp fn);
  void analyzeFusions(mlir::func::FuncOp fn);
  void readBuckets(mlir::func::FuncOp fn);
  void planFunction(mlir::func::FuncOp fn, bool eval);
  mlir::LogicalResult emitFunction(mlir::func::FuncOp fn, bool eval);
  void emitPrologue(llvm::StringRef arenaBase);
  mlir::LogicalResult emitBody(mlir::func::FuncOp fn, bool eval);
  mlir::LogicalResult emitOp(mlir::Operation *op, bool eval);
  mlir::LogicalResult emitCollective(mlir::Operation *op);
  void emitAfterGradient(mlir::Operation *op, bool eval);
  void axisCall(int axis, const std::string &call, llvm::StringRef guard = "");
  // Half-batch lanes (CudaLanes.cpp).
  void analyzeLanes(mlir::func::FuncOp fn);
  std::string laneCall(mlir::Operation *op, int h);
  std::string halfCall(mlir::Operation *op, int h);
  std::string half(mlir::Value v, int h);
  mlir::LogicalResult emitLaneRun(llvm::ArrayRef<mlir::Operation *> run,
                                  bool oneStream, bool eval);
  void emitReduceStarts(mlir::Operation *producer, int lane);
  std::string opLabel(mlir::Operation *op, llvm::StringRef suffix = "");
  std::string matmulBias(mtc::MatmulOp m);
  std::string buf(mlir::Value v);
  std::string grad(llvm::StringRef param) const;
  // Its offset in st.grads (an expression when it depends on the rank).
  std::string gradOffset(llvm::StringRef param) const;
  // CudaProgram.cpp
  mlir::LogicalResult emitOptimizer(mlir::func::FuncOp fn);
  std::string emitConfig() const;
  std::string sourceHeader(llvm::StringRef declarations,
                           llvm::StringRef syncParams) const;
  // Pipeline programs (CudaPipeline.cpp): per pipeline rank its pieces
  // (destination-passing: in[] / out[]), step and eval functions (their
  // values after the pieces' scratch in the arena), optimizer step and
  // ProgramDesc stage.
  mlir::LogicalResult runPipeline(mtc::EmitResult &out);
  mlir::LogicalResult emitPiece(mlir::func::FuncOp fn);
  mlir::LogicalResult emitStep(mlir::func::FuncOp fn, int64_t base);
  void planTransfers(mlir::func::FuncOp fn);
  mlir::LogicalResult emitPipelineOp(mlir::Operation *op);
  mlir::LogicalResult emitPipelineReturn(mlir::func::ReturnOp r);
  void line(const llvm::Twine &t) { os << "  " << t << "\n"; }

  mlir::ModuleOp module;
  ParamLayout layout;
  // What the function being printed is: a plain one (@forward,
  // @train_step), a pipeline piece, or a pipeline step or eval function.
  enum class Kind { Plain, Piece, Step };
  Kind kind = Kind::Plain;
  // Pipeline programs. The step's mtc.p2p groups run on the pp axis's
  // stream: each marks slot event p2pSlot[op] when done; the compute
  // stream waits for it before the first call that reads a received value
  // (recvWaited: done in this function), and after the call that follows a
  // group with sends (sendWaitAfter: call -> slots), whose buffers the
  // plan keeps until then.
  bool pipeline = false;
  llvm::DenseMap<mlir::Operation *, int> p2pSlot;
  llvm::DenseMap<mlir::Operation *, llvm::SmallVector<int>> sendWaitAfter;
  llvm::DenseSet<int> recvWaited;
  int64_t numP2PSlots = 0;
  int64_t pieceArena = 0;       // per rank, 2-byte units
  int64_t ppZeroElements = 0;   // mtc.sum_tied_gradients on a rank without the param
  // The optimizer's parameter table is kParamRows<rowsSuffix> (one per
  // pipeline rank).
  std::string rowsSuffix;
  mtc::GridShape grid;
  int64_t numMicrobatches = 1;
  std::string body;
  llvm::raw_string_ostream os{body};
  mtc::BufferPlan plan;
  mtc::ExecutionHints hints;
  llvm::DenseMap<mlir::Value, std::string> names;
  llvm::DenseMap<mlir::Value, std::string> sink; // value -> parameter it adds into
  llvm::DenseSet<mlir::Operation *> noOps;       // emitted as part of another op
  llvm::DenseSet<mlir::Value> unmaterialized;    // fused away: never stored
  llvm::DenseMap<mlir::Operation *, mlir::Operation *> fusedPartner; // host -> fused op
  llvm::DenseSet<mlir::Operation *> inPlaceReduce; // all_reduce over its input's storage
  // Norm backward ops whose dx is added into the residual stream's
  // gradient, in its storage (the add that summed them is a no-op).
  llvm::DenseSet<mlir::Operation *> normIntoResidual;
  // All-reduces started right after their input's producer (op -> them),
  // and each one's event slot; the most slots any function needs.
  llvm::DenseMap<mlir::Operation *, llvm::SmallVector<mlir::Operation *>>
      earlyReduces;
  llvm::DenseMap<mlir::Operation *, int> reduceSlot;
  // Early tp all-reduces that also add a replicated residual: out =
  // sum + residual (the residual add they replace is a no-op).
  struct ResidualReduce {
    mlir::Value residual, out;
  };
  llvm::DenseMap<mlir::Operation *, ResidualReduce> residualReduce;
  bool usesTpContext = false; // pc.ctx_tp: kernels inside tp collectives
  // Early tp all-reduces that run a norm's backward on their half of the
  // rows (reduce_norm_backward, mtc-place-collectives): the norm, the residual gradient it adds to, the
  // add's result (its output), where its dgamma/dbeta partial sums go in
  // pc.tp_partial (elements; -1 none), and the bias gradient summed from
  // the output's rows there too.
  struct NormReduce {
    mlir::Operation *norm;
    mlir::Value residual, out;
    int64_t gammaSlot, betaSlot;
    mlir::Operation *bias; // a reduce_leading of out, or null
    int64_t biasSlot;
  };
  llvm::DenseMap<mlir::Operation *, NormReduce> normReduce;
  // pc.tp_partial's rows (tpPartialWidth fp32 each): the parameter each
  // partial gradient belongs to, summed over tp and added to its gradient
  // on the step's last microbatch.
  llvm::SmallVector<std::string> tpPartialRows;
  int64_t tpPartialWidth = 0, tpPartialElements = 0;
  void readNormReduce(mlir::Operation *ar, mlir::Operation *producer);
  // `part`: the storage of the part of a value the all-reduce covers (the
  // whole, or a lane's half).
  void emitNormReduce(const NormReduce &nr,
                      llvm::function_ref<std::string(mlir::Value)> part,
                      llvm::StringRef data, int64_t n);
  void emitTpPartialFlush();
  // Row-parallel GEMMs that add the linear's bias on the tp axis's rank 0
  // (before the all-reduce of the partial products).
  struct RankZeroBias {
    mlir::Value bias;
    int axis = 2;
  };
  llvm::DenseMap<mlir::Operation *, RankZeroBias> rankZeroBias;
  int64_t numReduceSlots = 0;
  // The most elements of a bf16 tp all-reduce started early (the staging
  // size of the copy-engine path, tp_all_reduce).
  int64_t peerMaxElements = 0;
  int64_t arena = 0;                             // 2-byte units

  // Tensor parallelism: a parameter gradient that is a collective over tp of
  // partial gradients (sequence parallelism: norm weights and row-parallel
  // biases all-reduced; the position table all-gathered) is accumulated
  // partial into its fp32 buffer (its rank's rows for a gather), and the
  // collective runs there once, on the step's last microbatch, right after
  // the parameter's last accumulate_grad.
  struct GradCollective {
    std::string param;
    bool gather = false; // all_gather along dim 0, else all_reduce (sum)
    int axis = 2;
    int64_t chunk = 0;   // elements of one rank's slice (gather)
  };
  llvm::DenseMap<mlir::Operation *, llvm::SmallVector<GradCollective>>
      gradCollectivesAfter;
  llvm::StringMap<int64_t> gatheredChunk; // param -> its rank's slice size

  // Data parallelism without a sharded optimizer: the gradient buffer in
  // contiguous buckets, each all-reduced over dp on the communication
  // stream as soon as the backward pass of the step's last microbatch has
  // finished every gradient in it.
  struct Bucket {
    int64_t begin = 0, size = 0; // elements of the gradient buffer
  };
  bool bucketed = false;
  llvm::SmallVector<Bucket> buckets;
  llvm::DenseMap<mlir::Operation *, llvm::SmallVector<int>> bucketsAfter;

  // Tensor parallelism without sp, batch even: the forward pass (ops
  // before the loss) runs as two lanes of half the batch, lane 0 on the
  // compute stream and lane 1 on a second one, so that one lane's tp
  // all-reduces run while the other lane computes. `laneOps`: the ops of
  // the function emitted that way; `usesLanes`: some function has any.
  llvm::DenseSet<mlir::Operation *> laneOps;
  bool usesLanes = false;
  // --tp-backward-lanes (module attribute mtc.tp_backward_lanes): the
  // backward pass in lanes too, both on the compute stream, staggered at
  // the all-reduce waits. Its weight-gradient work (`laneWholeOps`) runs
  // whole, once both lanes have passed it.
  bool backwardLanes = false;
  llvm::DenseSet<mlir::Operation *> laneWholeOps;
  struct LaneRun {
    mlir::Operation *first, *last;
    bool oneStream; // both lanes on the compute stream (the backward's)
  };
  llvm::SmallVector<LaneRun> laneRuns;
  // While a run is emitted: lane 1's context ("ctx1", or "ctx" on one
  // stream).
  const char *lane1Ctx = "ctx1";

  // Device buffers of the ProgramContext sized by the ops (elements).
  int64_t tpScratch = 0; // bf16: reorderings around gathers/scatters
  int64_t ceRows = 0;    // rows of the vocabulary-parallel cross-entropy
};

} // namespace mtc::codegen

#endif // MTC_CODEGEN_CUDAEMITTER_H
