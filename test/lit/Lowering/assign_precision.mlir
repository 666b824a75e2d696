// RUN: mtc-opt %s -split-input-file --mtc-assign-precision | FileCheck %s

shard.grid @mtc_grid(shape = 1x1x2)

// Tests that activations are bf16, attention's log-sum-exp fp32, and that a
// collective keeps its operand's precision; non-float results get "".
// CHECK-LABEL: func.func @attention
// CHECK: mtc.attention {{.*}} {mtc.storage = ["bf16", "f32"]}
// CHECK: shard.all_reduce %lse on @mtc_grid grid_axes = [2] {mtc.storage = ["f32"]}
// CHECK: shard.all_reduce %{{.*}} on @mtc_grid grid_axes = [2] {mtc.storage = ["bf16"]}
func.func @attention(%qkv: tensor<2x4x192xf32>) -> (tensor<2x1x4xf32>, tensor<2x4x64xf32>) {
  %o, %lse = mtc.attention %qkv heads = 1 kv_heads = 1 causal scale = 0.125 : tensor<2x4x192xf32> -> tensor<2x4x64xf32>, tensor<2x1x4xf32>
  %s = shard.all_reduce %lse on @mtc_grid grid_axes = [2] : tensor<2x1x4xf32> -> tensor<2x1x4xf32>
  %t = shard.all_reduce %o on @mtc_grid grid_axes = [2] : tensor<2x4x64xf32> -> tensor<2x4x64xf32>
  return %s, %t : tensor<2x1x4xf32>, tensor<2x4x64xf32>
}

// -----

// Tests that the loss is fp32, the parameters' compute copies and the
// logits' gradient bf16, and that token ids get no storage attribute.
// CHECK-LABEL: func.func @loss
// CHECK: mtc.param "w" {{.*}}{mtc.storage = ["bf16"]}
// CHECK: mtc.matmul {{.*}}{mtc.storage = ["bf16"]}
// CHECK: mtc.cross_entropy {{.*}}{mtc.storage = ["f32"]}
// CHECK: arith.constant {mtc.storage = ["bf16"]}
// CHECK: mtc.cross_entropy_grad {{.*}}{mtc.storage = ["bf16"]}
// CHECK-NOT: mtc.storage
// CHECK: return
func.func @loss(%x: tensor<2x4x8xf32>, %t: tensor<2x4xi32>) -> (tensor<f32>, tensor<2x4x16xf32>) {
  %w = mtc.param "w" init = normal : tensor<16x8xf32>
  %l = mtc.matmul %x, %w transpose_b : tensor<2x4x8xf32>, tensor<16x8xf32> -> tensor<2x4x16xf32>
  %loss = mtc.cross_entropy %l, %t ignore_index = -1 : tensor<2x4x16xf32>, tensor<2x4xi32>
  %one = arith.constant dense<1.0> : tensor<f32>
  %dl = mtc.cross_entropy_grad %l, %t, %one ignore_index = -1 : tensor<2x4x16xf32>, tensor<2x4xi32>
  return %loss, %dl : tensor<f32>, tensor<2x4x16xf32>
}
