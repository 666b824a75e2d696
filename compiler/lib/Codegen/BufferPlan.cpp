//===- BufferPlan.cpp - first-fit arena planning over exact lifetimes ------===//
//
// Steps:
//  1. Number the ops of the (single-block) function; record each value's
//     last use.
//  2. Walk the ops: allocate each result first-fit among free intervals
//     (growing the arena when none fits), then free the operands whose last
//     use is this op and the results nobody uses. Results are allocated
//     before operands are freed, so an op never writes over its inputs.
//
//===----------------------------------------------------------------------===//
#include "mtc/Codegen/BufferPlan.h"

#include <map>

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
                                 int64_t align) {
  BufferPlan plan;
  Block &body = fn.getBody().front();
  llvm::DenseMap<Operation *, int64_t> index;
  int64_t i = 0;
  for (Operation &op : body)
    index[&op] = i++;
  llvm::DenseMap<Value, int64_t> lastUse;
  for (Operation &op : body)
    for (Value v : op.getOperands())
      lastUse[v] = std::max(lastUse.lookup(v), index[&op]);

  auto rounded = [&](int64_t n) { return (n + align - 1) / align * align; };
  FreeList arena;
  for (Operation &op : body) {
    for (Value r : op.getResults()) {
      int64_t n = elements(r);
      if (n > 0)
        plan.offset[r] = arena.allocate(rounded(n));
    }
    auto maybeFree = [&](Value v) {
      auto it = plan.offset.find(v);
      if (it == plan.offset.end())
        return;
      auto lu = lastUse.find(v);
      if (lu == lastUse.end() || lu->second == index[&op])
        arena.release(it->second, rounded(elements(v)));
    };
    llvm::SmallPtrSet<Value, 8> done;
    for (Value v : op.getOperands())
      if (done.insert(v).second)
        maybeFree(v);
    for (Value r : op.getResults())
      if (r.use_empty())
        maybeFree(r);
  }
  plan.size = arena.size();
  return plan;
}
