// RUN: mtc-opt %s --mtc-sink-gradients | FileCheck %s
// RUN: mtc-opt %s --mtc-assign-precision --mtc-sink-gradients | FileCheck %s --check-prefix=STORAGE

shard.grid @mtc_grid(shape = 1x1x2)

// CHECK-LABEL: func.func @train
func.func @train(%x: tensor<2x4x8xf32>, %dy: tensor<2x4x16xf32>) -> tensor<16x8xf32> {
  // Tests that a weight gradient GEMM accumulates into its parameter.
  // CHECK: mtc.matmul {{.*}} transpose_a {mtc.sink = ["w"]}
  // STORAGE: mtc.matmul {{.*}} transpose_a {mtc.sink = ["w"], mtc.storage = ["none"]}
  %dw = mtc.matmul %dy, %x transpose_a : tensor<2x4x16xf32>, tensor<2x4x8xf32> -> tensor<16x8xf32>
  mtc.accumulate_grad %dw into "w" : tensor<16x8xf32>
  // Tests that both contributions of a tied parameter and their sum sink.
  // CHECK: mtc.matmul {{.*}} {mtc.sink = ["e"]}
  // CHECK: mtc.matmul {{.*}} {mtc.sink = ["e"]}
  // CHECK: mtc.add {{.*}} {mtc.sink = ["e"]}
  %a = mtc.matmul %dy, %x transpose_a : tensor<2x4x16xf32>, tensor<2x4x8xf32> -> tensor<16x8xf32>
  %b = mtc.matmul %dy, %x transpose_a : tensor<2x4x16xf32>, tensor<2x4x8xf32> -> tensor<16x8xf32>
  %s = mtc.add %a, %b : tensor<16x8xf32>, tensor<16x8xf32>
  mtc.accumulate_grad %s into "e" : tensor<16x8xf32>
  // Tests that a gradient used elsewhere too is stored.
  // CHECK: %[[C:.*]] = mtc.matmul %{{.*}}, %{{.*}} transpose_a : tensor
  %c = mtc.matmul %dy, %x transpose_a : tensor<2x4x16xf32>, tensor<2x4x8xf32> -> tensor<16x8xf32>
  mtc.accumulate_grad %c into "u" : tensor<16x8xf32>
  // Tests that a sum over tp of a bias gradient, the parameter's only
  // contribution, sinks with its operand (it runs on the accumulated
  // buffer).
  // CHECK: mtc.reduce_leading {{.*}} {mtc.sink = ["b"]}
  // CHECK: shard.all_reduce {{.*}} {mtc.sink = ["b"]}
  %r = mtc.reduce_leading %dy : tensor<2x4x16xf32> -> tensor<16xf32>
  %ar = shard.all_reduce %r on @mtc_grid grid_axes = [2] : tensor<16xf32> -> tensor<16xf32>
  mtc.accumulate_grad %ar into "b" : tensor<16xf32>
  // Tests that such a collective is stored when the parameter has another
  // contribution (it could not run on the accumulated buffer).
  // CHECK: mtc.reduce_leading %{{.*}} : tensor
  // CHECK: shard.all_reduce %{{.*}} on @mtc_grid grid_axes = [2] : tensor
  // CHECK: mtc.reduce_leading {{.*}} {mtc.sink = ["b2"]}
  %r2 = mtc.reduce_leading %dy : tensor<2x4x16xf32> -> tensor<16xf32>
  %ar2 = shard.all_reduce %r2 on @mtc_grid grid_axes = [2] : tensor<16xf32> -> tensor<16xf32>
  mtc.accumulate_grad %ar2 into "b2" : tensor<16xf32>
  %r3 = mtc.reduce_leading %dy : tensor<2x4x16xf32> -> tensor<16xf32>
  mtc.accumulate_grad %r3 into "b2" : tensor<16xf32>
  return %c : tensor<16x8xf32>
}
