// Megatron's tensor-parallel MLP through upstream sharding-propagation and
// shard-partition: W1 column-parallel, W2 row-parallel, output replicated.
//
// Expected to fail until MtcSharding.cpp is fixed: MatmulShardingModel::
// partition clones a matmul whose contraction is split with
// partitionTriviallyShardableOperation only, so the row-parallel matmul
// returns each rank's partial sum and no shard.all_reduce is created. In
// MLIR 22 a shard.sharding has no partial axes: the op's partition() must
// itself all-reduce over shard::getReductionGridAxes(...), as upstream's
// Linalg model does (partitionLinalgOpWithShardedReduction). Remove this
//
// RUN: mtc-opt %s -split-input-file \
// RUN:   --pass-pipeline='builtin.module(func.func(sharding-propagation,shard-partition))' \
// RUN:   | FileCheck %s

// Tests that with W1 (out, in) = (32, 8) split on its output dimension and
// W2 = (8, 32) on its input dimension over 2 devices, each rank holds a
// (16, 8) and an (8, 16) shard, the first matmul and the gelu run on local
// shards with no communication, and one all_reduce of the second matmul's
// partial sums makes the replicated output.
shard.grid @grid(shape = 2)

// CHECK-LABEL: func.func @megatron_mlp
// CHECK-SAME:    (%[[X:[^:]+]]: tensor<2x4x8xf32>, %[[W1:[^:]+]]: tensor<16x8xf32>, %[[W2:[^:]+]]: tensor<8x16xf32>)
// CHECK-SAME:    -> tensor<2x4x8xf32>
// CHECK-NOT:     shard.
// CHECK:         %[[H:.*]] = mtc.matmul %[[X]], %[[W1]] transpose_b : tensor<2x4x8xf32>, tensor<16x8xf32> -> tensor<2x4x16xf32>
// CHECK-NOT:     shard.
// CHECK:         %[[A:.*]] = mtc.gelu %[[H]] approximate = tanh : tensor<2x4x16xf32>
// CHECK-NOT:     shard.
// CHECK:         %[[P:.*]] = mtc.matmul %[[A]], %[[W2]] transpose_b : tensor<2x4x16xf32>, tensor<8x16xf32> -> tensor<2x4x8xf32>
// CHECK:         %[[Y:.*]] = shard.all_reduce %[[P]] on @grid grid_axes = [0]{{.*}} : tensor<2x4x8xf32> -> tensor<2x4x8xf32>
// CHECK-NOT:     shard.
// CHECK:         return %[[Y]] : tensor<2x4x8xf32>
func.func @megatron_mlp(%x: tensor<2x4x8xf32>, %w1: tensor<32x8xf32>, %w2: tensor<8x32xf32>)
    -> tensor<2x4x8xf32> {
  %s_col = shard.sharding @grid split_axes = [[0]] : !shard.sharding
  %w1_s = shard.shard %w1 to %s_col : tensor<32x8xf32>
  %s_row = shard.sharding @grid split_axes = [[], [0]] : !shard.sharding
  %w2_s = shard.shard %w2 to %s_row : tensor<8x32xf32>
  %h = mtc.matmul %x, %w1_s transpose_b : tensor<2x4x8xf32>, tensor<32x8xf32> -> tensor<2x4x32xf32>
  %a = mtc.gelu %h approximate = tanh : tensor<2x4x32xf32>
  %y = mtc.matmul %a, %w2_s transpose_b : tensor<2x4x32xf32>, tensor<8x32xf32> -> tensor<2x4x8xf32>
  %s_rep = shard.sharding @grid split_axes = [[]] : !shard.sharding
  %y_s = shard.shard %y to %s_rep : tensor<2x4x8xf32>
  return %y_s : tensor<2x4x8xf32>
}
