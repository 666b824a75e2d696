// Tests that Megatron's tensor-parallel plan splits an MoE layer's experts
// like the dense MLP (expert tp = tp) while routing stays whole: fc1 (and
// its bias) column-parallel on dimension 1 of the stacked (E, out, in)
// weights, fc2 row-parallel on dimension 2 with its bias whole and added on
// tp rank 0 only (bias_rank); the router, permute and unpermute on every
// token of every rank; the combine's partial sums reduced once (all_reduce,
// or reduce_scatter with sp, where the tokens and the router's logits are
// gathered first); and in the backward pass the routing weights' partial
// gradient summed before mtc.moe_router_grad.
// RUN: mtc-opt %s --mtc-autodiff --mtc-shard-tensor-parallel --mtc-partition \
// RUN:   | FileCheck %s --check-prefix=TP
// RUN: sed 's/tp = 2 : i64}/tp = 2 : i64, sp = true}/' %s \
// RUN:   | mtc-opt --mtc-autodiff --mtc-shard-tensor-parallel --mtc-shard-sequence-parallel --mtc-partition \
// RUN:   | FileCheck %s --check-prefix=SP
// RUN: mtc-opt %s --mtc-autodiff --mtc-shard-tensor-parallel --mtc-partition | mtc-opt > /dev/null

// TP-LABEL: func.func @train_step
// The router: whole parameter, whole logits, routed alike on every rank.
// TP: %[[X:.*]] = mtc.layer_norm {{.*}} : tensor<2x4x8xf32>
// TP: mtc.param "mlp.router.weight" init = normal : tensor<4x8xf32>
// TP: %[[L:.*]] = mtc.matmul %[[X]], %{{.*}} transpose_b : tensor<2x4x8xf32>, tensor<4x8xf32> -> tensor<2x4x4xf32>
// TP-NEXT: %[[P:.*]], %[[I:.*]], %[[W:.*]], %{{.*}} = mtc.moe_router %[[L]] {{.*}} : tensor<2x4x4xf32> -> tensor<2x4x4xf32>, tensor<2x4x2xi32>, tensor<2x4x2xf32>
// TP-NEXT: %[[XP:.*]], %[[POS:.*]], %[[C:.*]] = mtc.moe_permute %[[X]], %[[I]] num_experts = 4 : tensor<2x4x8xf32>, tensor<2x4x2xi32> -> tensor<16x8xf32>, tensor<4xi32>
// Column-parallel fc1: half of every expert's hidden layer; no collective
// up to the combine.
// TP-NEXT: %[[W1:.*]] = mtc.param "mlp.experts.fc1.weight" init = normal {mtc.shard = {axis = 2 : i64, dim = 1 : i64, global_shape = array<i64: 4, 16, 8>}} : tensor<4x8x8xf32>
// TP-NEXT: %[[B1:.*]] = mtc.param "mlp.experts.fc1.bias" init = zeros {mtc.shard = {axis = 2 : i64, dim = 1 : i64, global_shape = array<i64: 4, 16>}} : tensor<4x8xf32>
// TP-NEXT: %[[H:.*]] = mtc.grouped_matmul %[[XP]], %[[W1]], %[[C]], %[[B1]] transpose_b : {{.*}} -> tensor<16x8xf32>
// TP-NEXT: %[[A:.*]] = mtc.gelu %[[H]]
// Row-parallel fc2: partial sums, the whole bias on rank 0 only.
// TP-NEXT: %[[W2:.*]] = mtc.param "mlp.experts.fc2.weight" init = normal {mtc.shard = {axis = 2 : i64, dim = 2 : i64, global_shape = array<i64: 4, 8, 16>}} : tensor<4x8x8xf32>
// TP-NEXT: %[[B2:.*]] = mtc.param "mlp.experts.fc2.bias" init = zeros : tensor<4x8xf32>
// TP-NEXT: %[[RANK:.*]] = shard.process_multi_index on @mtc_grid axes = [2] : index
// TP-NEXT: %[[O:.*]] = mtc.grouped_matmul %[[A]], %[[W2]], %[[C]], %[[B2]] bias_rank %[[RANK]] transpose_b : tensor<16x8xf32>, tensor<4x8x8xf32>, tensor<4xi32>, tensor<4x8xf32> -> tensor<16x8xf32>
// The combine of partial sums is a partial sum, reduced once with the
// residual (the embedding's partial sum).
// TP-NEXT: %[[Y:.*]] = mtc.moe_unpermute %[[O]], %[[POS]], %[[W]] : tensor<16x8xf32>, tensor<2x4x2xi32>, tensor<2x4x2xf32> -> tensor<2x4x8xf32>
// TP-NEXT: %[[S:.*]] = mtc.add %{{.*}}, %[[Y]]
// TP-NOT: shard.{{all|reduce}}
// TP: shard.all_reduce %[[S]] on @mtc_grid grid_axes = [2] : tensor<2x4x8xf32>
// Backward: dweights are partial sums (dout . the partial expert outputs).
// TP: %[[DY:.*]], %{{.*}}, %{{.*}} = mtc.layer_norm_grad
// TP: %[[DH:.*]], %[[DW:.*]] = mtc.moe_unpermute_grad %[[O]], %[[POS]], %[[W]], %[[DY]] : tensor<16x8xf32>, tensor<2x4x2xi32>, tensor<2x4x2xf32>, tensor<2x4x8xf32>
// TP-NEXT: %[[DA:.*]] = mtc.grouped_matmul %[[DH]], %[[W2]], %[[C]] : tensor<16x8xf32>, tensor<4x8x8xf32>, tensor<4xi32> -> tensor<16x8xf32>
// TP-NEXT: %[[DW2:.*]] = mtc.grouped_matmul_wgrad %[[DH]], %[[A]], %[[C]] : {{.*}} -> tensor<4x8x8xf32>
// TP-NEXT: %[[DB2:.*]] = mtc.grouped_bias_grad %[[DH]], %[[C]] : tensor<16x8xf32>, tensor<4xi32> -> tensor<4x8xf32>
// TP-NEXT: mtc.accumulate_grad %[[DB2]] into "mlp.experts.fc2.bias" : tensor<4x8xf32>
// TP-NEXT: mtc.accumulate_grad %[[DW2]] into "mlp.experts.fc2.weight" : tensor<4x8x8xf32>
// TP-NEXT: %[[DHH:.*]] = mtc.gelu_grad %[[H]], %[[DA]]
// TP-NEXT: %[[DXP:.*]] = mtc.grouped_matmul %[[DHH]], %[[W1]], %[[C]] : tensor<16x8xf32>, tensor<4x8x8xf32>, tensor<4xi32> -> tensor<16x8xf32>
// TP-NEXT: %[[DW1:.*]] = mtc.grouped_matmul_wgrad %[[DHH]], %[[XP]], %[[C]] : {{.*}} -> tensor<4x8x8xf32>
// TP-NEXT: %[[DB1:.*]] = mtc.grouped_bias_grad %[[DHH]], %[[C]] : tensor<16x8xf32>, tensor<4xi32> -> tensor<4x8xf32>
// TP-NEXT: mtc.accumulate_grad %[[DB1]] into "mlp.experts.fc1.bias" : tensor<4x8xf32>
// TP-NEXT: mtc.accumulate_grad %[[DW1]] into "mlp.experts.fc1.weight" : tensor<4x8x8xf32>
// TP-NEXT: %[[DX:.*]] = mtc.moe_unpermute %[[DXP]], %[[POS]] : tensor<16x8xf32>, tensor<2x4x2xi32> -> tensor<2x4x8xf32>
// TP-NEXT: %[[DWS:.*]] = shard.all_reduce %[[DW]] on @mtc_grid grid_axes = [2] : tensor<2x4x2xf32>
// TP-NEXT: mtc.moe_router_grad %[[L]], %[[P]], %[[I]], %[[DWS]], %{{.*}} top_k = 2
// TP: shard.all_reduce %[[DX]] on @mtc_grid grid_axes = [2] : tensor<2x4x8xf32>
// TP-LABEL: func.func @optimizer_step
// TP: mtc.grad_norm {{.*}}tp_split_params = ["mlp.experts.fc1.bias", "mlp.experts.fc1.weight", "mlp.experts.fc2.weight", "wte"]

// SP-LABEL: func.func @train_step
// Sequence shards: the logits and the tokens are gathered for routing.
// SP: %[[X:.*]] = mtc.layer_norm {{.*}} : tensor<2x2x8xf32>
// SP: %[[L:.*]] = mtc.matmul %[[X]], %{{.*}} transpose_b : tensor<2x2x8xf32>, tensor<4x8xf32> -> tensor<2x2x4xf32>
// SP-NEXT: %[[LG:.*]] = shard.all_gather %[[L]] on @mtc_grid grid_axes = [2] gather_axis = 1 : tensor<2x2x4xf32> -> tensor<2x4x4xf32>
// SP-NEXT: %{{.*}}, %[[I:.*]], %[[W:.*]], %{{.*}} = mtc.moe_router %[[LG]]
// SP-NEXT: %[[XG:.*]] = shard.all_gather %[[X]] on @mtc_grid grid_axes = [2] gather_axis = 1 : tensor<2x2x8xf32> -> tensor<2x4x8xf32>
// SP-NEXT: %[[XP:.*]], %[[POS:.*]], %[[C:.*]] = mtc.moe_permute %[[XG]], %[[I]]
// SP-NOT: shard.{{all|reduce}}
// SP: %[[O:.*]] = mtc.grouped_matmul %{{.*}}, %{{.*}}, %[[C]], %{{.*}} bias_rank %{{.*}} transpose_b
// SP-NEXT: %[[Y:.*]] = mtc.moe_unpermute %[[O]], %[[POS]], %[[W]]
// SP-NEXT: %[[S:.*]] = mtc.add %{{.*}}, %[[Y]]
// SP-NOT: shard.{{all|reduce}}
// SP: shard.reduce_scatter %[[S]] on @mtc_grid grid_axes = [2] scatter_axis = 1 : tensor<2x4x8xf32> -> tensor<2x2x8xf32>
// Backward: the combine's output gradient gathered, the permute's
// gradient reduce-scattered.
// SP: %[[DN:.*]], %{{.*}}, %{{.*}} = mtc.layer_norm_grad
// SP: %[[DY:.*]] = shard.all_gather %[[DN]] {{.*}} gather_axis = 1 : tensor<2x2x8xf32> -> tensor<2x4x8xf32>
// SP-NEXT: %{{.*}}, %[[DW:.*]] = mtc.moe_unpermute_grad %[[O]], %[[POS]], %[[W]], %[[DY]]
// SP: %[[DX:.*]] = mtc.moe_unpermute %{{.*}}, %[[POS]] : tensor<16x8xf32>, tensor<2x4x2xi32> -> tensor<2x4x8xf32>
// SP-NEXT: %[[DWS:.*]] = shard.all_reduce %[[DW]]
// SP-NEXT: mtc.moe_router_grad %[[LG]], %{{.*}}, %[[I]], %[[DWS]]
// SP: shard.reduce_scatter %[[DX]] on @mtc_grid grid_axes = [2] scatter_axis = 1

module attributes {mtc.parallel = {tp = 2 : i64},
                   mtc.training = {num_microbatches = 1 : i64}} {
  func.func @forward(%tok: tensor<2x4xi32>, %tgt: tensor<2x4xi32>) -> tensor<f32> {
    %wte = mtc.param "wte" init = normal : tensor<16x8xf32>
    %x0 = mtc.embedding %tok, %wte : tensor<2x4xi32>, tensor<16x8xf32> -> tensor<2x4x8xf32>
    %g = mtc.param "norm.weight" init = ones : tensor<8xf32>
    %be = mtc.param "norm.bias" init = zeros : tensor<8xf32>
    %x = mtc.layer_norm %x0, %g, %be eps = 1.0e-5 : tensor<2x4x8xf32>, tensor<8xf32>, tensor<8xf32>
    %wr = mtc.param "mlp.router.weight" init = normal : tensor<4x8xf32>
    %logits = mtc.matmul %x, %wr transpose_b : tensor<2x4x8xf32>, tensor<4x8xf32> -> tensor<2x4x4xf32>
    %p, %i, %w, %aux = mtc.moe_router %logits top_k = 2 router = softmax_topk
        scale = 1.0 aux_coeff = 1.0e-2 z_coeff = 1.0e-3
        : tensor<2x4x4xf32> -> tensor<2x4x4xf32>, tensor<2x4x2xi32>, tensor<2x4x2xf32>
    %xp, %pos, %c = mtc.moe_permute %x, %i num_experts = 4
        : tensor<2x4x8xf32>, tensor<2x4x2xi32> -> tensor<16x8xf32>, tensor<4xi32>
    %w1 = mtc.param "mlp.experts.fc1.weight" init = normal : tensor<4x16x8xf32>
    %b1 = mtc.param "mlp.experts.fc1.bias" init = zeros : tensor<4x16xf32>
    %h = mtc.grouped_matmul %xp, %w1, %c, %b1 transpose_b
        : tensor<16x8xf32>, tensor<4x16x8xf32>, tensor<4xi32>, tensor<4x16xf32> -> tensor<16x16xf32>
    %a = mtc.gelu %h approximate = tanh : tensor<16x16xf32>
    %w2 = mtc.param "mlp.experts.fc2.weight" init = normal : tensor<4x8x16xf32>
    %b2 = mtc.param "mlp.experts.fc2.bias" init = zeros : tensor<4x8xf32>
    %o = mtc.grouped_matmul %a, %w2, %c, %b2 transpose_b
        : tensor<16x16xf32>, tensor<4x8x16xf32>, tensor<4xi32>, tensor<4x8xf32> -> tensor<16x8xf32>
    %y = mtc.moe_unpermute %o, %pos, %w
        : tensor<16x8xf32>, tensor<2x4x2xi32>, tensor<2x4x2xf32> -> tensor<2x4x8xf32>
    %r = mtc.add %x0, %y : tensor<2x4x8xf32>, tensor<2x4x8xf32>
    %g2 = mtc.param "final_norm.weight" init = ones : tensor<8xf32>
    %be2 = mtc.param "final_norm.bias" init = zeros : tensor<8xf32>
    %rn = mtc.layer_norm %r, %g2, %be2 eps = 1.0e-5 : tensor<2x4x8xf32>, tensor<8xf32>, tensor<8xf32>
    %out = mtc.matmul %rn, %wte transpose_b : tensor<2x4x8xf32>, tensor<16x8xf32> -> tensor<2x4x16xf32>
    %ce = mtc.cross_entropy %out, %tgt ignore_index = -1 : tensor<2x4x16xf32>, tensor<2x4xi32>
    %loss = mtc.add %ce, %aux : tensor<f32>, tensor<f32>
    return %loss : tensor<f32>
  }
}
