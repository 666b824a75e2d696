//===- MtcDialect.h - the mtc dialect ---------------------------*- C++ -*-===//
//
// Include this one header to use the mtc dialect: dialect, attributes,
// interfaces and ops.
//
//===----------------------------------------------------------------------===//
#ifndef MTC_DIALECT_MTCDIALECT_H
#define MTC_DIALECT_MTCDIALECT_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "mtc/Dialect/MtcPartition.h"
#include "llvm/ADT/STLFunctionalExtras.h"
#include "llvm/ADT/SmallVector.h"
#include <string>

namespace mtc {
/// The symbol of the module's device grid, `shard.grid @mtc_grid` (axes
/// pp x dp x tp; mtc/Transforms/Grid.h). The module verifier checks it
/// against the module's `mtc.parallel`.
constexpr llvm::StringLiteral kGridName = "mtc_grid";
/// The experts' grid when the plan has expert parallelism (ep > 1),
/// `shard.grid @mtc_expert_grid` with axes pp x (dp / ep) x ep x tp: the same
/// devices in the same order, the dp axis cut into expert-data-parallel
/// (dp / ep) and expert-parallel (ep) axes, as Megatron builds its expert
/// groups (mtc/Transforms/Grid.h).
constexpr llvm::StringLiteral kExpertGridName = "mtc_expert_grid";

/// Bytes of every operand and result at their element sizes: the default
/// answer of CostOpInterface::getBytesMoved.
double defaultBytesMoved(mlir::Operation *op);

/// How a code generator names a value in the code it prints (an arena
/// offset, a parameter's place, a function argument).
using BufferName = llvm::function_ref<std::string(mlir::Value)>;

/// One call of a runtime kernel: KernelOpInterface's answer. The host
/// kernel (runtime/include/mtc/rt/host_kernels.h) and the CUDA kernel
/// (cuda_kernels.h, after a Context) of an op take these same arguments.
struct KernelCall {
  std::string name;
  llvm::SmallVector<std::string> args;
  /// The argument that counts the op's batch-proportional work (elements,
  /// rows or sequences) and its value: a code generator that runs the op
  /// on part of the batch (a half-batch lane) replaces it. -1: none.
  int countArg = -1;
  int64_t count = 0;
};

/// Argument spellings shared by the kernel table (MtcKernels.cpp) and the
/// ops whose rows ODS generates.
namespace kernel_arg {
std::string integer(int64_t v);
std::string f32(mlir::FloatAttr a);
std::string flag(bool v);
} // namespace kernel_arg

/// Module attributes that carry `mtc compile`'s code-generation options
/// into the IR (verified in MtcModuleAttrs.cpp, read by the CUDA lowering
/// passes and code generator, shown by --emit=lowered):
///   mtc.tp_backward_lanes (unit)  the backward pass in half-batch lanes
///   mtc.tp_lanes = "one-stream"   both lanes on the compute stream
///                                 (default "two-streams")
///   mtc.tp_allreduce = "nccl"     tp all-reduces on NCCL, never the copy
///                                 engines (default "auto")
inline constexpr llvm::StringLiteral kTpBackwardLanesAttr = "mtc.tp_backward_lanes";
inline constexpr llvm::StringLiteral kTpLanesAttr = "mtc.tp_lanes";
inline constexpr llvm::StringLiteral kTpAllReduceAttr = "mtc.tp_allreduce";
/// Written by mtc-pipeline-stages: each pipeline chunk's part of the model in
/// Megatron's layout syntax ("E,t*3", "t*4", ..., "t*3,L"), one string per
/// chunk.
inline constexpr llvm::StringLiteral kPipelineLayoutAttr = "mtc.pipeline_layout";
/// On an op mtc-plan-recompute cloned into the backward pass: a forward op
/// computed again, whose FLOPs are hardware work, not model work.
inline constexpr llvm::StringLiteral kRecomputedAttr = "mtc.recomputed";

namespace OpTrait {
/// The activation between an MLP's two linears (gelu, swiglu,
/// squared_relu): Megatron's tensor-parallel plan makes the linears that
/// produce its operands column-parallel and those that consume its result
/// row-parallel (mtc-shard-tensor-parallel).
template <typename ConcreteType>
class MlpActivation
    : public mlir::OpTrait::TraitBase<ConcreteType, MlpActivation> {};
} // namespace OpTrait
} // namespace mtc

#include "mtc/Dialect/MtcDialect.h.inc"
#include "mtc/Dialect/MtcEnums.h.inc"
#include "mtc/Dialect/MtcInterfaces.h.inc"

#define GET_ATTRDEF_CLASSES
#include "mtc/Dialect/MtcAttrs.h.inc"

#define GET_OP_CLASSES
#include "mtc/Dialect/MtcOps.h.inc"

namespace mtc {
/// Registers the upstream ShardingInterface models of mtc ops
/// (MtcSharding.cpp). Call on a DialectRegistry before creating a context.
void registerShardingInterfaceExternalModels(mlir::DialectRegistry &registry);

/// One entry of `mtc.p2p`'s transfers (the op's verifier checked it).
struct PipelineTransfer {
  bool send = false;     // else a receive
  bool gradient = false; // else an activation
  int64_t microbatch = 0, chunk = 0;
  int64_t index = 0; // which tensor of the boundary (most have one)
  int64_t peer = 0;
};
/// Reads a transfer dictionary; on failure returns false and sets `why`.
bool parsePipelineTransfer(mlir::Attribute attr, PipelineTransfer &out,
                           std::string &why);
mlir::DictionaryAttr buildPipelineTransfer(mlir::MLIRContext *ctx,
                                           const PipelineTransfer &t);
} // namespace mtc

#endif // MTC_DIALECT_MTCDIALECT_H
