// -mtc-autodiff: @forward -> @train_step (forward + backward) and
// @optimizer_step (grad_norm + AdamW groups).
//
// RUN: mtc-opt %s -split-input-file --mtc-autodiff -verify-diagnostics | FileCheck %s
//
// Running the pass on its own output fails (every module that got a
// @train_step above is rejected by the second run):
// RUN: mtc-opt %s -split-input-file --mtc-autodiff -verify-diagnostics \
// RUN:   | not mtc-opt -split-input-file --mtc-autodiff 2>&1 \
// RUN:   | FileCheck %s --check-prefix=TWICE
// TWICE: error: module already has @train_step or @optimizer_step: mtc-autodiff runs once
// TWICE-NOT: func.func @train_step

// Tests that the backward program of an MLP block (learned position table,
// residual, biases, tied embedding / LM head) has its gradients in reverse
// order, linear-layer weight and input gradients with the right transposes,
// bias and broadcast gradients through reduce_leading, mtc.add summing the
// residual's fan-out, the tied weight's two gradients summed into one
// accumulate_grad, and the optimizer hyper-parameters from mtc.training.
module attributes {mtc.training = {num_microbatches = 4 : i64, weight_decay = 5.000000e-02 : f64,
                                   grad_clip = 5.000000e-01 : f64, beta1 = 8.000000e-01 : f64,
                                   beta2 = 7.500000e-01 : f64, eps = 1.250000e-01 : f64}} {
  func.func @forward(%tok: tensor<2x4xi32>, %tgt: tensor<2x4xi32>) -> tensor<f32> {
    %wte = mtc.param "wte" init = normal : tensor<16x8xf32>
    %wpe = mtc.param "wpe" init = normal : tensor<4x8xf32>
    %e = mtc.embedding %tok, %wte : tensor<2x4xi32>, tensor<16x8xf32> -> tensor<2x4x8xf32>
    %h = mtc.add %e, %wpe : tensor<2x4x8xf32>, tensor<4x8xf32>
    %g = mtc.param "ln.weight" init = ones : tensor<8xf32>
    %b = mtc.param "ln.bias" init = zeros : tensor<8xf32>
    %n = mtc.layer_norm %h, %g, %b eps = 1.0e-5 : tensor<2x4x8xf32>, tensor<8xf32>, tensor<8xf32>
    %w1 = mtc.param "fc1.weight" init = normal : tensor<32x8xf32>
    %b1 = mtc.param "fc1.bias" init = zeros : tensor<32xf32>
    %y1 = mtc.matmul %n, %w1, %b1 transpose_b
            : tensor<2x4x8xf32>, tensor<32x8xf32>, tensor<32xf32> -> tensor<2x4x32xf32>
    %a = mtc.gelu %y1 approximate = tanh : tensor<2x4x32xf32>
    %w2 = mtc.param "fc2.weight" init = normal : tensor<8x32xf32>
    %y2 = mtc.matmul %a, %w2 transpose_b : tensor<2x4x32xf32>, tensor<8x32xf32> -> tensor<2x4x8xf32>
    %r = mtc.add %h, %y2 : tensor<2x4x8xf32>, tensor<2x4x8xf32>
    %logits = mtc.matmul %r, %wte transpose_b : tensor<2x4x8xf32>, tensor<16x8xf32> -> tensor<2x4x16xf32>
    %loss = mtc.cross_entropy %logits, %tgt ignore_index = -1 : tensor<2x4x16xf32>, tensor<2x4xi32>
    return %loss : tensor<f32>
  }
}

// @forward stays as it was.
// CHECK-LABEL: func.func @forward
// CHECK-NOT:     _grad
// CHECK:         mtc.cross_entropy
// CHECK-NEXT:    return

// The forward part of @train_step is @forward's body.
// CHECK-LABEL: func.func @train_step
// CHECK-SAME:    (%[[TOK:[^:]+]]: tensor<2x4xi32>, %[[TGT:[^:]+]]: tensor<2x4xi32>) -> tensor<f32>
// CHECK:         %[[WTE:.*]] = mtc.param "wte"
// CHECK:         %[[WPE:.*]] = mtc.param "wpe"
// CHECK:         %[[E:.*]] = mtc.embedding %[[TOK]], %[[WTE]]
// CHECK:         %[[H:.*]] = mtc.add %[[E]], %[[WPE]]
// CHECK:         %[[G:.*]] = mtc.param "ln.weight"
// CHECK:         %[[B:.*]] = mtc.param "ln.bias"
// CHECK:         %[[N:.*]] = mtc.layer_norm %[[H]], %[[G]], %[[B]]
// CHECK:         %[[W1:.*]] = mtc.param "fc1.weight"
// CHECK:         %[[B1:.*]] = mtc.param "fc1.bias"
// CHECK:         %[[Y1:.*]] = mtc.matmul %[[N]], %[[W1]], %[[B1]] transpose_b
// CHECK:         %[[A:.*]] = mtc.gelu %[[Y1]]
// CHECK:         %[[W2:.*]] = mtc.param "fc2.weight"
// CHECK:         %[[Y2:.*]] = mtc.matmul %[[A]], %[[W2]] transpose_b
// CHECK:         %[[R:.*]] = mtc.add %[[H]], %[[Y2]]
// CHECK:         %[[LOGITS:.*]] = mtc.matmul %[[R]], %[[WTE]] transpose_b
// CHECK:         %[[LOSS:.*]] = mtc.cross_entropy %[[LOGITS]], %[[TGT]]
//
// Backward, in reverse order. The seed is d(loss)/d(loss) = 1.
// CHECK:         %[[ONE:.*]] = arith.constant dense<1.000000e+00> : tensor<f32>
// CHECK:         %[[DLOGITS:.*]] = mtc.cross_entropy_grad %[[LOGITS]], %[[TGT]], %[[ONE]] ignore_index = -1 : tensor<2x4x16xf32>, tensor<2x4xi32>
//
// LM head with the tied (N, K) weight: dR = dY W, dW = dY^T R.
// CHECK:         %[[DR:.*]] = mtc.matmul %[[DLOGITS]], %[[WTE]] : tensor<2x4x16xf32>, tensor<16x8xf32> -> tensor<2x4x8xf32>
// CHECK:         %[[DWTE_HEAD:.*]] = mtc.matmul %[[DLOGITS]], %[[R]] transpose_a : tensor<2x4x16xf32>, tensor<2x4x8xf32> -> tensor<16x8xf32>
//
// fc2: the residual add passes dR to both of its operands.
// CHECK:         %[[DA:.*]] = mtc.matmul %[[DR]], %[[W2]] : tensor<2x4x8xf32>, tensor<8x32xf32> -> tensor<2x4x32xf32>
// CHECK:         %[[DW2:.*]] = mtc.matmul %[[DR]], %[[A]] transpose_a : tensor<2x4x8xf32>, tensor<2x4x32xf32> -> tensor<8x32xf32>
// CHECK:         mtc.accumulate_grad %[[DW2]] into "fc2.weight" : tensor<8x32xf32>
//
// gelu, then fc1 with its bias gradient summed over (B, S).
// CHECK:         %[[DY1:.*]] = mtc.gelu_grad %[[Y1]], %[[DA]] approximate = tanh : tensor<2x4x32xf32>
// CHECK:         %[[DN:.*]] = mtc.matmul %[[DY1]], %[[W1]] : tensor<2x4x32xf32>, tensor<32x8xf32> -> tensor<2x4x8xf32>
// CHECK:         %[[DW1:.*]] = mtc.matmul %[[DY1]], %[[N]] transpose_a : tensor<2x4x32xf32>, tensor<2x4x8xf32> -> tensor<32x8xf32>
// CHECK:         %[[DB1:.*]] = mtc.reduce_leading %[[DY1]] : tensor<2x4x32xf32> -> tensor<32xf32>
// CHECK:         mtc.accumulate_grad %[[DB1]] into "fc1.bias" : tensor<32xf32>
// CHECK:         mtc.accumulate_grad %[[DW1]] into "fc1.weight" : tensor<32x8xf32>
//
// layer_norm, then the fan-out of H (residual branch + norm branch) summed.
// CHECK:         %[[DH_LN:[^,]+]], %[[DG:[^,]+]], %[[DB:.*]] = mtc.layer_norm_grad %[[H]], %[[G]], %[[DN]] eps = 1.000000e-05
// CHECK:         %[[DH:.*]] = mtc.add %[[DR]], %[[DH_LN]] : tensor<2x4x8xf32>, tensor<2x4x8xf32>
// CHECK:         mtc.accumulate_grad %[[DB]] into "ln.bias" : tensor<8xf32>
// CHECK:         mtc.accumulate_grad %[[DG]] into "ln.weight" : tensor<8xf32>
//
// The broadcast position table gets dH summed over the batch; the embedding
// gets a scatter-add, summed with the LM head's gradient of the tied weight.
// CHECK:         %[[DWPE:.*]] = mtc.reduce_leading %[[DH]] : tensor<2x4x8xf32> -> tensor<4x8xf32>
// CHECK:         %[[DWTE_EMB:.*]] = mtc.embedding_grad %[[TOK]], %[[DH]] : tensor<2x4xi32>, tensor<2x4x8xf32> -> tensor<16x8xf32>
// CHECK:         %[[DWTE:.*]] = mtc.add %[[DWTE_HEAD]], %[[DWTE_EMB]] : tensor<16x8xf32>, tensor<16x8xf32>
// CHECK:         mtc.accumulate_grad %[[DWPE]] into "wpe" : tensor<4x8xf32>
// CHECK:         mtc.accumulate_grad %[[DWTE]] into "wte" : tensor<16x8xf32>
// CHECK-NOT:     mtc.accumulate_grad
// CHECK:         return %[[LOSS]] : tensor<f32>
//
// grad_scale = 1 / num_microbatches; matrices decay, 1-D parameters do not.
// CHECK-LABEL: func.func @optimizer_step
// CHECK-SAME:    (%[[LR:[^:]+]]: f32, %[[STEP:[^:]+]]: i64) -> f32
// CHECK:         %[[NORM:.*]] = mtc.grad_norm grad_scale = 2.500000e-01 : f32
// CHECK:         mtc.adamw %[[LR]], %[[STEP]], %[[NORM]] params = ["wte", "wpe", "fc1.weight", "fc2.weight"] weight_decay = 5.000000e-02 beta1 = 8.000000e-01 beta2 = 7.500000e-01 eps = 1.250000e-01 max_grad_norm = 5.000000e-01 grad_scale = 2.500000e-01
// CHECK:         mtc.adamw %[[LR]], %[[STEP]], %[[NORM]] params = ["ln.weight", "ln.bias", "fc1.bias"] weight_decay = 0.000000e+00 beta1 = 8.000000e-01 beta2 = 7.500000e-01 eps = 1.250000e-01 max_grad_norm = 5.000000e-01 grad_scale = 2.500000e-01
// CHECK-NOT:     mtc.adamw
// CHECK:         return %[[NORM]] : f32

// -----

// Tests that the backward program of an attention block has the matmul
// gradients of a (K, N) weight (dA = dY B^T, dB = A^T dY), dropout's
// gradient as the same dropout (same p and key), attention_grad reading the
// forward's qkv, output, lse, mask and attributes, rope's gradient as the
// inverse rotation, and the optimizer defaults when the module has no
// mtc.training attribute.
func.func @forward(%tok: tensor<2x4xi32>, %tgt: tensor<2x4xi32>, %mask: tensor<2x4xi32>) -> tensor<f32> {
  %wte = mtc.param "wte" init = normal : tensor<16x8xf32>
  %x = mtc.embedding %tok, %wte : tensor<2x4xi32>, tensor<16x8xf32> -> tensor<2x4x8xf32>
  %g = mtc.param "norm.weight" init = ones : tensor<8xf32>
  %n = mtc.rms_norm %x, %g eps = 1.0e-5 : tensor<2x4x8xf32>, tensor<8xf32>
  %wqkv = mtc.param "attn.qkv.weight" init = normal : tensor<8x24xf32>
  %qkv = mtc.matmul %n, %wqkv : tensor<2x4x8xf32>, tensor<8x24xf32> -> tensor<2x4x24xf32>
  %r = mtc.rope %qkv heads = 2 kv_heads = 2 theta = 1.0e4 : tensor<2x4x24xf32>
  %o, %lse = mtc.attention %r mask %mask heads = 2 kv_heads = 2 causal scale = 0.5
               : tensor<2x4x24xf32>, tensor<2x4xi32> -> tensor<2x4x8xf32>, tensor<2x2x4xf32>
  %d = mtc.dropout %o p = 0.25 key = 7 : tensor<2x4x8xf32>
  %wh = mtc.param "head.weight" init = normal : tensor<8x16xf32>
  %logits = mtc.matmul %d, %wh : tensor<2x4x8xf32>, tensor<8x16xf32> -> tensor<2x4x16xf32>
  %loss = mtc.cross_entropy %logits, %tgt ignore_index = -100 : tensor<2x4x16xf32>, tensor<2x4xi32>
  return %loss : tensor<f32>
}

// CHECK-LABEL: func.func @train_step
// CHECK-SAME:    (%[[TOK:[^:]+]]: tensor<2x4xi32>, %[[TGT:[^:]+]]: tensor<2x4xi32>, %[[MASK:[^:]+]]: tensor<2x4xi32>)
// CHECK:         %[[WTE:.*]] = mtc.param "wte"
// CHECK:         %[[X:.*]] = mtc.embedding %[[TOK]], %[[WTE]]
// CHECK:         %[[G:.*]] = mtc.param "norm.weight"
// CHECK:         %[[N:.*]] = mtc.rms_norm %[[X]], %[[G]]
// CHECK:         %[[WQKV:.*]] = mtc.param "attn.qkv.weight"
// CHECK:         %[[QKV:.*]] = mtc.matmul %[[N]], %[[WQKV]] :
// CHECK:         %[[ROT:.*]] = mtc.rope %[[QKV]]
// CHECK:         %[[O:[^,]+]], %[[LSE:.*]] = mtc.attention %[[ROT]] mask %[[MASK]]
// CHECK:         %[[D:.*]] = mtc.dropout %[[O]]
// CHECK:         %[[WH:.*]] = mtc.param "head.weight"
// CHECK:         %[[LOGITS:.*]] = mtc.matmul %[[D]], %[[WH]] :
// CHECK:         %[[LOSS:.*]] = mtc.cross_entropy %[[LOGITS]], %[[TGT]]
// CHECK:         %[[ONE:.*]] = arith.constant dense<1.000000e+00> : tensor<f32>
// CHECK:         %[[DLOGITS:.*]] = mtc.cross_entropy_grad %[[LOGITS]], %[[TGT]], %[[ONE]] ignore_index = -100
// CHECK:         %[[DD:.*]] = mtc.matmul %[[DLOGITS]], %[[WH]] transpose_b : tensor<2x4x16xf32>, tensor<8x16xf32> -> tensor<2x4x8xf32>
// CHECK:         %[[DWH:.*]] = mtc.matmul %[[D]], %[[DLOGITS]] transpose_a : tensor<2x4x8xf32>, tensor<2x4x16xf32> -> tensor<8x16xf32>
// CHECK:         mtc.accumulate_grad %[[DWH]] into "head.weight"
// CHECK:         %[[DO:.*]] = mtc.dropout %[[DD]] p = 2.500000e-01 key = 7 : tensor<2x4x8xf32>
// CHECK:         %[[DROT:.*]] = mtc.attention_grad %[[ROT]], %[[O]], %[[LSE]], %[[DO]] mask %[[MASK]] heads = 2 kv_heads = 2 causal scale = 5.000000e-01 : tensor<2x4x24xf32>, tensor<2x4x8xf32>, tensor<2x2x4xf32>, tensor<2x4xi32>
// CHECK:         %[[DQKV:.*]] = mtc.rope %[[DROT]] heads = 2 kv_heads = 2 theta = 1.000000e+04 inverse : tensor<2x4x24xf32>
// CHECK:         %[[DN:.*]] = mtc.matmul %[[DQKV]], %[[WQKV]] transpose_b : tensor<2x4x24xf32>, tensor<8x24xf32> -> tensor<2x4x8xf32>
// CHECK:         %[[DWQKV:.*]] = mtc.matmul %[[N]], %[[DQKV]] transpose_a : tensor<2x4x8xf32>, tensor<2x4x24xf32> -> tensor<8x24xf32>
// CHECK:         mtc.accumulate_grad %[[DWQKV]] into "attn.qkv.weight"
// CHECK:         %[[DX:[^,]+]], %[[DG:.*]] = mtc.rms_norm_grad %[[X]], %[[G]], %[[DN]] eps = 1.000000e-05
// CHECK:         mtc.accumulate_grad %[[DG]] into "norm.weight"
// CHECK:         %[[DWTE:.*]] = mtc.embedding_grad %[[TOK]], %[[DX]]
// CHECK:         mtc.accumulate_grad %[[DWTE]] into "wte"
// CHECK:         return %[[LOSS]]
//
// CHECK-LABEL: func.func @optimizer_step
// CHECK:         %[[NORM:.*]] = mtc.grad_norm grad_scale = 1.000000e+00 : f32
// CHECK:         mtc.adamw %{{.*}}, %{{.*}}, %[[NORM]] params = ["wte", "attn.qkv.weight", "head.weight"] weight_decay = 1.000000e-01 beta1 = 9.000000e-01 beta2 = 0.94999999999999996 eps = 1.000000e-08 max_grad_norm = 1.000000e+00 grad_scale = 1.000000e+00
// CHECK:         mtc.adamw %{{.*}}, %{{.*}}, %[[NORM]] params = ["norm.weight"] weight_decay = 0.000000e+00

// -----

// Tests that swiglu gives two operand gradients, that the fan-out of one
// activation into two matmuls is summed with mtc.add, that a layer_norm
// without beta accumulates no dbeta, and that a parameter the loss does not
// depend on gets no accumulate_grad but stays in its AdamW group.
module attributes {mtc.training = {num_microbatches = 8 : i64}} {
  func.func @forward(%tok: tensor<2x4xi32>, %tgt: tensor<2x4xi32>) -> tensor<f32> {
    %wte = mtc.param "wte" init = normal : tensor<16x8xf32>
    %unused = mtc.param "unused.weight" init = normal : tensor<8x8xf32>
    %x = mtc.embedding %tok, %wte : tensor<2x4xi32>, tensor<16x8xf32> -> tensor<2x4x8xf32>
    %g = mtc.param "ln.weight" init = ones : tensor<8xf32>
    %n = mtc.layer_norm %x, %g eps = 1.0e-5 : tensor<2x4x8xf32>, tensor<8xf32>
    %wg = mtc.param "gate.weight" init = normal : tensor<12x8xf32>
    %wu = mtc.param "up.weight" init = normal : tensor<12x8xf32>
    %gate = mtc.matmul %n, %wg transpose_b : tensor<2x4x8xf32>, tensor<12x8xf32> -> tensor<2x4x12xf32>
    %up = mtc.matmul %n, %wu transpose_b : tensor<2x4x8xf32>, tensor<12x8xf32> -> tensor<2x4x12xf32>
    %h = mtc.swiglu %gate, %up : tensor<2x4x12xf32>
    %wd = mtc.param "down.weight" init = normal : tensor<16x12xf32>
    %logits = mtc.matmul %h, %wd transpose_b : tensor<2x4x12xf32>, tensor<16x12xf32> -> tensor<2x4x16xf32>
    %loss = mtc.cross_entropy %logits, %tgt ignore_index = -1 : tensor<2x4x16xf32>, tensor<2x4xi32>
    return %loss : tensor<f32>
  }
}

// CHECK-LABEL: func.func @train_step
// CHECK:         %[[N:.*]] = mtc.layer_norm %{{.*}}, %{{.*}} eps = 1.000000e-05 : tensor<2x4x8xf32>, tensor<8xf32>{{$}}
// CHECK:         %[[WG:.*]] = mtc.param "gate.weight"
// CHECK:         %[[WU:.*]] = mtc.param "up.weight"
// CHECK:         %[[GATE:.*]] = mtc.matmul %[[N]], %[[WG]] transpose_b
// CHECK:         %[[UP:.*]] = mtc.matmul %[[N]], %[[WU]] transpose_b
// CHECK:         %[[H:.*]] = mtc.swiglu %[[GATE]], %[[UP]]
// CHECK:         %[[DH:.*]] = mtc.matmul %{{.*}}, %{{.*}} : tensor<2x4x16xf32>, tensor<16x12xf32> -> tensor<2x4x12xf32>
// CHECK:         %[[DGATE:[^,]+]], %[[DUP:.*]] = mtc.swiglu_grad %[[GATE]], %[[UP]], %[[DH]] : tensor<2x4x12xf32>
// CHECK:         %[[DN_UP:.*]] = mtc.matmul %[[DUP]], %[[WU]] : tensor<2x4x12xf32>, tensor<12x8xf32> -> tensor<2x4x8xf32>
// CHECK:         %[[DWU:.*]] = mtc.matmul %[[DUP]], %[[N]] transpose_a
// CHECK:         %[[DN_GATE:.*]] = mtc.matmul %[[DGATE]], %[[WG]] : tensor<2x4x12xf32>, tensor<12x8xf32> -> tensor<2x4x8xf32>
// CHECK:         %[[DWG:.*]] = mtc.matmul %[[DGATE]], %[[N]] transpose_a
// CHECK:         %[[DN:.*]] = mtc.add %[[DN_UP]], %[[DN_GATE]] : tensor<2x4x8xf32>, tensor<2x4x8xf32>
// CHECK:         mtc.accumulate_grad %[[DWU]] into "up.weight"
// CHECK:         mtc.accumulate_grad %[[DWG]] into "gate.weight"
// CHECK:         %[[DX:[^,]+]], %[[DGAMMA:[^,]+]], %{{.*}} = mtc.layer_norm_grad %{{.*}}, %{{.*}}, %[[DN]]
// CHECK-NOT:     into "ln.bias"
// CHECK:         mtc.accumulate_grad %[[DGAMMA]] into "ln.weight"
// CHECK-NOT:     into "unused.weight"
// CHECK:         mtc.accumulate_grad %{{.*}} into "wte"
// CHECK-NOT:     into "unused.weight"
// CHECK:         return
//
// CHECK-LABEL: func.func @optimizer_step
// CHECK:         mtc.grad_norm grad_scale = 1.250000e-01 : f32
// CHECK:         mtc.adamw {{.*}} params = ["wte", "unused.weight", "gate.weight", "up.weight", "down.weight"] weight_decay = 1.000000e-01
// CHECK-SAME:      grad_scale = 1.250000e-01
// CHECK:         mtc.adamw {{.*}} params = ["ln.weight"] weight_decay = 0.000000e+00
// CHECK-SAME:      grad_scale = 1.250000e-01

// -----

// Tests that the pass needs a @forward function.
// expected-error @+1 {{mtc-autodiff needs a function @forward returning the loss (the importer's output)}}
module {
  func.func @loss(%x: tensor<f32>) -> tensor<f32> {
    return %x : tensor<f32>
  }
}

// -----

// Tests that @forward must return a 0-d loss, not a per-token one.
// expected-error @+1 {{@forward must return exactly one tensor<f32> loss}}
func.func @forward(%x: tensor<2x4xf32>) -> tensor<2x4xf32> {
  return %x : tensor<2x4xf32>
}

// -----

// Tests that @forward must return exactly one value.
// expected-error @+1 {{@forward must return exactly one tensor<f32> loss}}
func.func @forward(%x: tensor<f32>) -> (tensor<f32>, tensor<f32>) {
  return %x, %x : tensor<f32>, tensor<f32>
}

// -----

// Tests that @forward's loss must be f32.
// expected-error @+1 {{@forward must return exactly one tensor<f32> loss}}
func.func @forward(%x: tensor<bf16>) -> tensor<bf16> {
  return %x : tensor<bf16>
}

// -----

// Tests that the pass refuses a module it has already run on.
// expected-error @+1 {{module already has @train_step or @optimizer_step: mtc-autodiff runs once}}
module {
  func.func @forward(%x: tensor<f32>) -> tensor<f32> {
    return %x : tensor<f32>
  }
  func.func @train_step(%x: tensor<f32>) -> tensor<f32> {
    return %x : tensor<f32>
  }
}

// -----

// Tests that an existing @optimizer_step is refused too.
// expected-error @+1 {{module already has @train_step or @optimizer_step: mtc-autodiff runs once}}
module {
  func.func @forward(%x: tensor<f32>) -> tensor<f32> {
    return %x : tensor<f32>
  }
  func.func @optimizer_step(%lr: f32, %step: i64) -> f32 {
    return %lr : f32
  }
}

// -----

// Tests that an op the loss depends on must have a gradient rule.
func.func @forward(%x: tensor<2x4x16xf32>, %tgt: tensor<4xi32>) -> tensor<f32> {
  // expected-error @+1 {{'mtc.reduce_leading' op has no gradient rule, but the loss depends on it (mtc-autodiff)}}
  %r = mtc.reduce_leading %x : tensor<2x4x16xf32> -> tensor<4x16xf32>
  %loss = mtc.cross_entropy %r, %tgt ignore_index = -1 : tensor<4x16xf32>, tensor<4xi32>
  return %loss : tensor<f32>
}

// -----

// Tests that a transpose_a matmul in the forward program is refused.
func.func @forward(%x: tensor<4x8xf32>, %tgt: tensor<8xi32>) -> tensor<f32> {
  %w = mtc.param "w" init = normal : tensor<4x16xf32>
  // expected-error @+1 {{'mtc.matmul' op has no gradient rule for transpose_a (only produced by autodiff itself)}}
  %y = mtc.matmul %x, %w transpose_a : tensor<4x8xf32>, tensor<4x16xf32> -> tensor<8x16xf32>
  %loss = mtc.cross_entropy %y, %tgt ignore_index = -1 : tensor<8x16xf32>, tensor<8xi32>
  return %loss : tensor<f32>
}

// -----

// Tests that a matmul whose rhs is not a 2-D weight is refused.
func.func @forward(%x: tensor<4x8xf32>, %w: tensor<2x4x16xf32>, %tgt: tensor<4xi32>) -> tensor<f32> {
  // expected-error @+1 {{'mtc.matmul' op gradient rule needs a 2-D rhs (a weight), got rank 3}}
  %y = mtc.matmul %x, %w : tensor<4x8xf32>, tensor<2x4x16xf32> -> tensor<4x16xf32>
  %loss = mtc.cross_entropy %y, %tgt ignore_index = -1 : tensor<4x16xf32>, tensor<4xi32>
  return %loss : tensor<f32>
}

// -----

// Tests that a loss depending on attention's lse is refused.
func.func @forward(%qkv: tensor<2x4x24xf32>, %tgt: tensor<2x2xi32>) -> tensor<f32> {
  // expected-error @+1 {{'mtc.attention' op lse is auxiliary and has no gradient rule}}
  %o, %lse = mtc.attention %qkv heads = 2 kv_heads = 2 causal scale = 0.5
               : tensor<2x4x24xf32> -> tensor<2x4x8xf32>, tensor<2x2x4xf32>
  %loss = mtc.cross_entropy %lse, %tgt ignore_index = -1 : tensor<2x2x4xf32>, tensor<2x2xi32>
  return %loss : tensor<f32>
}

// -----

// Tests an expert bias (a not_trained parameter): the router's gradient is
// built with biased_selection and the bias gets no accumulate_grad; the
// load accumulation leaves @forward (evaluation) for @train_step; the
// optimizer step updates the bias first, at the accumulation's rate, and
// keeps it out of every AdamW group.
module {
  func.func @forward(%tok: tensor<2x4xi32>, %tgt: tensor<2x4xi32>) -> tensor<f32> {
    %wte = mtc.param "wte" init = normal : tensor<16x8xf32>
    %x = mtc.embedding %tok, %wte : tensor<2x4xi32>, tensor<16x8xf32> -> tensor<2x4x8xf32>
    %wr = mtc.param "router.weight" init = normal : tensor<4x8xf32>
    %l = mtc.matmul %x, %wr transpose_b : tensor<2x4x8xf32>, tensor<4x8xf32> -> tensor<2x4x4xf32>
    %eb = mtc.param "router.expert_bias" init = zeros not_trained : tensor<4xf32>
    %p, %i, %w, %aux = mtc.moe_router %l bias %eb top_k = 2 router = softmax_topk
        scale = 1.0 aux_coeff = 0.0 z_coeff = 0.0
        : tensor<2x4x4xf32>, tensor<4xf32> -> tensor<2x4x4xf32>, tensor<2x4x2xi32>, tensor<2x4x2xf32>
    %xp, %pos, %c = mtc.moe_permute %x, %i num_experts = 4
        : tensor<2x4x8xf32>, tensor<2x4x2xi32> -> tensor<16x8xf32>, tensor<4xi32>
    mtc.moe_accumulate_load %c into "router.expert_bias" update_rate = 2.5e-3 : tensor<4xi32>
    %y = mtc.moe_unpermute %xp, %pos, %w
        : tensor<16x8xf32>, tensor<2x4x2xi32>, tensor<2x4x2xf32> -> tensor<2x4x8xf32>
    %logits = mtc.matmul %y, %wte transpose_b : tensor<2x4x8xf32>, tensor<16x8xf32> -> tensor<2x4x16xf32>
    %loss = mtc.cross_entropy %logits, %tgt ignore_index = -1 : tensor<2x4x16xf32>, tensor<2x4xi32>
    return %loss : tensor<f32>
  }
}

// CHECK-LABEL: func.func @forward
// CHECK-NOT:     mtc.moe_accumulate_load
// CHECK:         return
// CHECK-LABEL: func.func @train_step
// CHECK:         mtc.moe_accumulate_load %{{.*}} into "router.expert_bias" update_rate = 2.500000e-03
// CHECK:         mtc.moe_router_grad {{.*}} biased_selection
// CHECK-NOT:     into "router.expert_bias"
// CHECK:         mtc.accumulate_grad %{{.*}} into "router.weight"
// CHECK-NOT:     into "router.expert_bias"
// CHECK:         return
// CHECK-LABEL: func.func @optimizer_step
// CHECK-NEXT:    mtc.moe_update_expert_bias "router.expert_bias" rate = 2.500000e-03
// CHECK-NEXT:    mtc.grad_norm
// CHECK-NEXT:    mtc.adamw {{.*}} params = ["wte", "router.weight"]
// CHECK-NOT:     router.expert_bias
// CHECK:         return
