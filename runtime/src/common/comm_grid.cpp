// The process grid's rank layout and groups (see mtc/rt/comm.h for the
// layout and its worked example).
//
//   rank = tp_rank + tp * (dp_rank + dp * pp_rank)
//
// A group of kind K holds the ranks whose coordinates agree on every axis
// outside K. Its index is the mixed-radix number of those outside
// coordinates (tp fastest); its members, by increasing global rank, vary the
// axes of K (tp fastest), so a member's position is the mixed-radix number of
// its coordinates on K's axes.
#include <sstream>

#include "mtc/rt/comm.h"

namespace mtc::rt {

namespace {

struct AxisSet {
  bool tp, dp, pp;
};

AxisSet axes_of(GroupKind kind) {
  switch (kind) {
    case GroupKind::world: return {true, true, true};
    case GroupKind::tp: return {true, false, false};
    case GroupKind::dp: return {false, true, false};
    case GroupKind::pp: return {false, false, true};
    case GroupKind::tp_dp: return {true, true, false};
    case GroupKind::tp_pp: return {true, false, true};
    case GroupKind::ep:
    case GroupKind::edp: return {false, true, false};  // part of dp: group_of
  }
  return {true, true, true};
}

void check_rank(const GridSpec& grid, int64_t rank) {
  if (rank < 0 || rank >= grid.world_size())
    throw CommError("rank " + std::to_string(rank) + " is outside the grid of " +
                    describe_grid(grid));
}

}  // namespace

std::string describe_grid(const GridSpec& grid) {
  std::string s;
  auto add = [&](const char* name, int64_t v) {
    if (v == 1) return;
    if (!s.empty()) s += " x ";
    s += std::string(name) + "=" + std::to_string(v);
  };
  add("tp", grid.tp);
  add("dp", grid.dp);
  add("pp", grid.pp);
  if (grid.ep > 1) s += " (ep=" + std::to_string(grid.ep) + " within dp)";
  int64_t n = grid.world_size();
  if (s.empty()) return "1 rank";
  return s + " = " + std::to_string(n) + (n == 1 ? " rank" : " ranks");
}

void check_grid(const GridSpec& grid) {
  if (grid.tp < 1 || grid.dp < 1 || grid.pp < 1)
    throw CommError("invalid process grid tp=" + std::to_string(grid.tp) +
                    " dp=" + std::to_string(grid.dp) + " pp=" + std::to_string(grid.pp) +
                    ": every axis must be at least 1");
  if (grid.ep < 1 || grid.dp % grid.ep != 0)
    throw CommError("invalid process grid: ep=" + std::to_string(grid.ep) +
                    " must be at least 1 and divide dp=" + std::to_string(grid.dp) +
                    " (expert parallelism is carved out of data parallelism)");
}

GridCoord grid_coord(const GridSpec& grid, int64_t rank) {
  check_grid(grid);
  check_rank(grid, rank);
  GridCoord c;
  c.tp = rank % grid.tp;
  c.dp = (rank / grid.tp) % grid.dp;
  c.pp = rank / (grid.tp * grid.dp);
  return c;
}

int64_t grid_rank(const GridSpec& grid, const GridCoord& c) {
  check_grid(grid);
  if (c.tp < 0 || c.tp >= grid.tp || c.dp < 0 || c.dp >= grid.dp || c.pp < 0 || c.pp >= grid.pp)
    throw CommError("grid coordinate (tp " + std::to_string(c.tp) + ", dp " + std::to_string(c.dp) +
                    ", pp " + std::to_string(c.pp) + ") is outside the grid of " +
                    describe_grid(grid));
  return c.tp + grid.tp * (c.dp + grid.dp * c.pp);
}

const char* group_kind_name(GroupKind kind) {
  switch (kind) {
    case GroupKind::world: return "world";
    case GroupKind::tp: return "tp";
    case GroupKind::dp: return "dp";
    case GroupKind::pp: return "pp";
    case GroupKind::tp_dp: return "tp_dp";
    case GroupKind::tp_pp: return "tp_pp";
    case GroupKind::ep: return "ep";
    case GroupKind::edp: return "edp";
  }
  return "?";
}

std::string GroupDesc::label() const {
  if (kind == GroupKind::world) return "world";
  return std::string(group_kind_name(kind)) + "[" + std::to_string(index) + "]";
}

std::string GroupDesc::str() const {
  std::ostringstream s;
  s << label() << " (rank" << (members.size() == 1 ? " " : "s ");
  for (size_t i = 0; i < members.size(); ++i) s << (i ? "," : "") << members[i];
  s << ")";
  return s.str();
}

GroupDesc group_of(const GridSpec& grid, GroupKind kind, int64_t rank) {
  GridCoord c = grid_coord(grid, rank);
  if (kind == GroupKind::ep || kind == GroupKind::edp) {
    // Within the dp group: dp_rank = ep_rank + ep * edp_rank. An ep group
    // varies ep_rank, an edp group edp_rank; the group's index is the
    // mixed-radix number of (tp, the other dp part, pp), tp fastest.
    const int64_t ep = grid.ep, edp = grid.dp / grid.ep;
    const int64_t e = c.dp % ep, d = c.dp / ep;
    const bool is_ep = kind == GroupKind::ep;
    GroupDesc g;
    g.kind = kind;
    g.index = c.tp + grid.tp * ((is_ep ? d : e) + (is_ep ? edp : ep) * c.pp);
    const int64_t n = is_ep ? ep : edp;
    for (int64_t i = 0; i < n; ++i) {
      GridCoord m = c;
      m.dp = is_ep ? i + ep * d : e + ep * i;
      int64_t r = grid_rank(grid, m);
      if (r == rank) g.rank = i;
      g.members.push_back(r);
    }
    return g;
  }
  AxisSet in = axes_of(kind);

  GroupDesc g;
  g.kind = kind;
  // Index: outside coordinates, tp fastest.
  int64_t index = 0, radix = 1;
  auto outside = [&](bool member_axis, int64_t coord, int64_t extent) {
    if (member_axis) return;
    index += coord * radix;
    radix *= extent;
  };
  outside(in.tp, c.tp, grid.tp);
  outside(in.dp, c.dp, grid.dp);
  outside(in.pp, c.pp, grid.pp);
  g.index = index;

  // Members: vary the inside axes, tp fastest (increasing global rank).
  int64_t ntp = in.tp ? grid.tp : 1, ndp = in.dp ? grid.dp : 1, npp = in.pp ? grid.pp : 1;
  for (int64_t p = 0; p < npp; ++p)
    for (int64_t d = 0; d < ndp; ++d)
      for (int64_t t = 0; t < ntp; ++t) {
        GridCoord m{in.tp ? t : c.tp, in.dp ? d : c.dp, in.pp ? p : c.pp};
        int64_t r = grid_rank(grid, m);
        if (r == rank) g.rank = static_cast<int64_t>(g.members.size());
        g.members.push_back(r);
      }
  return g;
}

std::vector<std::vector<int64_t>> all_groups(const GridSpec& grid, GroupKind kind) {
  check_grid(grid);
  std::vector<std::vector<int64_t>> groups;
  for (int64_t r = 0; r < grid.world_size(); ++r) {
    GroupDesc g = group_of(grid, kind, r);
    if (g.rank != 0) continue;  // each group once, found from its first member
    if (static_cast<int64_t>(groups.size()) <= g.index) groups.resize(g.index + 1);
    groups[g.index] = std::move(g.members);
  }
  return groups;
}

}  // namespace mtc::rt
