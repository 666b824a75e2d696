// Shared between the spec library's files (Spec.cpp, Parse.cpp, Validate.cpp),
// not installed: enum spelling tables, number formatting for messages, and
// the value checks that both the parser and the override path run.
#pragma once

#include "mtc/Spec/Spec.h"

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace mtc::spec::detail {

// Integers in a spec are at most 2^40: large enough for any real model, small
// enough that products of two of them fit in int64 in later computations.
constexpr int64_t kMaxInt = int64_t(1) << 40;

// What any machine could hold (the 2^40 bound again, on products of fields):
// elements of one tensor of the program (4 TiB in fp32) and parameters of
// the whole model. So byte counts of tensors and of the training state (16
// bytes a parameter) fit in int64. Layers: each adds tens of ops to the
// compiled program, and the deepest models have hundreds.
constexpr int64_t kMaxElements = int64_t(1) << 40;
constexpr int64_t kMaxParams = int64_t(1) << 40;
constexpr int64_t kMaxLayers = int64_t(1) << 14;

// For products of fields that may not have passed their own checks yet
// (__extension__: no -pedantic warning; GCC and Clang both have it).
__extension__ typedef __int128 Wide;
__extension__ typedef unsigned __int128 UWide;

// Number of values of each enum, so spellings can be looked up through
// toString(). Keep in step with the enum declarations in Spec.h.
template <class E> constexpr int kEnumCount = 0;
template <> inline constexpr int kEnumCount<Arch> = 3;
template <> inline constexpr int kEnumCount<NormKind> = 2;
template <> inline constexpr int kEnumCount<NormPlacement> = 2;
template <> inline constexpr int kEnumCount<Activation> = 4;
template <> inline constexpr int kEnumCount<PositionKind> = 2;
template <> inline constexpr int kEnumCount<Schedule> = 4;
template <> inline constexpr int kEnumCount<Recompute> = 4;
template <> inline constexpr int kEnumCount<Precision> = 3;
template <> inline constexpr int kEnumCount<LrDecay> = 3;
template <> inline constexpr int kEnumCount<RouterKind> = 2;
template <> inline constexpr int kEnumCount<DropPolicy> = 2;

template <class E> std::optional<E> enumFromString(const std::string& s) {
  for (int i = 0; i < kEnumCount<E>; ++i)
    if (s == toString(static_cast<E>(i))) return static_cast<E>(i);
  return std::nullopt;
}

// "'gelu', 'gelu_tanh', 'swiglu'"
template <class E> std::string enumSpellings() {
  std::string out;
  for (int i = 0; i < kEnumCount<E>; ++i) {
    if (i) out += ", ";
    out += std::string("'") + toString(static_cast<E>(i)) + "'";
  }
  return out;
}

// Shortest decimal form that reads back as the same double ("0.1", "1e-08",
// "inf").
std::string formatReal(double v);

// Optimal string alignment distance (edits, counting a swap of two adjacent
// characters as one), used to suggest the intended key or enum value.
size_t editDistance(const std::string& a, const std::string& b);

// What the checks know besides the spec itself.
struct CheckContext {
  // JSON paths already reported (bad type, missing): checks involving them
  // are skipped, so one mistake gives one diagnostic.
  std::set<std::string> bad;
  // JSON path -> the command-line flag that set it; such fields are named by
  // the flag in paths and messages.
  std::map<std::string, std::string> flags;
};

// global_batch_size with its default applied (see Spec.h); 0 when the product
// does not fit in an int64.
int64_t resolvedGlobalBatch(const Spec& spec);

// Every range and cross-field rule on a parsed spec (docs/spec.md lists
// them). Appends one Diagnostic per problem; returns false if any.
bool checkSpec(const Spec& spec, CheckContext ctx,
               std::vector<Diagnostic>& diags);

}  // namespace mtc::spec::detail
