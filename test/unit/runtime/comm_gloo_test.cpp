// Tests the Gloo communicators in real processes over loopback TCP: every
// collective with 2 and 4 ranks against a reference each rank computes from
// all ranks' (regenerated) random inputs, all_reduce bitwise identical on
// every rank, the per-axis groups of a tp x dp and a tp x pp grid, and
// ordered point-to-point messages. Sums are compared with |got - want| <=
// 1e-5 (fp32 sums of at most 4 values in [-1, 1)); max, gather, broadcast,
// all_to_all and p2p must be exact.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "comm_test_support.h"
#include "mtc/rt/comm.h"
#include "mtc/rt/grid_comm.h"

namespace mtc::rt {
namespace {

using testing::rank_data;
using testing::RunOptions;

// Runs `body` on n ranks meeting in a fresh directory named after `name`;
// expects every rank to return 0.
void expect_ranks_ok(int n, const char* name, const std::function<int(int)>& body) {
  RunOptions opt;
  opt.rdzv_dir = testing::unique_dir(name);
  testing::expect_all_ok(testing::run_ranks(n, body, opt));
}

// Compares and reports the first mismatch on stderr; false if any.
bool check(const char* what, const std::vector<float>& got, const std::vector<double>& want,
           double tol) {
  if (got.size() != want.size()) {
    std::fprintf(stderr, "%s: %zu values, expected %zu\n", what, got.size(), want.size());
    return false;
  }
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(got[i] - want[i]) <= tol)) {
      std::fprintf(stderr, "%s: element %zu is %.9g, expected %.9g\n", what, i, got[i], want[i]);
      return false;
    }
  return true;
}

std::unique_ptr<World> make_world(const GridSpec& grid) {
  WorldOptions opt;
  opt.grid = grid;
  opt.collective_timeout_s = 30;
  opt.rendezvous_timeout_s = 20;
  return std::make_unique<World>(read_launch_env(), opt, gloo_comm_factory());
}

// Every collective on the world group of S ranks.
int all_collectives(int r, int S) {
  auto world = make_world(GridSpec{1, S, 1});
  Communicator& c = world->comm(GroupKind::world);
  if (c.size() != S || c.rank() != r || std::string(c.backend()) != "gloo") return 2;
  const int64_t n = 1003;  // not a multiple of anything Gloo segments by
  bool ok = true;

  {  // all_reduce sum and max
    std::vector<float> sum = rank_data(r, 1, n), mx = rank_data(r, 2, n);
    c.all_reduce(sum.data(), n, ReduceOp::sum);
    c.all_reduce(mx.data(), n, ReduceOp::max);
    std::vector<double> want_sum(n, 0.0), want_max(n, -1e30);
    for (int j = 0; j < S; ++j) {
      auto a = rank_data(j, 1, n), b = rank_data(j, 2, n);
      for (int64_t i = 0; i < n; ++i) {
        want_sum[i] += a[i];
        want_max[i] = std::max<double>(want_max[i], b[i]);
      }
    }
    ok &= check("all_reduce sum", sum, want_sum, 1e-5);
    ok &= check("all_reduce max", mx, want_max, 0.0);

    // Every rank holds bit-identical sums (data-parallel replicas stay equal).
    std::vector<float> all(static_cast<size_t>(S * n));
    c.all_gather(sum.data(), all.data(), n);
    for (int j = 0; j < S; ++j)
      if (std::memcmp(all.data() + j * n, sum.data(), n * sizeof(float)) != 0) {
        std::fprintf(stderr, "all_reduce result of rank %d differs from rank %d's\n", j, r);
        ok = false;
      }
  }
  {  // all_gather: recv[j*n + i] = send_j[i]
    std::vector<float> send = rank_data(r, 3, n), recv(static_cast<size_t>(S * n), -7.f);
    c.all_gather(send.data(), recv.data(), n);
    std::vector<double> want;
    for (int j = 0; j < S; ++j)
      for (float x : rank_data(j, 3, n)) want.push_back(x);
    ok &= check("all_gather", recv, want, 0.0);
  }
  {  // reduce_scatter sum and max: recv[i] = sum_j send_j[r*n + i]
    std::vector<float> send = rank_data(r, 4, S * n), recv(n), recv_max(n);
    c.reduce_scatter(send.data(), recv.data(), n, ReduceOp::sum);
    c.reduce_scatter(send.data(), recv_max.data(), n, ReduceOp::max);
    std::vector<double> want(n, 0.0), want_max(n, -1e30);
    for (int j = 0; j < S; ++j) {
      auto a = rank_data(j, 4, S * n);
      for (int64_t i = 0; i < n; ++i) {
        want[i] += a[r * n + i];
        want_max[i] = std::max<double>(want_max[i], a[r * n + i]);
      }
    }
    ok &= check("reduce_scatter sum", recv, want, 1e-5);
    ok &= check("reduce_scatter max", recv_max, want_max, 0.0);
  }
  {  // broadcast from the last rank
    const int root = S - 1;
    std::vector<float> buf = rank_data(r, 5, n);
    c.broadcast(buf.data(), n, root);
    auto src = rank_data(root, 5, n);
    ok &= check("broadcast", buf, std::vector<double>(src.begin(), src.end()), 0.0);
  }
  {  // all_to_all: recv[j*n + i] = send_j[r*n + i]
    std::vector<float> send = rank_data(r, 6, S * n), recv(static_cast<size_t>(S * n));
    c.all_to_all(send.data(), recv.data(), n);
    std::vector<double> want;
    for (int j = 0; j < S; ++j) {
      auto a = rank_data(j, 6, S * n);
      want.insert(want.end(), a.begin() + r * n, a.begin() + (r + 1) * n);
    }
    ok &= check("all_to_all", recv, want, 0.0);
  }
  {  // send_recv around the ring, then ordered sends to the next rank
    const int right = (r + 1) % S, left = (r + S - 1) % S;
    std::vector<float> mine = rank_data(r, 7, n), got(n);
    c.send_recv(mine.data(), n, right, got.data(), n, left);
    auto from_left = rank_data(left, 7, n);
    ok &= check("send_recv", got, std::vector<double>(from_left.begin(), from_left.end()), 0.0);

    // Three messages of different sizes; even ranks send first so that the
    // blocking pairs meet (S is even).
    const int64_t sizes[3] = {5, 1, 300};
    auto send_all = [&] {
      for (int k = 0; k < 3; ++k) {
        auto m = rank_data(r, 10 + k, sizes[k]);
        c.send(m.data(), sizes[k], right);
      }
    };
    auto recv_all = [&] {
      for (int k = 0; k < 3; ++k) {
        std::vector<float> m(sizes[k]);
        c.recv(m.data(), sizes[k], left);
        auto w = rank_data(left, 10 + k, sizes[k]);
        ok &= check("ordered recv", m, std::vector<double>(w.begin(), w.end()), 0.0);
      }
    };
    if (r % 2 == 0) {
      send_all();
      recv_all();
    } else {
      recv_all();
      send_all();
    }
  }
  c.barrier();
  return ok ? 0 : 1;
}

TEST(CommGloo, EveryCollectiveTwoRanks) {
  expect_ranks_ok(2, "gloo2", [](int r) { return all_collectives(r, 2); });
}

TEST(CommGloo, EveryCollectiveFourRanks) {
  expect_ranks_ok(4, "gloo4", [](int r) { return all_collectives(r, 4); });
}

// Sums over each group of a tp=2 x dp=2 grid: a rank's tp result is the sum
// of its tp partner's data and its own, and so on.
int grid_groups_body(int r) {
  GridSpec g{1, 2, 2};
  auto world = make_world(g);
  const int64_t n = 64;
  bool ok = true;
  for (GroupKind kind : {GroupKind::tp, GroupKind::dp, GroupKind::tp_dp, GroupKind::world}) {
    Communicator& c = world->comm(kind);
    GroupDesc want_group = group_of(g, kind, r);
    if (c.group().members != want_group.members || c.rank() != want_group.rank) {
      std::fprintf(stderr, "group %s has the wrong members\n", group_kind_name(kind));
      ok = false;
    }
    int tag = 20 + static_cast<int>(kind);
    std::vector<float> buf = rank_data(r, tag, n);
    c.all_reduce(buf.data(), n);
    std::vector<double> want(n, 0.0);
    for (int64_t m : want_group.members) {
      auto a = rank_data(static_cast<int>(m), tag, n);
      for (int64_t i = 0; i < n; ++i) want[i] += a[i];
    }
    ok &= check(group_kind_name(kind), buf, want, 1e-5);
  }
  // tp_dp spans every rank of this grid (it reuses the world's connection)
  // but keeps its own name.
  if (world->comm(GroupKind::tp_dp).group().label() != "tp_dp[0]" ||
      world->comm(GroupKind::world).group().label() != "world") {
    std::fprintf(stderr, "tp_dp or world lost its label\n");
    ok = false;
  }
  return ok ? 0 : 1;
}

TEST(CommGloo, GroupsOfATensorDataGrid) {
  expect_ranks_ok(4, "grid-tpdp", grid_groups_body);
}

// A tp=2 x pp=2 grid: stage 0 sends an activation to stage 1 over the pp
// group, stage 1 sends a gradient back, while the tp groups all-reduce.
int pipeline_body(int r) {
  GridSpec g{2, 1, 2};
  auto world = make_world(g);
  Communicator& pp = world->comm(GroupKind::pp);
  Communicator& tp = world->comm(GroupKind::tp);
  const int64_t n = 257;
  bool ok = true;
  GridCoord me = world->coord();
  int64_t peer_global = grid_rank(g, GridCoord{me.tp, me.dp, 1 - me.pp});
  if (me.pp == 0) {
    auto act = rank_data(r, 30, n);
    pp.send(act.data(), n, 1);
    std::vector<float> grad(n);
    pp.recv(grad.data(), n, 1);
    auto want = rank_data(static_cast<int>(peer_global), 31, n);
    ok &= check("gradient from stage 1", grad, std::vector<double>(want.begin(), want.end()), 0.0);
  } else {
    std::vector<float> act(n);
    pp.recv(act.data(), n, 0);
    auto want = rank_data(static_cast<int>(peer_global), 30, n);
    ok &= check("activation from stage 0", act, std::vector<double>(want.begin(), want.end()), 0.0);
    auto grad = rank_data(r, 31, n);
    pp.send(grad.data(), n, 0);
  }
  std::vector<float> x = rank_data(r, 32, n);
  tp.all_reduce(x.data(), n);
  std::vector<double> want(n, 0.0);
  for (int64_t m : tp.group().members) {
    auto a = rank_data(static_cast<int>(m), 32, n);
    for (int64_t i = 0; i < n; ++i) want[i] += a[i];
  }
  ok &= check("tp all_reduce", x, want, 1e-5);
  return ok ? 0 : 1;
}

// The program's GridComm over Gloo on a tp=2 x dp=2 grid: reduce_scatter_sum
// along dp (the distributed optimizer's gradient reduction), out of place
// and in place (out = in + index * n), all_gather along tp, and no device
// communicator on the host.
int grid_comm_body(int r) {
  GridSpec g{1, 2, 2};
  auto world = make_world(g);
  std::unique_ptr<GridComm> comm = make_grid_comm(*world);
  bool ok = true;
  const int64_t n = 37, dp = comm->size(1), me = comm->index(1);
  std::vector<int64_t> members = world->comm(GroupKind::dp).group().members;
  std::vector<double> want(n, 0.0);  // sum over dp of every member's slice `me`
  for (int64_t m : members) {
    auto a = rank_data(static_cast<int>(m), 40, dp * n);
    for (int64_t i = 0; i < n; ++i) want[i] += a[me * n + i];
  }
  std::vector<float> in = rank_data(r, 40, dp * n), out(n);
  comm->reduce_scatter_sum(1, in.data(), out.data(), n);
  ok &= check("reduce_scatter_sum", out, want, 1e-5);
  std::vector<float> buf = rank_data(r, 40, dp * n);
  comm->reduce_scatter_sum(1, buf.data(), buf.data() + me * n, n);
  ok &= check("reduce_scatter_sum in place",
              std::vector<float>(buf.begin() + me * n, buf.begin() + (me + 1) * n), want, 1e-5);
  const int64_t tp = comm->size(2);
  std::vector<float> mine = rank_data(r, 41, n), all(tp * n);
  comm->all_gather(2, mine.data(), all.data(), n);
  std::vector<double> gathered;
  for (int64_t m : world->comm(GroupKind::tp).group().members) {
    auto a = rank_data(static_cast<int>(m), 41, n);
    gathered.insert(gathered.end(), a.begin(), a.end());
  }
  ok &= check("all_gather along tp", all, gathered, 0.0);
  if (comm->program_comm(1) != nullptr || comm->program_comm(2) != nullptr) {
    std::fprintf(stderr, "host GridComm returned a device communicator\n");
    ok = false;
  }
  return ok ? 0 : 1;
}

TEST(CommGloo, GridCommReduceScatterAndGather) {
  expect_ranks_ok(4, "grid-comm", grid_comm_body);
}

TEST(CommGloo, PipelineSendRecvOnATensorPipelineGrid) {
  expect_ranks_ok(4, "grid-tppp", pipeline_body);
}

// Bad arguments are refused before anything is sent, naming the collective.
int bad_arguments_body(int) {
  auto world = make_world(GridSpec{1, 2, 1});
  Communicator& c = world->comm(GroupKind::world);
  std::vector<float> buf(4);
  int refused = 0;
  auto expect_refused = [&](const std::function<void()>& fn, const char* needle) {
    try {
      fn();
      std::fprintf(stderr, "not refused: %s\n", needle);
    } catch (const CommError& e) {
      if (std::string(e.what()).find(needle) != std::string::npos)
        ++refused;
      else
        std::fprintf(stderr, "message lacks '%s': %s\n", needle, e.what());
    }
  };
  expect_refused([&] { c.all_reduce(buf.data(), -1); }, "all_reduce on group world (ranks 0,1)");
  expect_refused([&] { c.broadcast(buf.data(), 4, 2); }, "root 2 is not a rank of the group");
  expect_refused([&] { c.send(buf.data(), 4, c.rank()); }, "is this rank itself");
  expect_refused([&] { c.all_reduce(buf.data(), 4, DType::bf16, ReduceOp::sum, nullptr); },
                 "fp32 host buffers");
  expect_refused([&] { world->comm(GroupKind::tp).all_reduce(nullptr, 3); }, "null buffer");
  c.barrier();  // both ranks still in step after the refusals
  return refused == 5 ? 0 : 1;
}

TEST(CommGloo, RefusesBadArguments) {
  expect_ranks_ok(2, "gloo-args", bad_arguments_body);
}

}  // namespace
}  // namespace mtc::rt
