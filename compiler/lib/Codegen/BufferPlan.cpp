//===- BufferPlan.cpp - first-fit arena planning over exact lifetimes ------===//
//
// Steps:
//  1. Number the ops of the (single-block) function; record each value's
//     last use.
//  2. Walk the ops: allocate each result (and each value whose storage is
//     taken early at this op, ExecutionHints::liveFrom) first-fit among
//     free intervals (growing the arena when none fits), then free the
//     operands whose last use is this op and the results nobody uses.
//     Results are allocated before operands are freed, so an op never
//     writes over its inputs.
//
//===----------------------------------------------------------------------===//
#include "mtc/Codegen/BufferPlan.h"

#include <map>
#include <vector>

using namespace mlir;

namespace {
class FreeList {
public:
  int64_t allocate(int64_t n) {
    for (auto it = free.begin(); it != free.end(); ++it) {
      if (it->second < n)
        continue;
      int64_t off = it->first, len = it->second;
      free.erase(it);
      if (len > n)
        free[off + n] = len - n;
      return off;
    }
    // Extend the arena, merging with a free tail if there is one.
    int64_t off = end;
    if (!free.empty()) {
      auto last = std::prev(free.end());
      if (last->first + last->second == end) {
        off = last->first;
        free.erase(last);
      }
    }
    end = off + n;
    return off;
  }
  void release(int64_t off, int64_t n) {
    auto it = free.emplace(off, n).first;
    auto next = std::next(it);
    if (next != free.end() && off + n == next->first) {
      it->second += next->second;
      free.erase(next);
    }
    if (it != free.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == it->first) {
        prev->second += it->second;
        free.erase(it);
      }
    }
  }
  int64_t size() const { return end; }

private:
  std::map<int64_t, int64_t> free; // offset -> length
  int64_t end = 0;
};
} // namespace

mtc::BufferPlan mtc::planBuffers(func::FuncOp fn,
                                 llvm::function_ref<int64_t(Value)> elements,
                                 int64_t align, const ExecutionHints &hints) {
  BufferPlan plan;
  Block &body = fn.getBody().front();
  llvm::DenseMap<Operation *, int64_t> index;
  int64_t i = 0;
  for (Operation &op : body)
    index[&op] = i++;
  // A fused op's uses happen when its group runs.
  auto when = [&](Operation *op) {
    while (Operation *host = hints.fusedInto.lookup(op))
      op = host;
    return index[op];
  };
  // In-place values share their root's storage and lifetime.
  auto root = [&](Value v) {
    while (Value r = hints.inPlaceOf.lookup(v))
      v = r;
    return v;
  };
  // The end of the concurrent run an op index falls in (or the index).
  std::vector<int64_t> runEnd(i);
  for (int64_t k = 0; k < i; ++k)
    runEnd[k] = k;
  for (auto [first, last] : hints.concurrentRuns)
    for (int64_t k = index[first]; k <= index[last]; ++k)
      runEnd[k] = index[last];
  llvm::DenseMap<Value, int64_t> lastUse;
  for (Operation &op : body) {
    for (Value v : op.getOperands()) {
      Value r = root(v);
      lastUse[r] = std::max(lastUse.lookup(r), runEnd[when(&op)]);
    }
    if (runEnd[index[&op]] != index[&op])
      for (Value v : op.getResults()) {
        Value r = root(v);
        lastUse[r] = std::max(lastUse.lookup(r), runEnd[index[&op]]);
      }
  }

  auto rounded = [&](int64_t n) { return (n + align - 1) / align * align; };
  FreeList arena;
  // Values are freed after the op at their last use, so ops are visited in
  // order and each frees what dies at its index.
  llvm::DenseMap<int64_t, SmallVector<Value>> dying;
  // Values whose storage is taken before their definition (liveFrom), in
  // program order of their definitions (the plan must not depend on the
  // hints' hash order).
  llvm::DenseMap<Operation *, SmallVector<Value>> early;
  for (Operation &op : body)
    for (Value v : op.getResults())
      if (Operation *at = hints.liveFrom.lookup(v); at && !hints.inPlaceOf.count(v))
        early[at].push_back(v);
  for (Operation &op : body) {
    SmallVector<Value> taken(op.getResults());
    taken.append(early.lookup(&op));
    for (Value r : taken) {
      if (hints.inPlaceOf.count(r) || plan.offset.count(r))
        continue;
      int64_t n = elements(r);
      if (n <= 0)
        continue;
      plan.offset[r] = arena.allocate(rounded(n));
      Operation *def = r.getDefiningOp();
      int64_t born = def ? index[def] : index[&op];
      auto lu = lastUse.find(r);
      dying[lu == lastUse.end() ? born : std::max(born, lu->second)].push_back(r);
    }
    for (Value v : dying.lookup(index[&op]))
      arena.release(plan.offset[v], rounded(elements(v)));
  }
  for (auto &[v, r] : hints.inPlaceOf)
    plan.offset[v] = plan.offset.lookup(root(r));
  plan.size = arena.size();
  return plan;
}
