// Tests that mtc-verify-pipeline accepts a correct schedule and leaves it
// unchanged: the 1F1B steps of pp = 2, m = 2 written by hand around tiny
// pieces (verify_errors.mlir breaks them), and the one the compiler writes
// for the tiny GPT.
//
// RUN: mtc-opt %s --mtc-verify-pipeline | FileCheck %s
// RUN: mtc compile %examples/tiny-gpt.json --pp 2 --global-batch-size 32 --emit=train | mtc-opt --mtc-verify-pipeline \
// RUN:   | FileCheck %s --check-prefix=GPT

// CHECK-LABEL: func.func @pipeline_step_pp0(
// CHECK: %[[A1:.*]] = call @chunk0_forward(%{{.*}}) {mtc.microbatch = 1 : i64}
// CHECK-NEXT: %[[G0:.*]] = mtc.p2p(%[[A1]]) transfers = [{chunk = 0 : i64, index = 0 : i64, kind = "send", microbatch = 1 : i64, payload = "activation", peer = 1 : i64}, {chunk = 1 : i64, index = 0 : i64, kind = "recv", microbatch = 0 : i64, payload = "gradient", peer = 1 : i64}]
// CHECK-NEXT: call @chunk0_backward(%[[G0]]) {mtc.microbatch = 0 : i64}
// CHECK-LABEL: func.func @pipeline_step_pp1(

// GPT-LABEL: func.func @pipeline_step_pp0(
// GPT-LABEL: func.func @pipeline_step_pp1(
module attributes {mtc.parallel = {pp = 2 : i64, virtual_stages = 1 : i64, schedule = "1f1b"}, mtc.training = {num_microbatches = 2 : i64}} {
  func.func private @chunk0_forward(%x: tensor<4xf32>) -> tensor<4xf32> attributes {mtc.piece = {chunk = 0 : i64, kind = "forward"}} {
    return %x : tensor<4xf32>
  }
  func.func private @chunk0_backward(%g: tensor<4xf32>) attributes {mtc.piece = {chunk = 0 : i64, kind = "backward"}} {
    return
  }
  func.func private @chunk1_forward(%x: tensor<4xf32>) -> tensor<4xf32> attributes {mtc.piece = {chunk = 1 : i64, kind = "forward"}} {
    return %x : tensor<4xf32>
  }
  func.func private @chunk1_backward(%x: tensor<4xf32>) -> tensor<4xf32> attributes {mtc.piece = {chunk = 1 : i64, kind = "backward"}} {
    return %x : tensor<4xf32>
  }
  // rank 0: F0 {sa0.0>1} F1 {sa1.0>1 rg0.1<1} B0 {rg1.1<1} B1
  func.func @pipeline_step_pp0(%x: tensor<4xf32>) attributes {mtc.pipeline_rank = 0 : i64} {
    %a0 = call @chunk0_forward(%x) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    mtc.p2p(%a0) transfers = [{kind = "send", payload = "activation", microbatch = 0 : i64, chunk = 0 : i64, index = 0 : i64, peer = 1 : i64}] : (tensor<4xf32>) -> ()
    %a1 = call @chunk0_forward(%x) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    %g0 = mtc.p2p(%a1) transfers = [{kind = "send", payload = "activation", microbatch = 1 : i64, chunk = 0 : i64, index = 0 : i64, peer = 1 : i64}, {kind = "recv", payload = "gradient", microbatch = 0 : i64, chunk = 1 : i64, index = 0 : i64, peer = 1 : i64}] : (tensor<4xf32>) -> tensor<4xf32>
    call @chunk0_backward(%g0) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> ()
    %g1 = mtc.p2p() transfers = [{kind = "recv", payload = "gradient", microbatch = 1 : i64, chunk = 1 : i64, index = 0 : i64, peer = 1 : i64}] : () -> tensor<4xf32>
    call @chunk0_backward(%g1) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> ()
    return
  }
  // rank 1: {ra0.0<0} F0 {ra1.0<0} B0 {sg0.1>0} F1 B1 {sg1.1>0}
  func.func @pipeline_step_pp1(%x: tensor<4xf32>) attributes {mtc.pipeline_rank = 1 : i64} {
    %a0 = mtc.p2p() transfers = [{kind = "recv", payload = "activation", microbatch = 0 : i64, chunk = 0 : i64, index = 0 : i64, peer = 0 : i64}] : () -> tensor<4xf32>
    %l0 = call @chunk1_forward(%a0) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    %a1 = mtc.p2p() transfers = [{kind = "recv", payload = "activation", microbatch = 1 : i64, chunk = 0 : i64, index = 0 : i64, peer = 0 : i64}] : () -> tensor<4xf32>
    %g0 = call @chunk1_backward(%l0) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    mtc.p2p(%g0) transfers = [{kind = "send", payload = "gradient", microbatch = 0 : i64, chunk = 1 : i64, index = 0 : i64, peer = 0 : i64}] : (tensor<4xf32>) -> ()
    %l1 = call @chunk1_forward(%a1) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    %g1 = call @chunk1_backward(%l1) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    mtc.p2p(%g1) transfers = [{kind = "send", payload = "gradient", microbatch = 1 : i64, chunk = 1 : i64, index = 0 : i64, peer = 0 : i64}] : (tensor<4xf32>) -> ()
    return
  }
}
