//===- HostEmitter.cpp - training program -> host C++ ----------------------===//
//
// Steps:
//  1. Lay out the parameters: unique names in program order, each at an
//     offset (elements, 16-aligned) in one allocation; gradients and AdamW
//     moments use the same layout.
//  2. For each of @forward (evaluation: dropout off), @train_step and
//     @optimizer_step: plan the activation arena (BufferPlan), then emit one
//     runtime kernel call per op, each preceded by a comment with the op's
//     IR location. Data errors (a token id out of range) return NaN with a
//     message naming the op's location.
//  3. Emit the ProgramDesc (parameters, training configuration, FLOPs) and
//     main(), which hands control to mtc::rt::train_main.
//
// Ops in the kernel table (KernelOpInterface) print their row; the rest
// (parameters, collectives, gradient plumbing, the optimizer) have a rule
// here. Ops without either are reported at their location.
//
//===----------------------------------------------------------------------===//
#include "mtc/Codegen/Emitter.h"

#include "EmitterCommon.h"
#include "mtc/Codegen/BufferPlan.h"
#include "mtc/Dialect/MtcDialect.h"
#include "mtc/Transforms/Grid.h"
#include "mtc/Transforms/PlanReport.h"
#include "mtc/Transforms/Pipeline.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/FormatVariadic.h"

using namespace mlir;

namespace {
using namespace mtc::codegen;

// The emitted names of a distributed optimizer region's bounds and test:
// lo, hi, in_shard for the dense one (dp); expert_lo, expert_hi,
// expert_in_shard for the experts' (edp).
std::string shardVar(const OptimizerShard &s, llvm::StringRef name) {
  return ((s.experts ? "expert_" : "") + name).str();
}

// `base + offset`, or `base` at offset 0.
std::string plus(llvm::StringRef base, int64_t offset) {
  return offset ? llvm::formatv("{0} + {1}", base, offset).str() : base.str();
}

class HostEmitter {
public:
  explicit HostEmitter(ModuleOp module) : module(module), layout(module) {}
  LogicalResult run(mtc::EmitResult &out);

private:
  // Pipeline programs (mtc/Transforms/Pipeline.h): per pipeline rank its
  // pieces, step, eval and optimizer functions, and one ProgramDesc stage.
  LogicalResult runPipeline(mtc::EmitResult &out);
  LogicalResult emitPiece(func::FuncOp fn);
  LogicalResult emitStep(func::FuncOp fn, int64_t base);
  void planFunction(func::FuncOp fn);
  enum class Kind { Plain, Piece, Step };
  Kind kind = Kind::Plain;
  LogicalResult emitFunction(func::FuncOp fn, bool eval);
  LogicalResult emitOp(Operation *op, bool eval);
  std::string buf(Value v);
  void line(const Twine &t) { os << "  " << t << "\n"; }

  ModuleOp module;
  std::string body;
  llvm::raw_string_ostream os{body};
  ParamLayout layout;
  mtc::BufferPlan plan;
  llvm::DenseMap<Value, std::string> names; // func args and scalars
  int64_t arena = 0;
  int64_t pieceArena = 0, stepArena = 0; // pipeline: per rank
  std::string header();
};

std::string HostEmitter::buf(Value v) {
  if (auto p = v.getDefiningOp<mtc::ParamOp>())
    return llvm::formatv("(P + {0})", layout.offset(p.getName())).str();
  auto it = names.find(v);
  if (it != names.end())
    return it->second;
  // Integer tensors computed by the program (an MoE router's expert
  // indices, a permutation's positions and counts) live in the float arena
  // too, 4 bytes an element like fp32.
  auto t = dyn_cast<RankedTensorType>(v.getType());
  if (t && t.getElementType().isInteger(32))
    return llvm::formatv("reinterpret_cast<int32_t*>(A + {0})",
                         plan.offset.lookup(v))
        .str();
  return llvm::formatv("(A + {0})", plan.offset.lookup(v)).str();
}

/// Arena offsets for `fn`'s values; values already named (arguments, a
/// piece's results written straight to the caller's buffers, microbatch
/// views) take none.
void HostEmitter::planFunction(func::FuncOp fn) {
  plan = mtc::planBuffers(fn, [&](Value v) -> int64_t {
    if (v.getDefiningOp<mtc::ParamOp>() || v.getDefiningOp<mtc::MicrobatchOp>() ||
        names.count(v))
      return 0;
    auto t = dyn_cast<RankedTensorType>(v.getType());
    return t ? t.getNumElements() : 0;
  });
}

LogicalResult HostEmitter::emitFunction(func::FuncOp fn, bool eval) {
  names.clear();
  kind = Kind::Plain;
  planFunction(fn);
  arena = std::max(arena, plan.size);

  StringRef name = fn.getSymName();
  bool isOptimizer = name.starts_with("optimizer_step");
  if (isOptimizer) {
    os << "double " << name
       << "(HostState& st, float lr, int64_t step) {\n";
    names[fn.getArgument(0)] = "lr";
    names[fn.getArgument(1)] = "step";
  } else {
    os << "float " << name
       << "(HostState& st, const int32_t* tokens, const int32_t* targets) "
          "{\n";
    names[fn.getArgument(0)] = "tokens";
    names[fn.getArgument(1)] = "targets";
  }
  line("float* P = st.params;");
  line("float* G = st.grads;");
  line("float* A = st.arena;");
  line("(void)P; (void)G; (void)A;");
  for (Operation &op : fn.getBody().front())
    if (failed(emitOp(&op, eval)))
      return failure();
  os << "}\n\n";
  return success();
}

LogicalResult HostEmitter::emitOp(Operation *op, bool eval) {
  if (isIndexOp(op))
    return nameIndexOp(op, names, [&](Value v) { return buf(v); });
  if (!isa<mtc::ParamOp>(op))
    line("// " + op->getName().getStringRef() + " " +
         locString(op->getLoc()));
  auto dataError = [&](StringRef what) {
    return llvm::formatv("return data_error(st, \"{0}: {1}\");",
                         escape(locString(op->getLoc())), what)
        .str();
  };

  return llvm::TypeSwitch<Operation *, LogicalResult>(op)
      .Case([&](mtc::ParamOp) -> LogicalResult { return success(); })
      .Case([&](arith::ConstantOp c) -> LogicalResult {
        auto dense = dyn_cast<DenseFPElementsAttr>(c.getValue());
        if (!dense || !dense.isSplat())
          return op->emitOpError("host target supports only splat float "
                                 "constants");
        line(llvm::formatv("k::fill({0}, {1}f, {2});", buf(c), 
                           fmt(dense.getSplatValue<APFloat>().convertToDouble()),
                           numel(c)));
        return success();
      })
      .Case([&](shard::AllReduceOp a) -> LogicalResult {
        if (a.getGridAxes().size() != 1 ||
            a.getReduction() != shard::ReductionKind::Sum)
          return op->emitOpError("host target: sum over one grid axis");
        line(llvm::formatv("std::copy({0}, {0} + {1}, {2});",
                           buf(a.getInput()), numel(a), buf(a)));
        line(llvm::formatv("st.comm->all_reduce_sum({0}, {1}, {2});",
                           a.getGridAxes()[0], buf(a), numel(a)));
        return success();
      })
      .Case([&](shard::AllGatherOp g) -> LogicalResult {
        if (g.getGridAxes().size() != 1)
          return op->emitOpError("host target: one grid axis per gather");
        auto in = shapeOf(g.getInput());
        int64_t d = g.getGatherAxis().getSExtValue();
        int64_t outer = 1;
        for (int64_t i = 0; i < d; ++i)
          outer *= in[i];
        line(llvm::formatv(
            "mtc::rt::grid::all_gather_dim(*st.comm, {0}, {1}, {2}, {3}, {4});",
            g.getGridAxes()[0], buf(g.getInput()), buf(g), outer,
            numel(g.getInput()) / outer));
        return success();
      })
      .Case([&](shard::AllSliceOp sl) -> LogicalResult {
        if (sl.getGridAxes().size() != 1)
          return op->emitOpError("host target: one grid axis per slice");
        auto out = shapeOf(sl);
        int64_t d = sl.getSliceAxis().getSExtValue();
        int64_t outer = 1;
        for (int64_t i = 0; i < d; ++i)
          outer *= out[i];
        line(llvm::formatv(
            "mtc::rt::grid::slice_dim(*st.comm, {0}, {1}, {2}, {3}, {4});",
            sl.getGridAxes()[0], buf(sl.getInput()), buf(sl), outer,
            numel(sl) / outer));
        return success();
      })
      .Case([&](shard::ReduceScatterOp rs) -> LogicalResult {
        if (rs.getGridAxes().size() != 1 ||
            rs.getReduction() != shard::ReductionKind::Sum)
          return op->emitOpError("host target: sum over one grid axis");
        auto out = shapeOf(rs);
        int64_t d = rs.getScatterAxis().getSExtValue();
        int64_t outer = 1;
        for (int64_t i = 0; i < d; ++i)
          outer *= out[i];
        line(llvm::formatv("mtc::rt::grid::reduce_scatter_dim(*st.comm, {0}, "
                           "{1}, {2}, {3}, {4});",
                           rs.getGridAxes()[0], buf(rs.getInput()), buf(rs),
                           outer, numel(rs) / outer));
        return success();
      })
      .Case([&](mtc::ReduceGradientsOp r) -> LogicalResult {
        if (r.getShardOptimizerState()) {
          // Distributed optimizer: this rank's share of the flat gradient
          // buffer's region, [lo, hi), receives the group's mean (the
          // experts' region: [expert_lo, expert_hi), the sum over the
          // expert-data-parallel group divided by `divisor`); the ops below
          // read and update that share only.
          const OptimizerShard *sh = layout.shardOn(r.getGrid(), r.getGridAxes());
          if (r.getGridAxes().size() != 1 || !sh)
            return op->emitOpError(
                "host target: a sharded optimizer over one grid axis, its "
                "region the whole buffer (dp) or the experts' after the "
                "dense parameters' (edp)");
          auto runs = reducedRuns(r, layout);
          if (runs.size() != 1 || runs[0].first != sh->begin ||
              runs[0].first + runs[0].second != sh->end())
            return op->emitOpError("host target: the parameters it reduces "
                                   "are not its sharded region of the flat "
                                   "buffer");
          const int axis = runtimeAxis(r.getGrid(), r.getGridAxes()[0]);
          std::string lo = shardVar(*sh, "lo"), hi = shardVar(*sh, "hi");
          line(llvm::formatv("const int64_t {0} = {1}st.comm->index({2}) * "
                             "{3}, {4} = {0} + {3};",
                             lo, sh->begin ? std::to_string(sh->begin) + " + " : "",
                             axis, sh->elements, hi));
          line(llvm::formatv("st.comm->reduce_scatter_sum({0}, {1}, G + {2}, "
                             "{3});",
                             axis, plus("G", sh->begin), lo, sh->elements));
          line("{");
          if (auto d = r.getDivisor())
            line(llvm::formatv("  const float inv = 1.0f / float({0});", *d));
          else
            line(llvm::formatv("  const float inv = 1.0f / float(st.comm->size("
                               "{0}));",
                               axis));
          line(llvm::formatv("  for (int64_t i = {0}; i < {1}; ++i) G[i] *= inv;",
                             lo, hi));
          line("}");
          // [a, b) = [off, off + n) within the share; empty when a >= b.
          std::string in = shardVar(*sh, "in_shard");
          line(llvm::formatv("auto {0} = [{1}, {2}](int64_t off, int64_t n, "
                             "int64_t* a, int64_t* b) {{",
                             in, lo, hi));
          line(llvm::formatv("  *a = std::max(off, {0}); *b = std::min(off + "
                             "n, {1});",
                             lo, hi));
          line("  return *a < *b;");
          line("};");
          line(llvm::formatv("(void){0};", in));
          return success();
        }
        // The parameters it covers (all of them unless some reduction
        // names its own: expert parallelism), as runs of the flat buffer.
        StringRef grid = r.getGrid();
        for (auto [offset, n] : reducedRuns(r, layout))
          for (int16_t axis : r.getGridAxes()) {
            std::string at =
                offset ? llvm::formatv("G + {0}", offset).str() : "G";
            if (auto d = r.getDivisor())
              line(llvm::formatv("mtc::rt::grid::all_reduce_divide(*st.comm, "
                                 "{0}, {1}, {2}, {3});",
                                 runtimeAxis(grid, axis), at, n, *d));
            else
              line(llvm::formatv(
                  "mtc::rt::grid::all_reduce_mean(*st.comm, {0}, {1}, {2});",
                  runtimeAxis(grid, axis), at, n));
          }
        return success();
      })
      .Case([&](mtc::MoeExchangeCountsOp x) -> LogicalResult {
        line(llvm::formatv("mtc::rt::grid::moe_exchange_counts(*st.comm, {0}, "
                           "{1}, {2}, {3}, {4});",
                           runtimeAxis(x.getGrid(), x.getGridAxes()[0]),
                           buf(x.getCounts()), buf(x.getReceived()),
                           buf(x.getLocalCounts()), numel(x.getCounts())));
        return success();
      })
      .Case<mtc::MoeDispatchOp, mtc::MoeCombineOp>([&](auto x) -> LogicalResult {
        // The token side's rows (N, D): the dispatch's input, the
        // combine's result.
        Value tokens = isa<mtc::MoeDispatchOp>(op) ? x.getInput() : x.getResult();
        auto rows = shapeOf(tokens);
        line(llvm::formatv("mtc::rt::grid::{0}(*st.comm, {1}, {2}, {3}, {4}, "
                           "{5}, {6}, {7}, {8});",
                           op->getName().stripDialect(),
                           runtimeAxis(x.getGrid(), x.getGridAxes()[0]),
                           buf(x.getInput()), buf(x.getCounts()),
                           buf(x.getReceived()), buf(x.getResult()), rows[0],
                           rows[1], numel(x.getCounts())));
        return success();
      })
      .Case([&](mtc::AllGatherParamsOp g) -> LogicalResult {
        const OptimizerShard *sh = layout.shardOn(g.getGrid(), g.getGridAxes());
        if (!sh || g.getGridAxes().size() != 1)
          return op->emitOpError("host target: gathers the shards of a "
                                 "sharded optimizer over one grid axis");
        line("{");
        line(llvm::formatv("  std::vector<float> mine(P + {0}, P + {1});  // "
                           "({2})",
                           shardVar(*sh, "lo"), shardVar(*sh, "hi"),
                           sh->elements));
        line(llvm::formatv("  st.comm->all_gather({0}, mine.data(), {1}, "
                           "{2});",
                           runtimeAxis(g.getGrid(), g.getGridAxes()[0]),
                           plus("P", sh->begin), sh->elements));
        line("}");
        return success();
      })
      .Case([&](mtc::EmbeddingOp e) -> LogicalResult {
        auto t = shapeOf(e.getTable());
        if (Value start = e.getVocabStart()) {
          line(llvm::formatv("k::embedding_forward_shard({0}, {1}, {2}, {3}, "
                             "{4}, {5}, {6});",
                             buf(e.getTokens()), buf(e.getTable()), buf(e),
                             numel(e.getTokens()), t[0], t[1], buf(start)));
          return success();
        }
        line(llvm::formatv("if (!k::embedding_forward({0}, {1}, {2}, {3}, {4}, "
                           "{5})) {6}",
                           buf(e.getTokens()), buf(e.getTable()), buf(e), numel(e.getTokens()),
                           t[0], t[1],
                           dataError(llvm::formatv("token id outside [0, {0})",
                                                   t[0])
                                         .str())));
        return success();
      })
      .Case([&](mtc::EmbeddingGradOp e) -> LogicalResult {
        auto t = shapeOf(e);
        if (Value start = e.getVocabStart()) {
          line(llvm::formatv("k::embedding_backward_shard({0}, {1}, {2}, {3}, "
                             "{4}, {5}, {6});",
                             buf(e.getTokens()), buf(e.getDout()), buf(e),
                             numel(e.getTokens()), t[0], t[1], buf(start)));
          return success();
        }
        line(llvm::formatv("k::embedding_backward({0}, {1}, {2}, {3}, {4}, {5});",
                           buf(e.getTokens()), buf(e.getDout()), buf(e),
                           numel(e.getTokens()), t[0], t[1]));
        return success();
      })
      .Case([&](mtc::AddOp a) -> LogicalResult {
        line(llvm::formatv("k::add({0}, {1}, {2}, {3}, {4});", buf(a.getLhs()),
                           buf(a.getRhs()), buf(a), numel(a), numel(a.getRhs())));
        return success();
      })
      .Case([&](mtc::ReduceLeadingOp r) -> LogicalResult {
        line(llvm::formatv("k::reduce_broadcast({0}, {1}, {2}, {3});",
                           buf(r.getInput()), buf(r), numel(r.getInput()),
                           numel(r)));
        return success();
      })
      .Case([&](mtc::DropoutOp d) -> LogicalResult {
        // Evaluation (@forward) runs without dropout.
        double p = eval ? 0.0 : d.getP().convertToDouble();
        std::string key = llvm::formatv("mtc::rt::dropout_site_key({0}, "
                                        "st.step, st.global_microbatch)",
                                        d.getKey())
                              .str();
        if (auto slice = d->getAttrOfType<DictionaryAttr>("mtc.slice_of")) {
          // A slice along `dim` of the global tensor: local (outer, chunk)
          // is global (outer, parts, chunk)[:, index, :], so row o starts
          // at global element (o * parts + index) * chunk.
          int64_t dim = slice.getAs<IntegerAttr>("dim").getInt();
          int64_t axis = slice.getAs<IntegerAttr>("axis").getInt();
          int64_t parts = slice.getAs<IntegerAttr>("parts").getInt();
          int64_t outer = 1;
          for (int64_t i = 0; i < dim; ++i)
            outer *= shapeOf(d)[i];
          int64_t chunk = numel(d) / outer;
          line(llvm::formatv(
              "for (int64_t o = 0; o < {0}; ++o) k::dropout({1} + o * {2}, {3} "
              "+ o * {2}, {2}, {4}f, st.seed, {5}, (o * {6} + "
              "st.comm->index({7})) * {2});",
              outer, buf(d.getInput()), chunk, buf(d), fmt(p), key, parts,
              axis));
          return success();
        }
        line(llvm::formatv("k::dropout({0}, {1}, {2}, {3}f, st.seed, {4}, 0);",
                           buf(d.getInput()), buf(d), numel(d), fmt(p), key));
        return success();
      })
      .Case([&](mtc::MatmulOp m) -> LogicalResult {
        line(llvm::formatv(
            "k::matmul({0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8});",
            buf(m.getLhs()), buf(m.getRhs()),
            m.getBias() ? buf(m.getBias()) : "nullptr", buf(m), m.getM(),
            m.getN(), m.getK(), m.getTransposeA(), m.getTransposeB()));
        return success();
      })
      .Case([&](mtc::LayerNormGradOp n) -> LogicalResult {
        line(llvm::formatv("k::layer_norm_backward({0}, {1}, {2}, {3}, {4}, "
                           "{5}, {6}, {7}, {8}f);",
                           buf(n.getInput()), buf(n.getGamma()),
                           buf(n.getDout()), buf(n.getDinput()),
                           buf(n.getDgamma()), buf(n.getDbeta()),
                           rows(n.getInput()), shapeOf(n.getInput()).back(),
                           fmt(n.getEps().convertToDouble())));
        return success();
      })
      .Case([&](mtc::RmsNormGradOp n) -> LogicalResult {
        line(llvm::formatv("k::rms_norm_backward({0}, {1}, {2}, {3}, {4}, {5}, "
                           "{6}, {7}f);",
                           buf(n.getInput()), buf(n.getGamma()),
                           buf(n.getDout()), buf(n.getDinput()),
                           buf(n.getDgamma()), rows(n.getInput()),
                           shapeOf(n.getInput()).back(),
                           fmt(n.getEps().convertToDouble())));
        return success();
      })
      .Case([&](mtc::CrossEntropyOp c) -> LogicalResult {
        int64_t v = shapeOf(c.getLogits()).back();
        if (Value start = c.getVocabStart()) {
          line(llvm::formatv(
              "if (!mtc::rt::grid::vocab_parallel_cross_entropy_forward("
              "*st.comm, {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8})) {9}",
              *c.getGridAxis(), buf(c.getLogits()), buf(c.getTargets()),
              buf(c), numel(c.getTargets()), v, buf(start),
              c.getNumValidClasses(), int64_t(c.getIgnoreIndex()),
              dataError(llvm::formatv("target id outside [0, {0})",
                                      c.getNumValidClasses())
                            .str())));
          return success();
        }
        line(llvm::formatv(
            "if (!k::cross_entropy_forward({0}, {1}, {2}, {3}, {4}, {5}, {6})) "
            "{7}",
            buf(c.getLogits()), buf(c.getTargets()), buf(c),
            numel(c.getTargets()), v, c.getNumValidClasses(),
            int64_t(c.getIgnoreIndex()),
            dataError(llvm::formatv("target id outside [0, {0})",
                                    c.getNumValidClasses())
                          .str())));
        return success();
      })
      .Case([&](mtc::CrossEntropyGradOp c) -> LogicalResult {
        if (Value start = c.getVocabStart()) {
          line(llvm::formatv(
              "mtc::rt::grid::vocab_parallel_cross_entropy_backward(*st.comm, "
              "{0}, {1}, {2}, {3}[0], {4}, {5}, {6}, {7}, {8}, {9});",
              *c.getGridAxis(), buf(c.getLogits()), buf(c.getTargets()),
              buf(c.getDloss()), buf(c), numel(c.getTargets()),
              shapeOf(c.getLogits()).back(), buf(start),
              c.getNumValidClasses(), int64_t(c.getIgnoreIndex())));
          return success();
        }
        line(llvm::formatv(
            "k::cross_entropy_backward({0}, {1}, {2}[0], {3}, {4}, {5}, {6}, "
            "{7});",
            buf(c.getLogits()), buf(c.getTargets()), buf(c.getDloss()), buf(c),
            numel(c.getTargets()), shapeOf(c.getLogits()).back(),
            c.getNumValidClasses(), int64_t(c.getIgnoreIndex())));
        return success();
      })
      .Case([&](mtc::AccumulateGradOp a) -> LogicalResult {
        auto it = layout.slots.find(a.getParam());
        if (it == layout.slots.end())
          return op->emitOpError("accumulates into unknown parameter '")
                 << a.getParam() << "'";
        line(llvm::formatv("k::accumulate(G + {0}, {1}, {2});",
                           it->second.offset, buf(a.getGrad()),
                           numel(a.getGrad())));
        return success();
      })
      // An expert bias's loads live in its slot of the gradient buffer (a
      // not_trained parameter has no gradient); the update reads them,
      // moves the bias in the parameter buffer and zeroes the slot.
      .Case([&](mtc::MoeAccumulateLoadOp a) -> LogicalResult {
        auto it = layout.slots.find(a.getParam());
        if (it == layout.slots.end())
          return op->emitOpError("accumulates into unknown parameter '")
                 << a.getParam() << "'";
        line(llvm::formatv("k::moe_accumulate_load({0}, G + {1}, {2});",
                           buf(a.getCounts()), it->second.offset,
                           numel(a.getCounts())));
        return success();
      })
      .Case([&](mtc::MoeUpdateExpertBiasOp u) -> LogicalResult {
        auto it = layout.slots.find(u.getParam());
        if (it == layout.slots.end())
          return op->emitOpError("updates unknown parameter '")
                 << u.getParam() << "'";
        line(llvm::formatv("k::moe_update_expert_bias(G + {0}, P + {0}, {1}, "
                           "{2}f);",
                           it->second.offset,
                           it->second.op.getType().getNumElements(),
                           fmt(u.getRate().convertToDouble())));
        return success();
      })
      .Case([&](mtc::MicrobatchOp m) -> LogicalResult {
        names[m] = llvm::formatv("({0} + {1})", buf(m.getBatch()),
                                 m.getIndex() * numel(m))
                       .str();
        return success();
      })
      .Case([&](func::CallOp c) -> LogicalResult {
        auto callee = module.lookupSymbol<func::FuncOp>(c.getCallee());
        auto mb = c->getAttrOfType<IntegerAttr>(mtc::kMicrobatchAttr);
        if (!callee || !mtc::getPieceInfo(callee) || !mb)
          return op->emitOpError("host target: calls only pipeline pieces, "
                                 "each with mtc.microbatch");
        // Dropout keys: the microbatch's place in the global batch.
        line(llvm::formatv("st.microbatch = {0}; st.global_microbatch = {0} * "
                           "st.comm->size(1) + st.comm->index(1);",
                           mb.getInt()));
        PieceCallArgs args =
            pieceCallArgs(c, callee, [&](Value v) { return buf(v); });
        mtc::PieceInfo piece = *mtc::getPieceInfo(callee);
        const char kindChar = traceKind(piece.kind);
        line(llvm::formatv("{{ const double t0 = mtc::rt::trace_now(st); "
                           "float* in[] = {{{0}}; float* out[] = {{{1}}; "
                           "{2}(st, {3}, {4}, in, out); "
                           "mtc::rt::trace_record(st, '{5}', {6}, {7}, t0); }",
                           args.in, args.out, callee.getSymName(), args.tokens,
                           args.targets, kindChar, mb.getInt(), piece.chunk));
        return success();
      })
      .Case([&](mtc::P2POp p) -> LogicalResult {
        std::string ops;
        unsigned si = 0, ri = 0;
        for (Attribute a : p.getTransfers()) {
          mtc::PipelineTransfer t;
          std::string why;
          if (!mtc::parsePipelineTransfer(a, t, why))
            return op->emitOpError(why);
          Value v = t.send ? p.getSends()[si++] : p.getRecvs()[ri++];
          ops += llvm::formatv("{{{0}, {1}, {2}, {3}}, ",
                               t.send ? "true" : "false", buf(v), numel(v),
                               t.peer)
                     .str();
        }
        line(llvm::formatv("{{ const double t0 = mtc::rt::trace_now(st); "
                           "mtc::rt::P2PTransfer t[] = {{{0}}; "
                           "st.comm->p2p(0, t, {1}); "
                           "mtc::rt::trace_record(st, 'P', -1, -1, t0); }",
                           ops, p.getTransfers().size()));
        return success();
      })
      .Case([&](mtc::PipelineLossOp l) -> LogicalResult {
        line(llvm::formatv("losses[{0}] = {1}[0];", l.getMicrobatch(),
                           buf(l.getLoss())));
        return success();
      })
      .Case([&](mtc::SumTiedGradientsOp t) -> LogicalResult {
        // Every pipeline rank joins the sum; one without the parameter
        // adds zeros.
        auto it = layout.slots.find(t.getParam());
        if (it != layout.slots.end())
          line(llvm::formatv("st.comm->all_reduce_sum(0, G + {0}, {1});  // {2}",
                             it->second.offset, t.getElements(), t.getParam()));
        else
          line(llvm::formatv("{{ std::vector<float> zeros({0}); "
                             "st.comm->all_reduce_sum(0, zeros.data(), {0}); }  "
                             "// {1}, held by other pipeline ranks",
                             t.getElements(), t.getParam()));
        return success();
      })
      .Case([&](mtc::GradNormOp g) -> LogicalResult {
        names[g] = "grad_norm";
        double scale = g.getGradScale().convertToDouble();
        auto split = g->getAttrOfType<ArrayAttr>("tp_split_params");
        // Expert parallelism: each ep rank holds other experts.
        auto epSplit = g->getAttrOfType<ArrayAttr>("ep_split_params");
        bool sharded = !layout.shards.empty();
        // Sharded experts (over edp) are summed over dp with the rest.
        if (sharded && epSplit && layout.shards.size() > 1)
          return op->emitOpError("host target: `ep_split_params` with the "
                                 "experts' optimizer state sharded: each dp "
                                 "rank holds its own share of the experts, "
                                 "so the sum over ep would count them twice");
        // Pipeline: summed over the pipeline ranks, a tied copy counted on
        // its lowest rank only.
        const bool ppSum = g->hasAttr(mtc::kPpSumAttr);
        llvm::StringSet<> skip;
        if (auto a = g->getAttrOfType<ArrayAttr>(mtc::kPpSkipParamsAttr))
          for (Attribute n : a)
            skip.insert(cast<StringAttr>(n).getValue());
        if (!split && !sharded && !ppSum && !epSplit) {
          // Padding between parameters is never written, so it stays zero.
          line(llvm::formatv("const float grad_norm = float(std::sqrt("
                             "k::sum_squares(G, {0})) * {1});",
                             layout.totalElements, fmt(scale)));
          return success();
        }
        // Split parameters: each rank holds a slice, so their squared norms
        // are summed over the tp group; whole ones are counted once. A
        // sharded optimizer sums this rank's shard, then over its group.
        llvm::StringSet<> isSplit, isExpert;
        if (split)
          for (Attribute a : split)
            isSplit.insert(cast<StringAttr>(a).getValue());
        if (epSplit)
          for (Attribute a : epSplit)
            isExpert.insert(cast<StringAttr>(a).getValue());
        if (epSplit)
          line("double sq[4] = {0, 0, 0, 0};  // split over tp, whole, "
               "experts (split over ep), experts split over ep and tp");
        else
          line("double sq[2] = {0, 0};  // split over tp, whole");
        if (sharded)
          line("int64_t a = 0, b = 0;");
        for (const std::string &name : layout.order) {
          if (skip.contains(name))
            continue;
          ParamSlot slot = layout.slots.lookup(name);
          int64_t n = slot.op.getType().getNumElements();
          const char *dst = isSplit.count(name) && isExpert.count(name)
                                ? "sq[3]"
                            : isSplit.count(name)  ? "sq[0]"
                            : isExpert.count(name) ? "sq[2]"
                                                   : "sq[1]";
          if (sharded)
            line(llvm::formatv("if ({4}({0}, {1}, &a, &b)) {2} += "
                               "k::sum_squares(G + a, b - a);  // {3}",
                               slot.offset, n, dst, name,
                               shardVar(*layout.shardAt(slot.offset),
                                        "in_shard")));
          else
            line(llvm::formatv("{0} += k::sum_squares(G + {1}, {2});", dst,
                               slot.offset, n));
        }
        line("float sums[2] = {float(sq[0]), float(sq[1])};");
        if (epSplit) {
          // Summed over ep first; those also split over tp join the tp sum.
          line("float experts[2] = {float(sq[2]), float(sq[3])};");
          line(llvm::formatv("st.comm->all_reduce_sum({0}, experts, 2);",
                             runtimeAxis(mtc::kExpertGridName,
                                         mtc::kExpertAxisEP)));
          line("sums[1] += experts[0];");
          line("sums[0] += experts[1];");
        }
        if (sharded)
          line(llvm::formatv("st.comm->all_reduce_sum({0}, sums, 2);",
                             runtimeAxis(layout.shards.front().grid,
                                         layout.shardAxis)));
        if (split)
          line("st.comm->all_reduce_sum(2, sums, 1);");
        if (ppSum)
          line("st.comm->all_reduce_sum(0, sums, 2);");
        line(llvm::formatv("const float grad_norm = float(std::sqrt(double("
                           "sums[0]) + double(sums[1]))) * {0}f;",
                           fmt(scale)));
        return success();
      })
      .Case([&](mtc::AdamWOp a) -> LogicalResult {
        double maxNorm = a.getMaxGradNorm().convertToDouble();
        line("{");
        line(llvm::formatv("  float scale = {0}f;",
                           fmt(a.getGradScale().convertToDouble())));
        if (maxNorm > 0)
          line(llvm::formatv("  if ({0} > {1}f) scale *= {1}f / {0};",
                             buf(a.getNorm()), fmt(maxNorm)));
        for (Attribute n : a.getParams()) {
          StringRef name = cast<StringAttr>(n).getValue();
          auto it = layout.slots.find(name);
          if (it == layout.slots.end())
            return op->emitOpError("updates unknown parameter '") << name << "'";
          int64_t off = it->second.offset;
          int64_t elems = it->second.op.getType().getNumElements();
          // The elements this rank updates, and where their moments are:
          // the whole tensor, or (distributed optimizer) its part in this
          // rank's shard, moments indexed from the shard's start.
          std::string guard, at = std::to_string(off),
                             state = std::to_string(off),
                             count = std::to_string(elems);
          if (const OptimizerShard *sh = layout.shardAt(off)) {
            guard = llvm::formatv("if (int64_t a = 0, b = 0; {2}({0}, "
                                  "{1}, &a, &b)) ",
                                  off, elems, shardVar(*sh, "in_shard"))
                        .str();
            at = "a";
            state = sh->stateOffset
                        ? llvm::formatv("(a - {0} + {1})", shardVar(*sh, "lo"),
                                        sh->stateOffset)
                              .str()
                        : llvm::formatv("(a - {0})", shardVar(*sh, "lo")).str();
            count = "b - a";
          }
          line(llvm::formatv(
              "  {0}k::adamw(P + {1}, G + {1}, st.exp_avg + {2}, st.exp_avg_sq "
              "+ {2}, {3}, {4}, {5}f, {6}f, {7}f, {8}f, {9}, scale);  // {10}",
              guard, at, state, count, buf(a.getLr()),
              fmt(a.getBeta1().convertToDouble()),
              fmt(a.getBeta2().convertToDouble()),
              fmt(a.getEps().convertToDouble()),
              fmt(a.getWeightDecay().convertToDouble()), buf(a.getStep()),
              name));
        }
        line("}");
        return success();
      })
      .Case([&](func::ReturnOp r) -> LogicalResult {
        if (kind == Kind::Step) {
          line("return;");
          return success();
        }
        if (kind == Kind::Piece) {
          // Results not already written in place go to the caller's buffers.
          for (auto [k, v] : llvm::enumerate(r.getOperands())) {
            std::string dst = llvm::formatv("out[{0}]", k).str();
            if (buf(v) != dst)
              line(llvm::formatv("std::copy({0}, {0} + {1}, {2});", buf(v),
                                 numel(v), dst));
          }
          line("return 0.0f;");
          return success();
        }
        if (r.getNumOperands() != 1)
          return op->emitOpError("host functions return exactly one value");
        Value v = r.getOperand(0);
        line(llvm::formatv("return {0}{1};", buf(v),
                           isa<RankedTensorType>(v.getType()) ? "[0]" : ""));
        return success();
      })
      .Default([&](Operation *other) -> LogicalResult {
        // The kernel table (KernelOpInterface) for every other op.
        if (auto call = kernelCall(other, [&](Value v) { return buf(v); })) {
          line(formatCall(*call, ""));
          return success();
        }
        return other->emitOpError("has no lowering to the host target");
      });
}

LogicalResult HostEmitter::emitPiece(func::FuncOp fn) {
  names.clear();
  kind = Kind::Piece;
  // Arguments: the microbatch's tokens and targets, the rest from `in`;
  // results written straight into `out` when the value is returned once
  // and computed here.
  unsigned next = 0;
  for (auto [i, a] : llvm::enumerate(fn.getArguments())) {
    auto role = fn.getArgAttrOfType<StringAttr>(i, mtc::kRoleAttr);
    if (role && (role.getValue() == "tokens" || role.getValue() == "targets"))
      names[a] = role.getValue().str();
    else
      names[a] = llvm::formatv("in[{0}]", next++).str();
  }
  auto ret = cast<func::ReturnOp>(fn.getBody().front().getTerminator());
  llvm::DenseMap<Value, int> uses;
  for (Value v : ret.getOperands())
    ++uses[v];
  for (auto [k, v] : llvm::enumerate(ret.getOperands()))
    if (uses[v] == 1 && !isa<BlockArgument>(v) && !v.getDefiningOp<mtc::ParamOp>() &&
        !names.count(v))
      names[v] = llvm::formatv("out[{0}]", k).str();
  planFunction(fn);
  pieceArena = std::max(pieceArena, plan.size);
  os << "float " << fn.getSymName()
     << "(HostState& st, const int32_t* tokens, const int32_t* targets, "
        "float* const* in, float* const* out) {\n";
  line("float* P = st.params;");
  line("float* G = st.grads;");
  line("float* A = st.arena;");
  line("(void)P; (void)G; (void)A; (void)tokens; (void)targets; (void)in; (void)out;");
  for (Operation &op : fn.getBody().front())
    if (failed(emitOp(&op, mtc::getPieceInfo(fn)->kind == mtc::PieceKind::Eval)))
      return failure();
  os << "}\n\n";
  return success();
}

LogicalResult HostEmitter::emitStep(func::FuncOp fn, int64_t base) {
  names.clear();
  kind = Kind::Step;
  names[fn.getArgument(0)] = "tokens";
  names[fn.getArgument(1)] = "targets";
  planFunction(fn);
  stepArena = std::max(stepArena, plan.size);
  os << "void " << fn.getSymName()
     << "(HostState& st, const int32_t* tokens, const int32_t* targets, "
        "float* losses) {\n";
  line("float* P = st.params;");
  line("float* G = st.grads;");
  line(llvm::formatv("float* A = st.arena + {0};  // after the pieces' own "
                     "values: what the step holds between pieces",
                     base));
  line("(void)P; (void)G; (void)A; (void)losses;");
  for (Operation &op : fn.getBody().front())
    if (failed(emitOp(&op, false)))
      return failure();
  os << "}\n\n";
  return success();
}

LogicalResult HostEmitter::runPipeline(mtc::EmitResult &out) {
  const mtc::PipelineConfig cfg = mtc::getPipelineConfig(module);
  std::vector<ProgramDescStage> stages;
  for (int64_t r = 0; r < cfg.pp; ++r) {
    FailureOr<mtc::RankFunctions> rank = mtc::getRankFunctions(module, r);
    if (failed(rank))
      return failure();
    layout = ParamLayout(module, mtc::functionsOfRank(module, r));
    pieceArena = stepArena = 0;
    for (func::FuncOp fn : rank->pieces)
      if (failed(emitPiece(fn)))
        return failure();
    func::FuncOp step = rank->step, eval = rank->eval,
                 optimizer = rank->optimizer;
    const int64_t base = (pieceArena + 15) / 16 * 16;
    if (failed(emitStep(step, base)) || failed(emitStep(eval, base)))
      return failure();
    arena = 0;
    if (failed(emitFunction(optimizer, false)))
      return failure();
    ProgramDescStage st;
    st.layout = layout;
    st.arenaWords = std::max(base + stepArena, arena);
    st.step = step.getSymName().str();
    st.eval = eval.getSymName().str();
    st.optimizer = optimizer.getSymName().str();
    for (auto call : step.getOps<func::CallOp>())
      if (auto callee = module.lookupSymbol<func::FuncOp>(call.getCallee()))
        callee.walk([&](mtc::CostOpInterface c) {
          if (!c->hasAttr(mtc::kRecomputedAttr))
            st.flops += c.getFlops();
        });
    out.arenaElements = std::max(out.arenaElements, st.arenaWords);
    out.stageArenaElements.push_back(st.arenaWords);
    stages.push_back(std::move(st));
  }
  layout = ParamLayout(module);
  out.source = header() + body + "}  // namespace\n\n";
  ProgramDescExtras extras;
  extras.target = "host";
  extras.stages = std::move(stages);
  out.source += emitProgramDesc(module, layout, extras);
  return success();
}

std::string HostEmitter::header() {
  auto name = module->getAttrOfType<StringAttr>("mtc.model");
  std::string src;
  llvm::raw_string_ostream s(src);
  s << "// Generated by mtc from model '" << escape(name ? name.str() : "")
    << "' for the host target (fp32). Do not edit: recompile the spec.\n"
    << "// Each kernel call is preceded by the IR op and location it lowers.\n"
    << "#include <cmath>\n#include <cstdint>\n#include <limits>\n\n"
    << "#include <algorithm>\n#include <vector>\n\n"
    << "#include \"mtc/rt/dropout_hash.h\"\n"
    << "#include \"mtc/rt/grid_ops.h\"\n"
    << "#include \"mtc/rt/host_kernels.h\"\n#include \"mtc/rt/program.h\"\n"
    << (mtc::isPipelineModule(module) ? "#include \"mtc/rt/trace.h\"\n" : "")
    << "\n"
    << "namespace {\nusing mtc::rt::HostState;\nnamespace k = "
       "mtc::rt::host;\n\n"
    << "float data_error(HostState& st, const char* message) {\n"
    << "  st.error = message;\n"
    << "  return std::numeric_limits<float>::quiet_NaN();\n}\n\n";
  return src;
}

LogicalResult HostEmitter::run(mtc::EmitResult &out) {
  if (mtc::isPipelineModule(module))
    return runPipeline(out);
  FailureOr<TrainingFunctions> fns = getTrainingFunctions(module);
  if (failed(fns) || failed(emitFunction(fns->forward, /*eval=*/true)) ||
      failed(emitFunction(fns->train, /*eval=*/false)) ||
      failed(emitFunction(fns->optimizer, /*eval=*/false)))
    return failure();

  std::string src = header();
  llvm::raw_string_ostream s(src);
  s << body << "}  // namespace\n\n";
  ProgramDescExtras extras;
  extras.target = "host";
  extras.arenaWords = arena;
  s << emitProgramDesc(module, layout, extras);
  out.source = std::move(src);
  out.arenaElements = arena;
  return success();
}

} // namespace

LogicalResult mtc::emitHostProgram(ModuleOp module, EmitResult &out) {
  return HostEmitter(module).run(out);
}
