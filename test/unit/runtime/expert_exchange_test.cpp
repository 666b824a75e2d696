// Expert parallelism in the runtime: the ep / edp groups against the worked
// example of docs/moe.md (tp = 2, dp = 4, ep = 2 on 8 ranks), and the
// all-to-all of permuted rows (grid_ops.h: moe_exchange_counts,
// moe_dispatch, moe_combine) in real processes over Gloo against a reference
// each rank builds from every rank's regenerated rows: the received counts,
// every dispatched row in its place (local expert by local expert, senders
// in order, zeros after), and combine returning each rank its own rows; the
// distributed optimizer's moment shares (dense over dp, experts over edp)
// cut and gathered back. Data movement only: every comparison is exact.
#include <gtest/gtest.h>

#include <cstdio>
#include <random>

#include "comm_test_support.h"
#include "mtc/rt/comm.h"
#include "mtc/rt/grid_comm.h"
#include "mtc/rt/grid_ops.h"
#include "mtc/rt/trainer.h"

namespace mtc::rt {
namespace {

using Groups = std::vector<std::vector<int64_t>>;

TEST(ExpertGroups, WorkedExample) {
  GridSpec g{/*pp=*/1, /*dp=*/4, /*tp=*/2, /*ep=*/2};
  EXPECT_EQ(g.world_size(), 8);
  EXPECT_EQ(describe_grid(g), "tp=2 x dp=4 (ep=2 within dp) = 8 ranks");
  EXPECT_EQ(all_groups(g, GroupKind::dp), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  // ep groups: consecutive dp ranks {0, 1} and {2, 3} at each tp rank.
  EXPECT_EQ(all_groups(g, GroupKind::ep), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  // edp groups: the dp ranks holding the same experts.
  EXPECT_EQ(all_groups(g, GroupKind::edp), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  GroupDesc ep = group_of(g, GroupKind::ep, 6);
  EXPECT_EQ(ep.label(), "ep[2]");
  EXPECT_EQ(ep.rank, 1);
  GroupDesc edp = group_of(g, GroupKind::edp, 6);
  EXPECT_EQ(edp.members, (std::vector<int64_t>{2, 6}));
  EXPECT_EQ(edp.rank, 1);
}

TEST(ExpertGroups, EpOfOneAndEpOfDp) {
  GridSpec one{1, 4, 1, 1};
  EXPECT_EQ(all_groups(one, GroupKind::ep), (Groups{{0}, {1}, {2}, {3}}));
  EXPECT_EQ(all_groups(one, GroupKind::edp), all_groups(one, GroupKind::dp));
  GridSpec all{2, 2, 1, 2};
  EXPECT_EQ(all_groups(all, GroupKind::ep), all_groups(all, GroupKind::dp));
  EXPECT_EQ(all_groups(all, GroupKind::edp), (Groups{{0}, {1}, {2}, {3}}));
}

TEST(ExpertGroups, EpMustDivideDp) {
  EXPECT_THROW(check_grid(GridSpec{1, 4, 1, 3}), CommError);
  EXPECT_THROW(check_grid(GridSpec{1, 4, 1, 0}), CommError);
}

constexpr int64_t kExperts = 8, kRows = 10, kWidth = 3;

// Rank r's permuted rows: counts (E) summing to kRows (random, some zero),
// rows (kRows, kWidth) with values naming (rank, row, column).
struct RankRows {
  std::vector<int32_t> counts;
  std::vector<float> rows;
};
RankRows rows_of(int64_t rank) {
  std::mt19937 gen(static_cast<unsigned>(100 + rank));
  RankRows x;
  x.counts.assign(kExperts, 0);
  for (int64_t i = 0; i < kRows; ++i) ++x.counts[gen() % 4 == 0 ? 0 : gen() % kExperts];
  for (int64_t i = 0; i < kRows; ++i)
    for (int64_t c = 0; c < kWidth; ++c)
      x.rows.push_back(static_cast<float>(1000 * (rank + 1) + 10 * i + c));
  return x;
}

// dp = 4 ranks, ep = `ep`; the exchange runs on each ep group (axis 3).
int exchange_body(int r, int64_t ep) {
  WorldOptions opt;
  opt.grid = GridSpec{1, 4, 1, ep};
  opt.collective_timeout_s = 30;
  opt.rendezvous_timeout_s = 20;
  World world(read_launch_env(), opt, gloo_comm_factory());
  auto comm = make_grid_comm(world);
  const int64_t p = comm->size(3), me = comm->index(3), l = kExperts / p;
  const GroupDesc group = group_of(opt.grid, GroupKind::ep, r);
  bool ok = p == ep && comm->size(4) == 4 / ep && me == group.rank;

  const RankRows mine = rows_of(r);
  std::vector<int32_t> received(static_cast<size_t>(p * l)), local(static_cast<size_t>(l));
  grid::moe_exchange_counts(*comm, 3, mine.counts.data(), received.data(), local.data(),
                            kExperts);
  std::vector<float> out(static_cast<size_t>(p * kRows * kWidth), -1.0f);
  grid::moe_dispatch(*comm, 3, mine.rows.data(), mine.counts.data(), received.data(),
                     out.data(), kRows, kWidth, kExperts);

  // Reference: for each local expert k, each member s's rows of expert
  // me * l + k, in order; then zeros.
  std::vector<float> want;
  std::vector<int32_t> want_local(static_cast<size_t>(l), 0);
  for (int64_t k = 0; k < l; ++k)
    for (int64_t s = 0; s < p; ++s) {
      const RankRows other = rows_of(group.members[static_cast<size_t>(s)]);
      int64_t begin = 0;
      for (int64_t e = 0; e < me * l + k; ++e) begin += other.counts[static_cast<size_t>(e)];
      const int32_t n = other.counts[static_cast<size_t>(me * l + k)];
      ok &= received[static_cast<size_t>(s * l + k)] == n;
      want_local[static_cast<size_t>(k)] += n;
      want.insert(want.end(), other.rows.begin() + begin * kWidth,
                  other.rows.begin() + (begin + n) * kWidth);
    }
  ok &= local == want_local;
  want.resize(out.size(), 0.0f);
  if (out != want) {
    std::fprintf(stderr, "rank %d: dispatched rows differ from the reference\n", r);
    ok = false;
  }
  // Combine sends the experts' rows (here: doubled) back where they came from.
  for (float& v : out) v *= 2;
  std::vector<float> back(static_cast<size_t>(kRows * kWidth), -1.0f);
  grid::moe_combine(*comm, 3, out.data(), mine.counts.data(), received.data(), back.data(),
                    kRows, kWidth, kExperts);
  for (size_t i = 0; i < back.size(); ++i)
    if (back[i] != 2 * mine.rows[i]) {
      std::fprintf(stderr, "rank %d: combined element %zu is %g, expected %g\n", r, i,
                   back[i], 2 * mine.rows[i]);
      ok = false;
      break;
    }
  world.comm(GroupKind::world).barrier();
  return ok ? 0 : 1;
}

TEST(ExpertExchange, TwoGroupsOfTwo) {
  testing::RunOptions opt;
  opt.rdzv_dir = testing::unique_dir("ep2");
  testing::expect_all_ok(testing::run_ranks(4, [](int r) { return exchange_body(r, 2); }, opt));
}

TEST(ExpertExchange, OneGroupOfFour) {
  testing::RunOptions opt;
  opt.rdzv_dir = testing::unique_dir("ep4");
  testing::expect_all_ok(testing::run_ranks(4, [](int r) { return exchange_body(r, 4); }, opt));
}

TEST(ExpertExchange, EpOfOneKeepsEveryRow) {
  testing::RunOptions opt;
  opt.rdzv_dir = testing::unique_dir("ep1");
  testing::expect_all_ok(testing::run_ranks(4, [](int r) { return exchange_body(r, 1); }, opt));
}

// The distributed optimizer with expert parallelism (program.h): dp = 4,
// ep = 2, a dense region of 4 shares of 3 elements over dp, then the
// experts' region of 2 shares of 5 over edp (axis 4). Each rank's moments
// in the parameters' layout: the dense part the same everywhere, the
// experts' part that of its ep rank's experts.
ProgramDesc sharded_moments_program() {
  ProgramDesc p;
  p.grid[1] = 4;
  p.grid[3] = 2;
  p.optimizer_shard_elems = 3;
  p.expert_optimizer_shard_elems = 5;
  p.num_param_elems = 4 * 3 + 2 * 5;
  return p;
}

std::vector<float> moments_in_layout(const ProgramDesc& p, int64_t ep_rank) {
  std::vector<float> full(static_cast<size_t>(p.num_param_elems));
  for (size_t i = 0; i < full.size(); ++i)
    full[i] = static_cast<float>(i < 12 ? i : 1000 * (ep_rank + 1) + i);
  return full;
}

TEST(ExpertOptimizerShares, Regions) {
  const ProgramDesc p = sharded_moments_program();
  const std::vector<MomentShard> s = moment_shards(p);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].axis, 1);
  EXPECT_EQ(s[0].begin, 0);
  EXPECT_EQ(s[0].elems, 3);
  EXPECT_EQ(s[0].moments, 0);
  EXPECT_EQ(s[1].axis, 4);  // expert data parallel
  EXPECT_EQ(s[1].begin, 12);
  EXPECT_EQ(s[1].elems, 5);
  EXPECT_EQ(s[1].moments, 3);
  EXPECT_EQ(moment_elems(p), 8);
  // The rank at dp 3 = ep 1 + 2 * edp 1: dense share 3, experts' share 1.
  const std::vector<float> full = moments_in_layout(p, 1);
  std::vector<float> mine(8, -1.0f);
  take_moment_shares(p, {0, 3, 0, 1, 1}, full.data(), mine.data());
  EXPECT_EQ(mine, (std::vector<float>{9, 10, 11, 2017, 2018, 2019, 2020, 2021}));
  // Without a distributed optimizer: the whole buffer.
  ProgramDesc whole = p;
  whole.optimizer_shard_elems = whole.expert_optimizer_shard_elems = 0;
  EXPECT_TRUE(moment_shards(whole).empty());
  std::vector<float> all(full.size());
  take_moment_shares(whole, {0, 3, 0, 1, 1}, full.data(), all.data());
  EXPECT_EQ(all, full);
}

// Every rank takes its shares of its moments, then the gather puts every
// rank's layout back together: the dense region from the 4 dp ranks, the
// experts' from the 2 ranks holding the same experts.
int moment_shares_body(int r) {
  WorldOptions opt;
  opt.grid = GridSpec{1, 4, 1, 2};
  opt.collective_timeout_s = 30;
  opt.rendezvous_timeout_s = 20;
  World world(read_launch_env(), opt, gloo_comm_factory());
  auto comm = make_grid_comm(world);
  const ProgramDesc p = sharded_moments_program();
  const GridIndex at = grid_index(comm.get());
  const std::vector<float> full = moments_in_layout(p, at[3]);
  std::vector<float> mine(static_cast<size_t>(moment_elems(p)));
  take_moment_shares(p, at, full.data(), mine.data());
  std::vector<float> back(full.size(), -1.0f);
  gather_moment_shares(comm.get(), p, mine.data(), back.data());
  bool ok = back == full;
  if (!ok) std::fprintf(stderr, "rank %d: gathered moments differ from its layout\n", r);
  world.comm(GroupKind::world).barrier();
  return ok ? 0 : 1;
}

TEST(ExpertOptimizerShares, GatherOverDpAndEdp) {
  testing::RunOptions opt;
  opt.rdzv_dir = testing::unique_dir("epshares");
  testing::expect_all_ok(testing::run_ranks(4, moment_shares_body, opt));
}

}  // namespace
}  // namespace mtc::rt
