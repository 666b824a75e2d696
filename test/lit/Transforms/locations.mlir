// Tests that the ops passes create from the module rather than from an op
// (the optimizer's, the device grid, the data-parallel reduction) carry a
// name inside the module's location, so their diagnostics name the file
// instead of `<unknown>:0`.
//
// RUN: mtc-opt %s --mtc-autodiff --mtc-shard-data-parallel --mtc-partition \
// RUN:   --mlir-print-debuginfo --mlir-print-local-scope | FileCheck %s

// CHECK-LABEL: module attributes
// CHECK: shard.grid @mtc_grid(shape = 1x2x2) loc("grid"("{{.*}}locations.mlir":[[LINE:[0-9]+]]:1))
// CHECK-LABEL: func.func @optimizer_step
// CHECK: mtc.reduce_gradients {{.*}} loc("data_parallel"("{{.*}}locations.mlir":[[LINE]]:1))
// CHECK: mtc.grad_norm {{.*}} loc("optimizer"("{{.*}}locations.mlir":[[LINE]]:1))
// CHECK: mtc.adamw {{.*}} loc("optimizer"("{{.*}}locations.mlir":[[LINE]]:1))
// CHECK: } loc("{{.*}}locations.mlir":[[LINE]]:1)
module attributes {mtc.parallel = {tp = 2 : i64, dp = 2 : i64},
                   mtc.training = {num_microbatches = 1 : i64}} {
  func.func @forward(%tok: tensor<2x4xi32>, %tgt: tensor<2x4xi32>) -> tensor<f32> {
    %wte = mtc.param "wte" init = normal : tensor<16x8xf32>
    %x = mtc.embedding %tok, %wte : tensor<2x4xi32>, tensor<16x8xf32> -> tensor<2x4x8xf32>
    %logits = mtc.matmul %x, %wte transpose_b : tensor<2x4x8xf32>, tensor<16x8xf32> -> tensor<2x4x16xf32>
    %loss = mtc.cross_entropy %logits, %tgt ignore_index = -1 : tensor<2x4x16xf32>, tensor<2x4xi32>
    return %loss : tensor<f32>
  }
}
