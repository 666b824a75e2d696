// -mtc-schedule-weight-gradients: weight-gradient work (ops whose results
// only reach accumulate_grad) that stands before the producer of an
// activation collective moves to just after it, where it runs while the
// collective is in flight; work already in such a window stays, work after
// the last window stays, and accumulations keep their order.
//
// RUN: mtc-opt %s -split-input-file --mtc-schedule-weight-gradients | FileCheck %s
// In the training pipeline (on by default; --delay-wgrad-compute=false
// leaves autodiff's order):
// RUN: mtc compile %examples/tiny-gpt.json --tp 2 --emit=train | FileCheck %s --check-prefix=PIPE
// RUN: mtc compile %examples/tiny-gpt.json --tp 2 --emit=train --delay-wgrad-compute=false | FileCheck %s --check-prefix=AUTODIFF

// The last layer's MLP backward: fc2's weight gradient after fc1's input
// gradient (whose all-reduce follows), or right after fc2's own.
// PIPE-LABEL: func.func @train_step
// PIPE: %[[DH:.*]] = mtc.matmul %{{.*}}, %{{.*}} : tensor<8x64x128xf32>, tensor<128x256xf32> -> tensor<8x64x256xf32>
// PIPE-NEXT: mtc.gelu_grad
// PIPE-NEXT: %[[DX:.*]] = mtc.matmul
// PIPE: mtc.matmul %{{.*}} transpose_a : tensor<8x64x128xf32>, tensor<8x64x256xf32> -> tensor<128x256xf32>
// PIPE: shard.all_reduce %[[DX]]
// AUTODIFF-LABEL: func.func @train_step
// AUTODIFF: mtc.matmul %{{.*}}, %{{.*}} : tensor<8x64x128xf32>, tensor<128x256xf32> -> tensor<8x64x256xf32>
// AUTODIFF-NEXT: mtc.matmul %{{.*}} transpose_a : tensor<8x64x128xf32>, tensor<8x64x256xf32> -> tensor<128x256xf32>

// Two linears' backward, as autodiff emits it for tp: fc2 (row-parallel,
// no collective) and fc1 (column-parallel, its input gradient all-reduced).
// CHECK-LABEL: func.func @two_linears
// CHECK: %[[DH:.*]] = mtc.matmul %arg0, %arg2 :
// CHECK-NEXT: %[[DX:.*]] = mtc.matmul %[[DH]], %arg3 :
// fc2's weight gradient and bias sum moved beside fc1's all-reduce ...
// CHECK-NEXT: %[[W2:.*]] = mtc.matmul %arg0, %arg1 transpose_a
// CHECK-NEXT: %[[B2:.*]] = mtc.reduce_leading %arg0
// CHECK-NEXT: mtc.accumulate_grad %[[B2]] into "fc2.bias"
// CHECK-NEXT: mtc.accumulate_grad %[[W2]] into "fc2.weight"
// ... before fc1's own, which was there already.
// CHECK-NEXT: %[[W1:.*]] = mtc.matmul %[[DH]], %arg4 transpose_a
// CHECK-NEXT: mtc.accumulate_grad %[[W1]] into "fc1.weight"
// CHECK-NEXT: %[[R:.*]] = shard.all_reduce %[[DX]]
// The work after the last window does not move.
// CHECK-NEXT: %[[W0:.*]] = mtc.matmul %[[R]], %arg4 transpose_a
// CHECK-NEXT: mtc.accumulate_grad %[[W0]] into "fc0.weight"
// CHECK-NEXT: return %[[R]]
module {
  shard.grid @mtc_grid(shape = 1x1x2)
  func.func @two_linears(%dy: tensor<4x8xf32>, %h: tensor<4x16xf32>,
                         %w2: tensor<8x16xf32>, %w1: tensor<16x8xf32>,
                         %x: tensor<4x8xf32>) -> tensor<4x8xf32> {
    %dh = mtc.matmul %dy, %w2 : tensor<4x8xf32>, tensor<8x16xf32> -> tensor<4x16xf32>
    %gw2 = mtc.matmul %dy, %h transpose_a : tensor<4x8xf32>, tensor<4x16xf32> -> tensor<8x16xf32>
    %gb2 = mtc.reduce_leading %dy : tensor<4x8xf32> -> tensor<8xf32>
    mtc.accumulate_grad %gb2 into "fc2.bias" : tensor<8xf32>
    mtc.accumulate_grad %gw2 into "fc2.weight" : tensor<8x16xf32>
    %dx = mtc.matmul %dh, %w1 : tensor<4x16xf32>, tensor<16x8xf32> -> tensor<4x8xf32>
    %gw1 = mtc.matmul %dh, %x transpose_a : tensor<4x16xf32>, tensor<4x8xf32> -> tensor<16x8xf32>
    mtc.accumulate_grad %gw1 into "fc1.weight" : tensor<16x8xf32>
    %r = shard.all_reduce %dx on @mtc_grid grid_axes = [2] : tensor<4x8xf32> -> tensor<4x8xf32>
    %gw0 = mtc.matmul %r, %x transpose_a : tensor<4x8xf32>, tensor<4x8xf32> -> tensor<8x8xf32>
    mtc.accumulate_grad %gw0 into "fc0.weight" : tensor<8x8xf32>
    return %r : tensor<4x8xf32>
  }
}

// -----

// A value that reaches the program's result is not weight-gradient work
// (it stays; an add of it into a gradient is, and moves); a collective of
// gradients only (a norm weight's partial sums under sequence parallelism)
// is weight-gradient work itself: it moves and opens no window.
// CHECK-LABEL: func.func @what_moves
// CHECK: %[[T:.*]] = mtc.matmul %arg0, %arg1 transpose_a
// CHECK-NEXT: %[[Y:.*]] = mtc.matmul %arg0, %arg2 :
// CHECK-NEXT: %[[G:.*]] = mtc.matmul %arg0, %arg1 transpose_a
// CHECK-NEXT: %[[S:.*]] = shard.all_reduce %[[G]]
// CHECK-NEXT: mtc.accumulate_grad %[[S]] into "w"
// CHECK-NEXT: %[[U:.*]] = mtc.add %[[T]], %[[T]]
// CHECK-NEXT: mtc.accumulate_grad %[[U]] into "v"
// CHECK-NEXT: %[[R:.*]] = shard.all_reduce %[[Y]]
// CHECK-NEXT: return %[[T]], %[[R]]
module {
  shard.grid @mtc_grid(shape = 1x1x2)
  func.func @what_moves(%dy: tensor<4x8xf32>, %x: tensor<4x8xf32>,
                        %w: tensor<8x8xf32>) -> (tensor<8x8xf32>, tensor<4x8xf32>) {
    %g = mtc.matmul %dy, %x transpose_a : tensor<4x8xf32>, tensor<4x8xf32> -> tensor<8x8xf32>
    %s = shard.all_reduce %g on @mtc_grid grid_axes = [2] : tensor<8x8xf32> -> tensor<8x8xf32>
    mtc.accumulate_grad %s into "w" : tensor<8x8xf32>
    %t = mtc.matmul %dy, %x transpose_a : tensor<4x8xf32>, tensor<4x8xf32> -> tensor<8x8xf32>
    %u = mtc.add %t, %t : tensor<8x8xf32>, tensor<8x8xf32>
    mtc.accumulate_grad %u into "v" : tensor<8x8xf32>
    %y = mtc.matmul %dy, %w : tensor<4x8xf32>, tensor<8x8xf32> -> tensor<4x8xf32>
    %r = shard.all_reduce %y on @mtc_grid grid_axes = [2] : tensor<4x8xf32> -> tensor<4x8xf32>
    return %t, %r : tensor<8x8xf32>, tensor<4x8xf32>
  }
}

// -----

// Nothing to overlap (no activation collective, e.g. data parallelism
// alone, whose gradient reduction is outside this function): no change.
// CHECK-LABEL: func.func @no_collective
// CHECK: mtc.matmul %arg0, %arg1 transpose_a
// CHECK-NEXT: mtc.accumulate_grad
// CHECK-NEXT: mtc.matmul %arg0, %arg2 :
module {
  func.func @no_collective(%dy: tensor<4x8xf32>, %x: tensor<4x8xf32>,
                           %w: tensor<8x8xf32>) -> tensor<4x8xf32> {
    %g = mtc.matmul %dy, %x transpose_a : tensor<4x8xf32>, tensor<4x8xf32> -> tensor<8x8xf32>
    mtc.accumulate_grad %g into "w" : tensor<8x8xf32>
    %y = mtc.matmul %dy, %w : tensor<4x8xf32>, tensor<8x8xf32> -> tensor<4x8xf32>
    return %y : tensor<4x8xf32>
  }
}
