//===- Passes.td - the example plugin's pass ---------------*- tablegen -*-===//
#ifndef MTC_EXAMPLE_PLUGIN_PASSES_TD
#define MTC_EXAMPLE_PLUGIN_PASSES_TD

include "mlir/Pass/PassBase.td"

def MtcExampleAnnotateFlops
    : Pass<"mtc-example-annotate-flops", "::mlir::func::FuncOp"> {
  let summary = "Annotates every mtc op with its FLOP count (example plugin)";
  let description = [{
    Writes each mtc op's FLOP count (CostOpInterface) as an `mtc.flops`
    attribute and reports the function's total as a remark.
  }];
}

#endif // MTC_EXAMPLE_PLUGIN_PASSES_TD
