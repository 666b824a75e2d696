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

#endif // MTC_TRANSFORMS_PASSES_TD
