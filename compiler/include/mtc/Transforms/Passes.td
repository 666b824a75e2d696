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

#endif // MTC_TRANSFORMS_PASSES_TD
