//===- MtcInterfaces.td - interfaces of mtc ops ------------*- tablegen -*-===//
//
// The questions passes ask an op, answered by the op (never by isa<> chains
// in the passes):
//   GradientOpInterface  how to differentiate it        (mtc-autodiff)
//   CostOpInterface      how much work it does          (plan report, MFU)
//   KernelOpInterface    which runtime kernel runs it   (both code generators)
//   PartitionOpInterface how it runs on tp-split operands (mtc-partition)
// How an op may be split across a device grid is upstream MLIR's
// ShardingInterface (mlir/Dialect/Shard/Interfaces), implemented in
// MtcSharding.cpp.
//
//===----------------------------------------------------------------------===//

#ifndef MTC_INTERFACES_TD
#define MTC_INTERFACES_TD

include "mlir/IR/OpBase.td"

def Mtc_GradientOpInterface : OpInterface<"GradientOpInterface"> {
  let description = [{
    The gradient rule of an op, used by `mtc-autodiff`. Given the gradients
    of the op's results (a null Value for a result nothing depends on), the
    rule builds, at the builder's insertion point, the IR that computes the
    gradient of each operand, and returns them in operand order (a null
    Value for an operand that has no gradient, such as token ids).

    Rules may use the op's operands and results (the forward values): the
    recompute planner later decides whether those are kept or recomputed.
  }];
  let cppNamespace = "::mtc";
  let methods = [
    InterfaceMethod<
      /*desc=*/"Builds the operands' gradients from the results' gradients.",
      /*retTy=*/"::llvm::LogicalResult",
      /*methodName=*/"buildGradient",
      /*args=*/(ins "::mlir::OpBuilder &":$builder,
                    "::llvm::ArrayRef<::mlir::Value>":$resultGrads,
                    "::llvm::SmallVectorImpl<::mlir::Value> &":$operandGrads)>
  ];
}

def Mtc_CostOpInterface : OpInterface<"CostOpInterface"> {
  let description = [{
    The work an op does, in floating-point operations (a multiply-add counts
    2) and in the fewest bytes it must move through memory (each operand read
    once, each result written once, at the operands' element sizes). The plan
    report adds these up; MFU divides model FLOPs by time.
  }];
  let cppNamespace = "::mtc";
  let methods = [
    InterfaceMethod<"Floating-point operations of one execution.",
      "double", "getFlops">,
    InterfaceMethod<"Bytes read and written by one execution.",
      "double", "getBytesMoved", (ins), [{}], [{
        return ::mtc::defaultBytesMoved($_op);
      }]>
  ];
}

def Mtc_KernelOpInterface : OpInterface<"KernelOpInterface"> {
  let description = [{
    The runtime kernel that executes the op, and its arguments: the one
    table both code generators print from. The host kernel
    (`runtime/include/mtc/rt/host_kernels.h`, fp32) and the CUDA kernel
    (`cuda_kernels.h`, bf16, after a `Context`) of such an op have the same
    name and take the same arguments, so one row serves both targets. An op
    without this interface is lowered by a code generator's own rule (a
    fused GEMM, a collective, a gradient sink); an op with it needs nothing
    in the code generators.
  }];
  let cppNamespace = "::mtc";
  let methods = [
    InterfaceMethod<
      /*desc=*/"The kernel call, naming values with `buf`.",
      /*retTy=*/"::mtc::KernelCall",
      /*methodName=*/"getKernelCall",
      /*args=*/(ins "::mtc::BufferName":$buf)>
  ];
}

def Mtc_PartitionOpInterface : OpInterface<"PartitionOpInterface"> {
  let description = [{
    The op's tensor-parallel rule, used by `mtc-partition`: given the
    distributions of its operands (whole, a slice of one dimension, or a
    partial sum; `mtc::Partitioner`, MtcPartition.h), which distributions it
    runs on and what its results then are. The rule asks the partitioner
    for its operands in the distributions it wants (the partitioner inserts
    the collectives) and builds the rank's op. Ops without it follow the
    Elementwise trait's rule, or run on whole values.
  }];
  let cppNamespace = "::mtc";
  let methods = [
    InterfaceMethod<
      /*desc=*/"Builds the rank's op(s) for this op and records its results.",
      /*retTy=*/"::llvm::LogicalResult",
      /*methodName=*/"partition",
      /*args=*/(ins "::mtc::Partitioner &":$partitioner)>
  ];
}

#endif // MTC_INTERFACES_TD
