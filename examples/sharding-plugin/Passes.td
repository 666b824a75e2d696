//===- Passes.td - the example sharding plugin's pass ------*- tablegen -*-===//
#ifndef SHARD_MLP_ONLY_PASSES_TD
#define SHARD_MLP_ONLY_PASSES_TD

include "mlir/Pass/PassBase.td"

def ExampleShardMlpOnly : Pass<"example-shard-mlp-only", "::mlir::ModuleOp"> {
  let summary = "Tensor parallelism for the MLPs only (an example policy)";
  let description = [{
    Splits every MLP over the grid's tensor-parallel axis as Megatron does
    (the first linear column-parallel, the second row-parallel) and leaves
    attention and the embeddings whole: a plan for models whose attention
    is small. Writes annotations only; mtc-partition does the rest.
  }];
  let dependentDialects = ["::mlir::shard::ShardDialect"];
}

#endif // SHARD_MLP_ONLY_PASSES_TD
