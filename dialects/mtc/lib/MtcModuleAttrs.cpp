//===- MtcModuleAttrs.cpp - the verifier of the module's mtc.* attributes -===//
//
// The importer writes the training configuration and the parallel plan as
// attributes of the module; passes and code generation read them. They are
// verified here, in one place: MtcDialect::verifyOperationAttribute runs
// wherever IR is verified (after parsing, after every pass, after import),
// so no pass sees a grid axis of size 0 or a learning rate the training
// program would refuse. Errors are at the module's location and name the
// attribute, the key and what would be valid; they are tested in
// test/lit/Dialect/invalid_module_attrs.mlir.
//
// Checks (keys may be left out: readers take defaults; each key present is
// checked, and rules between keys apply when all their keys are present):
//  - mtc.parallel: a dictionary; tp, pp, dp integers >= 1 with tp * pp * dp
//    at most 2^40; virtual_stages an integer >= 1; sp and
//    distributed_optimizer booleans, sp only with tp > 1; schedule one of
//    "gpipe", "1f1b", "interleaved"; no other key. An existing
//    `shard.grid @mtc_grid` has the shape pp x dp x tp.
//  - mtc.training: a dictionary; micro_batch_size, global_batch_size,
//    num_microbatches, seq_length, vocab_size, train_steps integers >= 1;
//    warmup_steps, decay_steps integers >= 0; seed an integer; every integer
//    at most 2^40 (the seed excepted), and so are the tokens of a step,
//    global_batch_size * seq_length; lr > 0, min_lr in [0, lr],
//    beta1 and beta2 in [0, 1), eps > 0, weight_decay >= 0, grad_clip >= 0,
//    all finite floats; precision one of "fp32", "bf16", "fp16"; decay one
//    of "constant", "linear", "cosine"; no other key. What the training
//    program refuses (runtime/src/common/program_setup.cpp,
//    lr_schedule.cpp): global_batch_size = micro_batch_size *
//    num_microbatches * dp, and a decaying schedule's horizon (decay_steps,
//    or train_steps when 0) beyond warmup_steps (no decay key: cosine).
//  - mtc.recompute: "none", "selective", "full" or "auto" (mtc-plan-recompute).
//  - mtc.model: a non-empty string. mtc.tp_backward_lanes: a unit attribute.
//    mtc.tp_lanes: "two-streams" or "one-stream"; mtc.tp_allreduce: "auto"
//    or "nccl" (code-generation options).
//  - mtc.pipeline_layout (mtc-pipeline-stages): an array of strings, one
//    per pipeline chunk (pp * virtual_stages of mtc.parallel).
//  - No other mtc.* attribute on a module (a misspelled one would be
//    silently ignored), and the module's attributes only on a module.
//
//===----------------------------------------------------------------------===//
#include "mtc/Dialect/MtcDialect.h"

#include "mlir/Dialect/Shard/IR/ShardOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/SymbolTable.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/Support/CheckedArithmetic.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <tuple>
#include <string>

using namespace mlir;
using namespace mtc;

namespace {

constexpr int64_t kMaxInt = int64_t(1) << 40;

/// Shortest decimal form that reads back as `v` ("0.1", "1e-08"), as the
/// spec's messages write numbers.
std::string fmt(double v) {
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v)
      break;
  }
  return buf;
}

constexpr llvm::StringLiteral kParallel = "mtc.parallel";
constexpr llvm::StringLiteral kTraining = "mtc.training";
constexpr llvm::StringLiteral kRecompute = "mtc.recompute";
constexpr llvm::StringLiteral kModel = "mtc.model";
constexpr llvm::StringLiteral kBackwardLanes = kTpBackwardLanesAttr;
constexpr llvm::StringLiteral kTpLanes = kTpLanesAttr;
constexpr llvm::StringLiteral kTpAllReduce = kTpAllReduceAttr;

/// Reads and checks the keys of one dictionary attribute, reporting at `op`.
class DictChecker {
public:
  DictChecker(Operation *op, StringRef name, DictionaryAttr dict)
      : op(op), name(name), dict(dict) {}

  /// An i64 in [lo, hi]; nullopt if absent (or bad, reported).
  std::optional<int64_t> integer(StringRef key, int64_t lo,
                                 int64_t hi = kMaxInt) {
    Attribute a = take(key);
    if (!a)
      return std::nullopt;
    auto i = dyn_cast<IntegerAttr>(a);
    if (!i || !i.getType().isSignlessInteger(64)) {
      fail(key) << "must be an integer (i64), got " << a;
      return std::nullopt;
    }
    int64_t v = i.getInt();
    if (v < lo || v > hi) {
      auto d = fail(key);
      d << "must be an integer ";
      if (hi == INT64_MAX)
        d << ">= " << lo;
      else
        d << "in [" << lo << ", " << hi << "]";
      d << ", got " << v;
      return std::nullopt;
    }
    return v;
  }

  /// A finite float in the interval from lo to hi (open ends exclude the
  /// bound; hi = inf: no upper bound).
  std::optional<double> real(StringRef key, double lo, bool loOpen, double hi,
                             bool hiOpen) {
    Attribute a = take(key);
    if (!a)
      return std::nullopt;
    auto f = dyn_cast<FloatAttr>(a);
    if (!f) {
      fail(key) << "must be a float (like 0.5), got " << a;
      return std::nullopt;
    }
    double v = f.getValueAsDouble();
    bool good = std::isfinite(v) && (loOpen ? v > lo : v >= lo) &&
                (hiOpen ? v < hi : v <= hi);
    if (!good) {
      auto d = fail(key);
      d << "must be a finite float ";
      if (std::isinf(hi))
        d << (loOpen ? "> " : ">= ") << fmt(lo);
      else
        d << "in " << (loOpen ? "(" : "[") << fmt(lo) << ", " << fmt(hi)
          << (hiOpen ? ")" : "]");
      d << ", got " << fmt(v);
      return std::nullopt;
    }
    return v;
  }

  std::optional<bool> boolean(StringRef key) {
    Attribute a = take(key);
    if (!a)
      return std::nullopt;
    auto b = dyn_cast<BoolAttr>(a);
    if (!b) {
      fail(key) << "must be true or false, got " << a;
      return std::nullopt;
    }
    return b.getValue();
  }

  /// Any string (its meaning is checked where it is used).
  std::optional<StringRef> string(StringRef key) {
    Attribute a = take(key);
    if (!a)
      return std::nullopt;
    auto s = dyn_cast<StringAttr>(a);
    if (!s) {
      fail(key) << "must be a string, got " << a;
      return std::nullopt;
    }
    return s.getValue();
  }

  /// One of `valid`.
  std::optional<StringRef> oneOf(StringRef key,
                                 ArrayRef<llvm::StringLiteral> valid) {
    Attribute a = take(key);
    if (!a)
      return std::nullopt;
    auto s = dyn_cast<StringAttr>(a);
    if (!s || !llvm::is_contained(valid, s.getValue())) {
      auto d = fail(key);
      d << "must be one of ";
      llvm::interleaveComma(valid, d,
                            [&](StringRef v) { d << "\"" << v << "\""; });
      d << ", got " << a;
      return std::nullopt;
    }
    return s.getValue();
  }

  /// Reports keys not read by the calls above; returns the verdict.
  LogicalResult finish() {
    for (NamedAttribute entry : dict)
      if (!read.contains(entry.getName().getValue())) {
        auto d = op->emitOpError()
                 << "attribute '" << name << "' has an unknown key '"
                 << entry.getName().getValue() << "' (known keys: ";
        llvm::interleaveComma(read, d);
        d << ")";
        failed = true;
      }
    return failure(failed);
  }

  /// An error about the dictionary as a whole (a rule between keys).
  InFlightDiagnostic error() {
    failed = true;
    return op->emitOpError() << "attribute '" << name << "': ";
  }

  bool hasFailed() const { return failed; }

private:
  Attribute take(StringRef key) {
    read.insert(key);
    return dict.get(key);
  }
  InFlightDiagnostic fail(StringRef key) {
    failed = true;
    return op->emitOpError()
           << "attribute '" << name << "': '" << key << "' ";
  }

  Operation *op;
  StringRef name;
  DictionaryAttr dict;
  llvm::SetVector<StringRef> read;
  bool failed = false;
};

DictionaryAttr dictOf(Operation *op, NamedAttribute attr) {
  auto dict = dyn_cast<DictionaryAttr>(attr.getValue());
  if (!dict)
    op->emitOpError() << "attribute '" << attr.getName().getValue()
                      << "' must be a dictionary, got " << attr.getValue();
  return dict;
}

/// A size mtc.parallel gives (1 when absent or bad: that is reported
/// there).
int64_t parallelSize(ModuleOp module, StringRef key) {
  auto plan = module->getAttrOfType<DictionaryAttr>(kParallel);
  auto v = plan ? plan.getAs<IntegerAttr>(key) : IntegerAttr();
  return v && v.getType().isSignlessInteger(64) && v.getInt() >= 1
             ? v.getInt()
             : 1;
}

int64_t dataParallelSize(ModuleOp module) { return parallelSize(module, "dp"); }

LogicalResult verifyParallel(ModuleOp module, NamedAttribute attr) {
  DictionaryAttr dict = dictOf(module, attr);
  if (!dict)
    return failure();
  DictChecker c(module, kParallel, dict);
  std::optional<int64_t> tp = c.integer("tp", 1), pp = c.integer("pp", 1),
                         dp = c.integer("dp", 1), ep = c.integer("ep", 1);
  c.integer("virtual_stages", 1);
  std::optional<bool> sp = c.boolean("sp");
  c.boolean("distributed_optimizer");
  c.oneOf("schedule", {"gpipe", "1f1b", "interleaved", "zb-h1"});
  c.string("layout");
  if (failed(c.finish()))
    return failure();
  int64_t t = tp.value_or(1), p = pp.value_or(1), d = dp.value_or(1);
  std::optional<int64_t> world = llvm::checkedMul(t, p);
  if (world)
    world = llvm::checkedMul(*world, d);
  if (!world || *world > kMaxInt)
    return c.error() << "tp * pp * dp = " << t << " * " << p << " * " << d
                     << " devices is more than 2^40";
  if (d % ep.value_or(1) != 0)
    return c.error() << "expert parallelism is carved out of data "
                        "parallelism: ep = "
                     << ep.value_or(1) << " must divide dp = " << d;
  if (sp.value_or(false) && t == 1)
    return c.error() << "sequence parallelism (sp = true) needs tensor "
                        "parallelism, tp > 1, got tp = 1";
  // A grid written before (by a pass or by hand) must be the plan's.
  if (auto grid = dyn_cast_or_null<shard::GridOp>(
          SymbolTable::lookupSymbolIn(module, kGridName))) {
    SmallVector<int64_t> expected = {p, d, t};
    if (grid.getShape() != ArrayRef<int64_t>(expected)) {
      InFlightDiagnostic diag = c.error()
                                << "the grid @" << kGridName << " has shape ";
      llvm::interleave(grid.getShape(), diag, "x");
      diag << ", but the plan's grid is pp x dp x tp = " << p << "x" << d
           << "x" << t;
      diag.attachNote(grid.getLoc()) << "the grid is here";
      return diag;
    }
  }
  return success();
}

LogicalResult verifyTraining(ModuleOp module, NamedAttribute attr) {
  DictionaryAttr dict = dictOf(module, attr);
  if (!dict)
    return failure();
  const double inf = INFINITY;
  DictChecker c(module, kTraining, dict);
  std::optional<int64_t> micro = c.integer("micro_batch_size", 1),
                         global = c.integer("global_batch_size", 1),
                         microbatches = c.integer("num_microbatches", 1);
  std::optional<int64_t> seq = c.integer("seq_length", 1);
  c.integer("vocab_size", 1);
  std::optional<int64_t> steps = c.integer("train_steps", 1),
                         warmup = c.integer("warmup_steps", 0),
                         decaySteps = c.integer("decay_steps", 0);
  c.integer("seed", INT64_MIN, INT64_MAX);
  c.oneOf("precision", {"fp32", "bf16", "fp16"});
  std::optional<StringRef> decay =
      c.oneOf("decay", {"constant", "linear", "cosine"});
  std::optional<double> lr = c.real("lr", 0, true, inf, false),
                        minLr = c.real("min_lr", 0, false, inf, false);
  c.real("beta1", 0, false, 1, true);
  c.real("beta2", 0, false, 1, true);
  c.real("eps", 0, true, inf, false);
  c.real("weight_decay", 0, false, inf, false);
  c.real("grad_clip", 0, false, inf, false);
  if (failed(c.finish()))
    return failure();

  if (lr && minLr && *minLr > *lr)
    c.error() << "min_lr (" << fmt(*minLr) << ") is greater than lr ("
              << fmt(*lr) << "); the learning rate decays from lr down to "
              << "min_lr";
  if (micro && global && microbatches) {
    int64_t dp = dataParallelSize(module);
    // Each factor is at most 2^40: the product fits in 128 bits, not 64.
    std::optional<int64_t> perStep = llvm::checkedMul(*micro, *microbatches);
    if (perStep)
      perStep = llvm::checkedMul(*perStep, dp);
    if (!perStep || *perStep != *global)
      c.error() << "global_batch_size (" << *global
                << ") must equal micro_batch_size * num_microbatches * dp = "
                << *micro << " * " << *microbatches << " * " << dp;
  }
  std::optional<int64_t> tokens =
      global && seq ? llvm::checkedMul(*global, *seq) : std::optional<int64_t>(0);
  if (!tokens || *tokens > kMaxInt)
    c.error() << "a step reads global_batch_size * seq_length = " << *global
              << " * " << *seq << " tokens, more than 2^40";
  // The training program's rule (check_lr_schedule): lr_at divides by the
  // decay's length after the warm-up. An absent decay is cosine, as the code
  // generators write it.
  StringRef decayName = decay.value_or("cosine");
  if (warmup && decayName != "constant" &&
      (decaySteps.value_or(0) > 0 || steps)) {
    bool fromSteps = decaySteps.value_or(0) == 0;
    int64_t horizon = fromSteps ? *steps : *decaySteps;
    if (horizon <= *warmup)
      c.error() << "the '" << decayName << "' decay ends at "
                << (fromSteps ? "train_steps" : "decay_steps") << " ("
                << horizon << "), which must be after warmup_steps ("
                << *warmup << "); the training program refuses this schedule";
  }
  return failure(c.hasFailed());
}

LogicalResult verifyRecompute(ModuleOp module, NamedAttribute attr) {
  auto s = dyn_cast<StringAttr>(attr.getValue());
  if (s && llvm::is_contained(
               {llvm::StringRef("none"), llvm::StringRef("selective"),
                llvm::StringRef("full"), llvm::StringRef("auto")},
               s.getValue()))
    return success();
  return module.emitOpError()
         << "attribute '" << kRecompute
         << "' must be one of \"none\", \"selective\", \"full\", \"auto\" "
            "(the policy mtc-plan-recompute applies), got "
         << attr.getValue();
}

} // namespace

LogicalResult MtcDialect::verifyOperationAttribute(Operation *op,
                                                   NamedAttribute attr) {
  StringRef name = attr.getName().getValue();
  bool moduleLevel = llvm::is_contained(
      {kParallel, kTraining, kRecompute, kModel, kBackwardLanes}, name);
  auto module = dyn_cast<ModuleOp>(op);
  if (!module) {
    // Attributes passes attach to other ops (mtc.shard, mtc.slice_of,
    // mtc.sequence_parallel) are their readers' business.
    if (moduleLevel)
      return op->emitOpError() << "attribute '" << name
                               << "' belongs on the module (builtin.module)";
    return success();
  }
  if (name == kParallel)
    return verifyParallel(module, attr);
  if (name == kTraining)
    return verifyTraining(module, attr);
  if (name == kRecompute)
    return verifyRecompute(module, attr);
  if (name == kModel) {
    auto s = dyn_cast<StringAttr>(attr.getValue());
    if (!s || s.getValue().empty())
      return op->emitOpError() << "attribute '" << kModel
                               << "' must be a non-empty string (the model's "
                                  "name), got "
                               << attr.getValue();
    return success();
  }
  if (name == kPipelineLayoutAttr) {
    auto a = dyn_cast<ArrayAttr>(attr.getValue());
    const int64_t chunks = parallelSize(module, "pp") *
                           parallelSize(module, "virtual_stages");
    if (!a || int64_t(a.size()) != chunks ||
        !llvm::all_of(a, [](Attribute e) { return isa<StringAttr>(e); }))
      return op->emitOpError()
             << "attribute '" << kPipelineLayoutAttr
             << "' must be an array of " << chunks
             << " strings (one per pipeline chunk, pp * virtual_stages), got "
             << attr.getValue();
    return success();
  }
  if (name == kBackwardLanes) {
    if (!isa<UnitAttr>(attr.getValue()))
      return op->emitOpError() << "attribute '" << kBackwardLanes
                               << "' must be a unit attribute, got "
                               << attr.getValue();
    return success();
  }
  // The code-generation options (mtc compile --tp-lanes, --tp-allreduce).
  for (auto [option, a, b] : {std::tuple(kTpLanes, "two-streams", "one-stream"),
                              std::tuple(kTpAllReduce, "auto", "nccl")}) {
    if (name != option)
      continue;
    auto s = dyn_cast<StringAttr>(attr.getValue());
    if (!s || (s.getValue() != a && s.getValue() != b))
      return op->emitOpError() << "attribute '" << option << "' must be \""
                               << a << "\" or \"" << b << "\", got "
                               << attr.getValue();
    return success();
  }
  return op->emitOpError() << "unknown module attribute '" << name
                           << "' (known: " << kModel << ", " << kParallel
                           << ", " << kRecompute << ", " << kTraining << ", "
                           << kBackwardLanes << ", " << kTpLanes << ", "
                           << kTpAllReduce << ", " << kPipelineLayoutAttr
                           << ")";
}
