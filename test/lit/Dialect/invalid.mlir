// Verifier errors of mtc ops: one case per check in dialects/mtc/lib/MtcOps.cpp.
//
// RUN: mtc-opt %s -split-input-file -verify-diagnostics

//===----------------------------------------------------------------------===//
// mtc.param
//===----------------------------------------------------------------------===//

// Tests that a parameter needs a name.
func.func @param_empty_name() -> tensor<8xf32> {
  // expected-error @+1 {{'mtc.param' op parameter name must not be empty}}
  %p = mtc.param "" init = zeros : tensor<8xf32>
  return %p : tensor<8xf32>
}

// -----

// Tests that normal init needs a positive std.
func.func @param_normal_zero_std() -> tensor<8x8xf32> {
  // expected-error @+1 {{'mtc.param' op normal init needs std > 0, got 0.000000e+00}}
  %p = mtc.param "w" init = normal std = 0.0 : tensor<8x8xf32>
  return %p : tensor<8x8xf32>
}

// -----

// Tests that a negative std is rejected too.
func.func @param_normal_negative_std() -> tensor<8x8xf32> {
  // expected-error @+1 {{'mtc.param' op normal init needs std > 0, got -5.000000e-01}}
  %p = mtc.param "w" init = normal std = -0.5 : tensor<8x8xf32>
  return %p : tensor<8x8xf32>
}

// -----

// Tests that a parameter's shape must be static.
func.func @param_dynamic_shape() -> tensor<?x8xf32> {
  // expected-error @+1 {{'mtc.param' op parameter shape must be static}}
  %p = mtc.param "w" init = zeros : tensor<?x8xf32>
  return %p : tensor<?x8xf32>
}

//===----------------------------------------------------------------------===//
// mtc.embedding, mtc.embedding_grad
//===----------------------------------------------------------------------===//

// -----

// Tests that the embedding table must be 2-D.
func.func @embedding_table_rank(%tok: tensor<2x4xi32>, %t: tensor<16x8x2xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.embedding' op table must be (vocab, hidden), got rank 3}}
  %e = mtc.embedding %tok, %t : tensor<2x4xi32>, tensor<16x8x2xf32> -> tensor<2x4x8xf32>
  return %e : tensor<2x4x8xf32>
}

// -----

// Tests that the embedding result is the tokens' shape followed by the
// table's width.
func.func @embedding_result_shape(%tok: tensor<2x4xi32>, %t: tensor<16x8xf32>) -> tensor<2x4x16xf32> {
  // expected-error @+1 {{'mtc.embedding' op result must be the tokens' shape followed by the table's width, (2, 4, 8), got (2, 4, 16)}}
  %e = mtc.embedding %tok, %t : tensor<2x4xi32>, tensor<16x8xf32> -> tensor<2x4x16xf32>
  return %e : tensor<2x4x16xf32>
}

// -----

// Tests that the embedding result has the table's element type.
func.func @embedding_element_type(%tok: tensor<2x4xi32>, %t: tensor<16x8xf32>) -> tensor<2x4x8xbf16> {
  // expected-error @+1 {{'mtc.embedding' op result element type must match the table's}}
  %e = mtc.embedding %tok, %t : tensor<2x4xi32>, tensor<16x8xf32> -> tensor<2x4x8xbf16>
  return %e : tensor<2x4x8xbf16>
}

// -----

// Tests that the embedding gradient is 2-D.
func.func @embedding_grad_rank(%tok: tensor<2x4xi32>, %d: tensor<2x4x8xf32>) -> tensor<8xf32> {
  // expected-error @+1 {{'mtc.embedding_grad' op result must be (vocab, hidden), got rank 1}}
  %g = mtc.embedding_grad %tok, %d : tensor<2x4xi32>, tensor<2x4x8xf32> -> tensor<8xf32>
  return %g : tensor<8xf32>
}

// -----

// Tests that the embedding gradient's dout is the tokens' shape followed by
// the table's width.
func.func @embedding_grad_dout(%tok: tensor<2x4xi32>, %d: tensor<2x4x16xf32>) -> tensor<32x8xf32> {
  // expected-error @+1 {{'mtc.embedding_grad' op dout must be (2, 4, 8), got (2, 4, 16)}}
  %g = mtc.embedding_grad %tok, %d : tensor<2x4xi32>, tensor<2x4x16xf32> -> tensor<32x8xf32>
  return %g : tensor<32x8xf32>
}

//===----------------------------------------------------------------------===//
// mtc.add, mtc.reduce_leading, mtc.dropout
//===----------------------------------------------------------------------===//

// -----

// Tests that add's rhs must be lhs's shape or a suffix of it.
func.func @add_not_suffix(%x: tensor<2x4x8xf32>, %y: tensor<8x8xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.add' op rhs shape (8, 8) must equal lhs shape or a suffix of it to broadcast, lhs is (2, 4, 8)}}
  %a = mtc.add %x, %y : tensor<2x4x8xf32>, tensor<8x8xf32>
  return %a : tensor<2x4x8xf32>
}

// -----

// Tests that add's rhs may not have a higher rank than lhs.
func.func @add_rhs_longer(%x: tensor<4x8xf32>, %y: tensor<2x4x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{'mtc.add' op rhs shape (2, 4, 8) must equal lhs shape or a suffix of it to broadcast, lhs is (4, 8)}}
  %a = mtc.add %x, %y : tensor<4x8xf32>, tensor<2x4x8xf32>
  return %a : tensor<4x8xf32>
}

// -----

// Tests that add's operands have one element type.
func.func @add_element_type(%x: tensor<2x4x8xf32>, %y: tensor<2x4x8xbf16>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.add' op operands must have one element type}}
  %a = mtc.add %x, %y : tensor<2x4x8xf32>, tensor<2x4x8xbf16>
  return %a : tensor<2x4x8xf32>
}

// -----

// Tests that reduce_leading's result is a suffix of its input's shape.
func.func @reduce_leading_not_suffix(%x: tensor<2x4x8xf32>) -> tensor<4xf32> {
  // expected-error @+1 {{'mtc.reduce_leading' op result shape (4) must be a suffix of the input shape (2, 4, 8)}}
  %r = mtc.reduce_leading %x : tensor<2x4x8xf32> -> tensor<4xf32>
  return %r : tensor<4xf32>
}

// -----

// Tests that the dropout probability must be below 1.
func.func @dropout_p_one(%x: tensor<2x4x8xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.dropout' op dropout probability must be in [0, 1), got 1.000000e+00}}
  %y = mtc.dropout %x p = 1.0 key = 0 : tensor<2x4x8xf32>
  return %y : tensor<2x4x8xf32>
}

// -----

// Tests that the dropout probability must not be negative.
func.func @dropout_p_negative(%x: tensor<2x4x8xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.dropout' op dropout probability must be in [0, 1), got -1.000000e-01}}
  %y = mtc.dropout %x p = -0.1 key = 0 : tensor<2x4x8xf32>
  return %y : tensor<2x4x8xf32>
}

//===----------------------------------------------------------------------===//
// mtc.matmul
//===----------------------------------------------------------------------===//

// -----

// Tests that matmul operands must have rank >= 2.
func.func @matmul_rank(%x: tensor<8xf32>, %w: tensor<8x16xf32>) -> tensor<16xf32> {
  // expected-error @+1 {{'mtc.matmul' op operands must have rank >= 2, got 1 and 2}}
  %y = mtc.matmul %x, %w : tensor<8xf32>, tensor<8x16xf32> -> tensor<16xf32>
  return %y : tensor<16xf32>
}

// -----

// Tests that matmul operands have one element type.
func.func @matmul_element_type(%x: tensor<4x8xf32>, %w: tensor<8x16xbf16>) -> tensor<4x16xf32> {
  // expected-error @+1 {{'mtc.matmul' op lhs and rhs must have one element type}}
  %y = mtc.matmul %x, %w : tensor<4x8xf32>, tensor<8x16xbf16> -> tensor<4x16xf32>
  return %y : tensor<4x16xf32>
}

// -----

// Tests that the contraction sizes must agree (a linear weight used without
// transpose_b).
func.func @matmul_contraction(%x: tensor<2x4x8xf32>, %w: tensor<16x8xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.matmul' op contraction sizes differ: lhs gives 8, rhs gives 16 (lhs (2, 4, 8), rhs (16, 8))}}
  %y = mtc.matmul %x, %w : tensor<2x4x8xf32>, tensor<16x8xf32> -> tensor<2x4x8xf32>
  return %y : tensor<2x4x8xf32>
}

// -----

// Tests that the contraction message names the transposes.
func.func @matmul_contraction_transposed(%a: tensor<2x4x16xf32>, %b: tensor<16x4xf32>) -> tensor<16x16xf32> {
  // expected-error @+1 {{'mtc.matmul' op contraction sizes differ: lhs gives 8, rhs gives 4 (lhs (2, 4, 16) transposed, rhs (16, 4) transposed)}}
  %y = mtc.matmul %a, %b transpose_a transpose_b : tensor<2x4x16xf32>, tensor<16x4xf32> -> tensor<16x16xf32>
  return %y : tensor<16x16xf32>
}

// -----

// Tests that the bias is 1-D of size N.
func.func @matmul_bias(%x: tensor<2x4x8xf32>, %w: tensor<16x8xf32>, %b: tensor<8xf32>) -> tensor<2x4x16xf32> {
  // expected-error @+1 {{'mtc.matmul' op bias must be 1-D of size 16, got (8)}}
  %y = mtc.matmul %x, %w, %b transpose_b : tensor<2x4x8xf32>, tensor<16x8xf32>, tensor<8xf32> -> tensor<2x4x16xf32>
  return %y : tensor<2x4x16xf32>
}

// -----

// Tests that a 2-D bias is rejected.
func.func @matmul_bias_rank(%x: tensor<2x4x8xf32>, %w: tensor<16x8xf32>, %b: tensor<1x16xf32>) -> tensor<2x4x16xf32> {
  // expected-error @+1 {{'mtc.matmul' op bias must be 1-D of size 16, got (1, 16)}}
  %y = mtc.matmul %x, %w, %b transpose_b : tensor<2x4x8xf32>, tensor<16x8xf32>, tensor<1x16xf32> -> tensor<2x4x16xf32>
  return %y : tensor<2x4x16xf32>
}

// -----

// Tests that the result is lhs's leading dimensions followed by N.
func.func @matmul_result(%x: tensor<2x4x8xf32>, %w: tensor<16x8xf32>) -> tensor<8x16xf32> {
  // expected-error @+1 {{'mtc.matmul' op result must be (2, 4, 16), got (8, 16)}}
  %y = mtc.matmul %x, %w transpose_b : tensor<2x4x8xf32>, tensor<16x8xf32> -> tensor<8x16xf32>
  return %y : tensor<8x16xf32>
}

// -----

// Tests that with transpose_a the result is (lhs's last dim, N): a weight
// gradient dY^T X of a (16, 8) weight is (16, 8), not (8, 16).
func.func @matmul_result_transpose_a(%dy: tensor<2x4x16xf32>, %x: tensor<2x4x8xf32>) -> tensor<8x16xf32> {
  // expected-error @+1 {{'mtc.matmul' op result must be (16, 8), got (8, 16)}}
  %dw = mtc.matmul %dy, %x transpose_a : tensor<2x4x16xf32>, tensor<2x4x8xf32> -> tensor<8x16xf32>
  return %dw : tensor<8x16xf32>
}

//===----------------------------------------------------------------------===//
// mtc.layer_norm, mtc.layer_norm_grad, mtc.rms_norm, mtc.rms_norm_grad
//===----------------------------------------------------------------------===//

// -----

// Tests that a norm's input must have rank >= 1.
func.func @layer_norm_rank0(%x: tensor<f32>, %g: tensor<1xf32>) -> tensor<f32> {
  // expected-error @+1 {{'mtc.layer_norm' op input must have rank >= 1}}
  %y = mtc.layer_norm %x, %g eps = 1.0e-05 : tensor<f32>, tensor<1xf32>
  return %y : tensor<f32>
}

// -----

// Tests that gamma has the input's last dimension.
func.func @layer_norm_gamma(%x: tensor<2x4x8xf32>, %g: tensor<4xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.layer_norm' op gamma must be 1-D of size 8 (the input's last dimension), got (4)}}
  %y = mtc.layer_norm %x, %g eps = 1.0e-05 : tensor<2x4x8xf32>, tensor<4xf32>
  return %y : tensor<2x4x8xf32>
}

// -----

// Tests that beta has the input's last dimension.
func.func @layer_norm_beta(%x: tensor<2x4x8xf32>, %g: tensor<8xf32>, %b: tensor<1x8xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.layer_norm' op beta must be 1-D of size 8 (the input's last dimension), got (1, 8)}}
  %y = mtc.layer_norm %x, %g, %b eps = 1.0e-05 : tensor<2x4x8xf32>, tensor<8xf32>, tensor<1x8xf32>
  return %y : tensor<2x4x8xf32>
}

// -----

// Tests that layer_norm's eps must be positive.
func.func @layer_norm_eps(%x: tensor<2x4x8xf32>, %g: tensor<8xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.layer_norm' op eps must be > 0}}
  %y = mtc.layer_norm %x, %g eps = 0.0 : tensor<2x4x8xf32>, tensor<8xf32>
  return %y : tensor<2x4x8xf32>
}

// -----

// Tests that layer_norm_grad checks gamma.
func.func @layer_norm_grad_gamma(%x: tensor<2x4x8xf32>, %g: tensor<4xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.layer_norm_grad' op gamma must be 1-D of size 8 (the input's last dimension), got (4)}}
  %dx, %dg, %db = mtc.layer_norm_grad %x, %g, %x eps = 1.0e-05 : tensor<2x4x8xf32>, tensor<4xf32>
  return %dx : tensor<2x4x8xf32>
}

// -----

// Tests that layer_norm_grad's dout and dinput have the input's type. The
// AllTypesMatch trait reports this before the verifier's own check, which
// the custom syntax cannot reach (it infers those types).
func.func @layer_norm_grad_dout(%x: tensor<2x4x8xf32>, %g: tensor<8xf32>, %d: tensor<2x4x8xbf16>) {
  // expected-error @+1 {{'mtc.layer_norm_grad' op failed to verify that all of {input, dout, dinput} have same type}}
  %dx, %dg, %db = "mtc.layer_norm_grad"(%x, %g, %d) {eps = 1.0e-05 : f64}
      : (tensor<2x4x8xf32>, tensor<8xf32>, tensor<2x4x8xbf16>) -> (tensor<2x4x8xf32>, tensor<8xf32>, tensor<8xf32>)
  return
}

// -----

// Tests that layer_norm_grad's dgamma and dbeta have gamma's type (reported
// by the AllTypesMatch trait, as above).
func.func @layer_norm_grad_dbeta(%x: tensor<2x4x8xf32>, %g: tensor<8xf32>) {
  // expected-error @+1 {{'mtc.layer_norm_grad' op failed to verify that all of {gamma, dgamma, dbeta} have same type}}
  %dx, %dg, %db = "mtc.layer_norm_grad"(%x, %g, %x) {eps = 1.0e-05 : f64}
      : (tensor<2x4x8xf32>, tensor<8xf32>, tensor<2x4x8xf32>) -> (tensor<2x4x8xf32>, tensor<8xf32>, tensor<8xbf16>)
  return
}

// -----

// Tests that rms_norm checks gamma.
func.func @rms_norm_gamma(%x: tensor<2x4x8xf32>, %g: tensor<8x8xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.rms_norm' op gamma must be 1-D of size 8 (the input's last dimension), got (8, 8)}}
  %y = mtc.rms_norm %x, %g eps = 1.0e-05 : tensor<2x4x8xf32>, tensor<8x8xf32>
  return %y : tensor<2x4x8xf32>
}

// -----

// Tests that rms_norm's eps must be positive.
func.func @rms_norm_eps(%x: tensor<2x4x8xf32>, %g: tensor<8xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.rms_norm' op eps must be > 0}}
  %y = mtc.rms_norm %x, %g eps = -1.0e-05 : tensor<2x4x8xf32>, tensor<8xf32>
  return %y : tensor<2x4x8xf32>
}

// -----

// Tests that rms_norm_grad checks the input's rank.
func.func @rms_norm_grad_rank0(%x: tensor<f32>, %g: tensor<1xf32>) -> tensor<f32> {
  // expected-error @+1 {{'mtc.rms_norm_grad' op input must have rank >= 1}}
  %dx, %dg = mtc.rms_norm_grad %x, %g, %x eps = 1.0e-05 : tensor<f32>, tensor<1xf32>
  return %dx : tensor<f32>
}

// -----

// Tests that rms_norm_grad checks gamma.
func.func @rms_norm_grad_gamma(%x: tensor<2x4x8xf32>, %g: tensor<16xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.rms_norm_grad' op gamma must be 1-D of size 8 (the input's last dimension), got (16)}}
  %dx, %dg = mtc.rms_norm_grad %x, %g, %x eps = 1.0e-05 : tensor<2x4x8xf32>, tensor<16xf32>
  return %dx : tensor<2x4x8xf32>
}

// -----

// Tests that rms_norm_grad's dgamma has gamma's type (reported by the
// AllTypesMatch trait before the verifier's own check).
func.func @rms_norm_grad_dgamma(%x: tensor<2x4x8xf32>, %g: tensor<8xf32>) {
  // expected-error @+1 {{'mtc.rms_norm_grad' op failed to verify that all of {gamma, dgamma} have same type}}
  %dx, %dg = "mtc.rms_norm_grad"(%x, %g, %x) {eps = 1.0e-05 : f64}
      : (tensor<2x4x8xf32>, tensor<8xf32>, tensor<2x4x8xf32>) -> (tensor<2x4x8xf32>, tensor<8xf16>)
  return
}

//===----------------------------------------------------------------------===//
// mtc.rope (the fused QKV checks shared with attention)
//===----------------------------------------------------------------------===//

// -----

// Tests that fused QKV must be 3-D.
func.func @rope_rank(%qkv: tensor<8x32xf32>) -> tensor<8x32xf32> {
  // expected-error @+1 {{'mtc.rope' op qkv must be (batch, seq, (heads + 2 * kv_heads) * head_dim), got rank 2}}
  %r = mtc.rope %qkv heads = 4 kv_heads = 2 theta = 1.0e4 : tensor<8x32xf32>
  return %r : tensor<8x32xf32>
}

// -----

// Tests that heads must be positive.
func.func @rope_heads_zero(%qkv: tensor<2x4x32xf32>) -> tensor<2x4x32xf32> {
  // expected-error @+1 {{'mtc.rope' op heads and kv_heads must be positive, got 0 and 2}}
  %r = mtc.rope %qkv heads = 0 kv_heads = 2 theta = 1.0e4 : tensor<2x4x32xf32>
  return %r : tensor<2x4x32xf32>
}

// -----

// Tests that kv_heads must be positive.
func.func @rope_kv_heads_negative(%qkv: tensor<2x4x32xf32>) -> tensor<2x4x32xf32> {
  // expected-error @+1 {{'mtc.rope' op heads and kv_heads must be positive, got 4 and -2}}
  %r = mtc.rope %qkv heads = 4 kv_heads = -2 theta = 1.0e4 : tensor<2x4x32xf32>
  return %r : tensor<2x4x32xf32>
}

// -----

// Tests that heads must be a multiple of kv_heads.
func.func @rope_heads_multiple(%qkv: tensor<2x4x40xf32>) -> tensor<2x4x40xf32> {
  // expected-error @+1 {{'mtc.rope' op heads (4) must be a multiple of kv_heads (3)}}
  %r = mtc.rope %qkv heads = 4 kv_heads = 3 theta = 1.0e4 : tensor<2x4x40xf32>
  return %r : tensor<2x4x40xf32>
}

// -----

// Tests that QKV's width must be (heads + 2 * kv_heads) head_dims.
func.func @rope_width(%qkv: tensor<2x4x30xf32>) -> tensor<2x4x30xf32> {
  // expected-error @+1 {{'mtc.rope' op qkv's last dimension 30 is not (heads + 2 * kv_heads) = 8 times a head_dim}}
  %r = mtc.rope %qkv heads = 4 kv_heads = 2 theta = 1.0e4 : tensor<2x4x30xf32>
  return %r : tensor<2x4x30xf32>
}

// -----

// Tests that rope needs an even head_dim.
func.func @rope_odd_head_dim(%qkv: tensor<2x4x24xf32>) -> tensor<2x4x24xf32> {
  // expected-error @+1 {{'mtc.rope' op rope needs an even head_dim, got 3}}
  %r = mtc.rope %qkv heads = 4 kv_heads = 2 theta = 1.0e4 : tensor<2x4x24xf32>
  return %r : tensor<2x4x24xf32>
}

// -----

// Tests that theta must be positive.
func.func @rope_theta(%qkv: tensor<2x4x32xf32>) -> tensor<2x4x32xf32> {
  // expected-error @+1 {{'mtc.rope' op theta must be > 0}}
  %r = mtc.rope %qkv heads = 4 kv_heads = 2 theta = 0.0 : tensor<2x4x32xf32>
  return %r : tensor<2x4x32xf32>
}

//===----------------------------------------------------------------------===//
// mtc.attention, mtc.attention_grad
//===----------------------------------------------------------------------===//

// -----

// Tests that attention checks the QKV width.
func.func @attention_width(%qkv: tensor<2x4x36xf32>) -> tensor<2x4x16xf32> {
  // expected-error @+1 {{'mtc.attention' op qkv's last dimension 36 is not (heads + 2 * kv_heads) = 8 times a head_dim}}
  %o, %lse = mtc.attention %qkv heads = 4 kv_heads = 2 scale = 0.5
               : tensor<2x4x36xf32> -> tensor<2x4x16xf32>, tensor<2x4x4xf32>
  return %o : tensor<2x4x16xf32>
}

// -----

// Tests that the mask must be (batch, seq).
func.func @attention_mask(%qkv: tensor<2x4x32xf32>, %m: tensor<2x8xi32>) -> tensor<2x4x16xf32> {
  // expected-error @+1 {{'mtc.attention' op mask must be (batch, seq) = (2, 4), got (2, 8)}}
  %o, %lse = mtc.attention %qkv mask %m heads = 4 kv_heads = 2 scale = 0.5
               : tensor<2x4x32xf32>, tensor<2x8xi32> -> tensor<2x4x16xf32>, tensor<2x4x4xf32>
  return %o : tensor<2x4x16xf32>
}

// -----

// Tests that the attention output must be (batch, seq, heads * head_dim).
func.func @attention_output(%qkv: tensor<2x4x32xf32>) -> tensor<2x4x32xf32> {
  // expected-error @+1 {{'mtc.attention' op attention output must be (batch, seq, heads * head_dim) = (2, 4, 16), got (2, 4, 32)}}
  %o, %lse = mtc.attention %qkv heads = 4 kv_heads = 2 scale = 0.5
               : tensor<2x4x32xf32> -> tensor<2x4x32xf32>, tensor<2x4x4xf32>
  return %o : tensor<2x4x32xf32>
}

// -----

// Tests that lse must be (batch, heads, seq).
func.func @attention_lse(%qkv: tensor<2x4x32xf32>) -> tensor<2x4x16xf32> {
  // expected-error @+1 {{'mtc.attention' op lse must be (batch, heads, seq) = (2, 4, 4), got (2, 2, 4)}}
  %o, %lse = mtc.attention %qkv heads = 4 kv_heads = 2 scale = 0.5
               : tensor<2x4x32xf32> -> tensor<2x4x16xf32>, tensor<2x2x4xf32>
  return %o : tensor<2x4x16xf32>
}

// -----

// Tests that the attention scale must be positive.
func.func @attention_scale(%qkv: tensor<2x4x32xf32>) -> tensor<2x4x16xf32> {
  // expected-error @+1 {{'mtc.attention' op scale must be > 0}}
  %o, %lse = mtc.attention %qkv heads = 4 kv_heads = 2 scale = 0.0
               : tensor<2x4x32xf32> -> tensor<2x4x16xf32>, tensor<2x4x4xf32>
  return %o : tensor<2x4x16xf32>
}

// -----

// Tests that attention_grad checks the mask.
func.func @attention_grad_mask(%qkv: tensor<2x4x32xf32>, %o: tensor<2x4x16xf32>,
                               %lse: tensor<2x4x4xf32>, %m: tensor<4x2xi32>) -> tensor<2x4x32xf32> {
  // expected-error @+1 {{'mtc.attention_grad' op mask must be (batch, seq) = (2, 4), got (4, 2)}}
  %d = mtc.attention_grad %qkv, %o, %lse, %o mask %m heads = 4 kv_heads = 2 causal scale = 0.5
         : tensor<2x4x32xf32>, tensor<2x4x16xf32>, tensor<2x4x4xf32>, tensor<4x2xi32>
  return %d : tensor<2x4x32xf32>
}

// -----

// Tests that attention_grad checks the forward output's shape.
func.func @attention_grad_out(%qkv: tensor<2x4x32xf32>, %o: tensor<2x4x8xf32>,
                              %lse: tensor<2x4x4xf32>) -> tensor<2x4x32xf32> {
  // expected-error @+1 {{'mtc.attention_grad' op attention output must be (batch, seq, heads * head_dim) = (2, 4, 16), got (2, 4, 8)}}
  %d = mtc.attention_grad %qkv, %o, %lse, %o heads = 4 kv_heads = 2 scale = 0.5
         : tensor<2x4x32xf32>, tensor<2x4x8xf32>, tensor<2x4x4xf32>
  return %d : tensor<2x4x32xf32>
}

// -----

// Tests that attention_grad checks lse.
func.func @attention_grad_lse(%qkv: tensor<2x4x32xf32>, %o: tensor<2x4x16xf32>,
                              %lse: tensor<2x4x8xf32>) -> tensor<2x4x32xf32> {
  // expected-error @+1 {{'mtc.attention_grad' op lse must be (batch, heads, seq) = (2, 4, 4), got (2, 4, 8)}}
  %d = mtc.attention_grad %qkv, %o, %lse, %o heads = 4 kv_heads = 2 scale = 0.5
         : tensor<2x4x32xf32>, tensor<2x4x16xf32>, tensor<2x4x8xf32>
  return %d : tensor<2x4x32xf32>
}

// -----

// Tests that attention_grad checks heads against kv_heads.
func.func @attention_grad_heads(%qkv: tensor<2x4x32xf32>, %o: tensor<2x4x16xf32>,
                                %lse: tensor<2x4x4xf32>) -> tensor<2x4x32xf32> {
  // expected-error @+1 {{'mtc.attention_grad' op heads (4) must be a multiple of kv_heads (8)}}
  %d = mtc.attention_grad %qkv, %o, %lse, %o heads = 4 kv_heads = 8 scale = 0.5
         : tensor<2x4x32xf32>, tensor<2x4x16xf32>, tensor<2x4x4xf32>
  return %d : tensor<2x4x32xf32>
}

// -----

// Tests that attention_grad's dout has the output's type (reported by the
// AllTypesMatch trait before the verifier's own check).
func.func @attention_grad_dout(%qkv: tensor<2x4x32xf32>, %o: tensor<2x4x16xf32>,
                               %lse: tensor<2x4x4xf32>, %do: tensor<2x4x16xbf16>) {
  // expected-error @+1 {{'mtc.attention_grad' op failed to verify that all of {out, dout} have same type}}
  %d = "mtc.attention_grad"(%qkv, %o, %lse, %do) {heads = 4 : i64, kv_heads = 2 : i64, scale = 5.0e-01 : f64}
         : (tensor<2x4x32xf32>, tensor<2x4x16xf32>, tensor<2x4x4xf32>, tensor<2x4x16xbf16>) -> tensor<2x4x32xf32>
  return
}

// -----

// Tests that attention_grad's result has qkv's type (reported by the
// AllTypesMatch trait before the verifier's own check).
func.func @attention_grad_result(%qkv: tensor<2x4x32xf32>, %o: tensor<2x4x16xf32>,
                                 %lse: tensor<2x4x4xf32>) {
  // expected-error @+1 {{'mtc.attention_grad' op failed to verify that all of {qkv, result} have same type}}
  %d = "mtc.attention_grad"(%qkv, %o, %lse, %o) {heads = 4 : i64, kv_heads = 2 : i64, scale = 5.0e-01 : f64}
         : (tensor<2x4x32xf32>, tensor<2x4x16xf32>, tensor<2x4x4xf32>, tensor<2x4x16xf32>) -> tensor<2x4x32xbf16>
  return
}

//===----------------------------------------------------------------------===//
// mtc.cross_entropy, mtc.cross_entropy_grad
//===----------------------------------------------------------------------===//

// -----

// Tests that logits must have rank >= 2.
func.func @cross_entropy_rank(%l: tensor<16xf32>, %t: tensor<i32>) -> tensor<f32> {
  // expected-error @+1 {{'mtc.cross_entropy' op logits must have rank >= 2, got 1}}
  %loss = mtc.cross_entropy %l, %t ignore_index = -1 : tensor<16xf32>, tensor<i32>
  return %loss : tensor<f32>
}

// -----

// Tests that targets have the logits' shape without the vocabulary dimension.
func.func @cross_entropy_targets(%l: tensor<2x4x16xf32>, %t: tensor<2x16xi32>) -> tensor<f32> {
  // expected-error @+1 {{'mtc.cross_entropy' op targets must have the logits' shape without the vocabulary dimension, (2, 4), got (2, 16)}}
  %loss = mtc.cross_entropy %l, %t ignore_index = -1 : tensor<2x4x16xf32>, tensor<2x16xi32>
  return %loss : tensor<f32>
}

// -----

// Tests that cross_entropy_grad checks the logits' rank.
func.func @cross_entropy_grad_rank(%l: tensor<16xf32>, %t: tensor<i32>, %dl: tensor<f32>) -> tensor<16xf32> {
  // expected-error @+1 {{'mtc.cross_entropy_grad' op logits must have rank >= 2, got 1}}
  %d = mtc.cross_entropy_grad %l, %t, %dl ignore_index = -1 : tensor<16xf32>, tensor<i32>
  return %d : tensor<16xf32>
}

// -----

// Tests that cross_entropy_grad checks the targets' shape.
func.func @cross_entropy_grad_targets(%l: tensor<2x4x16xf32>, %t: tensor<4x2xi32>, %dl: tensor<f32>) -> tensor<2x4x16xf32> {
  // expected-error @+1 {{'mtc.cross_entropy_grad' op targets must have the logits' shape without the vocabulary dimension, (2, 4), got (4, 2)}}
  %d = mtc.cross_entropy_grad %l, %t, %dl ignore_index = -1 : tensor<2x4x16xf32>, tensor<4x2xi32>
  return %d : tensor<2x4x16xf32>
}

//===----------------------------------------------------------------------===//
// mtc.adamw
//===----------------------------------------------------------------------===//

// -----

// Tests that a parameter group must not be empty.
func.func @adamw_empty(%lr: f32, %step: i64, %n: f32) {
  // expected-error @+1 {{'mtc.adamw' op parameter group must not be empty}}
  mtc.adamw %lr, %step, %n params = [] weight_decay = 0.1 beta1 = 0.9 beta2 = 0.95
    eps = 1.0e-8 max_grad_norm = 1.0 grad_scale = 1.0
  return
}

// -----

// Tests that a parameter may be listed only once.
func.func @adamw_duplicate(%lr: f32, %step: i64, %n: f32) {
  // expected-error @+1 {{'mtc.adamw' op parameter 'wte' listed twice}}
  mtc.adamw %lr, %step, %n params = ["wte", "lm_head.weight", "wte"] weight_decay = 0.1
    beta1 = 0.9 beta2 = 0.95 eps = 1.0e-8 max_grad_norm = 1.0 grad_scale = 1.0
  return
}

// -----

// Tests that beta1 must be in [0, 1).
func.func @adamw_beta1(%lr: f32, %step: i64, %n: f32) {
  // expected-error @+1 {{'mtc.adamw' op beta1 and beta2 must be in [0, 1)}}
  mtc.adamw %lr, %step, %n params = ["wte"] weight_decay = 0.1 beta1 = 1.0 beta2 = 0.95
    eps = 1.0e-8 max_grad_norm = 1.0 grad_scale = 1.0
  return
}

// -----

// Tests that beta2 must be in [0, 1).
func.func @adamw_beta2(%lr: f32, %step: i64, %n: f32) {
  // expected-error @+1 {{'mtc.adamw' op beta1 and beta2 must be in [0, 1)}}
  mtc.adamw %lr, %step, %n params = ["wte"] weight_decay = 0.1 beta1 = 0.9 beta2 = -0.5
    eps = 1.0e-8 max_grad_norm = 1.0 grad_scale = 1.0
  return
}

// -----

// Tests that AdamW's eps must be positive.
func.func @adamw_eps(%lr: f32, %step: i64, %n: f32) {
  // expected-error @+1 {{'mtc.adamw' op eps must be > 0}}
  mtc.adamw %lr, %step, %n params = ["wte"] weight_decay = 0.1 beta1 = 0.9 beta2 = 0.95
    eps = 0.0 max_grad_norm = 1.0 grad_scale = 1.0
  return
}

// -----

// Tests that weight_decay must not be negative.
func.func @adamw_weight_decay(%lr: f32, %step: i64, %n: f32) {
  // expected-error @+1 {{'mtc.adamw' op weight_decay and max_grad_norm must be >= 0}}
  mtc.adamw %lr, %step, %n params = ["wte"] weight_decay = -0.1 beta1 = 0.9 beta2 = 0.95
    eps = 1.0e-8 max_grad_norm = 1.0 grad_scale = 1.0
  return
}

// -----

// Tests that max_grad_norm must not be negative.
func.func @adamw_max_grad_norm(%lr: f32, %step: i64, %n: f32) {
  // expected-error @+1 {{'mtc.adamw' op weight_decay and max_grad_norm must be >= 0}}
  mtc.adamw %lr, %step, %n params = ["wte"] weight_decay = 0.1 beta1 = 0.9 beta2 = 0.95
    eps = 1.0e-8 max_grad_norm = -1.0 grad_scale = 1.0
  return
}

//===----------------------------------------------------------------------===//
// mtc.reduce_gradients, mtc.all_gather_params
//===----------------------------------------------------------------------===//

// -----

// Tests that a gradient reduction names at least one grid axis.
func.func @reduce_gradients_no_axis() {
  // expected-error @+1 {{'mtc.reduce_gradients' op needs at least one grid axis}}
  mtc.reduce_gradients on @mtc_grid grid_axes = []
  return
}

// -----

// Tests that a grid axis is listed once.
func.func @reduce_gradients_axis_twice() {
  // expected-error @+1 {{'mtc.reduce_gradients' op grid axis 1 listed twice}}
  mtc.reduce_gradients on @mtc_grid grid_axes = [1, 1]
  return
}

// -----

// Tests that a grid axis is not negative.
func.func @all_gather_params_negative_axis() {
  // expected-error @+1 {{'mtc.all_gather_params' op grid axis -1 is negative}}
  mtc.all_gather_params on @mtc_grid grid_axes = [-1]
  return
}

// -----

// Tests that a sharded optimizer step ends by gathering the parameters.
func.func @sharded_without_gather() {
  // expected-error @+1 {{'mtc.reduce_gradients' op shards the optimizer state but no mtc.all_gather_params over the same grid and axes follows it}}
  mtc.reduce_gradients on @mtc_grid grid_axes = [1] shard_optimizer_state
  return
}

// -----

// Tests that parameters are gathered only after a sharded reduction.
func.func @gather_without_sharded_reduce() {
  mtc.reduce_gradients on @mtc_grid grid_axes = [1]
  // expected-error @+1 {{'mtc.all_gather_params' op needs an earlier mtc.reduce_gradients with shard_optimizer_state over the same grid and axes}}
  mtc.all_gather_params on @mtc_grid grid_axes = [1]
  return
}

// -----

// Tests that a sharded reduction and its gather pair on the same grid, not
// only the same axis numbers: the dp axis of @mtc_grid and the
// expert-data-parallel axis of @mtc_expert_grid are both axis 1.
func.func @gather_on_another_grid() {
  mtc.reduce_gradients on @mtc_grid grid_axes = [1] shard_optimizer_state
  // expected-error @+1 {{'mtc.reduce_gradients' op shards the optimizer state but no mtc.all_gather_params over the same grid and axes follows it}}
  mtc.reduce_gradients on @mtc_expert_grid grid_axes = [1] shard_optimizer_state {divisor = 4 : i64, params = ["e"]}
  mtc.all_gather_params on @mtc_grid grid_axes = [1]
  return
}

// -----

// Tests that an activation's gradient (squared_relu_grad, defined by the
// Mtc_UnaryActivationGradOp class) needs one type for x, dy and dx.
func.func @squared_relu_grad_types(%x: tensor<2x4xf32>, %dy: tensor<2x8xf32>) -> tensor<2x4xf32> {
  // expected-error @+1 {{'mtc.squared_relu_grad' op failed to verify that all of {input, dout, result} have same type}}
  %d = "mtc.squared_relu_grad"(%x, %dy) : (tensor<2x4xf32>, tensor<2x8xf32>) -> tensor<2x4xf32>
  return %d : tensor<2x4xf32>
}

// -----

// Tests that a microbatch index must lie inside the step's batch.
func.func @microbatch_out_of_range(%t: tensor<4x2x8xi32>) -> tensor<2x8xi32> {
  // expected-error @+1 {{'mtc.microbatch' op microbatch 4 is outside [0, 4)}}
  %m = mtc.microbatch %t[4] : tensor<4x2x8xi32> -> tensor<2x8xi32>
  return %m : tensor<2x8xi32>
}

// -----

// Tests that a negative microbatch index is refused too.
func.func @microbatch_negative(%t: tensor<4x2x8xi32>) -> tensor<2x8xi32> {
  // expected-error @+1 {{'mtc.microbatch' op microbatch -1 is outside [0, 4)}}
  %m = mtc.microbatch %t[-1] : tensor<4x2x8xi32> -> tensor<2x8xi32>
  return %m : tensor<2x8xi32>
}

// -----

// Tests that a microbatch is the batch without its leading dimension.
func.func @microbatch_shape(%t: tensor<4x2x8xi32>) -> tensor<2x4xi32> {
  // expected-error @+1 {{'mtc.microbatch' op takes (M, ...) to one (...) microbatch, got 'tensor<4x2x8xi32>' -> 'tensor<2x4xi32>'}}
  %m = mtc.microbatch %t[0] : tensor<4x2x8xi32> -> tensor<2x4xi32>
  return %m : tensor<2x4xi32>
}

// -----

// Tests that a p2p transfer is a dictionary of the six keys.
func.func @p2p_transfer_keys(%a: tensor<4xf32>) {
  // expected-error @+1 {{'mtc.p2p' op transfer 0: a transfer is a dictionary {kind, payload, microbatch, chunk, index, peer}}}
  mtc.p2p(%a) transfers = [{kind = "send", payload = "activation", microbatch = 0 : i64, chunk = 0 : i64, peer = 1 : i64}] : (tensor<4xf32>) -> ()
  return
}

// -----

// Tests that a transfer's kind is send or recv.
func.func @p2p_transfer_kind(%a: tensor<4xf32>) {
  // expected-error @+1 {{'mtc.p2p' op transfer 0: kind must be "send" or "recv", got "put"}}
  mtc.p2p(%a) transfers = [{kind = "put", payload = "activation", microbatch = 0 : i64, chunk = 0 : i64, index = 0 : i64, peer = 1 : i64}] : (tensor<4xf32>) -> ()
  return
}

// -----

// Tests that a transfer's payload is an activation or a gradient.
func.func @p2p_transfer_payload(%a: tensor<4xf32>) {
  // expected-error @+1 {{'mtc.p2p' op transfer 0: payload must be "activation" or "gradient", got "weights"}}
  mtc.p2p(%a) transfers = [{kind = "send", payload = "weights", microbatch = 0 : i64, chunk = 0 : i64, index = 0 : i64, peer = 1 : i64}] : (tensor<4xf32>) -> ()
  return
}

// -----

// Tests that a transfer's numbers are not negative.
func.func @p2p_transfer_negative(%a: tensor<4xf32>) {
  // expected-error @+1 {{'mtc.p2p' op transfer 0: microbatch, chunk, index and peer must be >= 0}}
  mtc.p2p(%a) transfers = [{kind = "send", payload = "activation", microbatch = 0 : i64, chunk = 0 : i64, index = 0 : i64, peer = -1 : i64}] : (tensor<4xf32>) -> ()
  return
}

// -----

// Tests that each send takes an operand: two sends, one operand.
func.func @p2p_more_sends_than_operands(%a: tensor<4xf32>) {
  // expected-error @+1 {{'mtc.p2p' op transfer 1 sends, but the op has only 1 operand(s)}}
  mtc.p2p(%a) transfers = [{kind = "send", payload = "activation", microbatch = 0 : i64, chunk = 0 : i64, index = 0 : i64, peer = 1 : i64}, {kind = "send", payload = "activation", microbatch = 1 : i64, chunk = 0 : i64, index = 0 : i64, peer = 1 : i64}] : (tensor<4xf32>) -> ()
  return
}

// -----

// Tests that each receive gives a result: a receive, no result.
func.func @p2p_recv_without_result() {
  // expected-error @+1 {{'mtc.p2p' op transfer 0 receives, but the op has only 0 result(s)}}
  mtc.p2p() transfers = [{kind = "recv", payload = "gradient", microbatch = 0 : i64, chunk = 1 : i64, index = 0 : i64, peer = 1 : i64}] : () -> ()
  return
}

// -----

// Tests that every operand is sent: two operands, one send.
func.func @p2p_fewer_sends_than_operands(%a: tensor<4xf32>, %b: tensor<4xf32>) {
  // expected-error @+1 {{'mtc.p2p' op has 2 operand(s) and 0 result(s) but its transfers send 1 and receive 0}}
  mtc.p2p(%a, %b) transfers = [{kind = "send", payload = "activation", microbatch = 0 : i64, chunk = 0 : i64, index = 0 : i64, peer = 1 : i64}] : (tensor<4xf32>, tensor<4xf32>) -> ()
  return
}

// -----

// Tests that a p2p group has at least one transfer.
func.func @p2p_empty() {
  // expected-error @+1 {{'mtc.p2p' op has no transfers}}
  mtc.p2p() transfers = [] : () -> ()
  return
}
