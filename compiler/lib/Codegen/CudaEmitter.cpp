//===- CudaEmitter.cpp - training program -> CUDA C++ ----------------------===//
//
// Lowers the training program to calls of the CUDA kernel library
// (runtime/include/mtc/rt/cuda_kernels.h) with Megatron's mixed precision:
// bf16 activations and compute copies of the weights, fp32 master weights,
// gradients and AdamW state, fp32 statistics and loss.
//
// Steps:
//  1. Gradient sinks. A parameter gradient that only flows into
//     `mtc.accumulate_grad` (possibly through `mtc.add`s of other such
//     gradients, e.g. a tied embedding) is never materialized: its producer
//     (a transposed matmul, embedding_grad, reduce_leading, a norm's
//     gamma/beta gradient) accumulates it straight into the fp32 gradient
//     buffer, and the adds and accumulate_grad ops become no-ops.
//  2. Fusions, each executed at the last op of its group (ExecutionHints
//     keep the group's inputs alive until then):
//       embedding + add of the (S, D) position table -> one embedding kernel;
//       matmul + tanh GELU -> cuBLASLt GELU epilogue keeping the
//         pre-activation for gelu_grad;
//       cross_entropy + cross_entropy_grad -> one fused kernel writing the
//         logits' gradient in place over the logits.
//  3. Buffer planning in 2-byte units (bf16 tensors; f32 tensors take two).
//  4. One kernel call per remaining op, each preceded by set_current_op with
//     the op's IR location, so a CUDA error names the op.
//  5. @optimizer_step: sum of squares of the gradients on the device, then
//     one multi-tensor AdamW launch over every parameter group (groups are
//     a per-tensor weight-decay flag), writing the bf16 compute copy.
//
//===----------------------------------------------------------------------===//
#include "mtc/Codegen/Emitter.h"

#include "EmitterCommon.h"
#include "mtc/Codegen/BufferPlan.h"
#include "mtc/Transforms/Grid.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/FormatVariadic.h"

using namespace mlir;
using namespace mtc::codegen;

namespace {

/// Mixed precision is applied here, at emission: every float activation and
/// activation gradient is stored in bf16, except the values kept in fp32 by
/// design: attention's log-sum-exp and the loss. (Parameter gradients never
/// reach the arena: they are accumulated in fp32, see gradient sinks.)
bool storedF32(Value v) {
  if (auto a = v.getDefiningOp<mtc::AttentionOp>())
    return v == a.getLse();
  return v.getDefiningOp<mtc::CrossEntropyOp>() != nullptr;
}

class CudaEmitter {
public:
  explicit CudaEmitter(ModuleOp module) : module(module), layout(module) {}
  LogicalResult run(mtc::EmitResult &out);

private:
  void analyzeGradientSinks(func::FuncOp fn);
  void analyzeFusions(func::FuncOp fn);
  LogicalResult emitFunction(func::FuncOp fn, bool eval);
  LogicalResult emitOptimizer(func::FuncOp fn);
  LogicalResult emitOp(Operation *op, bool eval);
  std::string buf(Value v);
  std::string grad(StringRef param) {
    return llvm::formatv("(G + {0})", layout.offset(param)).str();
  }
  void line(const Twine &t) { os << "  " << t << "\n"; }

  ModuleOp module;
  ParamLayout layout;
  std::string body;
  llvm::raw_string_ostream os{body};
  mtc::BufferPlan plan;
  mtc::ExecutionHints hints;
  llvm::DenseMap<Value, std::string> names;
  llvm::DenseMap<Value, std::string> sink; // value -> parameter it adds into
  llvm::DenseSet<Operation *> noOps;       // emitted as part of another op
  llvm::DenseSet<Value> unmaterialized;    // fused away: never stored
  llvm::DenseMap<Operation *, Operation *> fusedPartner; // host -> fused op
  int64_t arena = 0;                       // 2-byte units
};

void CudaEmitter::analyzeGradientSinks(func::FuncOp fn) {
  sink.clear();
  Block &block = fn.getBody().front();
  // Tentative: follow single-use chains of adds back from accumulate_grad.
  llvm::DenseMap<Value, std::string> tentative;
  for (Operation &op : llvm::reverse(block)) {
    if (auto acc = dyn_cast<mtc::AccumulateGradOp>(op)) {
      if (acc.getGrad().hasOneUse())
        tentative[acc.getGrad()] = acc.getParam().str();
    } else if (auto add = dyn_cast<mtc::AddOp>(op)) {
      auto it = tentative.find(add.getResult());
      if (it == tentative.end() || add.getLhs() == add.getRhs())
        continue;
      for (Value v : {add.getLhs(), add.getRhs()})
        if (v.hasOneUse() && v.getType() == add.getType())
          tentative[v] = it->second;
    }
  }
  auto capable = [](Value v) {
    Operation *def = v.getDefiningOp();
    if (!def)
      return false;
    if (auto mm = dyn_cast<mtc::MatmulOp>(def))
      return mm.getTransposeA() && !mm.getBias();
    if (auto ln = dyn_cast<mtc::LayerNormGradOp>(def))
      return v != ln.getDinput();
    if (auto rn = dyn_cast<mtc::RmsNormGradOp>(def))
      return v != rn.getDinput();
    return isa<mtc::EmbeddingGradOp, mtc::ReduceLeadingOp>(def);
  };
  // Forward: a value sinks if its producer can accumulate, or it is an add
  // of two sinking values.
  for (Operation &op : block)
    for (Value r : op.getResults()) {
      auto it = tentative.find(r);
      if (it == tentative.end())
        continue;
      auto add = dyn_cast<mtc::AddOp>(op);
      if (capable(r) ||
          (add && sink.count(add.getLhs()) && sink.count(add.getRhs())))
        sink[r] = it->second;
    }
  // Backward: an add that does not sink needs its operands materialized.
  for (Operation &op : llvm::reverse(block))
    if (auto add = dyn_cast<mtc::AddOp>(op))
      if (!sink.count(add.getResult()))
        for (Value v : {add.getLhs(), add.getRhs()})
          if (v.getDefiningOp<mtc::AddOp>() || !capable(v))
            sink.erase(v);
}

void CudaEmitter::analyzeFusions(func::FuncOp fn) {
  hints = mtc::ExecutionHints();
  noOps.clear();
  unmaterialized.clear();
  fusedPartner.clear();
  for (Operation &op : fn.getBody().front()) {
    // embedding + position table.
    if (auto add = dyn_cast<mtc::AddOp>(op)) {
      auto emb = add.getLhs().getDefiningOp<mtc::EmbeddingOp>();
      auto pos = add.getRhs().getDefiningOp<mtc::ParamOp>();
      if (emb && pos && emb.getResult().hasOneUse() &&
          pos.getType().getRank() == 2 &&
          pos.getType().getDimSize(0) == shapeOf(emb)[1]) {
        hints.fusedInto[emb] = add;
        fusedPartner[add] = emb;
        noOps.insert(emb);
        unmaterialized.insert(emb.getResult());
      }
    }
    // matmul + tanh GELU (the pre-activation stays for gelu_grad).
    if (auto gelu = dyn_cast<mtc::GeluOp>(op)) {
      auto mm = gelu.getInput().getDefiningOp<mtc::MatmulOp>();
      if (mm && !mm.getTransposeA() &&
          gelu.getApproximate() == mtc::GeluApprox::tanh &&
          mm->getBlock() == gelu->getBlock()) {
        hints.fusedInto[mm] = gelu;
        fusedPartner[gelu] = mm;
        noOps.insert(mm);
      }
    }
    // cross_entropy + its gradient, in place over the logits.
    if (auto ceg = dyn_cast<mtc::CrossEntropyGradOp>(op)) {
      auto cst = ceg.getDloss().getDefiningOp<arith::ConstantOp>();
      mtc::CrossEntropyOp ce;
      for (Operation *u : ceg.getLogits().getUsers())
        if (auto c = dyn_cast<mtc::CrossEntropyOp>(u))
          if (c.getTargets() == ceg.getTargets())
            ce = c;
      if (ce && cst && cst->hasOneUse() && ce->isBeforeInBlock(ceg)) {
        hints.inPlaceOf[ceg.getResult()] = ceg.getLogits();
        fusedPartner[ce] = ceg;
        noOps.insert(ceg);
        noOps.insert(cst);
      }
    }
  }
}

std::string CudaEmitter::buf(Value v) {
  if (auto p = v.getDefiningOp<mtc::ParamOp>())
    return llvm::formatv("(PB + {0})", layout.offset(p.getName())).str();
  auto it = names.find(v);
  if (it != names.end())
    return it->second;
  return llvm::formatv("{0}({1})", storedF32(v) ? "F" : "B",
                       plan.offset.lookup(v))
      .str();
}

LogicalResult CudaEmitter::emitFunction(func::FuncOp fn, bool eval) {
  names.clear();
  analyzeGradientSinks(fn);
  analyzeFusions(fn);
  plan = mtc::planBuffers(
      fn,
      [&](Value v) -> int64_t {
        auto t = dyn_cast<RankedTensorType>(v.getType());
        if (!t || v.getDefiningOp<mtc::ParamOp>() || sink.count(v) ||
            unmaterialized.count(v))
          return 0;
        if (auto c = v.getDefiningOp<arith::ConstantOp>())
          if (noOps.count(c))
            return 0;
        return t.getNumElements() * (storedF32(v) ? 2 : 1);
      },
      /*align=*/64, hints);
  arena = std::max(arena, plan.size);

  os << "float " << fn.getSymName()
     << "(HostState& st, const int32_t* tokens, const int32_t* targets) {\n";
  names[fn.getArgument(0)] = "tokens";
  names[fn.getArgument(1)] = "targets";
  line("auto& pc = program_context(st);");
  line("k::Context& ctx = pc.ctx;");
  line("char* A = reinterpret_cast<char*>(st.arena);");
  line("const bf16* PB = static_cast<const bf16*>(st.compute_params);");
  line("float* G = st.grads;");
  line("auto B = [A](int64_t u) { return reinterpret_cast<bf16*>(A + 2 * u); "
       "};");
  line("auto F = [A](int64_t u) { return reinterpret_cast<float*>(A + 2 * u); "
       "};");
  line("(void)PB; (void)G; (void)B; (void)F;");
  for (Operation &op : fn.getBody().front())
    if (failed(emitOp(&op, eval)))
      return failure();
  os << "}\n\n";
  return success();
}

LogicalResult CudaEmitter::emitOp(Operation *op, bool eval) {
  if (noOps.count(op) || isa<mtc::ParamOp>(op))
    return success();
  if (!isa<func::ReturnOp>(op))
    line(llvm::formatv("k::set_current_op(\"{0} {1}\");",
                       op->getName().getStringRef(),
                       escape(locString(op->getLoc()))));
  // Ops whose CUDA kernel takes the host kernel's arguments after a Context.
  auto shared = [&]() -> LogicalResult {
    line(formatCall(*sharedKernelCall(op, [&](Value v) { return buf(v); }),
                    "ctx"));
    return success();
  };
  auto sinkOf = [&](Value v) -> std::string {
    auto it = sink.find(v);
    return it == sink.end() ? std::string() : grad(it->second);
  };

  return llvm::TypeSwitch<Operation *, LogicalResult>(op)
      .Case([&](arith::ConstantOp c) -> LogicalResult {
        auto dense = dyn_cast<DenseFPElementsAttr>(c.getValue());
        if (!dense || !dense.isSplat())
          return op->emitOpError("CUDA target supports only splat float "
                                 "constants");
        line(llvm::formatv(
            "k::fill(ctx, {0}, {1}f, {2});", buf(c),
            fmt(dense.getSplatValue<APFloat>().convertToDouble()), numel(c)));
        return success();
      })
      .Case([&](mtc::EmbeddingOp e) -> LogicalResult {
        auto t = shapeOf(e.getTable());
        line(llvm::formatv(
            "k::embedding_forward(ctx, {0}, {1}, nullptr, {2}, {3}, {4}, {5}, "
            "{6});",
            buf(e.getTokens()), buf(e.getTable()), buf(e), numel(e.getTokens()),
            t[0], t[1], shapeOf(e.getTokens()).back()));
        return success();
      })
      .Case([&](mtc::EmbeddingGradOp e) -> LogicalResult {
        std::string g = sinkOf(e);
        if (g.empty())
          return op->emitOpError("CUDA target: an embedding gradient must "
                                 "flow into mtc.accumulate_grad");
        auto t = shapeOf(e);
        line(llvm::formatv(
            "k::embedding_backward(ctx, {0}, {1}, {2}, {3}, {4}, {5});",
            buf(e.getTokens()), buf(e.getDout()), g, numel(e.getTokens()),
            t[0], t[1]));
        return success();
      })
      .Case([&](mtc::AddOp a) -> LogicalResult {
        if (sink.count(a))
          return success(); // both operands already accumulated
        if (auto partner = fusedPartner.lookup(op)) {
          auto e = cast<mtc::EmbeddingOp>(partner);
          auto t = shapeOf(e.getTable());
          line(llvm::formatv(
              "k::embedding_forward(ctx, {0}, {1}, {2}, {3}, {4}, {5}, {6}, "
              "{7});",
              buf(e.getTokens()), buf(e.getTable()), buf(a.getRhs()), buf(a),
              numel(e.getTokens()), t[0], t[1], shapeOf(e.getTokens()).back()));
          return success();
        }
        line(llvm::formatv("k::add(ctx, {0}, {1}, {2}, {3}, {4});",
                           buf(a.getLhs()), buf(a.getRhs()), buf(a), numel(a),
                           numel(a.getRhs())));
        return success();
      })
      .Case([&](mtc::ReduceLeadingOp r) -> LogicalResult {
        std::string g = sinkOf(r);
        if (g.empty())
          return op->emitOpError("CUDA target: a reduction must be a "
                                 "parameter gradient (bias, position table)");
        line(llvm::formatv("k::reduce_rows_accumulate(ctx, {0}, {1}, {2}, {3});",
                           buf(r.getInput()), g, numel(r.getInput()) / numel(r),
                           numel(r)));
        return success();
      })
      .Case([&](mtc::GeluOp g) -> LogicalResult {
        if (auto partner = fusedPartner.lookup(op)) {
          auto m = cast<mtc::MatmulOp>(partner);
          line(llvm::formatv(
              "k::matmul_gelu(ctx, {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, "
              "false, {8});",
              buf(m.getLhs()), buf(m.getRhs()),
              m.getBias() ? buf(m.getBias()) : "nullptr", buf(g), buf(m),
              m.getM(), m.getN(), m.getK(), m.getTransposeB()));
          return success();
        }
        return shared();
      })
      .Case<mtc::GeluGradOp, mtc::SwigluOp, mtc::SwigluGradOp,
            mtc::LayerNormOp, mtc::RmsNormOp, mtc::RopeOp,
            mtc::AttentionGradOp>([&](Operation *) { return shared(); })
      .Case([&](mtc::DropoutOp d) -> LogicalResult {
        double p = eval ? 0.0 : d.getP().convertToDouble();
        line(llvm::formatv("k::dropout(ctx, {0}, {1}, {2}, {3}f, st.seed, "
                           "mtc::rt::dropout_site_key({4}, st.step, st.microbatch), 0);",
                           buf(d.getInput()), buf(d), numel(d), fmt(p),
                           d.getKey()));
        return success();
      })
      .Case([&](mtc::MatmulOp m) -> LogicalResult {
        if (std::string g = sinkOf(m); !g.empty()) {
          line(llvm::formatv("k::matmul_f32(ctx, {0}, {1}, {2}, nullptr, {3}, "
                             "{4}, {5}, true, {6}, true);",
                             buf(m.getLhs()), buf(m.getRhs()), g, m.getM(),
                             m.getN(), m.getK(), m.getTransposeB()));
          return success();
        }
        line(llvm::formatv(
            "k::matmul(ctx, {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8});",
            buf(m.getLhs()), buf(m.getRhs()),
            m.getBias() ? buf(m.getBias()) : "nullptr", buf(m), m.getM(),
            m.getN(), m.getK(), m.getTransposeA(), m.getTransposeB()));
        return success();
      })
      .Case([&](mtc::LayerNormGradOp n) -> LogicalResult {
        std::string dg = sinkOf(n.getDgamma());
        std::string db = sinkOf(n.getDbeta());
        if (dg.empty() || (db.empty() && !n.getDbeta().use_empty()))
          return op->emitOpError("CUDA target: norm weight gradients must "
                                 "flow into mtc.accumulate_grad");
        line(llvm::formatv(
            "k::layer_norm_backward(ctx, {0}, {1}, {2}, {3}, {4}, {5}, {6}, "
            "{7}, {8}f);",
            buf(n.getInput()), buf(n.getGamma()), buf(n.getDout()),
            buf(n.getDinput()), dg, db.empty() ? "nullptr" : db,
            rows(n.getInput()), shapeOf(n.getInput()).back(),
            fmt(n.getEps().convertToDouble())));
        return success();
      })
      .Case([&](mtc::RmsNormGradOp n) -> LogicalResult {
        std::string dg = sinkOf(n.getDgamma());
        if (dg.empty())
          return op->emitOpError("CUDA target: norm weight gradients must "
                                 "flow into mtc.accumulate_grad");
        line(llvm::formatv(
            "k::rms_norm_backward(ctx, {0}, {1}, {2}, {3}, {4}, {5}, {6}, "
            "{7}f);",
            buf(n.getInput()), buf(n.getGamma()), buf(n.getDout()),
            buf(n.getDinput()), dg, rows(n.getInput()),
            shapeOf(n.getInput()).back(), fmt(n.getEps().convertToDouble())));
        return success();
      })
      .Case([&](mtc::AttentionOp a) -> LogicalResult {
        if (a.getHeadDim() != 64 && a.getHeadDim() != 128)
          return op->emitOpError("CUDA target: the attention kernels take "
                                 "head_dim 64 or 128, this model has ")
                 << a.getHeadDim() << " (hidden_size / num_heads)";
        return shared();
      })
      .Case([&](mtc::CrossEntropyOp c) -> LogicalResult {
        std::string dlogits = "nullptr";
        double dloss = 1.0;
        if (auto partner = fusedPartner.lookup(op)) {
          auto ceg = cast<mtc::CrossEntropyGradOp>(partner);
          auto cst = ceg.getDloss().getDefiningOp<arith::ConstantOp>();
          auto dense = dyn_cast<DenseFPElementsAttr>(cst.getValue());
          if (!dense || !dense.isSplat())
            return op->emitOpError("CUDA target: the loss gradient seed must "
                                   "be a splat constant");
          dloss = dense.getSplatValue<APFloat>().convertToDouble();
          dlogits = buf(ceg.getResult());
        }
        line(llvm::formatv("k::cross_entropy(ctx, {0}, {1}, {2}, {3}, {4}, "
                           "{5}, {6}, {7}, {8}f);",
                           buf(c.getLogits()), buf(c.getTargets()), buf(c),
                           dlogits, numel(c.getTargets()),
                           shapeOf(c.getLogits()).back(),
                           c.getNumValidClasses(),
                           int64_t(c.getIgnoreIndex()), fmt(dloss)));
        return success();
      })
      .Case([&](mtc::CrossEntropyGradOp) -> LogicalResult {
        return op->emitOpError("CUDA target: cross_entropy_grad must follow "
                               "its cross_entropy with a constant seed (it "
                               "is fused into it)");
      })
      .Case([&](mtc::AccumulateGradOp a) -> LogicalResult {
        if (sink.count(a.getGrad()))
          return success();
        line(llvm::formatv("k::accumulate(ctx, {0}, {1}, {2});",
                           grad(a.getParam()), buf(a.getGrad()),
                           numel(a.getGrad())));
        return success();
      })
      .Case([&](func::ReturnOp r) -> LogicalResult {
        line(llvm::formatv("return finish_loss(st, {0});",
                           buf(r.getOperand(0))));
        return success();
      })
      .Default([&](Operation *other) -> LogicalResult {
        if (other->getDialect() &&
            other->getDialect()->getNamespace() == "shard")
          return other->emitOpError(
              "CUDA target: tensor parallelism is not generated for CUDA yet "
              "(use --target host, or tp = 1)");
        return other->emitOpError("has no lowering to the CUDA target");
      });
}

LogicalResult CudaEmitter::emitOptimizer(func::FuncOp fn) {
  // One multi-tensor launch over every group: groups differ only in weight
  // decay, which becomes a per-tensor flag.
  SmallVector<mtc::AdamWOp> groups;
  fn.walk([&](mtc::AdamWOp a) { groups.push_back(a); });
  mtc::GradNormOp norm;
  fn.walk([&](mtc::GradNormOp g) { norm = g; });
  if (groups.empty() || !norm)
    return fn.emitError("@optimizer_step must hold mtc.grad_norm and "
                        "mtc.adamw");
  mtc::AdamWOp first = groups.front();
  double decay = 0;
  for (mtc::AdamWOp g : groups) {
    double wd = g.getWeightDecay().convertToDouble();
    auto same = [](FloatAttr a, FloatAttr b) { return a == b; };
    if (!same(g.getBeta1Attr(), first.getBeta1Attr()) ||
        !same(g.getBeta2Attr(), first.getBeta2Attr()) ||
        !same(g.getEpsAttr(), first.getEpsAttr()) ||
        !same(g.getMaxGradNormAttr(), first.getMaxGradNormAttr()) ||
        !same(g.getGradScaleAttr(), first.getGradScaleAttr()))
      return g.emitOpError("CUDA target: parameter groups may differ only in "
                           "weight decay (one multi-tensor launch)");
    if (wd > 0 && decay > 0 && wd != decay)
      return g.emitOpError("CUDA target: one non-zero weight decay for all "
                           "decaying groups");
    if (wd > 0)
      decay = wd;
  }
  double gradScale = norm.getGradScale().convertToDouble();
  if (norm->hasAttr("tp_split_params"))
    return norm.emitOpError("CUDA target: tensor parallelism is not generated "
                            "for CUDA yet (use --target host, or tp = 1)");
  os << "double optimizer_step(HostState& st, float lr, int64_t step) {\n";
  line("auto& pc = program_context(st);");
  line("k::Context& ctx = pc.ctx;");
  // Data parallelism: sum the fp32 gradients over the dp group (NCCL through
  // the trainer's GridComm, on device memory) after the backward pass is
  // done; the mean's 1/dp folds into the gradient scale, so the norm and
  // AdamW see the global batch's gradient without another pass.
  for (auto r : fn.getOps<mtc::ReduceGradientsOp>()) {
    mtc::GridShape shape = mtc::getGridShape(module);
    for (int16_t axis : r.getGridAxes()) {
      line("k::set_current_op(\"mtc.reduce_gradients (all_reduce over dp)\");");
      line("MTC_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));");
      line(llvm::formatv("st.comm->all_reduce_sum({0}, st.grads, {1});", axis,
                         layout.totalElements));
      gradScale /= double(shape.size(axis));
    }
  }
  line("k::set_current_op(\"mtc.grad_norm\");");
  line(llvm::formatv("k::sum_squares(ctx, st.grads, {0}, pc.grad_sumsq, "
                     "false);",
                     layout.totalElements));
  line("k::set_current_op(\"mtc.adamw\");");
  line("k::AdamWHyper h;");
  line("h.lr = lr;");
  line(llvm::formatv("h.beta1 = {0}f;", fmt(first.getBeta1().convertToDouble())));
  line(llvm::formatv("h.beta2 = {0}f;", fmt(first.getBeta2().convertToDouble())));
  line(llvm::formatv("h.eps = {0}f;", fmt(first.getEps().convertToDouble())));
  line(llvm::formatv("h.weight_decay = {0}f;", fmt(decay)));
  line("h.step = step;");
  line(llvm::formatv("h.grad_scale = {0}f;", fmt(gradScale)));
  line(llvm::formatv("h.max_grad_norm = {0}f;",
                     fmt(first.getMaxGradNorm().convertToDouble())));
  line("k::adamw(ctx, *pc.adamw, st.params, st.grads, st.exp_avg, "
       "st.exp_avg_sq, static_cast<bf16*>(st.compute_params), h, "
       "pc.grad_sumsq);");
  line("double sumsq = 0;");
  line("MTC_CUDA_CHECK(cudaMemcpyAsync(&sumsq, pc.grad_sumsq, sizeof(double), "
       "cudaMemcpyDeviceToHost, ctx.stream));");
  line("MTC_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));");
  line(llvm::formatv("return std::sqrt(sumsq) * {0};", fmt(gradScale)));
  os << "}\n\n";

  // The AdamW table: which tensors decay.
  os << "std::vector<k::AdamWTensor> adamw_tensors() {\n  return {\n";
  for (mtc::AdamWOp g : groups) {
    bool decays = g.getWeightDecay().convertToDouble() > 0;
    for (Attribute n : g.getParams()) {
      StringRef name = cast<StringAttr>(n).getValue();
      auto it = layout.slots.find(name);
      if (it == layout.slots.end())
        return g.emitOpError("updates unknown parameter '") << name << "'";
      os << llvm::formatv("    {{{0}, {1}, {2}},  // {3}\n", it->second.offset,
                          it->second.op.getType().getNumElements(),
                          decays ? "true" : "false", name);
    }
  }
  os << "  };\n}\n\n";
  return success();
}

LogicalResult CudaEmitter::run(mtc::EmitResult &out) {
  FailureOr<TrainingFunctions> fns = getTrainingFunctions(module);
  if (failed(fns))
    return failure();
  std::string funcs;
  if (failed(emitFunction(fns->forward, /*eval=*/true)) ||
      failed(emitFunction(fns->train, /*eval=*/false)))
    return failure();
  funcs = std::move(body);
  body.clear();
  if (failed(emitOptimizer(fns->optimizer)))
    return failure();
  std::string optimizer = std::move(body);

  auto name = module->getAttrOfType<StringAttr>("mtc.model");
  std::string src;
  llvm::raw_string_ostream s(src);
  s << "// Generated by mtc from model '" << escape(name ? name.str() : "")
    << "' for the CUDA target (bf16 compute, fp32 master weights).\n"
    << "// Do not edit: recompile the spec. Each kernel call is preceded by\n"
    << "// the IR op and location it lowers.\n"
    << "#include <cmath>\n#include <cstdint>\n#include <cstdlib>\n"
    << "#include <limits>\n#include <memory>\n#include <string>\n"
    << "#include <vector>\n\n"
    << "#include \"mtc/rt/cuda_backend.h\"\n"
    << "#include \"mtc/rt/dropout_hash.h\"\n"
    << "#include \"mtc/rt/cuda_kernels.h\"\n#include \"mtc/rt/program.h\"\n\n"
    << "namespace {\nusing mtc::rt::HostState;\nnamespace k = "
       "mtc::rt::cuda;\nusing k::bf16;\n\n"
    << "std::vector<k::AdamWTensor> adamw_tensors();\n\n"
    << "// One GPU per rank: LOCAL_RANK (set by mtc-launch, torchrun, Slurm)\n"
    << "// picks it among the visible devices.\n"
    << "int local_device() {\n"
    << "  int count = 0;\n"
    << "  MTC_CUDA_CHECK(cudaGetDeviceCount(&count));\n"
    << "  const char* local = std::getenv(\"LOCAL_RANK\");\n"
    << "  return local && count > 0 ? std::atoi(local) % count : 0;\n}\n\n"
    << "// What the program keeps on the device besides HostState.\n"
    << "struct ProgramContext {\n"
    << "  k::Context ctx;\n"
    << "  std::unique_ptr<k::AdamWPlan> adamw;\n"
    << "  double* grad_sumsq = nullptr;  // (1) device\n"
    << "  float* loss_host = nullptr;    // (1) pinned\n"
    << "  ProgramContext() : ctx(local_device()) {\n"
    << "    adamw = std::make_unique<k::AdamWPlan>(ctx, adamw_tensors());\n"
    << "    MTC_CUDA_CHECK(cudaMalloc(&grad_sumsq, sizeof(double)));\n"
    << "    MTC_CUDA_CHECK(cudaMallocHost(&loss_host, sizeof(float)));\n"
    << "  }\n"
    << "  ~ProgramContext() {\n"
    << "    cudaFree(grad_sumsq);\n"
    << "    cudaFreeHost(loss_host);\n"
    << "  }\n};\n\n"
    << "ProgramContext& program_context(HostState& st) {\n"
    << "  return *static_cast<ProgramContext*>(st.context);\n}\n\n"
    << "float data_error(HostState& st, const std::string& message) {\n"
    << "  st.error = message;\n"
    << "  return std::numeric_limits<float>::quiet_NaN();\n}\n\n"

    << "// Copies the (1) fp32 loss to the host; reports recorded data errors.\n"
    << "float finish_loss(HostState& st, const float* loss) {\n"
    << "  auto& pc = program_context(st);\n"
    << "  k::set_current_op(\"loss\");\n"
    << "  MTC_CUDA_CHECK(cudaMemcpyAsync(pc.loss_host, loss, sizeof(float), "
       "cudaMemcpyDeviceToHost, pc.ctx.stream));\n"
    << "  std::string error = pc.ctx.take_data_error();  // synchronizes\n"
    << "  if (!error.empty()) return data_error(st, error);\n"
    << "  return *pc.loss_host;\n}\n\n"
    << "void* create_context() { return new ProgramContext(); }\n"
    << "void destroy_context(void* c) { delete static_cast<ProgramContext*>(c); "
       "}\n"
    << "void sync_compute_params(HostState& st) {\n"
    << "  auto& pc = program_context(st);\n"
    << "  k::set_current_op(\"sync_compute_params\");\n"
    << "  k::convert(pc.ctx, st.params, static_cast<bf16*>(st.compute_params), "
    << layout.totalElements << ");\n"
    << "  MTC_CUDA_CHECK(cudaStreamSynchronize(pc.ctx.stream));\n}\n\n"
    << funcs << optimizer << "}  // namespace\n\n";
  ProgramDescExtras extras;
  extras.target = "cuda";
  extras.arenaWords = (arena + 1) / 2;
  extras.computeParamBytes = layout.totalElements * 2;
  extras.extraLines = "  p.backend = &mtc::rt::cuda::cuda_backend();\n"
                      "  p.create_context = &create_context;\n"
                      "  p.destroy_context = &destroy_context;\n"
                      "  p.sync_compute_params = &sync_compute_params;\n";
  s << emitProgramDesc(module, layout, extras);
  out.source = std::move(src);
  out.arenaElements = arena;
  return success();
}

} // namespace

LogicalResult mtc::emitCudaProgram(ModuleOp module, EmitResult &out) {
  return CudaEmitter(module).run(out);
}
