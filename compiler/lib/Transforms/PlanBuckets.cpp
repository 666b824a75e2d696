//===- PlanBuckets.cpp - -mtc-plan-buckets ---------------------------------===//
//
// Data parallelism without a sharded optimizer: the fp32 gradient buffer in
// contiguous buckets, each all-reduced over dp as soon as the backward pass
// of the step's last microbatch has finished every gradient in it
// (mtc.dp_buckets; see Passes.td). Steps:
//  1. Only when @optimizer_step reduces the whole gradient over the dp axis
//     (mtc.reduce_gradients without shard_optimizer_state).
//  2. Walk the parameters backwards through the flat buffer's layout
//     (ParamLayout: the order the backward pass finishes them), closing a
//     bucket once it holds at least kBucketElements (40 MB of fp32, as
//     Megatron's default), the first parameter's bucket reaching offset 0.
//  3. A bucket is launched after the last accumulate_grad of any of its
//     parameters in @train_step (the function's first op when none has
//     one); that op carries (bucket, begin, size) triples.
// Pipeline modules have no @train_step: with pp x dp the gradient is
// all-reduced once, in @optimizer_step_pp<r> (as on the host target);
// overlapping buckets with the last microbatch's backward pieces is a
// later optimization.
//
//===----------------------------------------------------------------------===//
#include "mtc/Transforms/Grid.h"
#include "mtc/Transforms/Lowering.h"
#include "mtc/Transforms/ParamLayout.h"
#include "mtc/Transforms/Passes.h"

#include "mlir/IR/Builders.h"
#include "llvm/ADT/MapVector.h"

namespace mtc {
#define GEN_PASS_DEF_MTCPLANBUCKETS
#include "mtc/Transforms/Passes.h.inc"
} // namespace mtc

using namespace mlir;

namespace {

constexpr int64_t kBucketElements = 10 * 1000 * 1000;

struct PlanBuckets : mtc::impl::MtcPlanBucketsBase<PlanBuckets> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto train = module.lookupSymbol<func::FuncOp>("train_step");
    auto optimizer = module.lookupSymbol<func::FuncOp>("optimizer_step");
    if (!train || !optimizer || train.isExternal())
      return;
    // 1.
    bool bucketed = false;
    optimizer.walk([&](mtc::ReduceGradientsOp r) {
      bucketed = !r.getShardOptimizerState() && r.getGridAxes().size() == 1 &&
                 r.getGridAxes()[0] == mtc::kAxisDP;
    });
    if (!bucketed)
      return;
    // 2. and 3.
    mtc::ParamLayout layout(module);
    Block &block = train.getBody().front();
    llvm::DenseMap<Operation *, int64_t> position;
    llvm::StringMap<Operation *> lastAcc;
    int64_t i = 0;
    for (Operation &op : block) {
      position[&op] = i++;
      if (auto acc = dyn_cast<mtc::AccumulateGradOp>(op))
        lastAcc[acc.getParam()] = &op;
    }
    llvm::MapVector<Operation *, SmallVector<int64_t>> launches;
    int64_t end = layout.totalElements, bucket = 0;
    Operation *ready = nullptr;
    for (int64_t p = int64_t(layout.order.size()) - 1; p >= 0; --p) {
      const std::string &name = layout.order[p];
      if (Operation *acc = lastAcc.lookup(name))
        if (!ready || position[acc] > position[ready])
          ready = acc;
      int64_t begin = layout.offset(name);
      if (end - begin < kBucketElements && p > 0)
        continue;
      if (p == 0)
        begin = 0;
      Operation *at = ready ? ready : &block.front();
      launches[at].append({bucket++, begin, end - begin});
      end = begin;
      ready = nullptr;
    }
    for (auto &[op, triples] : launches)
      op->setAttr(mtc::lowering::kDpBuckets,
                  DenseI64ArrayAttr::get(op->getContext(), triples));
  }
};

} // namespace
