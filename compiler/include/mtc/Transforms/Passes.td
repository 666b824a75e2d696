//===- Passes.td - mtc compiler passes ---------------------*- tablegen -*-===//
#ifndef MTC_TRANSFORMS_PASSES_TD
#define MTC_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def MtcAutodiff : Pass<"mtc-autodiff", "::mlir::ModuleOp"> {
  let summary = "Builds the training step from the forward program.";
  let description = [{
    From `@forward(tokens, targets) -> loss`, builds:

    - `@train_step(tokens, targets) -> loss`: the forward ops followed by
      the backward ops, made by each op's GradientOpInterface rule in
      reverse order, gradients of a value used several times summed with
      `mtc.add`, and each parameter's gradient added into its buffer with
      `mtc.accumulate_grad` (gradient accumulation over microbatches);
    - `@optimizer_step(lr, step) -> grad_norm`: `mtc.grad_norm` of the
      accumulated gradients (scaled by 1/microbatches) and one `mtc.adamw`
      per weight-decay group: matrices decay, norms and biases (1-D
      parameters) do not. Hyper-parameters come from the module's
      `mtc.training` attribute; global-norm clipping at `grad_clip`.

    `@forward` stays (validation uses it). The learning-rate schedule
    (warm-up + cosine) is evaluated by the runtime from the same attribute,
    since it is a function of the step number only.
  }];
  let dependentDialects = ["::mtc::MtcDialect", "::mlir::arith::ArithDialect",
                           "::mlir::func::FuncDialect"];
}

def MtcShardTensorParallel
    : Pass<"mtc-shard-tensor-parallel", "::mlir::ModuleOp"> {
  let summary = "Megatron's tensor-parallel plan, as sharding annotations";
  let description = [{
    Annotates parameters with upstream `shard.shard` splits over the grid's
    tensor-parallel axis: QKV, the first MLP linear(s) and an untied LM head
    column-parallel (split on dimension 0, with their biases); the attention
    output projection and the second MLP linear row-parallel (dimension 1);
    embedding tables vocabulary-parallel (dimension 0). Writes annotations
    only; `mtc-partition` derives local shapes and collectives. No-op when
    the module's `mtc.parallel` has tp = 1.
  }];
  let dependentDialects = ["::mlir::shard::ShardDialect"];
}

def MtcShardSequenceParallel
    : Pass<"mtc-shard-sequence-parallel", "::mlir::ModuleOp"> {
  let summary = "Sequence parallelism: split activations outside TP regions";
  let description = [{
    Megatron's sequence parallelism, as an annotation: marks every function
    `mtc.sequence_parallel`, which tells `mtc-partition` to hold the
    activations outside the tensor-parallel regions (norms, residual adds,
    dropout) split along the sequence over the tp axis. The partitioner then
    turns each tensor-parallel all-reduce into a reduce-scatter / all-gather
    pair. No-op unless the module's `mtc.parallel` has sp on.
  }];
}

def MtcShardDataParallel
    : Pass<"mtc-shard-data-parallel", "::mlir::ModuleOp"> {
  let summary = "Data parallelism: average gradients over the dp axis";
  let description = [{
    The imported program is already per data-parallel rank (the micro-batch
    size is per rank, as in Megatron-LM); data parallelism adds one thing to
    it: `mtc.reduce_gradients` over the grid's dp axis at the start of
    `@optimizer_step`. No-op when dp = 1.
  }];
  let dependentDialects = ["::mlir::shard::ShardDialect"];
}

def MtcShardExpertParallel
    : Pass<"mtc-shard-expert-parallel", "::mlir::ModuleOp"> {
  let summary = "Expert parallelism: experts split over ep, rows exchanged all-to-all";
  let description = [{
    With `ep` > 1 in `mtc.parallel` (tp = 1, pp = 1 so far): the stacked
    expert parameters of every MoE layer are split on dimension 0 over the
    ep axis of `@mtc_expert_grid` (pp x dp/ep x ep x tp, created here), the
    grouped GEMMs (forward and backward) read rows that
    `mtc.moe_dispatch` brought from every ep rank after
    `mtc.moe_exchange_counts`, and `mtc.moe_combine` returns their results;
    the experts' gradients are reduced over the expert-data-parallel axis.
    Runs after mtc-partition. No-op when ep = 1.
  }];
  let dependentDialects = ["::mlir::shard::ShardDialect"];
}

def MtcPartition : Pass<"mtc-partition", "::mlir::ModuleOp"> {
  let summary = "Sharding annotations -> per-rank program with collectives";
  let description = [{
    Rewrites every function into the program one rank runs: local shapes
    from the parameters' split annotations, explicit `shard.all_reduce`,
    `shard.all_gather` and `shard.all_slice` where an op needs its operands
    in another distribution, per-op local attributes (head counts, the
    vocabulary offset of a vocabulary-parallel embedding). See
    Partition.cpp for the rules.
  }];
  let dependentDialects = ["::mlir::shard::ShardDialect",
                           "::mlir::arith::ArithDialect"];
}

def MtcScheduleWeightGradients
    : Pass<"mtc-schedule-weight-gradients", "::mlir::ModuleOp"> {
  let summary = "Run weight-gradient work while activation collectives fly";
  let description = [{
    Reorders each function's ops, changing no value: the backward pass's
    weight-gradient work (`mtc.matmul` with `transpose_a`, bias sums
    `mtc.reduce_leading`, gradient `mtc.add`s, `mtc.accumulate_grad`: ops
    whose results only reach gradient buffers) that stands before the
    producer of an activation collective (`shard.all_reduce`,
    `shard.all_gather`, `shard.reduce_scatter`, e.g. the tensor-parallel
    all-reduce of an input gradient) moves to just after that producer.
    The code generators start such a collective as soon as its input
    exists and wait for it where the collective stands, so the moved work
    runs while it is in flight (Megatron overlaps only the linear's own
    weight-gradient GEMM; this also brings the previous linears' ones).
    Work already between a producer and its collective stays; the order of
    the accumulations into any one gradient does not change.
  }];
}

def MtcPlanRecompute : Pass<"mtc-plan-recompute", "::mlir::ModuleOp"> {
  let summary = "Choose which forward activations are kept, which recomputed";
  let description = [{
    Runs on the partitioned `@train_step` (per-rank shapes). The forward
    ops are those the loss depends on; the rest is the backward pass. Each
    forward op of a transformer layer belongs to the layer (its location,
    `layers.N....`) and to a module: `core_attn` (the attention core and its
    dropout), `layernorm` (the layer's norms), `activation` (GELU, SwiGLU,
    squared ReLU), `mlp` (the whole MLP, activation included). A policy
    chooses per layer a set of modules, or the whole layer (`full`):

    - `none`: nothing recomputed;
    - `selective`: `core_attn` (Korthikanti et al.), or `modules`;
    - `full`: every op of the chosen layers but the layer's output;
      `method=uniform`: every layer, `num-layers` layers per checkpoint
      (only each group's input kept); `method=block`: the first
      `num-layers` layers only;
    - `auto`: the cheapest choice (fewest recomputed FLOPs) whose memory
      (mtc/Transforms/PlanReport.h: parameters, gradients, optimizer
      state, activations, workspaces) fits `memory-budget` bytes per rank;
      refused, with what each rank needs and what would fit, when nothing
      does (docs/memory.md has the algorithm).

    Steps:
    1. Mark the forward ops (the loss's backward slice) and the candidates:
       mtc ops of a layer that are not parameters; collectives (`shard.*`)
       are never recomputed (their results are kept).
    2. For the chosen ops, in reverse program order: the position where a
       copy is first needed = the earliest backward user, or the earliest
       need of a chosen op of the same group that uses it.
    3. Clone each needed op just before that position (operands from the
       same group come from their clones, others are the kept originals),
       mark the clone `mtc.recomputed`, and rewire the backward users. The
       originals then die after their last forward use, which the buffer
       plan turns into a smaller arena.

    The policy is the module's `mtc.recompute` unless `policy` is given.
  }];
  let options = [
    Option<"policy", "policy", "std::string", "\"\"",
           "none|selective|full|auto (default: the module's mtc.recompute)">,
    ListOption<"modules", "modules", "std::string",
               "selective: core_attn, mlp, layernorm, activation">,
    Option<"method", "method", "std::string", "\"uniform\"",
           "full: uniform|block">,
    Option<"numLayers", "num-layers", "int64_t", "1",
           "full: layers per checkpoint (uniform) or layers recomputed (block)">,
    Option<"memoryBudget", "memory-budget", "int64_t", "0",
           "auto: bytes per rank the plan must fit">,
    Option<"target", "target", "std::string", "\"host\"",
           "host|cuda: how values are stored, for auto's memory estimate">
  ];
}

//===----------------------------------------------------------------------===//
// CUDA lowering: each pass decides one thing about how the training step
// runs on the GPU and writes it on the ops (mtc/Transforms/Lowering.h); the
// CUDA code generator only reads. Pipeline: mtc-cuda-lowering.
//===----------------------------------------------------------------------===//

def MtcAssignPrecision : Pass<"mtc-assign-precision", "::mlir::ModuleOp"> {
  let summary = "Mixed precision: which values are stored in bf16, which in fp32";
  let description = [{
    Megatron's bf16 mixed precision for the CUDA target, as `mtc.storage`
    on every op with floating-point tensor results: activations, their
    gradients and the parameters' compute copies are stored in bf16; the
    values kept in fp32 by design are attention's log-sum-exp, the loss
    (and sums of fp32 values, such as the loss plus MoE aux losses), a
    norm's weight gradients, collectives of fp32 values, and an MoE
    layer's router math: the router logits (a matmul used only by the
    router), the router's probabilities, weights and aux loss, the weights'
    gradient and the aux-loss gradient seed, and the grouped weight and
    bias gradients where they do not sink. The IR's types stay fp32 (the math);
    parameter gradients never reach storage (mtc-sink-gradients) and go to
    the fp32 gradient buffer, as master weights and AdamW state do.
  }];
}

def MtcSinkGradients : Pass<"mtc-sink-gradients", "::mlir::ModuleOp"> {
  let summary = "Parameter gradients accumulated by their producers, never stored";
  let description = [{
    A parameter gradient that only flows into `mtc.accumulate_grad`
    (directly, through `mtc.add`s of other such gradients such as a tied
    embedding's two, or through one tensor-parallel collective) is never
    stored: its producer (a transposed matmul, `embedding_grad`,
    `reduce_leading`, a norm's gamma/beta gradient, `grouped_matmul_wgrad`,
    `grouped_bias_grad`) accumulates it straight
    into the parameter's fp32 gradient buffer. Writes `mtc.sink` (the
    parameter) on those results, and `mtc.storage` "none" where
    mtc-assign-precision ran before. A collective of such a gradient then runs
    once per step on the accumulated buffer, after the parameter's last
    accumulation, so it must be the parameter's only contribution; other
    parameters' collectives stay stored.

    Steps: (1) from each accumulate_grad backwards, the single-use chains
    of adds and at most one collective are candidates; (2) forward, a
    candidate sinks if its producer can accumulate, or it is an add of two
    sinking values, or a collective of one; (3) backward, an add that does
    not sink needs its operands stored; (4) per parameter, a sinking
    collective must be its only contribution.
  }];
}

def MtcFuseKernels : Pass<"mtc-fuse-kernels", "::mlir::ModuleOp"> {
  let summary = "Groups of ops the CUDA kernels execute as one";
  let description = [{
    Marks the groups one kernel executes (`mtc.fusion` on the op that runs
    the group, `mtc.fused` on the others) and the values computed in place
    over an operand (`mtc.in_place`), after mtc-assign-precision and
    mtc-sink-gradients:
    - a tensor-parallel all-reduce whose input dies with it runs in place;
    - `rank_zero_bias`: a row-parallel linear's bias, added after the
      all-reduce of the partial products, is added by the GEMM of the tp
      axis's rank 0 instead, and the add takes the all-reduce's storage;
    - `embedding_position`: embedding + the (S, D) position table in one
      kernel;
    - `matmul_gelu`: a matmul followed by tanh GELU, the GELU in the
      GEMM's cuBLASLt epilogue (the pre-activation is kept for gelu_grad);
    - `norm_into_residual`: a norm's input gradient added to the residual
      stream's gradient at its last use: the norm's backward adds into
      that gradient's storage;
    - `cross_entropy_grad`: the loss and the logits' gradient (from a
      constant seed) in one kernel, in place over the logits.
  }];
}

def MtcPlaceCollectives : Pass<"mtc-place-collectives", "::mlir::ModuleOp"> {
  let summary = "Where tensor-parallel all-reduces run, and the work inside them";
  let description = [{
    Collective placement for overlap, after mtc-fuse-kernels: an in-place
    all-reduce over one grid axis whose input's producer runs by itself
    starts right after that producer on its axis's stream and is waited for
    where it stands (`mtc.early_start`), so the work between them (the
    backward pass's weight-gradient GEMMs, the other half-batch lane)
    overlaps it. At tp = 2 a bf16 sum over tp also takes in the row-wise
    work that follows it, each rank on its half of the rows
    (`mtc.reduce_then`): the residual add of the forward pass
    (`reduce_residual_add`), or, without dp and pp, the backward of a norm
    that adds into the residual stream's gradient (`reduce_norm_backward`,
    its partial weight and bias gradients in `mtc.partial_rows` of an fp32
    buffer summed over tp once per step).
  }];
}

def MtcAssignLanes : Pass<"mtc-assign-lanes", "::mlir::ModuleOp"> {
  let summary = "Half-batch lanes: which ops run as two halves of the batch";
  let description = [{
    Tensor parallelism without sp, an even batch: the forward pass (and,
    with the module's `mtc.tp_backward_lanes`, the backward pass) runs as
    two lanes of half the batch's sequences, so that one lane computes
    while the other's all-reduce flies (the idea of Domino). Marks the ops
    of each run (`mtc.lane` = "split" or, for weight-gradient work inside a
    backward run, "whole") and the runs (`mtc.lane_run` on the first op,
    "forward": lane 1 on a second stream, "backward": both on the compute
    stream, staggered; `mtc.lane_run_end` on the last). A run without an
    all-reduce has nothing to overlap and is not kept. After
    mtc-place-collectives (an early all-reduce of a split producer is in
    its lane).
  }];
}

def MtcPlanBuckets : Pass<"mtc-plan-buckets", "::mlir::ModuleOp"> {
  let summary = "Data-parallel gradient buckets overlapped with the backward pass";
  let description = [{
    Data parallelism without a sharded optimizer (`mtc.reduce_gradients`
    over dp without `shard_optimizer_state`): the fp32 gradient buffer is
    cut into contiguous buckets of at least 10 M elements (40 MB, Megatron's
    default), walking the parameters backwards through the buffer's layout;
    each bucket is all-reduced over dp right after the last
    `accumulate_grad` of its parameters in `@train_step` on the step's last
    microbatch, while the backward pass goes on. Writes
    `mtc.dp_buckets = array<i64: bucket, begin, size, ...>` on those ops.
  }];
}

//===----------------------------------------------------------------------===//
// Pipeline parallelism (mtc/Transforms/Pipeline.h). Each reads the module's
// `mtc.parallel` (pp, virtual_stages, schedule, layout) and does nothing
// when pp = 1.
//===----------------------------------------------------------------------===//

def MtcPipelineStages : Pass<"mtc-pipeline-stages", "::mlir::ModuleOp"> {
  let summary = "Assigns every op to a pipeline model chunk";
  let description = [{
    Writes `mtc.chunk = c` on every op of @forward and @train_step (the
    model chunk, 0 .. pp * virtual_stages - 1 in model order, that runs
    it; chunk c runs on pipeline rank c % pp) and the module's
    `mtc.pipeline_layout`. The layout is even by default, the user's in
    Megatron's syntax (`"E,t*3|t*4|t*4|t*3,L"`, checked against the model),
    or `auto`: contiguous chunks whose largest cost (FLOPs, the embedding
    and LM head included) is smallest.
  }];
}

def MtcPipelineSplit : Pass<"mtc-pipeline-split", "::mlir::ModuleOp"> {
  let summary = "Cuts the training step into per-chunk pieces";
  let description = [{
    From the `mtc.chunk` annotations: @chunk<c>_forward, @chunk<c>_backward
    (and @chunk<c>_weight, the weight-gradient half, under the zero-bubble
    schedule), @chunk<c>_eval from @forward, with explicit activation,
    gradient and saved-value arguments and results; @optimizer_step_pp<r>
    per pipeline rank (its parameters, tied copies summed over the ranks
    that hold them, the gradient norm summed over the pipeline).
  }];
}

def MtcPipelineSchedule : Pass<"mtc-pipeline-schedule", "::mlir::ModuleOp"> {
  let summary = "Each pipeline rank's step as straight-line IR";
  let description = [{
    Builds @pipeline_step_pp<r>(tokens, targets) for every pipeline rank:
    the schedule's order (gpipe, 1f1b, interleaved, zb-h1; the module's
    `mtc.parallel.schedule`) of piece calls, one per microbatch and chunk,
    with `mtc.p2p` groups sending and receiving activations and gradients,
    and `mtc.pipeline_loss` where the last chunk computes a loss; and
    @pipeline_eval_pp<r>, the forward pieces one microbatch after another.
    The values a piece saves for its backward piece live in the step
    function from the one call to the other, so the buffer plan sees every
    microbatch in flight.
  }];
}

def MtcVerifyPipeline : Pass<"mtc-verify-pipeline", "::mlir::ModuleOp"> {
  let summary = "Proves every rank's pipeline step free of deadlock";
  let description = [{
    Reads each @pipeline_step_pp<r> back into a schedule and simulates all
    ranks together with rendezvous semantics (a transfer completes only
    when the peer has posted its counterpart): every send must meet its
    receive with the same payload in the same order, no rank may wait
    forever, and every piece must run once after its inputs exist. A
    failure names the ranks and the steps.
  }];
}

#endif // MTC_TRANSFORMS_PASSES_TD
