//===- MtcOps.td - ops of the mtc dialect ------------------*- tablegen -*-===//
//
// Conventions:
// - Activations are (B, S, ...) ranked tensors of f32 or bf16 with the global
//   shape; token ids are i32.
// - Linear weights are stored (out, in), as nn.Linear and Megatron do, so a
//   linear layer is `mtc.matmul %x, %w {transpose_b}`.
// - The fused QKV activation has Megatron's grouped layout: the last
//   dimension is KV groups, each [R query heads, k, v] of head_dim, R =
//   num_heads / num_kv_heads (see runtime/include/mtc/rt/host_kernels.h).
// - Forward ops and their `_grad` ops come in pairs; gradient ops recompute
//   cheap statistics (norm moments) rather than carrying them.
//
//===----------------------------------------------------------------------===//

#ifndef MTC_OPS_TD
#define MTC_OPS_TD

include "mtc/Dialect/MtcBase.td"
include "mtc/Dialect/MtcInterfaces.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

def Mtc_FloatTensor : RankedTensorOf<[F32, BF16, F16]>;
def Mtc_TokenTensor : RankedTensorOf<[I32]>;
def Mtc_ScalarF32 : 0DTensorOf<[F32]> {
  let builderCall = "::mlir::RankedTensorType::get({}, $_builder.getF32Type())";
}

def Mtc_GradientOp : DeclareOpInterfaceMethods<Mtc_GradientOpInterface>;
def Mtc_CostOp : DeclareOpInterfaceMethods<Mtc_CostOpInterface>;
// Its row of the kernel table (MtcKernels.cpp, or generated below).
def Mtc_KernelOp : DeclareOpInterfaceMethods<Mtc_KernelOpInterface>;
// Its tensor-parallel rule (MtcPartition.cpp).
def Mtc_PartitionOp : DeclareOpInterfaceMethods<Mtc_PartitionOpInterface>;
def Mtc_MlpActivation : NativeOpTrait<"MlpActivation"> {
  let cppNamespace = "::mtc::OpTrait";
}

//===----------------------------------------------------------------------===//
// Parameters
//===----------------------------------------------------------------------===//

def Mtc_ParamOp : Mtc_Op<"param", [Mtc_PartitionOp, Pure, Mtc_CostOp]> {
  let summary = "A parameter, named by its checkpoint key.";
  let description = [{
    Produces the value of the parameter `name` (the key it has in
    checkpoints, e.g. `layers.3.attn.qkv.weight`) with its global shape.
    `init` says how it is initialized (`normal` uses `init_std`). Two params
    with one name in a function are the same tensor (tied embeddings reuse
    one param op).

    `not_trained`: state the optimizer does not train (an MoE router's
    expert bias, Megatron's `expert_bias` buffer). It is laid out,
    initialized, checkpointed and restored like every parameter, but
    mtc-autodiff gives it no gradient and leaves it out of AdamW; its slot
    of the gradient buffer (zeroed before each step like every gradient)
    holds the statistic its own update reads (mtc.moe_accumulate_load,
    mtc.moe_update_expert_bias).

    ```mlir
    %w = mtc.param "layers.0.mlp.fc1.weight" init = normal std = 2.000000e-02
           : tensor<512x128xf32>
    %b = mtc.param "layers.0.mlp.router.expert_bias" init = zeros not_trained
           : tensor<8xf32>
    ```
  }];
  let arguments = (ins StrAttr:$name, Mtc_InitKindAttr:$init,
                   DefaultValuedAttr<F64Attr, "0.02">:$std,
                   UnitAttr:$not_trained);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $name `init` `=` $init (`std` `=` $std^)? (`not_trained` $not_trained^)?
    attr-dict `:` type($result)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Embedding
//===----------------------------------------------------------------------===//

def Mtc_EmbeddingOp : Mtc_Op<"embedding", [Mtc_PartitionOp, Pure, Mtc_GradientOp, Mtc_CostOp]> {
  let summary = "Looks up rows of a table by token id.";
  let description = [{
    `result[b, s, :] = table[tokens[b, s], :]`. tokens (B, S) i32, table
    (V, D); result (B, S, D). A token outside [0, V) is a run-time data
    error reported with its position.

    With `vocab_start` (vocabulary-parallel embedding, after partitioning),
    the table holds rows [vocab_start, vocab_start + V) of the global table:
    tokens in that range read their row, other tokens give zero rows (another
    rank holds them; the partial results are summed across the group).

    ```mlir
    %x = mtc.embedding %tokens, %wte
           : tensor<8x64xi32>, tensor<256x128xf32> -> tensor<8x64x128xf32>
    %p = mtc.embedding %tokens, %wte_shard vocab_start %start
           : tensor<8x64xi32>, tensor<128x128xf32> -> tensor<8x64x128xf32>
    ```
  }];
  let arguments = (ins Mtc_TokenTensor:$tokens, Mtc_FloatTensor:$table,
                   Optional<Index>:$vocab_start);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $tokens `,` $table (`vocab_start` $vocab_start^)? attr-dict
    `:` type($tokens) `,` type($table) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Mtc_EmbeddingGradOp : Mtc_Op<"embedding_grad", [Mtc_PartitionOp, Pure, Mtc_CostOp]> {
  let summary = "Gradient of an embedding table: scatter-add of rows.";
  let description = [{
    `result = 0; result[tokens[b, s], :] += dout[b, s, :]`. tokens (B, S),
    dout (B, S, D); result (V, D). With `vocab_start`, the result is rows
    [vocab_start, vocab_start + V) of the global gradient.

    ```mlir
    %dwte = mtc.embedding_grad %tokens, %dx
              : tensor<8x64xi32>, tensor<8x64x128xf32> -> tensor<256x128xf32>
    ```
  }];
  let arguments = (ins Mtc_TokenTensor:$tokens, Mtc_FloatTensor:$dout,
                   Optional<Index>:$vocab_start);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $tokens `,` $dout (`vocab_start` $vocab_start^)? attr-dict
    `:` type($tokens) `,` type($dout) `->` type($result)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Elementwise and reductions
//===----------------------------------------------------------------------===//

def Mtc_AddOp : Mtc_Op<"add", [Mtc_PartitionOp, Pure, Mtc_GradientOp, Mtc_CostOp,
                              AllTypesMatch<["lhs", "result"]>]> {
  let summary = "Residual add, with rhs broadcast over leading dimensions.";
  let description = [{
    `result = lhs + rhs`, where rhs's shape is a suffix of lhs's shape and
    is broadcast over lhs's leading dimensions (e.g. learned position
    embeddings (S, D) added to (B, S, D)).

    ```mlir
    %h = mtc.add %x, %y : tensor<8x64x128xf32>, tensor<8x64x128xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$lhs, Mtc_FloatTensor:$rhs);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($lhs) `,` type($rhs)";
  let hasVerifier = 1;
}

def Mtc_ReduceLeadingOp : Mtc_Op<"reduce_leading", [Mtc_PartitionOp, Pure, Mtc_CostOp]> {
  let summary = "Sums over the leading dimensions down to the result's shape.";
  let description = [{
    The result's shape is a suffix of the input's; the leading dimensions
    are summed. It is the gradient of a broadcast operand (a bias, a
    position table).

    ```mlir
    %db = mtc.reduce_leading %dy : tensor<8x64x512xf32> -> tensor<512xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Mtc_GeluOp : Mtc_Op<"gelu", [Pure, Elementwise, Mtc_MlpActivation, Mtc_KernelOp, Mtc_GradientOp, Mtc_CostOp,
                                AllTypesMatch<["input", "result"]>]> {
  let summary = "GELU activation (exact or tanh approximation).";
  let description = [{
    ```mlir
    %y = mtc.gelu %x approximate = tanh : tensor<8x64x512xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input, Mtc_GeluApproxAttr:$approximate);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = "$input `approximate` `=` $approximate attr-dict `:` type($input)";
}

def Mtc_GeluGradOp : Mtc_Op<"gelu_grad", [Pure, Elementwise, Mtc_KernelOp, Mtc_CostOp,
                                         AllTypesMatch<["input", "dout", "result"]>]> {
  let summary = "Gradient of GELU: dout * gelu'(input).";
  let description = [{
    ```mlir
    %dx = mtc.gelu_grad %x, %dy approximate = tanh : tensor<8x64x512xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input, Mtc_FloatTensor:$dout,
                   Mtc_GeluApproxAttr:$approximate);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = "$input `,` $dout `approximate` `=` $approximate attr-dict `:` type($input)";
}

def Mtc_SwigluOp : Mtc_Op<"swiglu", [Pure, Elementwise, Mtc_MlpActivation, Mtc_KernelOp, Mtc_GradientOp, Mtc_CostOp,
                                    AllTypesMatch<["gate", "up", "result"]>]> {
  let summary = "SwiGLU: silu(gate) * up.";
  let description = [{
    ```mlir
    %h = mtc.swiglu %gate, %up : tensor<8x64x512xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$gate, Mtc_FloatTensor:$up);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = "$gate `,` $up attr-dict `:` type($gate)";
}

def Mtc_SwigluGradOp : Mtc_Op<"swiglu_grad", [Pure, Elementwise, Mtc_KernelOp, Mtc_CostOp,
    AllTypesMatch<["gate", "up", "dout", "dgate", "dup"]>]> {
  let summary = "Gradient of SwiGLU with respect to gate and up.";
  let description = [{
    ```mlir
    %dg, %du = mtc.swiglu_grad %gate, %up, %dh : tensor<8x64x512xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$gate, Mtc_FloatTensor:$up,
                   Mtc_FloatTensor:$dout);
  let results = (outs Mtc_FloatTensor:$dgate, Mtc_FloatTensor:$dup);
  let assemblyFormat = "$gate `,` $up `,` $dout attr-dict `:` type($gate)";
}

// A unary elementwise activation y = f(x) whose gradient op computes
// dx = dy * f'(x). The class is the op's whole definition besides its
// summary: gradient rule, FLOP count and kernel-table row (the host and CUDA
// kernels `<kernel>` in runtime/include/mtc/rt/{host,cuda}_kernels.h);
// Elementwise gives its sharding rule, MlpActivation its place in
// Megatron's tensor-parallel plan.
class Mtc_UnaryActivationOp<string mnemonic, string kernel, string gradOp,
                            int flopsPerElement>
    : Mtc_Op<mnemonic, [Pure, Elementwise, Mtc_MlpActivation, Mtc_GradientOp,
                        Mtc_CostOp, Mtc_KernelOp,
                        AllTypesMatch<["input", "result"]>]> {
  let arguments = (ins Mtc_FloatTensor:$input);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
  let extraClassDefinition = [{
    ::llvm::LogicalResult $cppClass::buildGradient(
        ::mlir::OpBuilder &b, ::llvm::ArrayRef<::mlir::Value> dy,
        ::llvm::SmallVectorImpl<::mlir::Value> &grads) {
      grads.assign({::mlir::Value(}] # gradOp # [{::create(
          b, getLoc(), getType(), getInput(), dy[0]))});
      return ::mlir::success();
    }
    double $cppClass::getFlops() {
      return }] # flopsPerElement # [{ * double(getType().getNumElements());
    }
    ::mtc::KernelCall $cppClass::getKernelCall(::mtc::BufferName buf) {
      const int64_t n = getType().getNumElements();
      return {"}] # kernel # [{",
              {buf(getInput()), buf(getResult()), ::mtc::kernel_arg::integer(n)},
              /*countArg=*/2, n};
    }
  }];
}

// The gradient op of a Mtc_UnaryActivationOp: dx = dy * f'(x).
class Mtc_UnaryActivationGradOp<string mnemonic, string kernel,
                                int flopsPerElement>
    : Mtc_Op<mnemonic, [Pure, Elementwise, Mtc_CostOp, Mtc_KernelOp,
                        AllTypesMatch<["input", "dout", "result"]>]> {
  let arguments = (ins Mtc_FloatTensor:$input, Mtc_FloatTensor:$dout);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = "$input `,` $dout attr-dict `:` type($input)";
  let extraClassDefinition = [{
    double $cppClass::getFlops() {
      return }] # flopsPerElement # [{ * double(getType().getNumElements());
    }
    ::mtc::KernelCall $cppClass::getKernelCall(::mtc::BufferName buf) {
      const int64_t n = getType().getNumElements();
      return {"}] # kernel # [{",
              {buf(getInput()), buf(getDout()), buf(getResult()),
               ::mtc::kernel_arg::integer(n)},
              /*countArg=*/3, n};
    }
  }];
}

def Mtc_SquaredReluOp : Mtc_UnaryActivationOp<"squared_relu",
    "squared_relu_forward", "SquaredReluGradOp", 2> {
  let summary = "Squared ReLU: max(x, 0)^2 (Primer; Nemotron-4's MLP).";
  let description = [{
    ```mlir
    %y = mtc.squared_relu %x : tensor<8x64x512xf32>
    ```
  }];
}

def Mtc_SquaredReluGradOp : Mtc_UnaryActivationGradOp<"squared_relu_grad",
    "squared_relu_backward", 3> {
  let summary = "Gradient of squared ReLU: dout * 2 * max(input, 0).";
  let description = [{
    ```mlir
    %dx = mtc.squared_relu_grad %x, %dy : tensor<8x64x512xf32>
    ```
  }];
}

def Mtc_DropoutOp : Mtc_Op<"dropout", [Mtc_PartitionOp, Pure, Mtc_GradientOp, Mtc_CostOp,
                                      AllTypesMatch<["input", "result"]>]> {
  let summary = "Dropout with a counter-based mask.";
  let description = [{
    Keeps element i with probability 1 - p and scales it by 1/(1-p). The
    mask is a pure function of (run seed, step, microbatch, `key`, global
    element index), so the same op reproduces it in backward and in
    recomputation, on any parallel plan. Its gradient is the same dropout
    applied to the result's gradient. `key` is unique per dropout site.

    ```mlir
    %y = mtc.dropout %x p = 1.000000e-01 key = 3 : tensor<8x64x128xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input, F64Attr:$p, I64Attr:$key);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = "$input `p` `=` $p `key` `=` $key attr-dict `:` type($input)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Matmul
//===----------------------------------------------------------------------===//

def Mtc_MatmulOp : Mtc_Op<"matmul", [Mtc_PartitionOp, Pure, Mtc_GradientOp, Mtc_CostOp]> {
  let summary = "Matrix product with optional bias and transposes.";
  let description = [{
    Both operands are viewed as matrices by merging all but their last
    dimension: lhs (M, K) where M is the product of its leading dimensions,
    rhs (K', N'). `transpose_a` / `transpose_b` transpose those matrices.
    The result is `op(lhs) · op(rhs) + bias`; its shape is lhs's leading
    dimensions followed by N when lhs is not transposed, else (K, N).
    The bias (N) is broadcast over rows. A linear layer with an nn.Linear
    weight (out, in):

    ```mlir
    %y = mtc.matmul %x, %w, %b transpose_b
           : tensor<8x64x128xf32>, tensor<512x128xf32>, tensor<512xf32>
           -> tensor<8x64x512xf32>
    ```

    The weight gradient of that layer flattens (B, S) into rows:

    ```mlir
    %dw = mtc.matmul %dy, %x transpose_a
            : tensor<8x64x512xf32>, tensor<8x64x128xf32> -> tensor<512x128xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$lhs, Mtc_FloatTensor:$rhs,
                   Optional<Mtc_FloatTensor>:$bias,
                   UnitAttr:$transpose_a, UnitAttr:$transpose_b);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $lhs `,` $rhs (`,` $bias^)? (`transpose_a` $transpose_a^)?
    (`transpose_b` $transpose_b^)? attr-dict
    `:` type($lhs) `,` type($rhs) (`,` type($bias)^)? `->` type($result)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    /// Rows, columns and contraction size of the product as matrices.
    int64_t getM();
    int64_t getN();
    int64_t getK();
  }];
}

//===----------------------------------------------------------------------===//
// Normalization
//===----------------------------------------------------------------------===//

def Mtc_LayerNormOp : Mtc_Op<"layer_norm", [Mtc_PartitionOp, Pure, Mtc_KernelOp, Mtc_GradientOp, Mtc_CostOp,
                                           AllTypesMatch<["input", "result"]>]> {
  let summary = "Layer normalization over the last dimension.";
  let description = [{
    `(x - mean) / sqrt(var + eps) * gamma + beta` per row; gamma and beta
    (D) where D is the last dimension; beta is optional.

    ```mlir
    %y = mtc.layer_norm %x, %g, %b eps = 1.000000e-05
           : tensor<8x64x128xf32>, tensor<128xf32>, tensor<128xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input, Mtc_FloatTensor:$gamma,
                   Optional<Mtc_FloatTensor>:$beta, F64Attr:$eps);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $gamma (`,` $beta^)? `eps` `=` $eps attr-dict
    `:` type($input) `,` type($gamma) (`,` type($beta)^)?
  }];
  let hasVerifier = 1;
}

def Mtc_LayerNormGradOp : Mtc_Op<"layer_norm_grad", [Mtc_PartitionOp, Pure, Mtc_CostOp,
    AllTypesMatch<["input", "dout", "dinput"]>,
    AllTypesMatch<["gamma", "dgamma", "dbeta"]>]> {
  let summary = "Gradients of layer normalization (statistics recomputed).";
  let description = [{
    Returns (dinput, dgamma, dbeta). dbeta is the gradient of the bias
    whether or not the forward op had one.

    ```mlir
    %dx, %dg, %db = mtc.layer_norm_grad %x, %g, %dy eps = 1.000000e-05
                      : tensor<8x64x128xf32>, tensor<128xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input, Mtc_FloatTensor:$gamma,
                   Mtc_FloatTensor:$dout, F64Attr:$eps);
  let results = (outs Mtc_FloatTensor:$dinput, Mtc_FloatTensor:$dgamma,
                 Mtc_FloatTensor:$dbeta);
  let assemblyFormat = [{
    $input `,` $gamma `,` $dout `eps` `=` $eps attr-dict `:` type($input) `,` type($gamma)
  }];
  let hasVerifier = 1;
}

def Mtc_RmsNormOp : Mtc_Op<"rms_norm", [Mtc_PartitionOp, Pure, Mtc_KernelOp, Mtc_GradientOp, Mtc_CostOp,
                                       AllTypesMatch<["input", "result"]>]> {
  let summary = "RMS normalization over the last dimension.";
  let description = [{
    `x / sqrt(mean(x^2) + eps) * gamma` per row.

    ```mlir
    %y = mtc.rms_norm %x, %g eps = 1.000000e-05 : tensor<8x64x128xf32>, tensor<128xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input, Mtc_FloatTensor:$gamma, F64Attr:$eps);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $gamma `eps` `=` $eps attr-dict `:` type($input) `,` type($gamma)
  }];
  let hasVerifier = 1;
}

def Mtc_RmsNormGradOp : Mtc_Op<"rms_norm_grad", [Mtc_PartitionOp, Pure, Mtc_CostOp,
    AllTypesMatch<["input", "dout", "dinput"]>,
    AllTypesMatch<["gamma", "dgamma"]>]> {
  let summary = "Gradients of RMS normalization (statistics recomputed).";
  let description = [{
    ```mlir
    %dx, %dg = mtc.rms_norm_grad %x, %g, %dy eps = 1.000000e-05
                 : tensor<8x64x128xf32>, tensor<128xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input, Mtc_FloatTensor:$gamma,
                   Mtc_FloatTensor:$dout, F64Attr:$eps);
  let results = (outs Mtc_FloatTensor:$dinput, Mtc_FloatTensor:$dgamma);
  let assemblyFormat = [{
    $input `,` $gamma `,` $dout `eps` `=` $eps attr-dict `:` type($input) `,` type($gamma)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Attention
//===----------------------------------------------------------------------===//

def Mtc_RopeOp : Mtc_Op<"rope", [Mtc_PartitionOp, Pure, Mtc_KernelOp, Mtc_GradientOp, Mtc_CostOp,
                                AllTypesMatch<["input", "result"]>]> {
  let summary = "Rotary position embedding on the q and k parts of fused QKV.";
  let description = [{
    Rotates each query and key head of the fused (B, S, (H + 2 KV) Dh) QKV
    tensor by position (rotate-half convention, frequencies
    `theta^(-2i/Dh)`); value heads pass through. `inverse` rotates by the
    opposite angle, which is the gradient.

    ```mlir
    %r = mtc.rope %qkv heads = 4 kv_heads = 2 theta = 1.000000e+04 : tensor<8x64x256xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input, I64Attr:$heads, I64Attr:$kv_heads,
                   F64Attr:$theta, UnitAttr:$inverse);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $input `heads` `=` $heads `kv_heads` `=` $kv_heads `theta` `=` $theta
    (`inverse` $inverse^)? attr-dict `:` type($input)
  }];
  let hasVerifier = 1;
}

def Mtc_AttentionOp : Mtc_Op<"attention", [Mtc_PartitionOp, Pure, Mtc_KernelOp, Mtc_GradientOp, Mtc_CostOp]> {
  let summary = "Scaled dot-product attention core on fused QKV.";
  let description = [{
    `softmax(q k^T * scale + masks) v` for every query head, with grouped
    KV heads (query head h reads KV group h / (heads / kv_heads)). Input is
    the fused (B, S, (H + 2 KV) Dh) QKV tensor in Megatron's grouped layout;
    the result is (B, S, H Dh) and `lse` (B, H, S) f32 holds each query's
    log-sum-exp, kept for the backward pass. `causal` hides later keys; the
    optional `mask` (B, S) i32 hides keys where it is 0 (padding).

    ```mlir
    %o, %lse = mtc.attention %qkv heads = 4 kv_heads = 4 causal scale = 0.17677669529663687
                 : tensor<8x64x384xf32> -> tensor<8x64x128xf32>, tensor<8x4x64xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$qkv, Optional<Mtc_TokenTensor>:$mask,
                   I64Attr:$heads, I64Attr:$kv_heads, UnitAttr:$causal,
                   F64Attr:$scale);
  let results = (outs Mtc_FloatTensor:$result, RankedTensorOf<[F32]>:$lse);
  let assemblyFormat = [{
    $qkv (`mask` $mask^)? `heads` `=` $heads `kv_heads` `=` $kv_heads
    (`causal` $causal^)? `scale` `=` $scale attr-dict
    `:` type($qkv) (`,` type($mask)^)? `->` type($result) `,` type($lse)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    int64_t getHeadDim();
  }];
}

def Mtc_AttentionGradOp : Mtc_Op<"attention_grad", [Mtc_PartitionOp, Pure, Mtc_KernelOp, Mtc_CostOp,
    AllTypesMatch<["qkv", "result"]>, AllTypesMatch<["out", "dout"]>]> {
  let summary = "Gradient of the attention core with respect to fused QKV.";
  let description = [{
    Recomputes the probabilities from `lse` (flash-attention style).

    ```mlir
    %dqkv = mtc.attention_grad %qkv, %o, %lse, %do heads = 4 kv_heads = 4 causal
              scale = 0.17677669529663687
              : tensor<8x64x384xf32>, tensor<8x64x128xf32>, tensor<8x4x64xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$qkv, Mtc_FloatTensor:$out,
                   RankedTensorOf<[F32]>:$lse, Mtc_FloatTensor:$dout,
                   Optional<Mtc_TokenTensor>:$mask,
                   I64Attr:$heads, I64Attr:$kv_heads, UnitAttr:$causal,
                   F64Attr:$scale);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $qkv `,` $out `,` $lse `,` $dout (`mask` $mask^)? `heads` `=` $heads
    `kv_heads` `=` $kv_heads (`causal` $causal^)? `scale` `=` $scale attr-dict
    `:` type($qkv) `,` type($out) `,` type($lse) (`,` type($mask)^)?
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Loss
//===----------------------------------------------------------------------===//

def Mtc_CrossEntropyOp : Mtc_Op<"cross_entropy", [Mtc_PartitionOp, Pure, Mtc_GradientOp, Mtc_CostOp]> {
  let summary = "Mean softmax cross-entropy over the non-ignored targets.";
  let description = [{
    logits (B, S, V), targets (B, S) i32; targets equal to `ignore_index`
    do not count. Result: the mean loss, a 0-d f32 tensor. With
    `valid_classes` (< V), only classes [0, valid_classes) take part: the
    rest is vocabulary padding (Megatron pads the vocabulary so it splits
    evenly over tp), kept out of the softmax so that the loss does not
    depend on the padding, hence not on the parallel plan.

    Vocabulary-parallel (after partitioning): the logits are this rank's
    columns [vocab_start, vocab_start + V) of the global logits, split over
    grid axis `axis` of the module's grid; the op's kernel completes the
    softmax statistics with collectives over that axis (Megatron's
    vocab-parallel cross-entropy), so no rank holds the whole logits.

    ```mlir
    %loss = mtc.cross_entropy %logits, %targets ignore_index = -1 valid_classes = 200
              : tensor<8x64x256xf32>, tensor<8x64xi32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$logits, Mtc_TokenTensor:$targets,
                   Optional<Index>:$vocab_start,
                   DefaultValuedAttr<I64Attr, "-1">:$ignore_index,
                   OptionalAttr<I64Attr>:$valid_classes,
                   OptionalAttr<I64Attr>:$grid_axis);
  let results = (outs Mtc_ScalarF32:$loss);
  let assemblyFormat = [{
    $logits `,` $targets (`vocab_parallel` `(` $vocab_start^ `,` `axis` `=` $grid_axis `)`)?
    `ignore_index` `=` $ignore_index
    (`valid_classes` `=` $valid_classes^)? attr-dict
    `:` type($logits) `,` type($targets)
  }];
  let extraClassDeclaration = [{
    /// Classes in the softmax: valid_classes, or the whole last dimension.
    int64_t getNumValidClasses();
  }];
  let hasVerifier = 1;
}

def Mtc_CrossEntropyGradOp : Mtc_Op<"cross_entropy_grad", [Mtc_PartitionOp, Pure, Mtc_CostOp,
    AllTypesMatch<["logits", "result"]>]> {
  let summary = "Gradient of the mean cross-entropy with respect to logits.";
  let description = [{
    `dloss * (softmax(logits) - onehot(target)) / count`, zero on ignored
    rows and on padding classes (at or past `valid_classes`).

    ```mlir
    %dl = mtc.cross_entropy_grad %logits, %targets, %dloss ignore_index = -1
            : tensor<8x64x256xf32>, tensor<8x64xi32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$logits, Mtc_TokenTensor:$targets,
                   Mtc_ScalarF32:$dloss, Optional<Index>:$vocab_start,
                   DefaultValuedAttr<I64Attr, "-1">:$ignore_index,
                   OptionalAttr<I64Attr>:$valid_classes,
                   OptionalAttr<I64Attr>:$grid_axis);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $logits `,` $targets `,` $dloss
    (`vocab_parallel` `(` $vocab_start^ `,` `axis` `=` $grid_axis `)`)?
    `ignore_index` `=` $ignore_index
    (`valid_classes` `=` $valid_classes^)? attr-dict
    `:` type($logits) `,` type($targets)
  }];
  let extraClassDeclaration = [{
    int64_t getNumValidClasses();
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Mixture of experts (docs/moe.md)
//
// A dropless MoE MLP over T tokens, E experts, top-k routing:
//   logits = matmul(x, router.weight^T)            (T, E)
//   probs, indices, weights, aux = moe_router(logits)
//   xp, positions, counts = moe_permute(x, indices) (T*k, D) grouped by expert
//   h = grouped_matmul(xp, fc1 (E, F, D), counts)   expert e's rows times its
//   ...                                             weights
//   y = moe_unpermute(out, positions, weights)      (T, D) weighted sum
// Shapes are static: the permuted buffer always has T*k rows; how many of
// them each expert owns (counts) is data, computed at run time. With token
// dropping (moe_permute's `capacity` C) it has min(E*C, T*k) rows, the
// dropped assignments' positions are -1.
//===----------------------------------------------------------------------===//

def Mtc_MoeRouterOp : Mtc_Op<"moe_router", [Mtc_PartitionOp, Pure, Mtc_GradientOp, Mtc_CostOp,
                                           Mtc_KernelOp]> {
  let summary = "Top-k router: probabilities, expert indices and weights, aux loss.";
  let description = [{
    `logits` (..., E) f32 are each token's router scores. Results, for every
    token (the leading dimensions, T tokens in all):
    - `probs` (..., E) f32: softmax over all E experts;
    - `indices` (..., k) i32: the k experts with the highest logits, in
      decreasing order (ties: the lower index first);
    - `weights` (..., k) f32: `softmax_topk` (softmax then top-k, the
      upcycling paper's choice) takes the selected probabilities as they
      are, not renormalized; `topk_softmax` (Mixtral's) a softmax over the
      k selected logits. Both are multiplied by `scale`;
    - `aux_loss` () f32: `aux_coeff * E * sum_e f_e * P_e` (Switch's and
      Megatron's load-balancing loss; f_e the fraction of the T*k
      assignments that went to e, P_e the mean of probs over tokens) plus
      `z_coeff * mean_t logsumexp(logits_t)^2` (ST-MoE's router z-loss).
    The router's math is fp32 on every target.

    With a `bias` (E) f32 (aux-loss-free load balancing, DeepSeek-V3's
    expert bias; a `not_trained` parameter), the selection ranks each
    token's scores plus the bias, the scores being the probabilities
    (`softmax_topk`) or the logits (`topk_softmax`); the weights are the
    unbiased scores' (the selected probabilities, or the softmax over the
    selected logits), so the bias changes which experts a token goes to,
    never how much of each it gets. The aux loss's f_e then counts the
    unbiased top-k of the logits, as Megatron's aux loss does.

    ```mlir
    %p, %i, %w, %aux = mtc.moe_router %logits top_k = 2 router = softmax_topk
        scale = 1.0 aux_coeff = 1.0e-02 z_coeff = 1.0e-03
        : tensor<8x64x8xf32> -> tensor<8x64x8xf32>, tensor<8x64x2xi32>, tensor<8x64x2xf32>
    %p2, %i2, %w2, %aux2 = mtc.moe_router %logits bias %b top_k = 2
        router = softmax_topk scale = 1.0 aux_coeff = 0.0 z_coeff = 0.0
        : tensor<8x64x8xf32>, tensor<8xf32>
        -> tensor<8x64x8xf32>, tensor<8x64x2xi32>, tensor<8x64x2xf32>
    ```
  }];
  let arguments = (ins RankedTensorOf<[F32]>:$logits,
                   Optional<RankedTensorOf<[F32]>>:$bias, I64Attr:$top_k,
                   Mtc_RouterKindAttr:$router, F64Attr:$scale,
                   F64Attr:$aux_coeff, F64Attr:$z_coeff);
  let results = (outs RankedTensorOf<[F32]>:$probs, Mtc_TokenTensor:$indices,
                 RankedTensorOf<[F32]>:$weights, Mtc_ScalarF32:$aux_loss);
  let assemblyFormat = [{
    $logits (`bias` $bias^)? `top_k` `=` $top_k `router` `=` $router
    `scale` `=` $scale `aux_coeff` `=` $aux_coeff `z_coeff` `=` $z_coeff
    attr-dict `:` type($logits) (`,` type($bias)^)?
    `->` type($probs) `,` type($indices) `,` type($weights)
  }];
  let hasVerifier = 1;
}

def Mtc_MoeRouterGradOp : Mtc_Op<"moe_router_grad", [Mtc_PartitionOp, Pure, Mtc_CostOp, Mtc_KernelOp,
    AllTypesMatch<["logits", "probs", "result"]>,
    AllTypesMatch<["dweights"]>]> {
  let summary = "Gradient of mtc.moe_router with respect to the logits.";
  let description = [{
    From the gradients of the weights and (optionally, when the aux loss is
    part of the loss) of the aux loss; the indices are constants (top-k
    selection has no gradient), so the logits get their gradient through
    the selected weights, the load-balancing term's P_e and the z-loss.
    `biased_selection`: the forward router had an expert bias, so the
    indices are not the unbiased top-k, and the aux loss's f_e is counted
    from the unbiased top-k of the logits (recomputed here) as the forward
    counted it. The bias itself gets no gradient (it only chose).

    ```mlir
    %dl = mtc.moe_router_grad %logits, %p, %i, %dw, %daux top_k = 2
        router = softmax_topk scale = 1.0 aux_coeff = 1.0e-02 z_coeff = 1.0e-03
        : tensor<8x64x8xf32>, tensor<8x64x2xi32>, tensor<8x64x2xf32>
    ```
  }];
  let arguments = (ins RankedTensorOf<[F32]>:$logits, RankedTensorOf<[F32]>:$probs,
                   Mtc_TokenTensor:$indices, RankedTensorOf<[F32]>:$dweights,
                   Optional<Mtc_ScalarF32>:$daux, I64Attr:$top_k,
                   Mtc_RouterKindAttr:$router, F64Attr:$scale,
                   F64Attr:$aux_coeff, F64Attr:$z_coeff,
                   UnitAttr:$biased_selection);
  let results = (outs RankedTensorOf<[F32]>:$result);
  let assemblyFormat = [{
    $logits `,` $probs `,` $indices `,` $dweights (`,` $daux^)? `top_k` `=` $top_k
    `router` `=` $router `scale` `=` $scale `aux_coeff` `=` $aux_coeff
    `z_coeff` `=` $z_coeff (`biased_selection` $biased_selection^)? attr-dict
    `:` type($logits) `,` type($indices) `,` type($dweights)
  }];
  let hasVerifier = 1;
}

def Mtc_MoePermuteOp : Mtc_Op<"moe_permute", [Mtc_PartitionOp, Pure, Mtc_GradientOp, Mtc_CostOp,
                                             Mtc_KernelOp,
                                             AllTypesMatch<["indices", "positions"]>]> {
  let summary = "Groups token copies by expert (dispatch), dropless or with a capacity.";
  let description = [{
    x (..., D) with T tokens, indices (..., k) i32 in [0, E). Every (token,
    slot) assignment becomes one row of `result`: expert 0's rows first,
    then expert 1's, ..., each expert's in token order. `positions`
    (..., k) i32 is the row each assignment went to; `counts` (E) i32 how
    many rows each expert owns (its rows start at the sum of the counts
    before it).

    Dropless (no `capacity`): result (T*k, D), nothing is dropped, so the
    shapes are static and the counts are data.

    With `capacity` = C (token dropping, GShard / Megatron): each expert
    keeps at most C of its assignments and the others are dropped: their
    position is -1 (mtc.moe_unpermute skips them, so they contribute
    nothing and get no gradient). Which are kept: with a `priority`
    operand (..., k) f32 (the routing weights: Megatron's "probs" drop
    policy) the C of highest priority, ties to the earlier assignment;
    without, the first C in token order ("position"). The kept rows stay
    packed, expert by expert in token order, so the grouped GEMMs read them
    through `counts` as in the dropless case; result (min(E*C, T*k), D),
    the rows past the counts' total zero. The aux loss of mtc.moe_router
    counts the assignments before dropping, as Megatron's does.

    ```mlir
    %xp, %pos, %counts = mtc.moe_permute %x, %i num_experts = 8
        : tensor<8x64x128xf32>, tensor<8x64x2xi32> -> tensor<1024x128xf32>, tensor<8xi32>
    %xq, %posq, %countsq = mtc.moe_permute %x, %i priority %w num_experts = 8 capacity = 80
        : tensor<8x64x128xf32>, tensor<8x64x2xi32>, tensor<8x64x2xf32>
        -> tensor<640x128xf32>, tensor<8xi32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input, Mtc_TokenTensor:$indices,
                   Optional<RankedTensorOf<[F32]>>:$priority,
                   I64Attr:$num_experts, OptionalAttr<I64Attr>:$capacity);
  let results = (outs Mtc_FloatTensor:$result, Mtc_TokenTensor:$positions,
                 Mtc_TokenTensor:$counts);
  let assemblyFormat = [{
    $input `,` $indices (`priority` $priority^)? `num_experts` `=` $num_experts
    (`capacity` `=` $capacity^)? attr-dict
    `:` type($input) `,` type($indices) (`,` type($priority)^)? `->` type($result) `,` type($counts)
  }];
  let hasVerifier = 1;
}

def Mtc_MoeUnpermuteOp : Mtc_Op<"moe_unpermute", [Mtc_PartitionOp, Pure, Mtc_GradientOp, Mtc_CostOp,
                                                 Mtc_KernelOp]> {
  let summary = "Sums each token's expert rows back in token order (combine).";
  let description = [{
    `result[t] = sum_j weights[t, j] * input[positions[t, j]]`, input
    (N, D) the permuted rows, positions and weights (..., k) with T tokens;
    result (..., D). A position of -1 (an assignment mtc.moe_permute dropped
    for capacity) adds nothing. Without weights every row counts once: the
    gradient of mtc.moe_permute.

    ```mlir
    %y = mtc.moe_unpermute %h, %pos, %w
        : tensor<1024x128xf32>, tensor<8x64x2xi32>, tensor<8x64x2xf32> -> tensor<8x64x128xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input, Mtc_TokenTensor:$positions,
                   Optional<RankedTensorOf<[F32]>>:$weights);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $positions (`,` $weights^)? attr-dict
    `:` type($input) `,` type($positions) (`,` type($weights)^)? `->` type($result)
  }];
  let hasVerifier = 1;
}

def Mtc_MoeUnpermuteGradOp : Mtc_Op<"moe_unpermute_grad", [Mtc_PartitionOp, Pure, Mtc_CostOp, Mtc_KernelOp,
    AllTypesMatch<["input", "dinput"]>, AllTypesMatch<["weights", "dweights"]>]> {
  let summary = "Gradients of a weighted mtc.moe_unpermute.";
  let description = [{
    `dinput[positions[t, j]] = weights[t, j] * dout[t]` (each permuted row
    belongs to exactly one assignment) and `dweights[t, j] = dout[t] .
    input[positions[t, j]]`; a dropped assignment (position -1) gets
    `dweights = 0`, and rows no assignment owns (past the counts' total)
    are left as they are: no grouped op reads them.

    ```mlir
    %dh, %dw = mtc.moe_unpermute_grad %h, %pos, %w, %dy
        : tensor<1024x128xf32>, tensor<8x64x2xi32>, tensor<8x64x2xf32>, tensor<8x64x128xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input, Mtc_TokenTensor:$positions,
                   RankedTensorOf<[F32]>:$weights, Mtc_FloatTensor:$dout);
  let results = (outs Mtc_FloatTensor:$dinput, RankedTensorOf<[F32]>:$dweights);
  let assemblyFormat = [{
    $input `,` $positions `,` $weights `,` $dout attr-dict
    `:` type($input) `,` type($positions) `,` type($weights) `,` type($dout)
  }];
  let hasVerifier = 1;
}

def Mtc_GroupedMatmulOp : Mtc_Op<"grouped_matmul", [Mtc_PartitionOp, Pure, Mtc_GradientOp, Mtc_CostOp,
                                                   Mtc_KernelOp, AttrSizedOperandSegments]> {
  let summary = "One matrix product per expert over its rows (grouped GEMM).";
  let description = [{
    lhs (N, K) holds E groups of consecutive rows, `counts` (E) i32 rows
    each (summing to N); rhs (E, K, Nout), or (E, Nout, K) with
    `transpose_b` (an expert's nn.Linear weight (out, in)); bias (E, Nout).
    Rows of group e: `result = lhs · op(rhs[e]) + bias[e]`; result (N,
    Nout). Its FLOPs are 2 N K Nout whatever the counts: the active
    parameters' work.

    With `bias_rank` (an index: a rank along a grid axis, from
    shard.process_multi_index), the bias is added only where it is 0. A
    row-parallel grouped GEMM (K split over tp, mtc-partition) gives each
    rank a partial sum of the result; the bias is added on one rank, once.

    ```mlir
    %h = mtc.grouped_matmul %xp, %w1, %counts, %b1 transpose_b
        : tensor<1024x128xf32>, tensor<8x512x128xf32>, tensor<8xi32>, tensor<8x512xf32>
        -> tensor<1024x512xf32>
    %r = shard.process_multi_index on @mtc_grid axes = [2] : index
    %o = mtc.grouped_matmul %h, %w2, %counts, %b2 bias_rank %r transpose_b
        : tensor<1024x256xf32>, tensor<8x128x256xf32>, tensor<8xi32>, tensor<8x128xf32>
        -> tensor<1024x128xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$lhs, Mtc_FloatTensor:$rhs,
                   Mtc_TokenTensor:$counts, Optional<Mtc_FloatTensor>:$bias,
                   Optional<Index>:$bias_rank, UnitAttr:$transpose_b);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $lhs `,` $rhs `,` $counts (`,` $bias^)? (`bias_rank` $bias_rank^)?
    (`transpose_b` $transpose_b^)? attr-dict
    `:` type($lhs) `,` type($rhs) `,` type($counts) (`,` type($bias)^)? `->` type($result)
  }];
  let hasVerifier = 1;
}

def Mtc_GroupedMatmulWgradOp : Mtc_Op<"grouped_matmul_wgrad", [Mtc_PartitionOp, Pure, Mtc_CostOp,
                                                             Mtc_KernelOp]> {
  let summary = "Per-group lhs^T · rhs: the weight gradient of grouped_matmul.";
  let description = [{
    lhs (N, P), rhs (N, Q), grouped by `counts` (E); `result[e] =
    lhs_e^T · rhs_e`, (E, P, Q) (zero for an expert with no rows).

    ```mlir
    %dw1 = mtc.grouped_matmul_wgrad %dh, %xp, %counts
        : tensor<1024x512xf32>, tensor<1024x128xf32>, tensor<8xi32> -> tensor<8x512x128xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$lhs, Mtc_FloatTensor:$rhs,
                   Mtc_TokenTensor:$counts);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $lhs `,` $rhs `,` $counts attr-dict
    `:` type($lhs) `,` type($rhs) `,` type($counts) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Mtc_GroupedBiasGradOp : Mtc_Op<"grouped_bias_grad", [Mtc_PartitionOp, Pure, Mtc_CostOp,
                                                       Mtc_KernelOp]> {
  let summary = "Per-group column sums: the bias gradient of grouped_matmul.";
  let description = [{
    dout (N, M) grouped by `counts` (E); `result[e] = sum of group e's rows`,
    (E, M).

    ```mlir
    %db1 = mtc.grouped_bias_grad %dh, %counts
        : tensor<1024x512xf32>, tensor<8xi32> -> tensor<8x512xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$dout, Mtc_TokenTensor:$counts);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $dout `,` $counts attr-dict `:` type($dout) `,` type($counts) `->` type($result)
  }];
  let hasVerifier = 1;
}

// Aux-loss-free load balancing (DeepSeek-V3's expert bias; docs/moe.md):
// each microbatch's loads are added into the bias's slot of the gradient
// buffer, and after the step the bias moves by rate * sign(mean load -
// load). Both address state by name, like mtc.accumulate_grad and
// mtc.adamw: the code generators place that state, so they print these ops
// themselves (the host kernels moe_accumulate_load and
// moe_update_expert_bias) rather than from a kernel-table row.

def Mtc_MoeAccumulateLoadOp : Mtc_Op<"moe_accumulate_load", [Mtc_PartitionOp,
    MemoryEffects<[MemWrite]>, Mtc_CostOp]> {
  let summary = "Adds a microbatch's expert loads into an expert bias's accumulator.";
  let description = [{
    `counts` (E) i32 are the rows each expert got in this microbatch
    (mtc.moe_permute's, after any token dropping: Megatron's
    `local_tokens_per_expert += routing_map.sum(0)`). They are added into
    the slot of the gradient buffer of `param`, a `not_trained` (E) f32
    parameter (the router's expert bias), which the runtime zeroes before
    the step's first microbatch. `update_rate` is the rate at which
    mtc.moe_update_expert_bias moves the bias after the step; mtc-autodiff
    builds that update from this op. Training steps only: mtc-autodiff
    moves it out of @forward (evaluation does not count, as Megatron only
    counts with gradients enabled), and recomputation never repeats it.

    ```mlir
    mtc.moe_accumulate_load %counts into "layers.0.mlp.router.expert_bias"
        update_rate = 1.000000e-03 : tensor<8xi32>
    ```
  }];
  let arguments = (ins Mtc_TokenTensor:$counts, StrAttr:$param,
                   F64Attr:$update_rate);
  let assemblyFormat = [{
    $counts `into` $param `update_rate` `=` $update_rate attr-dict `:` type($counts)
  }];
  let hasVerifier = 1;
}

def Mtc_MoeUpdateExpertBiasOp : Mtc_Op<"moe_update_expert_bias", [
    MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "Moves an expert bias toward balanced loads (after the step).";
  let description = [{
    Reads the step's loads L (E) from `param`'s slot of the gradient buffer
    (what mtc.moe_accumulate_load added, summed over the data-parallel
    ranks by the mtc.reduce_gradients {divisor = 1} before it), then
    `bias_e += rate * sign(mean_f L_f - L_e)` (sign 0 at equality) and
    zeroes the slot, so the gradient norm and reductions that follow see
    no gradient there. Megatron's `get_updated_expert_bias`.

    ```mlir
    mtc.moe_update_expert_bias "layers.0.mlp.router.expert_bias" rate = 1.000000e-03
    ```
  }];
  let arguments = (ins StrAttr:$param, F64Attr:$rate);
  let assemblyFormat = "$param `rate` `=` $rate attr-dict";
  let hasVerifier = 1;
}

// Expert parallelism (mtc-shard-expert-parallel; docs/moe.md). The experts
// of a layer are split over the `ep` axis of @mtc_expert_grid; these ops move
// the permuted rows to the rank holding their expert and back. They are
// inserted into the training program after autodiff, so they have no
// gradient rule: the pass rewrites the forward and backward grouped GEMMs
// alike (a dispatch's gradient is a combine and the other way round).

def Mtc_MoeExchangeCountsOp : Mtc_Op<"moe_exchange_counts", [
    MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "Tells each expert-parallel rank how many rows it will receive.";
  let description = [{
    counts (E) i32: this rank's rows per expert (mtc.moe_permute's). With
    ep ranks along `grid_axes` of `grid` and L = E / ep local experts (rank
    j holds experts j*L .. j*L+L-1), `received` (ep, L) i32 is, for each
    member s, how many rows s sends for each of this rank's experts, and
    `local_counts` (L) i32 their sum over s: the rows per local expert
    after the dispatch. One all-gather of the counts.

    ```mlir
    %recv, %local = mtc.moe_exchange_counts %counts on @mtc_expert_grid grid_axes = [2]
        : tensor<8xi32> -> tensor<2x4xi32>, tensor<4xi32>
    ```
  }];
  let arguments = (ins Mtc_TokenTensor:$counts, FlatSymbolRefAttr:$grid,
                   DenseI16ArrayAttr:$grid_axes);
  let results = (outs Mtc_TokenTensor:$received, Mtc_TokenTensor:$local_counts);
  let assemblyFormat = [{
    $counts `on` $grid `grid_axes` `=` $grid_axes attr-dict
    `:` type($counts) `->` type($received) `,` type($local_counts)
  }];
  let hasVerifier = 1;
}

def Mtc_MoeDispatchOp : Mtc_Op<"moe_dispatch", [
    MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "Sends each permuted row to the rank that holds its expert (all-to-all).";
  let description = [{
    input (N, D): this rank's rows grouped by expert (all E experts, as
    mtc.moe_permute writes them); `counts` (E) and `received` (ep, L) from
    mtc.moe_exchange_counts. result (ep * N, D): the rows every member sent
    for this rank's L experts, local expert by local expert, in member
    order within an expert (so `local_counts` groups them for the grouped
    GEMMs); the rows past their total are zero. ep * N rows is the worst
    case of dropless routing (every member's every row to this rank).

    ```mlir
    %xr = mtc.moe_dispatch %xp, %counts, %recv on @mtc_expert_grid grid_axes = [2]
        : tensor<256x64xf32>, tensor<8xi32>, tensor<2x4xi32> -> tensor<512x64xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input, Mtc_TokenTensor:$counts,
                   Mtc_TokenTensor:$received, FlatSymbolRefAttr:$grid,
                   DenseI16ArrayAttr:$grid_axes);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $counts `,` $received `on` $grid `grid_axes` `=` $grid_axes attr-dict
    `:` type($input) `,` type($counts) `,` type($received) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Mtc_MoeCombineOp : Mtc_Op<"moe_combine", [
    MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "Returns expert rows to the ranks their tokens came from (all-to-all).";
  let description = [{
    The inverse of mtc.moe_dispatch with the same `counts` and `received`:
    input (ep * N, D) in the dispatch's layout, result (N, D) this rank's
    rows back in mtc.moe_permute's order.

    ```mlir
    %o = mtc.moe_combine %hr, %counts, %recv on @mtc_expert_grid grid_axes = [2]
        : tensor<512x64xf32>, tensor<8xi32>, tensor<2x4xi32> -> tensor<256x64xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$input, Mtc_TokenTensor:$counts,
                   Mtc_TokenTensor:$received, FlatSymbolRefAttr:$grid,
                   DenseI16ArrayAttr:$grid_axes);
  let results = (outs Mtc_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $counts `,` $received `on` $grid `grid_axes` `=` $grid_axes attr-dict
    `:` type($input) `,` type($counts) `,` type($received) `->` type($result)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Training step
//===----------------------------------------------------------------------===//

def Mtc_AccumulateGradOp : Mtc_Op<"accumulate_grad", [Mtc_PartitionOp, 
    MemoryEffects<[MemWrite]>, Mtc_CostOp]> {
  let summary = "Adds a gradient into the named parameter's gradient buffer.";
  let description = [{
    The gradient buffers persist across the microbatches of one optimizer
    step; the runtime zeroes them before the first microbatch.

    ```mlir
    mtc.accumulate_grad %dw into "layers.0.mlp.fc1.weight" : tensor<512x128xf32>
    ```
  }];
  let arguments = (ins Mtc_FloatTensor:$grad, StrAttr:$param);
  let assemblyFormat = "$grad `into` $param attr-dict `:` type($grad)";
}

def Mtc_GradNormOp : Mtc_Op<"grad_norm", [Mtc_PartitionOp, MemoryEffects<[MemRead]>]> {
  let summary = "Global L2 norm of the accumulated gradients.";
  let description = [{
    `sqrt(sum over params of |grad * grad_scale|^2)`; `grad_scale` is
    1/microbatches, which turns the sum of microbatch-mean gradients into
    the gradient of the global-batch mean.

    ```mlir
    %norm = mtc.grad_norm grad_scale = 2.500000e-01 : f32
    ```
  }];
  let arguments = (ins F64Attr:$grad_scale);
  let results = (outs F32:$norm);
  let assemblyFormat = "`grad_scale` `=` $grad_scale attr-dict `:` type($norm)";
}

def Mtc_AdamWOp : Mtc_Op<"adamw", [MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "AdamW update of one parameter group.";
  let description = [{
    For every parameter in `params` (checkpoint names): the gradient is
    scaled by `grad_scale` and, when `max_grad_norm` > 0 and `norm` exceeds
    it, by `max_grad_norm / norm` (global clipping); then the moments and the
    parameter are updated as torch.optim.AdamW does, with this group's
    `weight_decay`, learning rate `lr` and bias correction for step `step`
    (counted from 1).

    ```mlir
    mtc.adamw %lr, %step, %norm params = ["wte", "layers.0.mlp.fc1.weight"]
      weight_decay = 1.000000e-01 beta1 = 9.000000e-01 beta2 = 9.500000e-01
      eps = 1.000000e-08 max_grad_norm = 1.000000e+00 grad_scale = 2.500000e-01
    ```
  }];
  let arguments = (ins F32:$lr, I64:$step, F32:$norm, StrArrayAttr:$params,
                   F64Attr:$weight_decay, F64Attr:$beta1, F64Attr:$beta2,
                   F64Attr:$eps, F64Attr:$max_grad_norm, F64Attr:$grad_scale);
  let assemblyFormat = [{
    $lr `,` $step `,` $norm `params` `=` $params `weight_decay` `=` $weight_decay
    `beta1` `=` $beta1 `beta2` `=` $beta2 `eps` `=` $eps
    `max_grad_norm` `=` $max_grad_norm `grad_scale` `=` $grad_scale attr-dict
  }];
  let hasVerifier = 1;
}

def Mtc_ReduceGradientsOp : Mtc_Op<"reduce_gradients", [
    MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "Averages every parameter gradient over grid axes.";
  let description = [{
    All-reduces the accumulated gradient buffers over the `grid_axes` of
    `grid` (sum, then divided by the ranks on those axes): data parallelism's
    gradient synchronization. Each rank's gradients are of its own batch's
    mean loss, so their average is the gradient of the global batch's mean.

    With `shard_optimizer_state` (Megatron's distributed optimizer, ZeRO
    stage 1) the gradients are reduce-scattered instead: the flat gradient
    buffer (all parameters in program order, padded to a multiple of the
    group size) is cut into equal contiguous shards, and the member with
    index r along the axes receives the average of shard r only. The
    `mtc.grad_norm` and `mtc.adamw` that follow then read and update that
    shard alone (AdamW's moments exist only for it), and
    `mtc.all_gather_params` hands every member the updated parameters.

    With `params` it averages only the named parameters' gradients; without
    it, every parameter that no other mtc.reduce_gradients of the function
    names. Expert parallelism uses it: the experts' gradients are averaged
    over the expert-data-parallel axis of @mtc_expert_grid, every other
    gradient over the whole dp axis. `divisor` replaces the number of
    ranks on the axes as the divisor: the experts' gradients are summed over
    dp / ep ranks and divided by dp, since each rank's sum already holds the
    tokens of its ep group. With `shard_optimizer_state` as well (the
    distributed optimizer with expert parallelism) the named parameters
    are a region of their own after the others', sharded over this op's
    axes (the dense region over dp, the experts' over edp), and each
    region has its own mtc.all_gather_params. `divisor = 1` sums: the MoE
    expert biases' loads, which a `not_trained` parameter's slot holds
    (mtc.moe_accumulate_load), are summed over dp before their update.

    ```mlir
    mtc.reduce_gradients on @mtc_grid grid_axes = [1]
    mtc.reduce_gradients on @mtc_grid grid_axes = [1] shard_optimizer_state
    mtc.reduce_gradients on @mtc_expert_grid grid_axes = [1]
        {divisor = 4 : i64, params = ["layers.0.mlp.experts.fc1.weight"]}
    ```
  }];
  let arguments = (ins FlatSymbolRefAttr:$grid, DenseI16ArrayAttr:$grid_axes,
                   UnitAttr:$shard_optimizer_state,
                   OptionalAttr<StrArrayAttr>:$params,
                   OptionalAttr<I64Attr>:$divisor);
  let assemblyFormat = [{
    `on` $grid `grid_axes` `=` $grid_axes
    (`shard_optimizer_state` $shard_optimizer_state^)? attr-dict
  }];
  let hasVerifier = 1;
}

def Mtc_AllGatherParamsOp : Mtc_Op<"all_gather_params", [
    MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "Gathers the parameter shards a sharded optimizer updated.";
  let description = [{
    The end of a distributed-optimizer step: each member of the group along
    `grid_axes` updated the shard of the flat parameter buffer that
    `mtc.reduce_gradients ... shard_optimizer_state` gave it; after this op
    every member holds every shard (an all-gather of the shards in index
    order). Only valid in a function whose `mtc.reduce_gradients` shards
    the optimizer state over the same grid and axes; it gathers that
    reduction's region.

    ```mlir
    mtc.all_gather_params on @mtc_grid grid_axes = [1]
    ```
  }];
  let arguments = (ins FlatSymbolRefAttr:$grid, DenseI16ArrayAttr:$grid_axes);
  let assemblyFormat = "`on` $grid `grid_axes` `=` $grid_axes attr-dict";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Pipeline parallelism: the ops of a rank's schedule (mtc-pipeline-schedule)
//===----------------------------------------------------------------------===//

def Mtc_MicrobatchOp : Mtc_Op<"microbatch", [Pure]> {
  let summary = "One microbatch of the step's batch.";
  let description = [{
    A pipeline step takes every microbatch of the optimizer step at once,
    (M, B, S) token ids; `mtc.microbatch` is microbatch `index` of it, a
    (B, S) view.

    ```mlir
    %t3 = mtc.microbatch %tokens[3] : tensor<8x4x64xi32> -> tensor<4x64xi32>
    ```
  }];
  let arguments = (ins Mtc_TokenTensor:$batch, I64Attr:$index);
  let results = (outs Mtc_TokenTensor:$result);
  let assemblyFormat =
      "$batch `[` $index `]` attr-dict `:` type($batch) `->` type($result)";
  let hasVerifier = 1;
}

def Mtc_P2POp : Mtc_Op<"p2p", [MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "A group of pipeline sends and receives, posted together.";
  let description = [{
    Point-to-point transfers along the pipeline axis of @mtc_grid that start
    together and complete together (NCCL group semantics; Megatron's batched
    isend/irecv, e.g. send_forward_recv_backward). `transfers` lists them in
    order; each is a dictionary:
      kind = "send" | "recv", payload = "activation" | "gradient",
      microbatch, chunk (the chunk that sent it), index (which tensor of
      that chunk's boundary; most have one), peer (pipeline rank).
    The sends take the operands in order, the receives give the results in
    order. mtc-verify-pipeline proves that every rank's transfers meet their
    peers' in an order that cannot deadlock.

    ```mlir
    %g = mtc.p2p(%act) transfers = [
        {kind = "send", payload = "activation", microbatch = 4 : i64, chunk = 0 : i64, index = 0 : i64, peer = 1 : i64},
        {kind = "recv", payload = "gradient", microbatch = 1 : i64, chunk = 1 : i64, index = 0 : i64, peer = 1 : i64} ]
        : (tensor<4x64x128xf32>) -> tensor<4x64x128xf32>
    ```
  }];
  let arguments = (ins Variadic<Mtc_FloatTensor>:$sends, ArrayAttr:$transfers);
  let results = (outs Variadic<Mtc_FloatTensor>:$recvs);
  let assemblyFormat = [{
    `(` $sends `)` `transfers` `=` $transfers attr-dict `:`
    functional-type($sends, $recvs)
  }];
  let hasVerifier = 1;
}

def Mtc_PipelineLossOp : Mtc_Op<"pipeline_loss", [MemoryEffects<[MemWrite]>]> {
  let summary = "Records the loss of one microbatch of a pipeline step.";
  let description = [{
    The last pipeline chunk computes each microbatch's mean loss; the step
    records it for the runtime (its sum over the microbatches, divided by
    their number, is the step's loss; ranks without the loss record none).

    ```mlir
    mtc.pipeline_loss %loss microbatch = 3 : tensor<f32>
    ```
  }];
  let arguments = (ins Mtc_ScalarF32:$loss, I64Attr:$microbatch);
  let assemblyFormat = "$loss `microbatch` `=` $microbatch attr-dict `:` type($loss)";
}

def Mtc_SumTiedGradientsOp : Mtc_Op<"sum_tied_gradients", [
    MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "Sums a parameter's gradient over the pipeline ranks that hold it.";
  let description = [{
    A parameter used by chunks on several pipeline ranks (the word
    embedding tied to the LM head: first and last rank) has a copy on each;
    their gradients are summed over those `stages` before the optimizer, so
    the copies stay equal (Megatron's embedding group). Every pipeline rank
    runs the op; one that does not hold the parameter contributes zeros of
    its `elements` (the local count, after tensor parallelism).

    ```mlir
    mtc.sum_tied_gradients "embedding.word_embeddings.weight" elements = 32768 stages = [0, 3]
    ```
  }];
  let arguments = (ins StrAttr:$param, I64Attr:$elements,
                   DenseI64ArrayAttr:$stages);
  let assemblyFormat =
      "$param `elements` `=` $elements `stages` `=` $stages attr-dict";
}

#endif // MTC_OPS_TD
