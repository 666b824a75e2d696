// The dropout key check of DropoutOp::verify (dialects/mtc/lib/MtcOps.cpp).
// It is its own file because it fails today: I64Attr's getter returns
// uint64_t, so `getKey() < 0` is never true and key = -1 verifies (and reaches
// codegen as 2^64 - 1). Fix: compare `getKeyAttr().getInt() < 0` and print
//
// RUN: mtc-opt %s -split-input-file -verify-diagnostics

// Tests that the dropout key must not be negative.
func.func @dropout_key_negative(%x: tensor<2x4x8xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'mtc.dropout' op dropout key must be >= 0, got -1}}
  %y = mtc.dropout %x p = 0.1 key = -1 : tensor<2x4x8xf32>
  return %y : tensor<2x4x8xf32>
}
