// Round trip of the mixture-of-experts ops (MtcOps.td, "Mixture of
// experts") through their assembly format, optional operands present and
// absent.
//
// RUN: mtc-opt %s -split-input-file | mtc-opt -split-input-file | FileCheck %s

// Tests that an MoE MLP's forward ops round-trip: router, permute, grouped
// GEMMs with and without bias, weighted unpermute.
// CHECK-LABEL: func.func @moe_forward
// CHECK:         %[[P:.*]], %[[I:.*]], %[[W:.*]], %[[AUX:.*]] = mtc.moe_router %{{.*}} top_k = 2 router = softmax_topk scale = 1.000000e+00 aux_coeff = 0.000000e+00 z_coeff = 1.000000e-03
// CHECK:         %[[XP:.*]], %[[POS:.*]], %[[C:.*]] = mtc.moe_permute %{{.*}}, %[[I]] num_experts = 4
// CHECK:         %[[H:.*]] = mtc.grouped_matmul %[[XP]], %{{.*}}, %[[C]], %{{.*}} transpose_b
// CHECK:         %[[O:.*]] = mtc.grouped_matmul %[[H]], %{{.*}}, %[[C]] :
// CHECK:         mtc.moe_unpermute %[[O]], %[[POS]], %[[W]] :
func.func @moe_forward(%x: tensor<2x3x8xf32>, %logits: tensor<2x3x4xf32>,
                       %w1: tensor<4x16x8xf32>, %b1: tensor<4x16xf32>,
                       %w2: tensor<4x16x8xf32>) -> tensor<2x3x8xf32> {
  %p, %i, %w, %aux = mtc.moe_router %logits top_k = 2 router = softmax_topk
      scale = 1.0 aux_coeff = 0.0 z_coeff = 1.0e-3
      : tensor<2x3x4xf32> -> tensor<2x3x4xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32>
  %xp, %pos, %c = mtc.moe_permute %x, %i num_experts = 4
      : tensor<2x3x8xf32>, tensor<2x3x2xi32> -> tensor<12x8xf32>, tensor<4xi32>
  %h = mtc.grouped_matmul %xp, %w1, %c, %b1 transpose_b
      : tensor<12x8xf32>, tensor<4x16x8xf32>, tensor<4xi32>, tensor<4x16xf32> -> tensor<12x16xf32>
  %o = mtc.grouped_matmul %h, %w2, %c
      : tensor<12x16xf32>, tensor<4x16x8xf32>, tensor<4xi32> -> tensor<12x8xf32>
  %y = mtc.moe_unpermute %o, %pos, %w
      : tensor<12x8xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32> -> tensor<2x3x8xf32>
  return %y : tensor<2x3x8xf32>
}

// -----

// Tests that the MoE gradient ops round-trip: the router's gradient with
// and without the aux loss's, the unpermute's, the grouped GEMM's weight
// and bias gradients, and the unweighted unpermute (permute's gradient).
// CHECK-LABEL: func.func @moe_backward
// CHECK:         mtc.moe_router_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} top_k = 2 router = topk_softmax
// CHECK:         mtc.moe_router_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} top_k = 2 router = topk_softmax
// CHECK:         mtc.moe_unpermute_grad
// CHECK:         mtc.grouped_matmul_wgrad
// CHECK:         mtc.grouped_bias_grad
// CHECK:         mtc.moe_unpermute %{{.*}}, %{{.*}} : tensor<12x8xf32>, tensor<2x3x2xi32> -> tensor<2x3x8xf32>
func.func @moe_backward(%l: tensor<2x3x4xf32>, %p: tensor<2x3x4xf32>, %i: tensor<2x3x2xi32>,
                        %dw: tensor<2x3x2xf32>, %daux: tensor<f32>, %h: tensor<12x8xf32>,
                        %dy: tensor<2x3x8xf32>, %x: tensor<12x16xf32>, %c: tensor<4xi32>) {
  %a = mtc.moe_router_grad %l, %p, %i, %dw, %daux top_k = 2 router = topk_softmax
      scale = 2.0 aux_coeff = 1.0e-2 z_coeff = 0.0
      : tensor<2x3x4xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32>
  %b = mtc.moe_router_grad %l, %p, %i, %dw top_k = 2 router = topk_softmax
      scale = 2.0 aux_coeff = 1.0e-2 z_coeff = 0.0
      : tensor<2x3x4xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32>
  %dh, %dws = mtc.moe_unpermute_grad %h, %i, %dw, %dy
      : tensor<12x8xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32>, tensor<2x3x8xf32>
  %g = mtc.grouped_matmul_wgrad %x, %h, %c
      : tensor<12x16xf32>, tensor<12x8xf32>, tensor<4xi32> -> tensor<4x16x8xf32>
  %db = mtc.grouped_bias_grad %h, %c : tensor<12x8xf32>, tensor<4xi32> -> tensor<4x8xf32>
  %u = mtc.moe_unpermute %h, %i : tensor<12x8xf32>, tensor<2x3x2xi32> -> tensor<2x3x8xf32>
  return
}

// -----

// Tests that a row-parallel grouped GEMM's bias_rank (the bias added where
// it is 0) round-trips.
// CHECK-LABEL: func.func @bias_rank
// CHECK:         mtc.grouped_matmul %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} bias_rank %{{.*}} transpose_b :
func.func @bias_rank(%h: tensor<12x8xf32>, %w: tensor<4x16x8xf32>, %c: tensor<4xi32>,
                     %b: tensor<4x16xf32>, %r: index) -> tensor<12x16xf32> {
  %o = mtc.grouped_matmul %h, %w, %c, %b bias_rank %r transpose_b
      : tensor<12x8xf32>, tensor<4x16x8xf32>, tensor<4xi32>, tensor<4x16xf32> -> tensor<12x16xf32>
  return %o : tensor<12x16xf32>
}

// -----

// Tests that a permute with a capacity round-trips with and without a
// priority (the drop policies "probs" and "position"), its result
// min(E * C, T * k) rows, and that the unpermute and its gradient take
// those rows.
// CHECK-LABEL: func.func @moe_capacity
// CHECK:         %[[XP:.*]], %[[POS:.*]], %[[C:.*]] = mtc.moe_permute %{{.*}}, %[[I:.*]] priority %[[W:.*]] num_experts = 4 capacity = 2 : tensor<2x3x8xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32> -> tensor<8x8xf32>, tensor<4xi32>
// CHECK:         mtc.moe_permute %{{.*}}, %[[I]] num_experts = 4 capacity = 5 : tensor<2x3x8xf32>, tensor<2x3x2xi32> -> tensor<12x8xf32>, tensor<4xi32>
// CHECK:         mtc.moe_unpermute %[[XP]], %[[POS]], %[[W]] : tensor<8x8xf32>
// CHECK:         mtc.moe_unpermute_grad %[[XP]], %[[POS]], %[[W]], %{{.*}} : tensor<8x8xf32>
func.func @moe_capacity(%x: tensor<2x3x8xf32>, %i: tensor<2x3x2xi32>, %w: tensor<2x3x2xf32>,
                        %dy: tensor<2x3x8xf32>) {
  %xp, %pos, %c = mtc.moe_permute %x, %i priority %w num_experts = 4 capacity = 2
      : tensor<2x3x8xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32> -> tensor<8x8xf32>, tensor<4xi32>
  %xq, %posq, %cq = mtc.moe_permute %x, %i num_experts = 4 capacity = 5
      : tensor<2x3x8xf32>, tensor<2x3x2xi32> -> tensor<12x8xf32>, tensor<4xi32>
  %y = mtc.moe_unpermute %xp, %pos, %w
      : tensor<8x8xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32> -> tensor<2x3x8xf32>
  %dh, %dw = mtc.moe_unpermute_grad %xp, %pos, %w, %dy
      : tensor<8x8xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32>, tensor<2x3x8xf32>
  return
}

// -----

// Tests that aux-loss-free balancing round-trips: a not-trained parameter,
// the router selecting with it, its gradient marked biased_selection, the
// load accumulation and the bias update.
// CHECK-LABEL: func.func @expert_bias
// CHECK:         %[[B:.*]] = mtc.param "layers.0.mlp.router.expert_bias" init = zeros not_trained : tensor<4xf32>
// CHECK:         %{{.*}}, %[[I:.*]], %[[W:.*]], %{{.*}} = mtc.moe_router %{{.*}} bias %[[B]] top_k = 2 router = topk_softmax {{.*}} : tensor<2x3x4xf32>, tensor<4xf32> -> tensor<2x3x4xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32>
// CHECK:         mtc.moe_router_grad %{{.*}}, %{{.*}}, %[[I]], %{{.*}} top_k = 2 router = topk_softmax {{.*}} biased_selection :
// CHECK:         mtc.moe_accumulate_load %{{.*}} into "layers.0.mlp.router.expert_bias" update_rate = 1.000000e-03 : tensor<4xi32>
// CHECK:         mtc.moe_update_expert_bias "layers.0.mlp.router.expert_bias" rate = 1.000000e-03
func.func @expert_bias(%logits: tensor<2x3x4xf32>, %dw: tensor<2x3x2xf32>, %c: tensor<4xi32>) {
  %b = mtc.param "layers.0.mlp.router.expert_bias" init = zeros not_trained : tensor<4xf32>
  %p, %i, %w, %aux = mtc.moe_router %logits bias %b top_k = 2 router = topk_softmax
      scale = 1.0 aux_coeff = 0.0 z_coeff = 0.0
      : tensor<2x3x4xf32>, tensor<4xf32> -> tensor<2x3x4xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32>
  %dl = mtc.moe_router_grad %logits, %p, %i, %dw top_k = 2 router = topk_softmax
      scale = 1.0 aux_coeff = 0.0 z_coeff = 0.0 biased_selection
      : tensor<2x3x4xf32>, tensor<2x3x2xi32>, tensor<2x3x2xf32>
  mtc.moe_accumulate_load %c into "layers.0.mlp.router.expert_bias" update_rate = 1.0e-3 : tensor<4xi32>
  mtc.moe_update_expert_bias "layers.0.mlp.router.expert_bias" rate = 1.0e-3
  return
}
