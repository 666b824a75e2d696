//===- MtcKernels.cpp - the kernel table: op -> runtime kernel call -------===//
//
// KernelOpInterface::getKernelCall of the ops whose kernels take their
// operands, results and attributes directly (the unary activations' rows
// are generated from MtcOps.td). Each row names the kernel of
// runtime/include/mtc/rt/host_kernels.h and cuda_kernels.h (which take the
// same arguments, the CUDA one after a Context) and marks the argument that
// counts batch-proportional work, so a code generator that runs the op on
// half the batch can halve it. The code generators print these rows and
// know nothing else about these ops.
//
//===----------------------------------------------------------------------===//
#include "mtc/Dialect/MtcDialect.h"

#include "llvm/Support/FormatVariadic.h"

using namespace mlir;
using namespace mtc;

std::string mtc::kernel_arg::integer(int64_t v) { return std::to_string(v); }
std::string mtc::kernel_arg::f32(FloatAttr a) {
  return llvm::formatv("{0:e9}", a.getValueAsDouble()).str() + "f";
}
std::string mtc::kernel_arg::flag(bool v) { return v ? "true" : "false"; }

namespace {
using kernel_arg::f32;
using kernel_arg::flag;
using kernel_arg::integer;

int64_t numel(Value v) {
  return cast<RankedTensorType>(v.getType()).getNumElements();
}
ArrayRef<int64_t> shapeOf(Value v) {
  return cast<RankedTensorType>(v.getType()).getShape();
}
/// Rows of an activation flattened to (rows, last dim).
int64_t rows(Value v) { return numel(v) / shapeOf(v).back(); }
/// An optional operand: its buffer, or a null pointer.
std::string optional(BufferName buf, Value v) {
  return v ? buf(v) : std::string("nullptr");
}
/// Head size of a fused QKV tensor (B, S, (H + 2 KV) Dh).
int64_t headDim(Value qkv, int64_t heads, int64_t kvHeads) {
  return shapeOf(qkv)[2] / (heads + 2 * kvHeads);
}
} // namespace

KernelCall GeluOp::getKernelCall(BufferName buf) {
  int64_t n = numel(getResult());
  return {"gelu_forward",
          {buf(getInput()), buf(getResult()), integer(n),
           flag(getApproximate() == GeluApprox::tanh)},
          2, n};
}

KernelCall GeluGradOp::getKernelCall(BufferName buf) {
  int64_t n = numel(getResult());
  return {"gelu_backward",
          {buf(getInput()), buf(getDout()), buf(getResult()), integer(n),
           flag(getApproximate() == GeluApprox::tanh)},
          3, n};
}

KernelCall SwigluOp::getKernelCall(BufferName buf) {
  int64_t n = numel(getResult());
  return {"swiglu_forward",
          {buf(getGate()), buf(getUp()), buf(getResult()), integer(n)},
          3, n};
}

KernelCall SwigluGradOp::getKernelCall(BufferName buf) {
  int64_t n = numel(getDout());
  return {"swiglu_backward",
          {buf(getGate()), buf(getUp()), buf(getDout()), buf(getDgate()),
           buf(getDup()), integer(n)},
          5, n};
}

KernelCall LayerNormOp::getKernelCall(BufferName buf) {
  int64_t r = rows(getResult());
  return {"layer_norm_forward",
          {buf(getInput()), buf(getGamma()), optional(buf, getBeta()),
           buf(getResult()), integer(r), integer(shapeOf(getResult()).back()),
           f32(getEpsAttr())},
          4, r};
}

KernelCall RmsNormOp::getKernelCall(BufferName buf) {
  int64_t r = rows(getResult());
  return {"rms_norm_forward",
          {buf(getInput()), buf(getGamma()), buf(getResult()), integer(r),
           integer(shapeOf(getResult()).back()), f32(getEpsAttr())},
          3, r};
}

KernelCall RopeOp::getKernelCall(BufferName buf) {
  auto s = shapeOf(getResult());
  return {"rope",
          {buf(getInput()), buf(getResult()), integer(s[0]), integer(s[1]),
           integer(getHeads()), integer(getKvHeads()),
           integer(headDim(getResult(), getHeads(), getKvHeads())),
           f32(getThetaAttr()), flag(getInverse())},
          2, s[0]};
}

KernelCall AttentionOp::getKernelCall(BufferName buf) {
  auto s = shapeOf(getQkv());
  return {"attention_forward",
          {buf(getQkv()), optional(buf, getMask()), buf(getResult()),
           buf(getLse()), integer(s[0]), integer(s[1]), integer(getHeads()),
           integer(getKvHeads()), integer(getHeadDim()), flag(getCausal()),
           f32(getScaleAttr())},
          4, s[0]};
}

KernelCall AttentionGradOp::getKernelCall(BufferName buf) {
  auto s = shapeOf(getQkv());
  return {"attention_backward",
          {buf(getQkv()), optional(buf, getMask()), buf(getOut()),
           buf(getLse()), buf(getDout()), buf(getResult()), integer(s[0]),
           integer(s[1]), integer(getHeads()), integer(getKvHeads()),
           integer(headDim(getQkv(), getHeads(), getKvHeads())),
           flag(getCausal()), f32(getScaleAttr())},
          6, s[0]};
}
