// Verifier errors of the mixture-of-experts ops: one case per check in
// dialects/mtc/lib/MtcMoe.cpp.
//
// RUN: mtc-opt %s -split-input-file -verify-diagnostics

// Tests that top_k may not exceed the number of experts.
func.func @router_topk(%l: tensor<6x4xf32>) {
  // expected-error @+1 {{'mtc.moe_router' op top_k must be in [1, num_experts = 4], got 5}}
  %p, %i, %w, %a = mtc.moe_router %l top_k = 5 router = softmax_topk scale = 1.0 aux_coeff = 0.0 z_coeff = 0.0
      : tensor<6x4xf32> -> tensor<6x4xf32>, tensor<6x5xi32>, tensor<6x5xf32>
  return
}

// -----

// Tests that the indices are (tokens, top_k).
func.func @router_indices(%l: tensor<6x4xf32>) {
  // expected-error @+1 {{'mtc.moe_router' op indices and weights must be (..., top_k) = (6) x 2, got (6, 3)}}
  %p, %i, %w, %a = mtc.moe_router %l top_k = 2 router = softmax_topk scale = 1.0 aux_coeff = 0.0 z_coeff = 0.0
      : tensor<6x4xf32> -> tensor<6x4xf32>, tensor<6x3xi32>, tensor<6x2xf32>
  return
}

// -----

// Tests that the scale must be positive.
func.func @router_scale(%l: tensor<6x4xf32>) {
  // expected-error @+1 {{'mtc.moe_router' op scale must be > 0, got 0}}
  %p, %i, %w, %a = mtc.moe_router %l top_k = 2 router = softmax_topk scale = 0.0 aux_coeff = 0.0 z_coeff = 0.0
      : tensor<6x4xf32> -> tensor<6x4xf32>, tensor<6x2xi32>, tensor<6x2xf32>
  return
}

// -----

// Tests that the coefficients must be >= 0.
func.func @router_coeff(%l: tensor<6x4xf32>) {
  // expected-error @+1 {{'mtc.moe_router' op aux_coeff and z_coeff must be >= 0}}
  %p, %i, %w, %a = mtc.moe_router %l top_k = 2 router = softmax_topk scale = 1.0 aux_coeff = -1.0 z_coeff = 0.0
      : tensor<6x4xf32> -> tensor<6x4xf32>, tensor<6x2xi32>, tensor<6x2xf32>
  return
}

// -----

// Tests that the permuted buffer has a row for every assignment (dropless).
func.func @permute_rows(%x: tensor<6x8xf32>, %i: tensor<6x2xi32>) {
  // expected-error @+1 {{'mtc.moe_permute' op result must be (tokens * top_k, D) = (12, 8)}}
  %xp, %pos, %c = mtc.moe_permute %x, %i num_experts = 4
      : tensor<6x8xf32>, tensor<6x2xi32> -> tensor<10x8xf32>, tensor<4xi32>
  return
}

// -----

// Tests that counts has one entry per expert.
func.func @permute_counts(%x: tensor<6x8xf32>, %i: tensor<6x2xi32>) {
  // expected-error @+1 {{'mtc.moe_permute' op counts must be (num_experts) = (4), got (3)}}
  %xp, %pos, %c = mtc.moe_permute %x, %i num_experts = 4
      : tensor<6x8xf32>, tensor<6x2xi32> -> tensor<12x8xf32>, tensor<3xi32>
  return
}

// -----

// Tests that input and indices share their token dimensions.
func.func @permute_tokens(%x: tensor<5x8xf32>, %i: tensor<6x2xi32>) {
  // expected-error @+1 {{'mtc.moe_permute' op input (..., D) and indices (..., top_k) must have the same token dimensions, got (5, 8) and (6, 2)}}
  %xp, %pos, %c = mtc.moe_permute %x, %i num_experts = 4
      : tensor<5x8xf32>, tensor<6x2xi32> -> tensor<12x8xf32>, tensor<4xi32>
  return
}

// -----

// Tests that the unpermute's input has at most tokens * top_k rows.
func.func @unpermute_rows(%h: tensor<14x8xf32>, %pos: tensor<6x2xi32>) {
  // expected-error @+1 {{'mtc.moe_unpermute' op input must be (rows, D) with rows at most tokens * top_k = 12 for positions (6, 2), got (14, 8)}}
  %y = mtc.moe_unpermute %h, %pos : tensor<14x8xf32>, tensor<6x2xi32> -> tensor<6x8xf32>
  return
}

// -----

// Tests that a permute with a capacity has min(E * C, T * k) rows.
func.func @permute_capacity_rows(%x: tensor<6x8xf32>, %i: tensor<6x2xi32>) {
  // expected-error @+1 {{'mtc.moe_permute' op result must be (min(num_experts * capacity, tokens * top_k), D) = (8, 8) of the input's element type (a row for every kept assignment), got (12, 8)}}
  %xp, %pos, %c = mtc.moe_permute %x, %i num_experts = 4 capacity = 2
      : tensor<6x8xf32>, tensor<6x2xi32> -> tensor<12x8xf32>, tensor<4xi32>
  return
}

// -----

// Tests that a capacity is at least one row.
func.func @permute_capacity_zero(%x: tensor<6x8xf32>, %i: tensor<6x2xi32>) {
  // expected-error @+1 {{'mtc.moe_permute' op capacity must be >= 1 (rows per expert), got 0}}
  %xp, %pos, %c = mtc.moe_permute %x, %i num_experts = 4 capacity = 0
      : tensor<6x8xf32>, tensor<6x2xi32> -> tensor<12x8xf32>, tensor<4xi32>
  return
}

// -----

// Tests that a priority comes with a capacity.
func.func @permute_priority_dropless(%x: tensor<6x8xf32>, %i: tensor<6x2xi32>, %w: tensor<6x2xf32>) {
  // expected-error @+1 {{'mtc.moe_permute' op priority ranks the assignments an expert keeps when it is over capacity: it needs a capacity}}
  %xp, %pos, %c = mtc.moe_permute %x, %i priority %w num_experts = 4
      : tensor<6x8xf32>, tensor<6x2xi32>, tensor<6x2xf32> -> tensor<12x8xf32>, tensor<4xi32>
  return
}

// -----

// Tests that the priority has the indices' shape.
func.func @permute_priority_shape(%x: tensor<6x8xf32>, %i: tensor<6x2xi32>, %w: tensor<6x3xf32>) {
  // expected-error @+1 {{'mtc.moe_permute' op priority must have the indices' shape (6, 2), got (6, 3)}}
  %xp, %pos, %c = mtc.moe_permute %x, %i priority %w num_experts = 4 capacity = 2
      : tensor<6x8xf32>, tensor<6x2xi32>, tensor<6x3xf32> -> tensor<8x8xf32>, tensor<4xi32>
  return
}

// -----

// Tests that the weights have the positions' shape.
func.func @unpermute_weights(%h: tensor<12x8xf32>, %pos: tensor<6x2xi32>, %w: tensor<6x3xf32>) {
  // expected-error @+1 {{'mtc.moe_unpermute' op weights must have the positions' shape (6, 2), got (6, 3)}}
  %y = mtc.moe_unpermute %h, %pos, %w : tensor<12x8xf32>, tensor<6x2xi32>, tensor<6x3xf32> -> tensor<6x8xf32>
  return
}

// -----

// Tests that the stacked weight has one matrix per expert.
func.func @grouped_experts(%x: tensor<12x8xf32>, %w: tensor<3x16x8xf32>, %c: tensor<4xi32>) {
  // expected-error @+1 {{'mtc.grouped_matmul' op lhs must be (rows, K) and rhs (num_experts = 4, ., .), got (12, 8) and (3, 16, 8)}}
  %h = mtc.grouped_matmul %x, %w, %c transpose_b
      : tensor<12x8xf32>, tensor<3x16x8xf32>, tensor<4xi32> -> tensor<12x16xf32>
  return
}

// -----

// Tests that the contraction sizes agree.
func.func @grouped_k(%x: tensor<12x8xf32>, %w: tensor<4x16x8xf32>, %c: tensor<4xi32>) {
  // expected-error @+1 {{'mtc.grouped_matmul' op contraction sizes differ: lhs has K = 8, rhs 16 (its second dimension)}}
  %h = mtc.grouped_matmul %x, %w, %c
      : tensor<12x8xf32>, tensor<4x16x8xf32>, tensor<4xi32> -> tensor<12x8xf32>
  return
}

// -----

// Tests that the bias is (num_experts, Nout).
func.func @grouped_bias(%x: tensor<12x8xf32>, %w: tensor<4x16x8xf32>, %c: tensor<4xi32>, %b: tensor<16xf32>) {
  // expected-error @+1 {{'mtc.grouped_matmul' op bias must be (num_experts, Nout) = (4, 16), got (16)}}
  %h = mtc.grouped_matmul %x, %w, %c, %b transpose_b
      : tensor<12x8xf32>, tensor<4x16x8xf32>, tensor<4xi32>, tensor<16xf32> -> tensor<12x16xf32>
  return
}

// -----

// Tests that bias_rank (where the bias is added) comes with a bias.
func.func @grouped_bias_rank(%x: tensor<12x8xf32>, %w: tensor<4x16x8xf32>, %c: tensor<4xi32>, %r: index) {
  // expected-error @+1 {{'mtc.grouped_matmul' op bias_rank without a bias: it says where the bias is added}}
  %h = mtc.grouped_matmul %x, %w, %c bias_rank %r transpose_b
      : tensor<12x8xf32>, tensor<4x16x8xf32>, tensor<4xi32> -> tensor<12x16xf32>
  return
}

// -----

// Tests that the weight gradient is (num_experts, P, Q).
func.func @wgrad_shape(%a: tensor<12x16xf32>, %b: tensor<12x8xf32>, %c: tensor<4xi32>) {
  // expected-error @+1 {{'mtc.grouped_matmul_wgrad' op result must be (num_experts, P, Q) = (4, 16, 8), got (4, 8, 16)}}
  %g = mtc.grouped_matmul_wgrad %a, %b, %c
      : tensor<12x16xf32>, tensor<12x8xf32>, tensor<4xi32> -> tensor<4x8x16xf32>
  return
}

// -----

// Tests that the bias gradient is (num_experts, M).
func.func @bias_grad_shape(%d: tensor<12x8xf32>, %c: tensor<4xi32>) {
  // expected-error @+1 {{'mtc.grouped_bias_grad' op dout must be (rows, M) and result (num_experts, M), got (12, 8) and (8)}}
  %g = mtc.grouped_bias_grad %d, %c : tensor<12x8xf32>, tensor<4xi32> -> tensor<8xf32>
  return
}

// -----

// Tests that an expert bias has one entry per expert.
func.func @router_bias_shape(%l: tensor<6x4xf32>, %b: tensor<3xf32>) {
  // expected-error @+1 {{'mtc.moe_router' op bias must be (num_experts) = (4), one per expert, got (3)}}
  %p, %i, %w, %a = mtc.moe_router %l bias %b top_k = 2 router = softmax_topk scale = 1.0 aux_coeff = 0.0 z_coeff = 0.0
      : tensor<6x4xf32>, tensor<3xf32> -> tensor<6x4xf32>, tensor<6x2xi32>, tensor<6x2xf32>
  return
}

// -----

// Tests that loads accumulate only into a not-trained parameter (a
// trained one's gradient slot holds its gradient).
func.func @load_into_trained(%c: tensor<4xi32>) {
  %b = mtc.param "layers.0.mlp.router.expert_bias" init = zeros : tensor<4xf32>
  // expected-error @+1 {{'mtc.moe_accumulate_load' op accumulates into 'layers.0.mlp.router.expert_bias', a trained parameter: its gradient-buffer slot holds its gradient (an expert bias is `not_trained`)}}
  mtc.moe_accumulate_load %c into "layers.0.mlp.router.expert_bias" update_rate = 1.0e-3 : tensor<4xi32>
  return
}

// -----

// Tests that the accumulator has the loads' shape.
func.func @load_shape(%c: tensor<4xi32>) {
  %b = mtc.param "layers.0.mlp.router.expert_bias" init = zeros not_trained : tensor<8xf32>
  // expected-error @+1 {{'mtc.moe_accumulate_load' op 'layers.0.mlp.router.expert_bias' must be (num_experts) = (4), one per expert, got (8)}}
  mtc.moe_accumulate_load %c into "layers.0.mlp.router.expert_bias" update_rate = 1.0e-3 : tensor<4xi32>
  return
}

// -----

// Tests that the loads are (num_experts).
func.func @load_counts(%c: tensor<2x4xi32>) {
  // expected-error @+1 {{'mtc.moe_accumulate_load' op counts must be (num_experts), got (2, 4)}}
  mtc.moe_accumulate_load %c into "layers.0.mlp.router.expert_bias" update_rate = 1.0e-3 : tensor<2x4xi32>
  return
}

// -----

// Tests that the update rate is positive, on the accumulation and on the
// update.
func.func @load_rate(%c: tensor<4xi32>) {
  // expected-error @+1 {{'mtc.moe_accumulate_load' op update_rate must be a finite number > 0, got 0}}
  mtc.moe_accumulate_load %c into "layers.0.mlp.router.expert_bias" update_rate = 0.0 : tensor<4xi32>
  return
}

// -----

func.func @update_rate() {
  // expected-error @+1 {{'mtc.moe_update_expert_bias' op rate must be a finite number > 0, got -1}}
  mtc.moe_update_expert_bias "layers.0.mlp.router.expert_bias" rate = -1.0
  return
}
