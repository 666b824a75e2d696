// Verifier errors of the module's mtc.* attributes: one case per check in
// dialects/mtc/lib/MtcModuleAttrs.cpp, reported at the module's location.
// The second run puts mtc-partition (which divides by the grid's sizes)
// behind the verifier: a grid axis of size 0 is an error, not a SIGFPE.
//
// RUN: mtc-opt %s -split-input-file -verify-diagnostics
// RUN: mtc-opt %s -split-input-file -verify-diagnostics -mtc-partition

// Tests that a module with every attribute valid passes, and partitions.
module attributes {mtc.model = "t", mtc.recompute = "none",
    mtc.parallel = {tp = 2 : i64, pp = 1 : i64, dp = 2 : i64, sp = true,
                    virtual_stages = 1 : i64, schedule = "1f1b",
                    distributed_optimizer = false},
    mtc.training = {micro_batch_size = 2 : i64, global_batch_size = 8 : i64,
                    num_microbatches = 2 : i64, seq_length = 4 : i64,
                    vocab_size = 16 : i64, train_steps = 10 : i64,
                    precision = "bf16", lr = 1.0e-03, min_lr = 0.0,
                    warmup_steps = 2 : i64, decay_steps = 0 : i64,
                    decay = "cosine", beta1 = 0.9, beta2 = 0.95, eps = 1.0e-08,
                    weight_decay = 0.1, grad_clip = 1.0, seed = 1234 : i64}} {
  func.func @attn(%qkv: tensor<2x4x32xf32>) -> tensor<2x4x16xf32> {
    %o, %lse = mtc.attention %qkv heads = 4 kv_heads = 2 scale = 0.5
                 : tensor<2x4x32xf32> -> tensor<2x4x16xf32>, tensor<2x4x4xf32>
    return %o : tensor<2x4x16xf32>
  }
}

// -----

// Tests that a grid axis of size 0 is refused (mtc-partition divided by it).
// expected-error @+1 {{'builtin.module' op attribute 'mtc.parallel': 'tp' must be an integer in [1, 1099511627776], got 0}}
module attributes {mtc.parallel = {tp = 0 : i64}} {
  func.func @attn(%qkv: tensor<2x4x32xf32>) -> tensor<2x4x16xf32> {
    %o, %lse = mtc.attention %qkv heads = 4 kv_heads = 2 scale = 0.5
                 : tensor<2x4x32xf32> -> tensor<2x4x16xf32>, tensor<2x4x4xf32>
    return %o : tensor<2x4x16xf32>
  }
}

// -----

// Tests that negative sizes are refused.
// expected-error @+1 {{'dp' must be an integer in [1, 1099511627776], got -2}}
module attributes {mtc.parallel = {dp = -2 : i64}} {
}

// -----

// Tests that the number of devices is bounded (and its product does not
// overflow).
// expected-error @+1 {{attribute 'mtc.parallel': tp * pp * dp = 1099511627776 * 1099511627776 * 2 devices is more than 2^40}}
module attributes {mtc.parallel = {tp = 1099511627776 : i64, pp = 1099511627776 : i64, dp = 2 : i64}} {
}

// -----

// Tests that sizes must be i64 integers, not booleans or strings.
// expected-error @+2 {{'tp' must be an integer (i64), got true}}
// expected-error @+1 {{'pp' must be an integer (i64), got "2"}}
module attributes {mtc.parallel = {tp = true, pp = "2"}} {
}

// -----

// Tests that a misspelled key is an error, not a silent default.
// expected-error @+1 {{attribute 'mtc.parallel' has an unknown key 'tensor_parallel' (known keys: tp, pp, dp, ep, virtual_stages, sp, distributed_optimizer, schedule, layout)}}
module attributes {mtc.parallel = {tensor_parallel = 2 : i64}} {
}

// -----

// Tests that expert parallelism must divide data parallelism.
// expected-error @+1 {{attribute 'mtc.parallel': expert parallelism is carved out of data parallelism: ep = 3 must divide dp = 4}}
module attributes {mtc.parallel = {dp = 4 : i64, ep = 3 : i64}} {
}

// -----

// Tests that the attribute must be a dictionary.
// expected-error @+1 {{attribute 'mtc.parallel' must be a dictionary, got 2 : i64}}
module attributes {mtc.parallel = 2 : i64} {
}

// -----

// Tests that sequence parallelism needs tensor parallelism.
// expected-error @+1 {{sequence parallelism (sp = true) needs tensor parallelism, tp > 1, got tp = 1}}
module attributes {mtc.parallel = {sp = true}} {
}

// -----

// Tests that the schedule is one of the known ones.
// expected-error @+1 {{'schedule' must be one of "gpipe", "1f1b", "interleaved", "zb-h1", got "zigzag"}}
module attributes {mtc.parallel = {schedule = "zigzag"}} {
}

// -----

// Tests that an existing grid has the plan's shape.
// expected-error @+1 {{the grid @mtc_grid has shape 1x1x4, but the plan's grid is pp x dp x tp = 1x1x2}}
module attributes {mtc.parallel = {tp = 2 : i64}} {
  // expected-note @+1 {{the grid is here}}
  shard.grid @mtc_grid(shape = 1x1x4)
}

// -----

// Tests the ranges of the optimizer's hyper-parameters.
// expected-error @+4 {{'beta1' must be a finite float in [0, 1), got 1}}
// expected-error @+3 {{'eps' must be a finite float > 0, got 0}}
// expected-error @+2 {{'lr' must be a float (like 0.5), got 1 : i64}}
// expected-error @+1 {{'weight_decay' must be a finite float >= 0, got -0.1}}
module attributes {mtc.training = {beta1 = 1.0, eps = 0.0, lr = 1 : i64, weight_decay = -0.1}} {
}

// -----

// Tests the integers of the training configuration.
// expected-error @+2 {{'micro_batch_size' must be an integer in [1, 1099511627776], got 0}}
// expected-error @+1 {{'warmup_steps' must be an integer in [0, 1099511627776], got -1}}
module attributes {mtc.training = {micro_batch_size = 0 : i64, warmup_steps = -1 : i64}} {
}

// -----

// Tests the enums and unknown keys of the training configuration.
// expected-error @+3 {{'precision' must be one of "fp32", "bf16", "fp16", got "fp8"}}
// expected-error @+2 {{'decay' must be one of "constant", "linear", "cosine", got "step"}}
// expected-error @+1 {{attribute 'mtc.training' has an unknown key 'lr_decay_style'}}
module attributes {mtc.training = {precision = "fp8", decay = "step", lr_decay_style = "cosine"}} {
}

// -----

// Tests that min_lr may not exceed lr.
// expected-error @+1 {{attribute 'mtc.training': min_lr (0.01) is greater than lr (0.001)}}
module attributes {mtc.training = {lr = 1.0e-03, min_lr = 1.0e-02}} {
}

// -----

// Tests the rule the training program checks at start: the global batch is
// micro_batch_size * num_microbatches * dp.
// expected-error @+1 {{attribute 'mtc.training': global_batch_size (8) must equal micro_batch_size * num_microbatches * dp = 2 * 2 * 4}}
module attributes {mtc.parallel = {dp = 4 : i64},
                   mtc.training = {micro_batch_size = 2 : i64, num_microbatches = 2 : i64,
                                   global_batch_size = 8 : i64}} {
}

// -----

// Tests that the tokens of a step are bounded (the training program counts
// them in an int64).
// expected-error @+1 {{attribute 'mtc.training': a step reads global_batch_size * seq_length = 1073741824 * 2048 tokens, more than 2^40}}
module attributes {mtc.training = {global_batch_size = 1073741824 : i64, seq_length = 2048 : i64}} {
}

// -----

// Tests the schedule the training program refuses: a decay that ends where
// the warm-up does.
// expected-error @+1 {{attribute 'mtc.training': the 'cosine' decay ends at decay_steps (10), which must be after warmup_steps (10); the training program refuses this schedule}}
module attributes {mtc.training = {warmup_steps = 10 : i64, decay_steps = 10 : i64, decay = "cosine"}} {
}

// -----

// Tests that with decay_steps 0 the decay ends at train_steps.
// expected-error @+1 {{the 'linear' decay ends at train_steps (5), which must be after warmup_steps (5)}}
module attributes {mtc.training = {warmup_steps = 5 : i64, train_steps = 5 : i64, decay_steps = 0 : i64, decay = "linear"}} {
}

// -----

// Tests that without a decay key the decay is cosine (the code generators'
// default), so the rule applies.
// expected-error @+1 {{the 'cosine' decay ends at decay_steps (3), which must be after warmup_steps (4)}}
module attributes {mtc.training = {warmup_steps = 4 : i64, decay_steps = 3 : i64}} {
}

// -----

// Tests that a constant learning rate has no such rule.
module attributes {mtc.training = {warmup_steps = 5 : i64, train_steps = 5 : i64, decay = "constant"}} {
}

// -----

// Tests that an unknown recompute policy is refused.
// expected-error @+1 {{attribute 'mtc.recompute' must be one of "none", "selective", "full", "auto" (the policy mtc-plan-recompute applies), got "sometimes"}}
module attributes {mtc.recompute = "sometimes"} {
}

// -----

// Tests that other recompute values are refused too.
// expected-error @+1 {{attribute 'mtc.recompute' must be one of "none", "selective", "full", "auto" (the policy mtc-plan-recompute applies), got 3 : i64}}
module attributes {mtc.recompute = 3 : i64} {
}

// -----

// Tests that the model's name is a non-empty string.
// expected-error @+1 {{attribute 'mtc.model' must be a non-empty string (the model's name), got ""}}
module attributes {mtc.model = ""} {
}

// -----

// Tests that the backward-lanes switch is a unit attribute.
// expected-error @+1 {{attribute 'mtc.tp_backward_lanes' must be a unit attribute, got true}}
module attributes {mtc.tp_backward_lanes = true} {
}

// -----

// Tests that the code-generation options take their known values only.
// expected-error @+1 {{attribute 'mtc.tp_lanes' must be "two-streams" or "one-stream", got "three"}}
module attributes {mtc.tp_lanes = "three"} {
}

// -----

// expected-error @+1 {{attribute 'mtc.tp_allreduce' must be "auto" or "nccl", got 2 : i64}}
module attributes {mtc.tp_allreduce = 2} {
}

// -----

// Tests that a misspelled module attribute is an error.
// expected-error @+1 {{unknown module attribute 'mtc.paralel' (known: mtc.model, mtc.parallel, mtc.recompute, mtc.training, mtc.tp_backward_lanes, mtc.tp_lanes, mtc.tp_allreduce, mtc.pipeline_layout)}}
module attributes {mtc.paralel = {tp = 2 : i64}} {
}

// -----

// Tests that the module's attributes belong on the module.
module {
  // expected-error @+1 {{'func.func' op attribute 'mtc.parallel' belongs on the module (builtin.module)}}
  func.func @f() attributes {mtc.parallel = {tp = 2 : i64}} {
    return
  }
}

// -----

// Tests that mtc.pipeline_layout names one string per chunk: pp = 2,
// virtual_stages = 2 make 4 chunks, not 2.
// expected-error @+1 {{'builtin.module' op attribute 'mtc.pipeline_layout' must be an array of 4 strings (one per pipeline chunk, pp * virtual_stages), got ["E,t*2", "t*2,L"]}}
module attributes {mtc.parallel = {pp = 2 : i64, virtual_stages = 2 : i64},
                   mtc.pipeline_layout = ["E,t*2", "t*2,L"]} {
}

// -----

// Tests that mtc.pipeline_layout holds strings.
// expected-error @+1 {{attribute 'mtc.pipeline_layout' must be an array of 2 strings (one per pipeline chunk, pp * virtual_stages), got ["E,t*2", 3]}}
module attributes {mtc.parallel = {pp = 2 : i64}, mtc.pipeline_layout = ["E,t*2", 3]} {
}

// -----

// Tests that a well-formed mtc.pipeline_layout passes (an empty chunk too).
module attributes {mtc.parallel = {pp = 3 : i64}, mtc.pipeline_layout = ["E,t*2", "", "t*2,L"]} {
}
