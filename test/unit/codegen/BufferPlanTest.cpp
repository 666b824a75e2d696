// planBuffers: exact lifetimes reuse storage; a concurrent run (the CUDA
// emitter's half-batch lanes) keeps what its ops touch alive to its end; a
// value written before its definition (liveFrom) takes its storage early.
#include "mtc/Codegen/BufferPlan.h"

#include <gtest/gtest.h>

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"

namespace {

// %0 dies at op 1, so %2 (op 2) fits in its storage when ops run in order.
const char* kChain = R"(
func.func @f(%a: tensor<64xf32>) -> tensor<64xf32> {
  %0 = arith.addf %a, %a : tensor<64xf32>
  %1 = arith.addf %0, %0 : tensor<64xf32>
  %2 = arith.addf %1, %1 : tensor<64xf32>
  %3 = arith.addf %2, %2 : tensor<64xf32>
  return %3 : tensor<64xf32>
}
)";

struct Planned {
  mlir::MLIRContext context;
  mlir::OwningOpRef<mlir::ModuleOp> module;
  mlir::func::FuncOp fn;
  llvm::SmallVector<mlir::Operation*> ops;
  llvm::SmallVector<mlir::Value> values;

  Planned() {
    context.loadDialect<mlir::func::FuncDialect, mlir::arith::ArithDialect>();
    module = mlir::parseSourceString<mlir::ModuleOp>(kChain, &context);
    fn = *module->getOps<mlir::func::FuncOp>().begin();
    for (mlir::Operation& op : fn.getBody().front()) {
      ops.push_back(&op);
      if (op.getNumResults() == 1) values.push_back(op.getResult(0));
    }
  }

  mtc::BufferPlan plan(const mtc::ExecutionHints& hints) {
    return mtc::planBuffers(
        fn,
        [](mlir::Value v) -> int64_t {
          return llvm::isa<mlir::BlockArgument>(v) ? 0 : 64;
        },
        /*align=*/16, hints);
  }

  // The plan with ops [first, last] as one concurrent run.
  mtc::BufferPlan planWithRun(int first, int last) {
    mtc::ExecutionHints hints;
    hints.concurrentRuns.push_back({ops[first], ops[last]});
    return plan(hints);
  }
};

TEST(BufferPlan, ReusesStorageOfDeadValues) {
  Planned p;
  ASSERT_TRUE(p.module);
  mtc::BufferPlan plan = p.plan(mtc::ExecutionHints());
  EXPECT_EQ(plan.offset.lookup(p.values[2]), plan.offset.lookup(p.values[0]));
  EXPECT_EQ(plan.size, 128);
}

TEST(BufferPlan, ConcurrentRunKeepsItsValuesToItsEnd) {
  Planned p;
  ASSERT_TRUE(p.module);
  mtc::BufferPlan plan = p.planWithRun(0, 2);
  // %0, %1 and %2 are all live at op 2: three distinct buffers.
  int64_t o0 = plan.offset.lookup(p.values[0]), o1 = plan.offset.lookup(p.values[1]),
          o2 = plan.offset.lookup(p.values[2]);
  EXPECT_NE(o0, o1);
  EXPECT_NE(o0, o2);
  EXPECT_NE(o1, o2);
  EXPECT_EQ(plan.size, 192);
  // After the run, %3 reuses freed storage again.
  EXPECT_LT(plan.offset.lookup(p.values[3]), 192);
}

TEST(BufferPlan, ConcurrentRunKeepsAnUnusedResultToItsEnd) {
  Planned p;
  ASSERT_TRUE(p.module);
  // A run of ops 1..2: %0 (used at op 1, inside) lives to op 2.
  mtc::BufferPlan plan = p.planWithRun(1, 2);
  EXPECT_NE(plan.offset.lookup(p.values[2]), plan.offset.lookup(p.values[0]));
}

TEST(BufferPlan, LiveFromTakesStorageEarly) {
  Planned p;
  ASSERT_TRUE(p.module);
  // Without the hint %2 reuses %0's storage (freed after op 1); taken at
  // op 0 it cannot, since %0 is live then.
  mtc::ExecutionHints hints;
  hints.liveFrom[p.values[2]] = p.ops[0];
  mtc::BufferPlan plan = p.plan(hints);
  int64_t o0 = plan.offset.lookup(p.values[0]), o1 = plan.offset.lookup(p.values[1]),
          o2 = plan.offset.lookup(p.values[2]);
  EXPECT_NE(o2, o0);
  EXPECT_NE(o2, o1);
  EXPECT_EQ(plan.size, 192);
}

TEST(BufferPlan, LiveFromTakesValuesInProgramOrder) {
  Planned p;
  ASSERT_TRUE(p.module);
  // %3 and %2 both taken at op 0 (hinted in reverse order): the earlier
  // definition gets the first storage, whatever the hints' hash order, so
  // the generated program is the same on every compile.
  mtc::ExecutionHints hints;
  hints.liveFrom[p.values[3]] = p.ops[0];
  hints.liveFrom[p.values[2]] = p.ops[0];
  mtc::BufferPlan plan = p.plan(hints);
  EXPECT_LT(plan.offset.lookup(p.values[2]), plan.offset.lookup(p.values[3]));
  // %0, %2, %3 taken at op 0 and %1 at op 1 (%0 is freed after it).
  EXPECT_EQ(plan.size, 256);
}

}  // namespace
