// Tests the rank layout (tp fastest, then dp, then pp) against Megatron's
// 16-GPU worked example, written out by hand as in the comm.h comment, and
// the layout's invariants on other grids: coordinates round-trip, every
// rank is in exactly one group of each kind at the position group_of gives,
// and group sizes are the products of the kind's axes.
#include <gtest/gtest.h>

#include <set>

#include "mtc/rt/comm.h"

namespace mtc::rt {
namespace {

using Groups = std::vector<std::vector<int64_t>>;

TEST(CommGrid, MegatronWorkedExample) {
  GridSpec g{/*pp=*/4, /*dp=*/2, /*tp=*/2};
  ASSERT_EQ(g.world_size(), 16);
  EXPECT_EQ(all_groups(g, GroupKind::tp),
            (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15}}));
  EXPECT_EQ(all_groups(g, GroupKind::dp),
            (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}, {8, 10}, {9, 11}, {12, 14}, {13, 15}}));
  EXPECT_EQ(all_groups(g, GroupKind::pp),
            (Groups{{0, 4, 8, 12}, {1, 5, 9, 13}, {2, 6, 10, 14}, {3, 7, 11, 15}}));
  EXPECT_EQ(all_groups(g, GroupKind::tp_dp),
            (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}}));
  EXPECT_EQ(all_groups(g, GroupKind::tp_pp),
            (Groups{{0, 1, 4, 5, 8, 9, 12, 13}, {2, 3, 6, 7, 10, 11, 14, 15}}));
  EXPECT_EQ(all_groups(g, GroupKind::world),
            (Groups{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}}));

  // g6 = tp 0 + 2 * (dp 1 + 2 * pp 1).
  GridCoord c = grid_coord(g, 6);
  EXPECT_EQ(c.tp, 0);
  EXPECT_EQ(c.dp, 1);
  EXPECT_EQ(c.pp, 1);
  EXPECT_EQ(tp_rank(g, 6), 0);
  EXPECT_EQ(dp_rank(g, 6), 1);
  EXPECT_EQ(pp_rank(g, 6), 1);
  GroupDesc tp = group_of(g, GroupKind::tp, 6);
  EXPECT_EQ(tp.label(), "tp[3]");
  EXPECT_EQ(tp.rank, 0);
  EXPECT_EQ(tp.str(), "tp[3] (ranks 6,7)");
  GroupDesc dp = group_of(g, GroupKind::dp, 6);
  EXPECT_EQ(dp.label(), "dp[2]");
  EXPECT_EQ(dp.members, (std::vector<int64_t>{4, 6}));
  EXPECT_EQ(dp.rank, 1);
  GroupDesc pp = group_of(g, GroupKind::pp, 6);
  EXPECT_EQ(pp.label(), "pp[2]");
  EXPECT_EQ(pp.members, (std::vector<int64_t>{2, 6, 10, 14}));
  EXPECT_EQ(pp.rank, 1);
  EXPECT_EQ(group_of(g, GroupKind::world, 6).label(), "world");
}

TEST(CommGrid, InvariantsOnManyGrids) {
  for (int64_t pp : {1, 2, 3})
    for (int64_t dp : {1, 2, 4})
      for (int64_t tp : {1, 2, 3}) {
        GridSpec g{pp, dp, tp};
        SCOPED_TRACE(describe_grid(g));
        for (int64_t r = 0; r < g.world_size(); ++r) {
          GridCoord c = grid_coord(g, r);
          EXPECT_EQ(c.tp + tp * (c.dp + dp * c.pp), r);
          EXPECT_EQ(grid_rank(g, c), r);
        }
        struct KindSize {
          GroupKind kind;
          int64_t size;
        };
        for (KindSize ks :
             {KindSize{GroupKind::world, pp * dp * tp}, KindSize{GroupKind::tp, tp},
              KindSize{GroupKind::dp, dp}, KindSize{GroupKind::pp, pp},
              KindSize{GroupKind::tp_dp, tp * dp}, KindSize{GroupKind::tp_pp, tp * pp}}) {
          Groups groups = all_groups(g, ks.kind);
          ASSERT_EQ(static_cast<int64_t>(groups.size()), g.world_size() / ks.size);
          std::set<int64_t> seen;
          for (size_t gi = 0; gi < groups.size(); ++gi) {
            ASSERT_EQ(static_cast<int64_t>(groups[gi].size()), ks.size);
            for (size_t k = 0; k < groups[gi].size(); ++k) {
              int64_t r = groups[gi][k];
              EXPECT_TRUE(seen.insert(r).second) << "rank " << r << " in two groups";
              if (k > 0) EXPECT_LT(groups[gi][k - 1], r);
              GroupDesc d = group_of(g, ks.kind, r);
              EXPECT_EQ(d.index, static_cast<int64_t>(gi));
              EXPECT_EQ(d.rank, static_cast<int64_t>(k));
              EXPECT_EQ(d.members, groups[gi]);
              // Members agree on every coordinate outside the kind's axes.
              GridCoord a = grid_coord(g, groups[gi][0]), b = grid_coord(g, r);
              bool in_tp = ks.kind == GroupKind::world || ks.kind == GroupKind::tp ||
                           ks.kind == GroupKind::tp_dp || ks.kind == GroupKind::tp_pp;
              bool in_dp = ks.kind == GroupKind::world || ks.kind == GroupKind::dp ||
                           ks.kind == GroupKind::tp_dp;
              bool in_pp = ks.kind == GroupKind::world || ks.kind == GroupKind::pp ||
                           ks.kind == GroupKind::tp_pp;
              if (!in_tp) EXPECT_EQ(a.tp, b.tp);
              if (!in_dp) EXPECT_EQ(a.dp, b.dp);
              if (!in_pp) EXPECT_EQ(a.pp, b.pp);
            }
          }
          EXPECT_EQ(static_cast<int64_t>(seen.size()), g.world_size());
        }
      }
}

TEST(CommGrid, DescribeAndErrors) {
  EXPECT_EQ(describe_grid(GridSpec{1, 2, 2}), "tp=2 x dp=2 = 4 ranks");
  EXPECT_EQ(describe_grid(GridSpec{4, 2, 2}), "tp=2 x dp=2 x pp=4 = 16 ranks");
  EXPECT_EQ(describe_grid(GridSpec{}), "1 rank");
  EXPECT_THROW(check_grid(GridSpec{1, 0, 2}), CommError);
  EXPECT_THROW(grid_coord(GridSpec{1, 2, 2}, 4), CommError);
  EXPECT_THROW(grid_coord(GridSpec{1, 2, 2}, -1), CommError);
  EXPECT_THROW(grid_rank(GridSpec{1, 2, 2}, GridCoord{2, 0, 0}), CommError);
}

}  // namespace
}  // namespace mtc::rt
