// Round trip of every mtc op through the custom assembly format (printed,
// re-parsed, printed again) and through the generic form, with each optional
// operand and unit attribute present and absent.
//
// RUN: mtc-opt %s -split-input-file | mtc-opt -split-input-file | FileCheck %s
// RUN: mtc-opt %s -split-input-file -mlir-print-op-generic | mtc-opt -split-input-file | FileCheck %s

// Tests that mtc.param keeps its name, init kind and a non-default std.
// CHECK-LABEL: func.func @param_normal_std
// CHECK:         %[[P:.*]] = mtc.param "layers.0.mlp.fc1.weight" init = normal std = 5.000000e-02 : tensor<16x8xf32>
// CHECK:         return %[[P]]
func.func @param_normal_std() -> tensor<16x8xf32> {
  %w = mtc.param "layers.0.mlp.fc1.weight" init = normal std = 5.000000e-02 : tensor<16x8xf32>
  return %w : tensor<16x8xf32>
}

// -----

// Tests that an mtc.param without std gets the default 0.02, which the
// custom printer elides again.
// CHECK-LABEL: func.func @param_default_std
// CHECK:         %[[P:.*]] = mtc.param "wte" init = normal : tensor<16x8xf32>
// CHECK:         return %[[P]]
func.func @param_default_std() -> tensor<16x8xf32> {
  %w = mtc.param "wte" init = normal : tensor<16x8xf32>
  return %w : tensor<16x8xf32>
}

// -----

// Tests that the zeros and ones init kinds round-trip, with bf16 and f16
// element types.
// CHECK-LABEL: func.func @param_zeros_ones
// CHECK:         %[[Z:.*]] = mtc.param "ln.bias" init = zeros : tensor<8xbf16>
// CHECK:         %[[O:.*]] = mtc.param "ln.weight" init = ones : tensor<8xf16>
// CHECK:         return %[[Z]], %[[O]]
func.func @param_zeros_ones() -> (tensor<8xbf16>, tensor<8xf16>) {
  %z = mtc.param "ln.bias" init = zeros : tensor<8xbf16>
  %o = mtc.param "ln.weight" init = ones : tensor<8xf16>
  return %z, %o : tensor<8xbf16>, tensor<8xf16>
}

// -----

// Tests that mtc.embedding and mtc.embedding_grad round-trip.
// CHECK-LABEL: func.func @embedding
// CHECK-SAME:    (%[[TOK:[^:]+]]: tensor<2x4xi32>, %[[TABLE:[^:]+]]: tensor<16x8xf32>
// CHECK:         %[[E:.*]] = mtc.embedding %[[TOK]], %[[TABLE]] : tensor<2x4xi32>, tensor<16x8xf32> -> tensor<2x4x8xf32>
// CHECK:         %[[G:.*]] = mtc.embedding_grad %[[TOK]], %[[E]] : tensor<2x4xi32>, tensor<2x4x8xf32> -> tensor<16x8xf32>
// CHECK:         return %[[E]], %[[G]]
func.func @embedding(%tok: tensor<2x4xi32>, %table: tensor<16x8xf32>)
    -> (tensor<2x4x8xf32>, tensor<16x8xf32>) {
  %e = mtc.embedding %tok, %table : tensor<2x4xi32>, tensor<16x8xf32> -> tensor<2x4x8xf32>
  %g = mtc.embedding_grad %tok, %e : tensor<2x4xi32>, tensor<2x4x8xf32> -> tensor<16x8xf32>
  return %e, %g : tensor<2x4x8xf32>, tensor<16x8xf32>
}

// -----

// Tests that mtc.add with equal shapes and with a broadcast rhs, and
// mtc.reduce_leading, round-trip.
// CHECK-LABEL: func.func @add_reduce
// CHECK-SAME:    (%[[X:[^:]+]]: tensor<2x4x8xf32>, %[[P:[^:]+]]: tensor<4x8xf32>
// CHECK:         %[[A:.*]] = mtc.add %[[X]], %[[X]] : tensor<2x4x8xf32>, tensor<2x4x8xf32>
// CHECK:         %[[B:.*]] = mtc.add %[[A]], %[[P]] : tensor<2x4x8xf32>, tensor<4x8xf32>
// CHECK:         %[[R:.*]] = mtc.reduce_leading %[[B]] : tensor<2x4x8xf32> -> tensor<8xf32>
// CHECK:         return %[[B]], %[[R]]
func.func @add_reduce(%x: tensor<2x4x8xf32>, %pos: tensor<4x8xf32>)
    -> (tensor<2x4x8xf32>, tensor<8xf32>) {
  %a = mtc.add %x, %x : tensor<2x4x8xf32>, tensor<2x4x8xf32>
  %b = mtc.add %a, %pos : tensor<2x4x8xf32>, tensor<4x8xf32>
  %r = mtc.reduce_leading %b : tensor<2x4x8xf32> -> tensor<8xf32>
  return %b, %r : tensor<2x4x8xf32>, tensor<8xf32>
}

// -----

// Tests that mtc.gelu and mtc.gelu_grad round-trip with both approximations.
// CHECK-LABEL: func.func @gelu
// CHECK-SAME:    (%[[X:[^:]+]]: tensor<2x4x8xf32>
// CHECK:         %[[Y:.*]] = mtc.gelu %[[X]] approximate = tanh : tensor<2x4x8xf32>
// CHECK:         %[[Z:.*]] = mtc.gelu %[[Y]] approximate = none : tensor<2x4x8xf32>
// CHECK:         %[[D:.*]] = mtc.gelu_grad %[[X]], %[[Z]] approximate = tanh : tensor<2x4x8xf32>
// CHECK:         %[[E:.*]] = mtc.gelu_grad %[[Y]], %[[D]] approximate = none : tensor<2x4x8xf32>
// CHECK:         return %[[E]]
func.func @gelu(%x: tensor<2x4x8xf32>) -> tensor<2x4x8xf32> {
  %y = mtc.gelu %x approximate = tanh : tensor<2x4x8xf32>
  %z = mtc.gelu %y approximate = none : tensor<2x4x8xf32>
  %d = mtc.gelu_grad %x, %z approximate = tanh : tensor<2x4x8xf32>
  %e = mtc.gelu_grad %y, %d approximate = none : tensor<2x4x8xf32>
  return %e : tensor<2x4x8xf32>
}

// -----

// Tests that mtc.squared_relu and mtc.squared_relu_grad round-trip.
// CHECK-LABEL: func.func @squared_relu
// CHECK-SAME:    (%[[X:[^:]+]]: tensor<2x4x8xbf16>
// CHECK:         %[[Y:.*]] = mtc.squared_relu %[[X]] : tensor<2x4x8xbf16>
// CHECK:         %[[D:.*]] = mtc.squared_relu_grad %[[X]], %[[Y]] : tensor<2x4x8xbf16>
// CHECK:         return %[[D]]
func.func @squared_relu(%x: tensor<2x4x8xbf16>) -> tensor<2x4x8xbf16> {
  %y = mtc.squared_relu %x : tensor<2x4x8xbf16>
  %d = mtc.squared_relu_grad %x, %y : tensor<2x4x8xbf16>
  return %d : tensor<2x4x8xbf16>
}

// -----

// Tests that mtc.swiglu and mtc.swiglu_grad (two results) round-trip.
// CHECK-LABEL: func.func @swiglu
// CHECK-SAME:    (%[[G:[^:]+]]: tensor<2x4x8xbf16>, %[[U:[^:]+]]: tensor<2x4x8xbf16>
// CHECK:         %[[H:.*]] = mtc.swiglu %[[G]], %[[U]] : tensor<2x4x8xbf16>
// CHECK:         %[[DG:[^,]+]], %[[DU:.*]] = mtc.swiglu_grad %[[G]], %[[U]], %[[H]] : tensor<2x4x8xbf16>
// CHECK:         return %[[DG]], %[[DU]]
func.func @swiglu(%g: tensor<2x4x8xbf16>, %u: tensor<2x4x8xbf16>)
    -> (tensor<2x4x8xbf16>, tensor<2x4x8xbf16>) {
  %h = mtc.swiglu %g, %u : tensor<2x4x8xbf16>
  %dg, %du = mtc.swiglu_grad %g, %u, %h : tensor<2x4x8xbf16>
  return %dg, %du : tensor<2x4x8xbf16>, tensor<2x4x8xbf16>
}

// -----

// Tests that mtc.dropout's p and key round-trip, including p = 0.
// CHECK-LABEL: func.func @dropout
// CHECK-SAME:    (%[[X:[^:]+]]: tensor<2x4x8xf32>
// CHECK:         %[[Y:.*]] = mtc.dropout %[[X]] p = 1.000000e-01 key = 3 : tensor<2x4x8xf32>
// CHECK:         %[[Z:.*]] = mtc.dropout %[[Y]] p = 0.000000e+00 key = 0 : tensor<2x4x8xf32>
// CHECK:         return %[[Z]]
func.func @dropout(%x: tensor<2x4x8xf32>) -> tensor<2x4x8xf32> {
  %y = mtc.dropout %x p = 0.1 key = 3 : tensor<2x4x8xf32>
  %z = mtc.dropout %y p = 0.0 key = 0 : tensor<2x4x8xf32>
  return %z : tensor<2x4x8xf32>
}

// -----

// Tests that mtc.matmul round-trips without bias or transposes.
// CHECK-LABEL: func.func @matmul_plain
// CHECK-SAME:    (%[[X:[^:]+]]: tensor<2x4x8xf32>, %[[W:[^:]+]]: tensor<8x16xf32>
// CHECK:         %[[Y:.*]] = mtc.matmul %[[X]], %[[W]] : tensor<2x4x8xf32>, tensor<8x16xf32> -> tensor<2x4x16xf32>
// CHECK:         return %[[Y]]
func.func @matmul_plain(%x: tensor<2x4x8xf32>, %w: tensor<8x16xf32>) -> tensor<2x4x16xf32> {
  %y = mtc.matmul %x, %w : tensor<2x4x8xf32>, tensor<8x16xf32> -> tensor<2x4x16xf32>
  return %y : tensor<2x4x16xf32>
}

// -----

// Tests that mtc.matmul round-trips with transpose_b and no bias.
// CHECK-LABEL: func.func @matmul_transpose_b
// CHECK-SAME:    (%[[X:[^:]+]]: tensor<2x4x8xf32>, %[[W:[^:]+]]: tensor<16x8xf32>
// CHECK:         %[[Y:.*]] = mtc.matmul %[[X]], %[[W]] transpose_b : tensor<2x4x8xf32>, tensor<16x8xf32> -> tensor<2x4x16xf32>
// CHECK:         return %[[Y]]
func.func @matmul_transpose_b(%x: tensor<2x4x8xf32>, %w: tensor<16x8xf32>) -> tensor<2x4x16xf32> {
  %y = mtc.matmul %x, %w transpose_b : tensor<2x4x8xf32>, tensor<16x8xf32> -> tensor<2x4x16xf32>
  return %y : tensor<2x4x16xf32>
}

// -----

// Tests that mtc.matmul round-trips with a bias and transpose_b (a linear
// layer).
// CHECK-LABEL: func.func @matmul_bias_transpose_b
// CHECK-SAME:    (%[[X:[^:]+]]: tensor<2x4x8xf32>, %[[W:[^:]+]]: tensor<16x8xf32>, %[[B:[^:]+]]: tensor<16xf32>
// CHECK:         %[[Y:.*]] = mtc.matmul %[[X]], %[[W]], %[[B]] transpose_b : tensor<2x4x8xf32>, tensor<16x8xf32>, tensor<16xf32> -> tensor<2x4x16xf32>
// CHECK:         return %[[Y]]
func.func @matmul_bias_transpose_b(%x: tensor<2x4x8xf32>, %w: tensor<16x8xf32>, %b: tensor<16xf32>)
    -> tensor<2x4x16xf32> {
  %y = mtc.matmul %x, %w, %b transpose_b
         : tensor<2x4x8xf32>, tensor<16x8xf32>, tensor<16xf32> -> tensor<2x4x16xf32>
  return %y : tensor<2x4x16xf32>
}

// -----

// Tests that mtc.matmul round-trips with a bias and no transpose.
// CHECK-LABEL: func.func @matmul_bias
// CHECK-SAME:    (%[[X:[^:]+]]: tensor<2x4x8xf32>, %[[W:[^:]+]]: tensor<8x16xf32>, %[[B:[^:]+]]: tensor<16xf32>
// CHECK:         %[[Y:.*]] = mtc.matmul %[[X]], %[[W]], %[[B]] : tensor<2x4x8xf32>, tensor<8x16xf32>, tensor<16xf32> -> tensor<2x4x16xf32>
// CHECK:         return %[[Y]]
func.func @matmul_bias(%x: tensor<2x4x8xf32>, %w: tensor<8x16xf32>, %b: tensor<16xf32>)
    -> tensor<2x4x16xf32> {
  %y = mtc.matmul %x, %w, %b : tensor<2x4x8xf32>, tensor<8x16xf32>, tensor<16xf32> -> tensor<2x4x16xf32>
  return %y : tensor<2x4x16xf32>
}

// -----

// Tests that mtc.matmul round-trips with transpose_a (a weight gradient that
// flattens (B, S) into rows).
// CHECK-LABEL: func.func @matmul_transpose_a
// CHECK-SAME:    (%[[DY:[^:]+]]: tensor<2x4x16xf32>, %[[X:[^:]+]]: tensor<2x4x8xf32>
// CHECK:         %[[DW:.*]] = mtc.matmul %[[DY]], %[[X]] transpose_a : tensor<2x4x16xf32>, tensor<2x4x8xf32> -> tensor<16x8xf32>
// CHECK:         return %[[DW]]
func.func @matmul_transpose_a(%dy: tensor<2x4x16xf32>, %x: tensor<2x4x8xf32>) -> tensor<16x8xf32> {
  %dw = mtc.matmul %dy, %x transpose_a : tensor<2x4x16xf32>, tensor<2x4x8xf32> -> tensor<16x8xf32>
  return %dw : tensor<16x8xf32>
}

// -----

// Tests that mtc.matmul round-trips with both transposes.
// CHECK-LABEL: func.func @matmul_transpose_both
// CHECK-SAME:    (%[[A:[^:]+]]: tensor<8x4xf32>, %[[B:[^:]+]]: tensor<16x8xf32>
// CHECK:         %[[Y:.*]] = mtc.matmul %[[A]], %[[B]] transpose_a transpose_b : tensor<8x4xf32>, tensor<16x8xf32> -> tensor<4x16xf32>
// CHECK:         return %[[Y]]
func.func @matmul_transpose_both(%a: tensor<8x4xf32>, %b: tensor<16x8xf32>) -> tensor<4x16xf32> {
  %y = mtc.matmul %a, %b transpose_a transpose_b : tensor<8x4xf32>, tensor<16x8xf32> -> tensor<4x16xf32>
  return %y : tensor<4x16xf32>
}

// -----

// Tests that mtc.layer_norm with and without beta, and mtc.layer_norm_grad,
// round-trip.
// CHECK-LABEL: func.func @layer_norm
// CHECK-SAME:    (%[[X:[^:]+]]: tensor<2x4x8xf32>, %[[G:[^:]+]]: tensor<8xf32>, %[[B:[^:]+]]: tensor<8xf32>
// CHECK:         %[[Y:.*]] = mtc.layer_norm %[[X]], %[[G]], %[[B]] eps = 1.000000e-05 : tensor<2x4x8xf32>, tensor<8xf32>, tensor<8xf32>
// CHECK:         %[[Z:.*]] = mtc.layer_norm %[[Y]], %[[G]] eps = 2.500000e-01 : tensor<2x4x8xf32>, tensor<8xf32>{{$}}
// CHECK:         %[[DX:[^,]+]], %[[DG:[^,]+]], %[[DB:.*]] = mtc.layer_norm_grad %[[X]], %[[G]], %[[Z]] eps = 1.000000e-05 : tensor<2x4x8xf32>, tensor<8xf32>
// CHECK:         return %[[DX]], %[[DG]], %[[DB]]
func.func @layer_norm(%x: tensor<2x4x8xf32>, %g: tensor<8xf32>, %b: tensor<8xf32>)
    -> (tensor<2x4x8xf32>, tensor<8xf32>, tensor<8xf32>) {
  %y = mtc.layer_norm %x, %g, %b eps = 1.0e-05 : tensor<2x4x8xf32>, tensor<8xf32>, tensor<8xf32>
  %z = mtc.layer_norm %y, %g eps = 0.25 : tensor<2x4x8xf32>, tensor<8xf32>
  %dx, %dg, %db = mtc.layer_norm_grad %x, %g, %z eps = 1.0e-05 : tensor<2x4x8xf32>, tensor<8xf32>
  return %dx, %dg, %db : tensor<2x4x8xf32>, tensor<8xf32>, tensor<8xf32>
}

// -----

// Tests that mtc.rms_norm and mtc.rms_norm_grad round-trip.
// CHECK-LABEL: func.func @rms_norm
// CHECK-SAME:    (%[[X:[^:]+]]: tensor<2x4x8xf32>, %[[G:[^:]+]]: tensor<8xf32>
// CHECK:         %[[Y:.*]] = mtc.rms_norm %[[X]], %[[G]] eps = 1.000000e-05 : tensor<2x4x8xf32>, tensor<8xf32>
// CHECK:         %[[DX:[^,]+]], %[[DG:.*]] = mtc.rms_norm_grad %[[X]], %[[G]], %[[Y]] eps = 1.000000e-05 : tensor<2x4x8xf32>, tensor<8xf32>
// CHECK:         return %[[DX]], %[[DG]]
func.func @rms_norm(%x: tensor<2x4x8xf32>, %g: tensor<8xf32>) -> (tensor<2x4x8xf32>, tensor<8xf32>) {
  %y = mtc.rms_norm %x, %g eps = 1.0e-05 : tensor<2x4x8xf32>, tensor<8xf32>
  %dx, %dg = mtc.rms_norm_grad %x, %g, %y eps = 1.0e-05 : tensor<2x4x8xf32>, tensor<8xf32>
  return %dx, %dg : tensor<2x4x8xf32>, tensor<8xf32>
}

// -----

// Tests that mtc.rope round-trips with and without inverse (4 heads, 2 KV
// heads, head_dim 4: width (4 + 2 * 2) * 4 = 32).
// CHECK-LABEL: func.func @rope
// CHECK-SAME:    (%[[QKV:[^:]+]]: tensor<2x4x32xf32>
// CHECK:         %[[R:.*]] = mtc.rope %[[QKV]] heads = 4 kv_heads = 2 theta = 1.000000e+04 : tensor<2x4x32xf32>
// CHECK:         %[[I:.*]] = mtc.rope %[[R]] heads = 4 kv_heads = 2 theta = 1.000000e+04 inverse : tensor<2x4x32xf32>
// CHECK:         return %[[I]]
func.func @rope(%qkv: tensor<2x4x32xf32>) -> tensor<2x4x32xf32> {
  %r = mtc.rope %qkv heads = 4 kv_heads = 2 theta = 1.0e4 : tensor<2x4x32xf32>
  %i = mtc.rope %r heads = 4 kv_heads = 2 theta = 1.0e4 inverse : tensor<2x4x32xf32>
  return %i : tensor<2x4x32xf32>
}

// -----

// Tests that mtc.attention and its gradient round-trip without mask and
// without causal.
// CHECK-LABEL: func.func @attention_plain
// CHECK-SAME:    (%[[QKV:[^:]+]]: tensor<2x4x32xf32>
// CHECK:         %[[O:[^,]+]], %[[LSE:.*]] = mtc.attention %[[QKV]] heads = 4 kv_heads = 2 scale = 5.000000e-01 : tensor<2x4x32xf32> -> tensor<2x4x16xf32>, tensor<2x4x4xf32>
// CHECK:         %[[D:.*]] = mtc.attention_grad %[[QKV]], %[[O]], %[[LSE]], %[[O]] heads = 4 kv_heads = 2 scale = 5.000000e-01 : tensor<2x4x32xf32>, tensor<2x4x16xf32>, tensor<2x4x4xf32>{{$}}
// CHECK:         return %[[D]]
func.func @attention_plain(%qkv: tensor<2x4x32xf32>) -> tensor<2x4x32xf32> {
  %o, %lse = mtc.attention %qkv heads = 4 kv_heads = 2 scale = 0.5
               : tensor<2x4x32xf32> -> tensor<2x4x16xf32>, tensor<2x4x4xf32>
  %d = mtc.attention_grad %qkv, %o, %lse, %o heads = 4 kv_heads = 2 scale = 0.5
         : tensor<2x4x32xf32>, tensor<2x4x16xf32>, tensor<2x4x4xf32>
  return %d : tensor<2x4x32xf32>
}

// -----

// Tests that mtc.attention and its gradient round-trip with causal and no
// mask.
// CHECK-LABEL: func.func @attention_causal
// CHECK-SAME:    (%[[QKV:[^:]+]]: tensor<2x4x32xf32>
// CHECK:         %[[O:[^,]+]], %[[LSE:.*]] = mtc.attention %[[QKV]] heads = 4 kv_heads = 2 causal scale = 5.000000e-01 : tensor<2x4x32xf32> -> tensor<2x4x16xf32>, tensor<2x4x4xf32>
// CHECK:         %[[D:.*]] = mtc.attention_grad %[[QKV]], %[[O]], %[[LSE]], %[[O]] heads = 4 kv_heads = 2 causal scale = 5.000000e-01 : tensor<2x4x32xf32>, tensor<2x4x16xf32>, tensor<2x4x4xf32>{{$}}
// CHECK:         return %[[D]]
func.func @attention_causal(%qkv: tensor<2x4x32xf32>) -> tensor<2x4x32xf32> {
  %o, %lse = mtc.attention %qkv heads = 4 kv_heads = 2 causal scale = 0.5
               : tensor<2x4x32xf32> -> tensor<2x4x16xf32>, tensor<2x4x4xf32>
  %d = mtc.attention_grad %qkv, %o, %lse, %o heads = 4 kv_heads = 2 causal scale = 0.5
         : tensor<2x4x32xf32>, tensor<2x4x16xf32>, tensor<2x4x4xf32>
  return %d : tensor<2x4x32xf32>
}

// -----

// Tests that mtc.attention and its gradient round-trip with a padding mask
// and causal.
// CHECK-LABEL: func.func @attention_mask_causal
// CHECK-SAME:    (%[[QKV:[^:]+]]: tensor<2x4x32xf32>, %[[M:[^:]+]]: tensor<2x4xi32>
// CHECK:         %[[O:[^,]+]], %[[LSE:.*]] = mtc.attention %[[QKV]] mask %[[M]] heads = 4 kv_heads = 2 causal scale = 5.000000e-01 : tensor<2x4x32xf32>, tensor<2x4xi32> -> tensor<2x4x16xf32>, tensor<2x4x4xf32>
// CHECK:         %[[D:.*]] = mtc.attention_grad %[[QKV]], %[[O]], %[[LSE]], %[[O]] mask %[[M]] heads = 4 kv_heads = 2 causal scale = 5.000000e-01 : tensor<2x4x32xf32>, tensor<2x4x16xf32>, tensor<2x4x4xf32>, tensor<2x4xi32>
// CHECK:         return %[[D]]
func.func @attention_mask_causal(%qkv: tensor<2x4x32xf32>, %m: tensor<2x4xi32>) -> tensor<2x4x32xf32> {
  %o, %lse = mtc.attention %qkv mask %m heads = 4 kv_heads = 2 causal scale = 0.5
               : tensor<2x4x32xf32>, tensor<2x4xi32> -> tensor<2x4x16xf32>, tensor<2x4x4xf32>
  %d = mtc.attention_grad %qkv, %o, %lse, %o mask %m heads = 4 kv_heads = 2 causal scale = 0.5
         : tensor<2x4x32xf32>, tensor<2x4x16xf32>, tensor<2x4x4xf32>, tensor<2x4xi32>
  return %d : tensor<2x4x32xf32>
}

// -----

// Tests that mtc.attention and its gradient round-trip with a padding mask
// and no causal.
// CHECK-LABEL: func.func @attention_mask
// CHECK-SAME:    (%[[QKV:[^:]+]]: tensor<2x4x32xf32>, %[[M:[^:]+]]: tensor<2x4xi32>
// CHECK:         %[[O:[^,]+]], %[[LSE:.*]] = mtc.attention %[[QKV]] mask %[[M]] heads = 4 kv_heads = 2 scale = 5.000000e-01 : tensor<2x4x32xf32>, tensor<2x4xi32> -> tensor<2x4x16xf32>, tensor<2x4x4xf32>
// CHECK:         %[[D:.*]] = mtc.attention_grad %[[QKV]], %[[O]], %[[LSE]], %[[O]] mask %[[M]] heads = 4 kv_heads = 2 scale = 5.000000e-01 : tensor<2x4x32xf32>, tensor<2x4x16xf32>, tensor<2x4x4xf32>, tensor<2x4xi32>
// CHECK:         return %[[D]]
func.func @attention_mask(%qkv: tensor<2x4x32xf32>, %m: tensor<2x4xi32>) -> tensor<2x4x32xf32> {
  %o, %lse = mtc.attention %qkv mask %m heads = 4 kv_heads = 2 scale = 0.5
               : tensor<2x4x32xf32>, tensor<2x4xi32> -> tensor<2x4x16xf32>, tensor<2x4x4xf32>
  %d = mtc.attention_grad %qkv, %o, %lse, %o mask %m heads = 4 kv_heads = 2 scale = 0.5
         : tensor<2x4x32xf32>, tensor<2x4x16xf32>, tensor<2x4x4xf32>, tensor<2x4xi32>
  return %d : tensor<2x4x32xf32>
}

// -----

// Tests that mtc.cross_entropy and mtc.cross_entropy_grad round-trip, with
// the default and a non-default ignore_index.
// CHECK-LABEL: func.func @cross_entropy
// CHECK-SAME:    (%[[L:[^:]+]]: tensor<2x4x16xf32>, %[[T:[^:]+]]: tensor<2x4xi32>
// CHECK:         %[[LOSS:.*]] = mtc.cross_entropy %[[L]], %[[T]] ignore_index = -1 : tensor<2x4x16xf32>, tensor<2x4xi32>
// CHECK:         %[[D:.*]] = mtc.cross_entropy_grad %[[L]], %[[T]], %[[LOSS]] ignore_index = -100 : tensor<2x4x16xf32>, tensor<2x4xi32>
// CHECK:         return %[[LOSS]], %[[D]]
func.func @cross_entropy(%l: tensor<2x4x16xf32>, %t: tensor<2x4xi32>)
    -> (tensor<f32>, tensor<2x4x16xf32>) {
  %loss = mtc.cross_entropy %l, %t ignore_index = -1 : tensor<2x4x16xf32>, tensor<2x4xi32>
  %d = mtc.cross_entropy_grad %l, %t, %loss ignore_index = -100 : tensor<2x4x16xf32>, tensor<2x4xi32>
  return %loss, %d : tensor<f32>, tensor<2x4x16xf32>
}

// -----

// Tests that mtc.accumulate_grad round-trips.
// CHECK-LABEL: func.func @accumulate_grad
// CHECK-SAME:    (%[[G:[^:]+]]: tensor<16x8xf32>
// CHECK:         mtc.accumulate_grad %[[G]] into "layers.0.mlp.fc1.weight" : tensor<16x8xf32>
func.func @accumulate_grad(%g: tensor<16x8xf32>) {
  mtc.accumulate_grad %g into "layers.0.mlp.fc1.weight" : tensor<16x8xf32>
  return
}

// -----

// Tests that mtc.grad_norm and mtc.adamw round-trip.
// CHECK-LABEL: func.func @optimizer
// CHECK-SAME:    (%[[LR:[^:]+]]: f32, %[[STEP:[^:]+]]: i64
// CHECK:         %[[N:.*]] = mtc.grad_norm grad_scale = 2.500000e-01 : f32
// CHECK:         mtc.adamw %[[LR]], %[[STEP]], %[[N]] params = ["wte", "layers.0.mlp.fc1.weight"] weight_decay = 1.000000e-01 beta1 = 9.000000e-01 beta2 = 0.99899999999999999 eps = 1.000000e-08 max_grad_norm = 1.000000e+00 grad_scale = 2.500000e-01
// CHECK:         mtc.adamw %[[LR]], %[[STEP]], %[[N]] params = ["ln_f.weight"] weight_decay = 0.000000e+00 beta1 = 9.000000e-01 beta2 = 0.99899999999999999 eps = 1.000000e-08 max_grad_norm = 0.000000e+00 grad_scale = 2.500000e-01
// CHECK:         return %[[N]]
func.func @optimizer(%lr: f32, %step: i64) -> f32 {
  %n = mtc.grad_norm grad_scale = 0.25 : f32
  mtc.adamw %lr, %step, %n params = ["wte", "layers.0.mlp.fc1.weight"]
    weight_decay = 0.1 beta1 = 0.9 beta2 = 0.999 eps = 1.0e-8
    max_grad_norm = 1.0 grad_scale = 0.25
  mtc.adamw %lr, %step, %n params = ["ln_f.weight"]
    weight_decay = 0.0 beta1 = 0.9 beta2 = 0.999 eps = 1.0e-8
    max_grad_norm = 0.0 grad_scale = 0.25
  return %n : f32
}

// -----

// Tests that the data-parallel reductions round-trip: a plain gradient
// average, and a distributed-optimizer step (reduce-scatter, then gather).
// CHECK-LABEL: func.func @dp_reductions
// CHECK:         mtc.reduce_gradients on @mtc_grid grid_axes = [1]{{$}}
// CHECK-LABEL: func.func @dp_distributed_optimizer
// CHECK:         mtc.reduce_gradients on @mtc_grid grid_axes = [1] shard_optimizer_state
// CHECK-NEXT:    mtc.all_gather_params on @mtc_grid grid_axes = [1]
func.func @dp_reductions() {
  mtc.reduce_gradients on @mtc_grid grid_axes = [1]
  return
}
func.func @dp_distributed_optimizer() {
  mtc.reduce_gradients on @mtc_grid grid_axes = [1] shard_optimizer_state
  mtc.all_gather_params on @mtc_grid grid_axes = [1]
  return
}
