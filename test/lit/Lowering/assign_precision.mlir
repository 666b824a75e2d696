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

// -----

// Tests an MoE layer's fp32 router math: a matmul used only by the router
// (its logits), the router's probabilities, weights and aux loss, the
// weights' gradient from moe_unpermute_grad, the aux-loss seed a router
// gradient reads (while a constant used elsewhere stays bf16), the loss
// plus the aux loss, and the grouped weight and bias gradients; the rows,
// the experts' outputs and the logits' gradient stay bf16.
// CHECK-LABEL: func.func @moe
// CHECK: %[[L:.*]] = mtc.matmul {{.*}}{mtc.storage = ["f32"]}
// CHECK: mtc.moe_router %[[L]] {{.*}}{mtc.storage = ["f32", "", "f32", "f32"]}
// CHECK: mtc.moe_permute {{.*}}{mtc.storage = ["bf16", "", ""]}
// CHECK: mtc.grouped_matmul {{.*}}{mtc.storage = ["bf16"]}
// CHECK: mtc.moe_unpermute {{.*}}{mtc.storage = ["bf16"]}
// CHECK: mtc.add {{.*}}{mtc.storage = ["f32"]} : tensor<f32>, tensor<f32>
// CHECK: arith.constant {mtc.storage = ["f32"]} dense<1.000000e+00>
// CHECK: arith.constant {mtc.storage = ["bf16"]} dense<2.000000e+00>
// CHECK: mtc.moe_unpermute_grad {{.*}}{mtc.storage = ["bf16", "f32"]}
// CHECK: mtc.grouped_matmul_wgrad {{.*}}{mtc.storage = ["f32"]}
// CHECK: mtc.grouped_bias_grad {{.*}}{mtc.storage = ["f32"]}
// CHECK: mtc.moe_router_grad {{.*}}{mtc.storage = ["bf16"]}
func.func @moe(%x: tensor<2x3x8xf32>, %loss: tensor<f32>, %dy: tensor<2x3x8xf32>,
               %w1: tensor<4x16x8xf32>, %wr: tensor<4x8xf32>)
    -> (tensor<f32>, tensor<2x3x8xf32>, tensor<2x3x4xf32>, tensor<4x16x8xf32>, tensor<4x16xf32>, tensor<2x3x8xf32>) {
  %l = mtc.matmul %x, %wr transpose_b : tensor<2x3x8xf32>, tensor<4x8xf32> -> tensor<2x3x4xf32>
  %p, %i, %w, %aux = mtc.moe_router %l top_k = 2 router = softmax_topk
      scale = 1.0 aux_coeff = 1.0e-2 z_coeff = 1.0e-3
      : tensor<2x3x4xf32> -> tensor<2x3x4xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32>
  %xp, %pos, %c = mtc.moe_permute %x, %i num_experts = 4
      : tensor<2x3x8xf32>, tensor<2x3x2xi32> -> tensor<12x8xf32>, tensor<4xi32>
  %h = mtc.grouped_matmul %xp, %w1, %c transpose_b
      : tensor<12x8xf32>, tensor<4x16x8xf32>, tensor<4xi32> -> tensor<12x16xf32>
  %o = mtc.grouped_matmul %h, %w1, %c
      : tensor<12x16xf32>, tensor<4x16x8xf32>, tensor<4xi32> -> tensor<12x8xf32>
  %y = mtc.moe_unpermute %o, %pos, %w
      : tensor<12x8xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32> -> tensor<2x3x8xf32>
  %total = mtc.add %aux, %aux : tensor<f32>, tensor<f32>
  %seed = arith.constant dense<1.0> : tensor<f32>
  %two = arith.constant dense<2.0> : tensor<2x3x8xf32>
  %dys = mtc.add %dy, %two : tensor<2x3x8xf32>, tensor<2x3x8xf32>
  %dh, %dw = mtc.moe_unpermute_grad %o, %pos, %w, %dys
      : tensor<12x8xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32>, tensor<2x3x8xf32>
  %g = mtc.grouped_matmul_wgrad %h, %dh, %c
      : tensor<12x16xf32>, tensor<12x8xf32>, tensor<4xi32> -> tensor<4x16x8xf32>
  %db = mtc.grouped_bias_grad %h, %c : tensor<12x16xf32>, tensor<4xi32> -> tensor<4x16xf32>
  %dl = mtc.moe_router_grad %l, %p, %i, %dw, %seed top_k = 2 router = softmax_topk
      scale = 1.0 aux_coeff = 1.0e-2 z_coeff = 1.0e-3
      : tensor<2x3x4xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32>
  return %total, %y, %dl, %g, %db, %dys : tensor<f32>, tensor<2x3x8xf32>, tensor<2x3x4xf32>, tensor<4x16x8xf32>, tensor<4x16xf32>, tensor<2x3x8xf32>
}
