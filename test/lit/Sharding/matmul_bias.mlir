// Partitioning an mtc.matmul that carries a bias: splitting N (column
// parallel) splits the bias with it; splitting the contraction is refused,
// since each shard would add the whole bias to its partial sum.
//
// RUN: mtc-opt %s -split-input-file -verify-diagnostics \
// RUN:   --pass-pipeline='builtin.module(func.func(sharding-propagation,shard-partition))' \
// RUN:   | FileCheck %s

// Tests that a column-parallel linear layer with a bias gets local (16, 8)
// weight and (16) bias shards and runs with no communication.
shard.grid @grid(shape = 2)

// CHECK-LABEL: func.func @column_parallel_bias
// CHECK-SAME:    (%[[X:[^:]+]]: tensor<2x4x8xf32>, %[[W:[^:]+]]: tensor<16x8xf32>, %[[B:[^:]+]]: tensor<16xf32>)
// CHECK-SAME:    -> tensor<2x4x16xf32>
// CHECK-NOT:     shard.
// CHECK:         %[[Y:.*]] = mtc.matmul %[[X]], %[[W]], %[[B]] transpose_b : tensor<2x4x8xf32>, tensor<16x8xf32>, tensor<16xf32> -> tensor<2x4x16xf32>
// CHECK-NOT:     shard.
// CHECK:         return %[[Y]] : tensor<2x4x16xf32>
func.func @column_parallel_bias(%x: tensor<2x4x8xf32>, %w: tensor<32x8xf32>, %b: tensor<32xf32>)
    -> tensor<2x4x32xf32> {
  %s_col = shard.sharding @grid split_axes = [[0]] : !shard.sharding
  %w_s = shard.shard %w to %s_col : tensor<32x8xf32>
  %y = mtc.matmul %x, %w_s, %b transpose_b
         : tensor<2x4x8xf32>, tensor<32x8xf32>, tensor<32xf32> -> tensor<2x4x32xf32>
  %s_out = shard.sharding @grid split_axes = [[], [], [0]] : !shard.sharding
  %y_s = shard.shard %y to %s_out : tensor<2x4x32xf32>
  return %y_s : tensor<2x4x32xf32>
}

// -----

// Tests that a row-parallel linear layer with a bias (contraction split over
// the grid) fails partitioning with a message saying how to rewrite it.
shard.grid @grid(shape = 2)

func.func @row_parallel_bias(%x: tensor<2x4x32xf32>, %w: tensor<8x32xf32>, %b: tensor<8xf32>)
    -> tensor<2x4x8xf32> {
  %s_row = shard.sharding @grid split_axes = [[], [0]] : !shard.sharding
  %w_s = shard.shard %w to %s_row : tensor<8x32xf32>
  // expected-error @+1 {{'mtc.matmul' op cannot split the contraction of a matmul with a bias: the bias would be added once per shard; split the bias into an mtc.add after the reduction}}
  %y = mtc.matmul %x, %w_s, %b transpose_b
         : tensor<2x4x32xf32>, tensor<8x32xf32>, tensor<8xf32> -> tensor<2x4x8xf32>
  %s_rep = shard.sharding @grid split_axes = [[]] : !shard.sharding
  %y_s = shard.shard %y to %s_rep : tensor<2x4x8xf32>
  return %y_s : tensor<2x4x8xf32>
}
