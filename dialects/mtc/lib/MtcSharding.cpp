//===- MtcSharding.cpp - upstream ShardingInterface for mtc ops -----------===//
//
// How an mtc op may be split across a device grid, answered through MLIR's
// `shard` dialect ShardingInterface (loop iterators + indexing maps), so that
// upstream `sharding-propagation` and `shard-partition` work on mtc programs.
//
// Implemented here:
//   - elementwise ops (the activations and their gradients, one row in
//     attachElementwise below; add of equal shapes): every dimension
//     parallel, identity maps;
//   - matmul without transpose_a and with a 2-D rhs: loops (rows..., n, k),
//     k a sum reduction, so splitting k (row parallel) yields partial sums
//     that the partitioner completes with an all_reduce.
// Not (yet) here, deliberately: norms and attention (their last/head
// dimension must stay whole or be split by heads, which needs custom
// partitioning), dropout (its mask is keyed by the global element index, so
// partitioning must pass each shard's offset) and a matmul whose reduction is
// split while it carries a bias (the bias must be added once, after the
// reduction). Those come with the tensor/sequence-parallel passes.
//
//===----------------------------------------------------------------------===//
#include "mtc/Dialect/MtcDialect.h"

#include "mlir/Dialect/Shard/Interfaces/ShardingInterface.h"
#include "mlir/Dialect/Shard/Interfaces/ShardingInterfaceImpl.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/IR/AffineMap.h"

using namespace mlir;
using namespace mlir::shard;

namespace {

/// Matmul: loops are lhs's leading dims, then n, then k (sum reduction).
struct MatmulShardingModel
    : public ShardingInterface::ExternalModel<MatmulShardingModel,
                                              mtc::MatmulOp> {
  static bool supported(mtc::MatmulOp op) {
    return !op.getTransposeA() &&
           cast<RankedTensorType>(op.getRhs().getType()).getRank() == 2;
  }

  SmallVector<utils::IteratorType> getLoopIteratorTypes(Operation *op) const {
    auto mm = cast<mtc::MatmulOp>(op);
    if (!supported(mm))
      return {};
    int64_t lead = cast<RankedTensorType>(mm.getLhs().getType()).getRank() - 1;
    SmallVector<utils::IteratorType> types(lead + 1,
                                           utils::IteratorType::parallel);
    types.push_back(utils::IteratorType::reduction);
    return types;
  }

  SmallVector<ReductionKind> getReductionLoopIteratorKinds(Operation *) const {
    return {ReductionKind::Sum};
  }

  SmallVector<AffineMap> getIndexingMaps(Operation *op) const {
    auto mm = cast<mtc::MatmulOp>(op);
    if (!supported(mm))
      return {};
    MLIRContext *ctx = op->getContext();
    int64_t lead = cast<RankedTensorType>(mm.getLhs().getType()).getRank() - 1;
    int64_t numLoops = lead + 2;
    SmallVector<AffineExpr> rows;
    for (int64_t i = 0; i < lead; ++i)
      rows.push_back(getAffineDimExpr(i, ctx));
    AffineExpr n = getAffineDimExpr(lead, ctx);
    AffineExpr k = getAffineDimExpr(lead + 1, ctx);
    SmallVector<AffineExpr> lhs(rows), res(rows);
    lhs.push_back(k);
    res.push_back(n);
    SmallVector<AffineMap> maps;
    maps.push_back(AffineMap::get(numLoops, 0, lhs, ctx));
    maps.push_back(AffineMap::get(
        numLoops, 0,
        mm.getTransposeB() ? ArrayRef<AffineExpr>{n, k}
                           : ArrayRef<AffineExpr>{k, n},
        ctx));
    if (mm.getBias())
      maps.push_back(AffineMap::get(numLoops, 0, {n}, ctx));
    maps.push_back(AffineMap::get(numLoops, 0, res, ctx));
    return maps;
  }

  LogicalResult partition(Operation *op, ArrayRef<Value> partitionedOperands,
                          ArrayRef<Sharding> operandShardings,
                          ArrayRef<Sharding> resultShardings,
                          IRMapping &partitionMap,
                          SymbolTableCollection &symbolTable,
                          OpBuilder &builder) const {
    auto mm = cast<mtc::MatmulOp>(op);
    if (!supported(mm))
      return op->emitOpError("cannot be partitioned: only matmuls without "
                             "transpose_a and with a 2-D rhs have a sharding "
                             "rule");
    SmallVector<utils::IteratorType> loops = getLoopIteratorTypes(op);
    ShardingArray axes = getGridAxisAssignmentForLoopIterators(
        operandShardings, resultShardings, loops, getIndexingMaps(op));
    bool splitK = isAtLeastOneReductionIteratorSharded(loops, axes);
    if (splitK && mm.getBias())
      return op->emitOpError(
          "cannot split the contraction of a matmul with a bias: the bias "
          "would be added once per shard; split the bias into an mtc.add "
          "after the reduction");
    partitionTriviallyShardableOperation(*op, partitionedOperands,
                                         operandShardings, resultShardings,
                                         partitionMap, symbolTable, builder);
    if (splitK) {
      Value partial = partitionMap.lookup(op->getResult(0));
      Value sum = AllReduceOp::create(builder, op->getLoc(), partial,
                                      resultShardings[0].getGrid(),
                                      getReductionGridAxes(loops, axes),
                                      ReductionKind::Sum);
      partitionMap.map(op->getResult(0), sum);
    }
    return success();
  }
};

/// Elementwise add: upstream's elementwise model when the shapes agree; a
/// broadcast add (rhs a suffix of lhs) maps rhs to the trailing loops.
struct AddShardingModel
    : public ShardingInterface::ExternalModel<AddShardingModel, mtc::AddOp> {
  SmallVector<utils::IteratorType> getLoopIteratorTypes(Operation *op) const {
    auto t = cast<RankedTensorType>(op->getResult(0).getType());
    return SmallVector<utils::IteratorType>(t.getRank(),
                                            utils::IteratorType::parallel);
  }

  SmallVector<AffineMap> getIndexingMaps(Operation *op) const {
    MLIRContext *ctx = op->getContext();
    auto add = cast<mtc::AddOp>(op);
    int64_t rank = add.getType().getRank();
    int64_t rhsRank = cast<RankedTensorType>(add.getRhs().getType()).getRank();
    AffineMap id = AffineMap::getMultiDimIdentityMap(rank, ctx);
    SmallVector<AffineExpr> trailing;
    for (int64_t i = rank - rhsRank; i < rank; ++i)
      trailing.push_back(getAffineDimExpr(i, ctx));
    return {id, AffineMap::get(rank, 0, trailing, ctx), id};
  }

  LogicalResult partition(Operation *op, ArrayRef<Value> partitionedOperands,
                          ArrayRef<Sharding> operandShardings,
                          ArrayRef<Sharding> resultShardings,
                          IRMapping &partitionMap,
                          SymbolTableCollection &symbolTable,
                          OpBuilder &builder) const {
    partitionTriviallyShardableOperation(*op, partitionedOperands,
                                         operandShardings, resultShardings,
                                         partitionMap, symbolTable, builder);
    return success();
  }
};

/// Upstream's elementwise sharding rule on each of `Ops`.
template <typename... Ops> void attachElementwise(MLIRContext *ctx) {
  (Ops::template attachInterface<ElementwiseShardingInterface<Ops>>(*ctx), ...);
}

} // namespace

void mtc::registerShardingInterfaceExternalModels(DialectRegistry &registry) {
  registry.addExtension(+[](MLIRContext *ctx, mtc::MtcDialect *) {
    mtc::MatmulOp::attachInterface<MatmulShardingModel>(*ctx);
    mtc::AddOp::attachInterface<AddShardingModel>(*ctx);
    attachElementwise<mtc::GeluOp, mtc::GeluGradOp, mtc::SwigluOp,
                      mtc::SwigluGradOp, mtc::SquaredReluOp,
                      mtc::SquaredReluGradOp>(ctx);
  });
}
