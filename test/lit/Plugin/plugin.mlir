// The example pass plugin (examples/plugin/AnnotateFlops.cpp), loaded into
// mtc-opt at run time: it writes each mtc op's CostOpInterface FLOP count as
// an `mtc.flops` attribute and reports each function's total as a remark.
// A plugin's passes are registered only once mtc-opt has parsed its options,
// so they run through --pass-pipeline, not as `--mtc-example-annotate-flops`.
//
// Expected to fail until examples/plugin/AnnotateFlops.cpp compiles (so that
// MtcExamplePlugin.so exists): `fn.emitRemark() << llvm::format(...)` has no
// operator<< (a Diagnostic takes no format_object); format into a
//
// RUN: mtc-opt %s -split-input-file -verify-diagnostics \
// RUN:   --load-pass-plugin=%plugin_dir/MtcExamplePlugin.so \
// RUN:   --pass-pipeline='builtin.module(func.func(mtc-example-annotate-flops))' \
// RUN:   | FileCheck %s

// Tests that a matmul counts 2 * M * N * K: a (2, 3) x (3, 4) product is
// 2 * 2 * 4 * 3 = 48 FLOPs.
// CHECK-LABEL: func.func @matmul_2x3x4
// CHECK:         mtc.matmul %{{.*}}, %{{.*}} {mtc.flops = 4.800000e+01 : f64} : tensor<2x3xf32>, tensor<3x4xf32> -> tensor<2x4xf32>
// expected-remark @+1 {{total FLOPs 48}}
func.func @matmul_2x3x4(%a: tensor<2x3xf32>, %b: tensor<3x4xf32>) -> tensor<2x4xf32> {
  %y = mtc.matmul %a, %b : tensor<2x3xf32>, tensor<3x4xf32> -> tensor<2x4xf32>
  return %y : tensor<2x4xf32>
}

// -----

// Tests that every mtc op with a cost model is annotated: a linear layer with
// a bias over (B, S) = (2, 4) rows (M = 8, N = 16, K = 8: 2 M N K + M N =
// 2176), gelu (8 per element: 1024), attention (4 heads, 2 KV heads,
// head_dim 6: QK^T and PV, 2 * 2 B H S^2 Dh = 3072), cross-entropy (4 per
// logit: 512), a param (0), and a total of 6784; grad_norm has no cost model
// and gets no attribute.
// CHECK-LABEL: func.func @block
// CHECK:         mtc.param "w" init = normal {mtc.flops = 0.000000e+00 : f64} : tensor<16x8xf32>
// CHECK:         mtc.matmul {{.*}} transpose_b {mtc.flops = 2.176000e+03 : f64}
// CHECK:         mtc.gelu {{.*}} {mtc.flops = 1.024000e+03 : f64}
// CHECK:         mtc.attention {{.*}} {mtc.flops = 3.072000e+03 : f64}
// CHECK:         mtc.cross_entropy {{.*}} {mtc.flops = 5.120000e+02 : f64}
// CHECK:         mtc.grad_norm grad_scale = 1.000000e+00 : f32
// CHECK:         return
// expected-remark @+1 {{total FLOPs 6784}}
func.func @block(%x: tensor<2x4x8xf32>, %b: tensor<16xf32>, %qkv: tensor<2x4x48xf32>,
                 %tgt: tensor<2x4xi32>) -> (tensor<2x4x16xf32>, tensor<2x4x24xf32>, tensor<f32>, f32) {
  %w = mtc.param "w" init = normal : tensor<16x8xf32>
  %y = mtc.matmul %x, %w, %b transpose_b
         : tensor<2x4x8xf32>, tensor<16x8xf32>, tensor<16xf32> -> tensor<2x4x16xf32>
  %g = mtc.gelu %y approximate = tanh : tensor<2x4x16xf32>
  %o, %lse = mtc.attention %qkv heads = 4 kv_heads = 2 causal scale = 0.5
               : tensor<2x4x48xf32> -> tensor<2x4x24xf32>, tensor<2x4x4xf32>
  %loss = mtc.cross_entropy %g, %tgt ignore_index = -1 : tensor<2x4x16xf32>, tensor<2x4xi32>
  %n = mtc.grad_norm grad_scale = 1.0 : f32
  return %g, %o, %loss, %n : tensor<2x4x16xf32>, tensor<2x4x24xf32>, tensor<f32>, f32
}

// -----

// Tests that the total is per function and printed with 6 significant
// digits: a (64, 1024) x (1024, 1024) product is 2 * 64 * 1024 * 1024 =
// 134217728 FLOPs.
// CHECK-LABEL: func.func @large
// CHECK:         mtc.matmul {{.*}} {mtc.flops = 0x41A0000000000000 : f64}
// expected-remark @+1 {{total FLOPs 1.34218e+08}}
func.func @large(%a: tensor<64x1024xf32>, %b: tensor<1024x1024xf32>) -> tensor<64x1024xf32> {
  %y = mtc.matmul %a, %b : tensor<64x1024xf32>, tensor<1024x1024xf32> -> tensor<64x1024xf32>
  return %y : tensor<64x1024xf32>
}

// -----

// Tests that a function without mtc ops reports zero.
// CHECK-LABEL: func.func @no_mtc_ops
// CHECK-NOT:     mtc.flops
// expected-remark @+1 {{total FLOPs 0}}
func.func @no_mtc_ops(%x: tensor<4xf32>) -> tensor<4xf32> {
  return %x : tensor<4xf32>
}
