//===- MtcCost.cpp - FLOP counts of mtc ops -------------------------------===//
//
// CostOpInterface::getFlops. Matrix products count 2 FLOPs per multiply-add.
// Attention counts the full S x S score matrix even when causal, as the
// Megatron papers and PyTorch's benchmark (12 L d S per token) do, so MFU is
// comparable; elementwise ops count a few FLOPs per element (they are
// bandwidth-bound, and their count only matters for hardware-FLOP totals).
// Bytes moved default to every operand read once and every result written
// once (defaultBytesMoved).
//
//===----------------------------------------------------------------------===//
#include "mtc/Dialect/MtcDialect.h"

using namespace mlir;
using namespace mtc;

namespace {
double numel(Value v) {
  return double(cast<RankedTensorType>(v.getType()).getNumElements());
}

/// 2 * B * H * S * S * Dh: one of the two batched products of attention.
double attentionProductFlops(Value qkv, int64_t heads, int64_t kvHeads) {
  auto t = cast<RankedTensorType>(qkv.getType());
  double b = t.getDimSize(0), s = t.getDimSize(1);
  double dh = double(t.getDimSize(2)) / double(heads + 2 * kvHeads);
  return 2.0 * b * double(heads) * s * s * dh;
}
} // namespace

double ParamOp::getFlops() { return 0; }
double EmbeddingOp::getFlops() { return 0; }
double EmbeddingGradOp::getFlops() { return numel(getDout()); }
double AddOp::getFlops() { return numel(getResult()); }
double ReduceLeadingOp::getFlops() { return numel(getInput()); }
double GeluOp::getFlops() { return 8 * numel(getResult()); }
double GeluGradOp::getFlops() { return 12 * numel(getResult()); }
double SwigluOp::getFlops() { return 6 * numel(getResult()); }
double SwigluGradOp::getFlops() { return 10 * numel(getDout()); }
double DropoutOp::getFlops() { return 2 * numel(getResult()); }
double MatmulOp::getFlops() {
  double f = 2.0 * double(getM()) * double(getN()) * double(getK());
  if (getBias())
    f += double(getM()) * double(getN());
  return f;
}
double LayerNormOp::getFlops() { return 8 * numel(getResult()); }
double LayerNormGradOp::getFlops() { return 14 * numel(getDinput()); }
double RmsNormOp::getFlops() { return 5 * numel(getResult()); }
double RmsNormGradOp::getFlops() { return 10 * numel(getDinput()); }
double RopeOp::getFlops() { return 3 * numel(getResult()); }
// QK^T and PV.
double AttentionOp::getFlops() {
  return 2 * attentionProductFlops(getQkv(), getHeads(), getKvHeads());
}
// dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q (flash-attention's
// backward also recomputes QK^T; that is hardware, not model, work).
double AttentionGradOp::getFlops() {
  return 4 * attentionProductFlops(getQkv(), getHeads(), getKvHeads());
}
double CrossEntropyOp::getFlops() { return 4 * numel(getLogits()); }
double CrossEntropyGradOp::getFlops() { return 4 * numel(getLogits()); }
double AccumulateGradOp::getFlops() { return numel(getGrad()); }
