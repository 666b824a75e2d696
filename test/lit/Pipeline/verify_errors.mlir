// Tests of mtc-verify-pipeline on hand-broken schedules: tiny pieces (the
// verifier reads only their mtc.piece) and each rank's @pipeline_step_pp<r>,
// pp = 2, m = 2, 1F1B. The error names the ranks and steps at fault, with a
// note at each of their ops. verify.mlir holds the unbroken schedule.
//
// RUN: mtc-opt %s -split-input-file -verify-diagnostics --mtc-verify-pipeline

// Tests that two receives swapped on one rank are refused: rank 1 takes
// microbatch 1 first while rank 0 sends microbatch 0 first.
// expected-error @+1 {{mtc-verify-pipeline: rank 1 step 0 receives activation (microbatch 1, chunk 0) from rank 0, whose matching send at step 1 carries activation (microbatch 0, chunk 0)}}
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
    // expected-note @+1 {{rank 0 step 1 is this op}}
    mtc.p2p(%a0) transfers = [{kind = "send", payload = "activation", microbatch = 0 : i64, chunk = 0 : i64, index = 0 : i64, peer = 1 : i64}] : (tensor<4xf32>) -> ()
    %a1 = call @chunk0_forward(%x) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    %g0 = mtc.p2p(%a1) transfers = [{kind = "send", payload = "activation", microbatch = 1 : i64, chunk = 0 : i64, index = 0 : i64, peer = 1 : i64}, {kind = "recv", payload = "gradient", microbatch = 0 : i64, chunk = 1 : i64, index = 0 : i64, peer = 1 : i64}] : (tensor<4xf32>) -> tensor<4xf32>
    call @chunk0_backward(%g0) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> ()
    %g1 = mtc.p2p() transfers = [{kind = "recv", payload = "gradient", microbatch = 1 : i64, chunk = 1 : i64, index = 0 : i64, peer = 1 : i64}] : () -> tensor<4xf32>
    call @chunk0_backward(%g1) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> ()
    return
  }
  // rank 1: {ra1.0<0} F0 {ra0.0<0} ... (the receives swapped)
  func.func @pipeline_step_pp1(%x: tensor<4xf32>) attributes {mtc.pipeline_rank = 1 : i64} {
    // expected-note @+1 {{rank 1 step 0 is this op}}
    %a0 = mtc.p2p() transfers = [{kind = "recv", payload = "activation", microbatch = 1 : i64, chunk = 0 : i64, index = 0 : i64, peer = 0 : i64}] : () -> tensor<4xf32>
    %l0 = call @chunk1_forward(%a0) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    %a1 = mtc.p2p() transfers = [{kind = "recv", payload = "activation", microbatch = 0 : i64, chunk = 0 : i64, index = 0 : i64, peer = 0 : i64}] : () -> tensor<4xf32>
    %g0 = call @chunk1_backward(%l0) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    mtc.p2p(%g0) transfers = [{kind = "send", payload = "gradient", microbatch = 0 : i64, chunk = 1 : i64, index = 0 : i64, peer = 0 : i64}] : (tensor<4xf32>) -> ()
    %l1 = call @chunk1_forward(%a1) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    %g1 = call @chunk1_backward(%l1) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    mtc.p2p(%g1) transfers = [{kind = "send", payload = "gradient", microbatch = 1 : i64, chunk = 1 : i64, index = 0 : i64, peer = 0 : i64}] : (tensor<4xf32>) -> ()
    return
  }
}

// -----

// Tests that a dropped receive is refused: rank 1 never receives the
// activation of microbatch 1 that rank 0 sends.
// expected-error @+1 {{mtc-verify-pipeline: rank 1 step 4 (forward microbatch 1, chunk 1) needs the activation (microbatch 1, chunk 0) that rank 0 sends at step 3, which no earlier step of rank 1 receives}}
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
    // expected-note @+1 {{rank 0 step 3 is this op}}
    %g0 = mtc.p2p(%a1) transfers = [{kind = "send", payload = "activation", microbatch = 1 : i64, chunk = 0 : i64, index = 0 : i64, peer = 1 : i64}, {kind = "recv", payload = "gradient", microbatch = 0 : i64, chunk = 1 : i64, index = 0 : i64, peer = 1 : i64}] : (tensor<4xf32>) -> tensor<4xf32>
    call @chunk0_backward(%g0) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> ()
    %g1 = mtc.p2p() transfers = [{kind = "recv", payload = "gradient", microbatch = 1 : i64, chunk = 1 : i64, index = 0 : i64, peer = 1 : i64}] : () -> tensor<4xf32>
    call @chunk0_backward(%g1) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> ()
    return
  }
  // rank 1: {ra0.0<0} F0 B0 {sg0.1>0} F1 B1 {sg1.1>0} (no receive of microbatch 1)
  func.func @pipeline_step_pp1(%x: tensor<4xf32>) attributes {mtc.pipeline_rank = 1 : i64} {
    %a0 = mtc.p2p() transfers = [{kind = "recv", payload = "activation", microbatch = 0 : i64, chunk = 0 : i64, index = 0 : i64, peer = 0 : i64}] : () -> tensor<4xf32>
    %l0 = call @chunk1_forward(%a0) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    %g0 = call @chunk1_backward(%l0) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    mtc.p2p(%g0) transfers = [{kind = "send", payload = "gradient", microbatch = 0 : i64, chunk = 1 : i64, index = 0 : i64, peer = 0 : i64}] : (tensor<4xf32>) -> ()
    // expected-note @+1 {{rank 1 step 4 is this op}}
    %l1 = call @chunk1_forward(%a0) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    %g1 = call @chunk1_backward(%l1) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    mtc.p2p(%g1) transfers = [{kind = "send", payload = "gradient", microbatch = 1 : i64, chunk = 1 : i64, index = 0 : i64, peer = 0 : i64}] : (tensor<4xf32>) -> ()
    return
  }
}

// -----

// Tests that two ranks that both send first, in separate groups, deadlock
// (a send completes only with its receive): rank 0 sends the activation
// of microbatch 1 while rank 1 sends the gradient of microbatch 0.
// expected-error @+1 {{mtc-verify-pipeline: deadlock: rank 0 waits at step 3 (send activation (microbatch 1, chunk 0) to rank 1) for rank 1, which waits at step 3 (send gradient (microbatch 0, chunk 1) to rank 0) for rank 0}}
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
  // rank 0: F0 {sa0.0>1} F1 {sa1.0>1} {rg0.1<1} B0 {rg1.1<1} B1
  func.func @pipeline_step_pp0(%x: tensor<4xf32>) attributes {mtc.pipeline_rank = 0 : i64} {
    %a0 = call @chunk0_forward(%x) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    mtc.p2p(%a0) transfers = [{kind = "send", payload = "activation", microbatch = 0 : i64, chunk = 0 : i64, index = 0 : i64, peer = 1 : i64}] : (tensor<4xf32>) -> ()
    %a1 = call @chunk0_forward(%x) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    // expected-note @+1 {{rank 0 step 3 is this op}}
    mtc.p2p(%a1) transfers = [{kind = "send", payload = "activation", microbatch = 1 : i64, chunk = 0 : i64, index = 0 : i64, peer = 1 : i64}] : (tensor<4xf32>) -> ()
    %g0 = mtc.p2p() transfers = [{kind = "recv", payload = "gradient", microbatch = 0 : i64, chunk = 1 : i64, index = 0 : i64, peer = 1 : i64}] : () -> tensor<4xf32>
    call @chunk0_backward(%g0) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> ()
    %g1 = mtc.p2p() transfers = [{kind = "recv", payload = "gradient", microbatch = 1 : i64, chunk = 1 : i64, index = 0 : i64, peer = 1 : i64}] : () -> tensor<4xf32>
    call @chunk0_backward(%g1) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> ()
    return
  }
  // rank 1: {ra0.0<0} F0 B0 {sg0.1>0} {ra1.0<0} F1 B1 {sg1.1>0}
  func.func @pipeline_step_pp1(%x: tensor<4xf32>) attributes {mtc.pipeline_rank = 1 : i64} {
    %a0 = mtc.p2p() transfers = [{kind = "recv", payload = "activation", microbatch = 0 : i64, chunk = 0 : i64, index = 0 : i64, peer = 0 : i64}] : () -> tensor<4xf32>
    %l0 = call @chunk1_forward(%a0) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    %g0 = call @chunk1_backward(%l0) {mtc.microbatch = 0 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    // expected-note @+1 {{rank 1 step 3 is this op}}
    mtc.p2p(%g0) transfers = [{kind = "send", payload = "gradient", microbatch = 0 : i64, chunk = 1 : i64, index = 0 : i64, peer = 0 : i64}] : (tensor<4xf32>) -> ()
    %a1 = mtc.p2p() transfers = [{kind = "recv", payload = "activation", microbatch = 1 : i64, chunk = 0 : i64, index = 0 : i64, peer = 0 : i64}] : () -> tensor<4xf32>
    %l1 = call @chunk1_forward(%a1) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    %g1 = call @chunk1_backward(%l1) {mtc.microbatch = 1 : i64} : (tensor<4xf32>) -> tensor<4xf32>
    mtc.p2p(%g1) transfers = [{kind = "send", payload = "gradient", microbatch = 1 : i64, chunk = 1 : i64, index = 0 : i64, peer = 0 : i64}] : (tensor<4xf32>) -> ()
    return
  }
}
