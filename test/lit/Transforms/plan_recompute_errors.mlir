// Tests that mtc-plan-recompute refuses options it does not know, naming
// the valid ones.
// RUN: mtc-opt %s -split-input-file -verify-diagnostics --mtc-plan-recompute="policy=selective modules=attention"
// RUN: mtc-opt %s -split-input-file -verify-diagnostics --mtc-plan-recompute="policy=full method=random"
// RUN: mtc-opt %s -split-input-file -verify-diagnostics --mtc-plan-recompute="policy=full num-layers=0"
// RUN: mtc-opt %s -split-input-file -verify-diagnostics --mtc-plan-recompute="policy=sometimes"
// RUN: mtc-opt %s -split-input-file -verify-diagnostics --mtc-plan-recompute="policy=auto"

// expected-error-re @+1 {{mtc-plan-recompute: {{unknown module 'attention' in modules \(valid: core_attn, mlp, layernorm, activation\)|unknown method 'random' \(valid: uniform, block\)|num-layers must be at least 1, got 0|unknown policy 'sometimes' \(valid: none, selective, full, auto\)|the auto policy needs a memory budget .*}}}}
module {
  func.func @train_step() {
    return
  }
}
