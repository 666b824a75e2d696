// Tests of simulate(): every built schedule runs to completion over a grid of
// specs, the bubble and memory figures the papers state, and hand-broken
// schedules refused with messages naming the ranks and steps involved.
#include "mtc/Pipeline/Schedule.h"

#include <gtest/gtest.h>

#include <cmath>

namespace mtc::pipeline {
namespace {

const ScheduleKind kAllKinds[] = {ScheduleKind::GPipe, ScheduleKind::OneFOneB, ScheduleKind::Interleaved,
                                  ScheduleKind::ZeroBubbleH1};

Schedule build(ScheduleKind kind, int P, int V, int m) {
  Schedule s;
  std::string error;
  EXPECT_TRUE(buildSchedule({kind, P, V, m}, s, error)) << error;
  return s;
}

// Per-chunk costs for a stage cost of F = B = W = 1 cut into V chunks.
Costs stageCosts(const Schedule& s) {
  double v = s.spec.virtualStages;
  return uniformCosts(s.spec.stages * s.spec.virtualStages, 1 / v, 1 / v, 1 / v);
}

double idleTime(const Simulation& sim, int rank) { return sim.makespan - sim.busy[rank]; }

TEST(Simulate, EveryBuiltScheduleRunsOverTheGrid) {
  // Tests that every valid spec with P in {1,2,3,4,8}, V in {1,2,3}, m in
  // 1..16 builds and simulates without deadlock or dataflow error, under
  // uniform costs and under uneven costs with a transfer time, and that every
  // rank runs each of its pieces once.
  int built = 0;
  for (ScheduleKind kind : kAllKinds)
    for (int P : {1, 2, 3, 4, 8})
      for (int V : {1, 2, 3})
        for (int m = 1; m <= 16; ++m) {
          Schedule s;
          std::string error;
          if (!buildSchedule({kind, P, V, m}, s, error)) continue;
          ++built;
          std::string name = std::string(scheduleKindName(kind)) + " P=" + std::to_string(P) +
                             " V=" + std::to_string(V) + " m=" + std::to_string(m);
          Simulation sim = simulate(s, uniformCosts(P * V));
          ASSERT_TRUE(sim.ok) << name << ": " << sim.error;
          Costs uneven = uniformCosts(P * V);
          for (int c = 0; c < P * V; ++c) {
            uneven.forward[c] = 1 + 0.37 * (c % 3);
            uneven.backward[c] = 2.1 - 0.5 * (c % 2);
            uneven.weight[c] = 0.3 + 0.2 * (c % 4);
          }
          uneven.transfer = 0.25;
          Simulation slow = simulate(s, uneven);
          ASSERT_TRUE(slow.ok) << name << " (uneven costs): " << slow.error;
          int pieces = kind == ScheduleKind::ZeroBubbleH1 ? 3 : 2;
          for (int r = 0; r < P; ++r) {
            int computes = 0;
            for (const Step& st : s.ranks[r]) computes += st.isCompute;
            EXPECT_EQ(computes, pieces * m * V) << name << " rank " << r;
            EXPECT_EQ(sim.timeline[r].size(), s.ranks[r].size()) << name;
          }
        }
  // 4 kinds; interleaved only for V > 1 and m % P == 0, the others for V == 1.
  EXPECT_EQ(built, 3 * 5 * 16 + (2 * (16 + 8 + 5 + 4 + 2)));
}

TEST(Simulate, GPipeAndOneFOneBBubbleIsPMinus1OverMPlusPMinus1) {
  // Tests that with uniform costs (F = B = W = 1, so a fused backward is 2)
  // and free transfers, GPipe and 1F1B both idle every rank (p-1)(F+B+W) of
  // a makespan (m+p-1)(F+B+W): a bubble fraction of exactly (p-1)/(m+p-1).
  for (ScheduleKind kind : {ScheduleKind::GPipe, ScheduleKind::OneFOneB})
    for (int P : {2, 4, 8})
      for (int m : {1, 4, 8, 16}) {
        Schedule s = build(kind, P, 1, m);
        Simulation sim = simulate(s, uniformCosts(P));
        ASSERT_TRUE(sim.ok) << sim.error;
        EXPECT_DOUBLE_EQ(sim.makespan, 3.0 * (m + P - 1));
        for (int r = 0; r < P; ++r)
          EXPECT_NEAR(sim.bubble[r], double(P - 1) / (m + P - 1), 1e-12)
              << scheduleKindName(kind) << " P=" << P << " m=" << m << " rank " << r;
      }
}

TEST(Simulate, InterleavedBubbleIsPMinus1OverVMPlusPMinus1) {
  // Tests the interleaved bubble of Narayanan et al. 2021 (Sec. 2.2.2): with
  // each of the V chunks costing 1/V of the stage (F = B = W = 1 per stage,
  // so a fused backward piece costs 2/V) and free transfers, every rank
  // idles (p-1)(F+B+W)/v against ideal work m(F+B+W): the makespan is
  // exactly 3m + 3(p-1)/v and every rank's bubble exactly (p-1)/(v*m + p-1),
  // for p in {2, 3, 4, 8}, v in {2, 3, 4} and m in {p, 2p, 4p, 16, 32}
  // (multiples of p). Before the lockstep transfers (placeLockstep) p = 2
  // and p = 8 with m > p stalled: p = 2, v = 2, m = 8 had a bubble of
  // 4.5/28.5 = 0.158 (1F1B: 0.111), p = 8, v = 2, m = 32 30/126 = 0.238.
  for (int P : {2, 3, 4, 8})
    for (int V : {2, 3, 4})
      for (int m : {P, 2 * P, 4 * P, 16, 32}) {
        if (m % P != 0) continue;
        Schedule s = build(ScheduleKind::Interleaved, P, V, m);
        Simulation sim = simulate(s, stageCosts(s));
        ASSERT_TRUE(sim.ok) << sim.error;
        EXPECT_NEAR(sim.makespan, 3.0 * m + 3.0 * (P - 1) / V, 1e-9) << "P=" << P << " V=" << V << " m=" << m;
        for (int r = 0; r < P; ++r)
          EXPECT_NEAR(sim.bubble[r], (P - 1.0) / (V * m + P - 1), 1e-12)
              << "P=" << P << " V=" << V << " m=" << m << " rank " << r;
      }
  // The brief's case, now below 1F1B's 2/18 = 0.111.
  Schedule s = build(ScheduleKind::Interleaved, 2, 2, 8);
  Simulation sim = simulate(s, stageCosts(s));
  ASSERT_TRUE(sim.ok) << sim.error;
  EXPECT_DOUBLE_EQ(sim.makespan, 25.5);
  EXPECT_NEAR(sim.bubble[0], 1.5 / 25.5, 1e-12);
}

TEST(Simulate, InterleavedPaysATransferTimeOncePerGroup) {
  // Tests that with uniform chunks and a transfer time t = 0.01 the lockstep
  // groups add exactly t per group of the rank that posts the most (g) to
  // the makespan for m > p: a group waits only for its two neighbours'
  // groups, which post at the same instant, so the waits do not compound
  // along the pipeline. For m == p (warm-up capped at m*v, units without
  // pieces merged) it stays within (g + p) t (p = 8: g + 4).
  for (int P : {2, 4, 8})
    for (int V : {2, 3})
      for (int m : {P, 2 * P, 4 * P}) {
        Schedule s = build(ScheduleKind::Interleaved, P, V, m);
        Costs c = stageCosts(s);
        Simulation free = simulate(s, c);
        c.transfer = 0.01;
        Simulation paid = simulate(s, c);
        ASSERT_TRUE(free.ok && paid.ok) << free.error << paid.error;
        int groups = 0;
        for (int r = 0; r < P; ++r) {
          int own = 0;
          for (const Step& st : s.ranks[r]) own += !st.isCompute;
          groups = std::max(groups, own);
        }
        std::string name = "P=" + std::to_string(P) + " V=" + std::to_string(V) + " m=" + std::to_string(m);
        if (m > P)
          EXPECT_NEAR(paid.makespan - free.makespan, groups * c.transfer, 1e-9) << name;
        else
          EXPECT_LE(paid.makespan - free.makespan, (groups + P) * c.transfer + 1e-9) << name;
      }
}

TEST(Simulate, ZeroBubbleH1IdlesAThirdOfOneFOneB) {
  // Tests the ZB-H1 bubble of Qi et al. 2024 (Sec. 2.1): with T_F = T_B =
  // T_W every rank idles (p-1)(T_F + T_B - T_W) = p-1, a third of 1F1B's
  // (p-1)(T_F + T_B + T_W), for m >= p; and with T_W = 0.5 it idles
  // (p-1)(1 + 1 - 0.5) = 1.5(p-1).
  for (int P : {2, 3, 4, 8})
    for (int m : {P, 2 * P, 16}) {
      Simulation zb = simulate(build(ScheduleKind::ZeroBubbleH1, P, 1, m), uniformCosts(P));
      Simulation flat = simulate(build(ScheduleKind::OneFOneB, P, 1, m), uniformCosts(P));
      ASSERT_TRUE(zb.ok && flat.ok) << zb.error << flat.error;
      for (int r = 0; r < P; ++r) {
        EXPECT_NEAR(idleTime(zb, r), P - 1.0, 1e-9) << "P=" << P << " m=" << m << " rank " << r;
        EXPECT_NEAR(idleTime(zb, r) * 3, idleTime(flat, r), 1e-9) << "P=" << P << " m=" << m;
      }
      Simulation half = simulate(build(ScheduleKind::ZeroBubbleH1, P, 1, m), uniformCosts(P, 1, 1, 0.5));
      ASSERT_TRUE(half.ok) << half.error;
      EXPECT_NEAR(idleTime(half, 0), 1.5 * (P - 1), 1e-9) << "P=" << P << " m=" << m;
    }
}

TEST(Simulate, PeakInFlightMatchesThePapers) {
  // Tests the activations held on rank 0 (forwards whose backward has not
  // run): GPipe all m; 1F1B min(P, m) (and P - r on rank r); ZB-H1 the same
  // as 1F1B; interleaved Megatron's warm-up + 1, i.e.
  // min((P-1)*2 + (V-1)*P + 1, m*V).
  for (int P : {1, 2, 4, 8})
    for (int m : {1, 2, 4, 8, 16}) {
      Simulation gpipe = simulate(build(ScheduleKind::GPipe, P, 1, m), uniformCosts(P));
      Simulation flat = simulate(build(ScheduleKind::OneFOneB, P, 1, m), uniformCosts(P));
      Simulation zb = simulate(build(ScheduleKind::ZeroBubbleH1, P, 1, m), uniformCosts(P));
      ASSERT_TRUE(gpipe.ok && flat.ok && zb.ok);
      EXPECT_EQ(gpipe.peakInFlight[0], m);
      EXPECT_EQ(flat.peakInFlight[0], std::min(P, m));
      for (int r = 0; r < P; ++r) {
        EXPECT_EQ(flat.peakInFlight[r], std::min(P - r, m)) << "P=" << P << " m=" << m << " rank " << r;
        EXPECT_EQ(zb.peakInFlight[r], flat.peakInFlight[r]) << "P=" << P << " m=" << m << " rank " << r;
      }
      for (int V : {2, 3}) {
        if (m % P != 0) continue;
        Schedule s = build(ScheduleKind::Interleaved, P, V, m);
        Simulation inter = simulate(s, stageCosts(s));
        ASSERT_TRUE(inter.ok) << inter.error;
        int warmup = std::min((P - 1) * 2 + (V - 1) * P, m * V);
        EXPECT_EQ(inter.peakInFlight[0], std::min(warmup + 1, m * V)) << "P=" << P << " V=" << V << " m=" << m;
      }
    }
}

TEST(Simulate, PeakBytesCountWeightHeldPartsUntilW) {
  // Tests the byte accounting: activationBytes from F to B, and under ZB-H1
  // weightHeldBytes of it kept from B to W. ZB-H1 P=2 m=3 rank 1 runs F0 B0
  // F1 B1 F2 W0 B2 W1 W2: with 10 bytes per activation and 4 held for W the
  // peak is at F2, 10 (F2) + 4 (W0) + 4 (B1's) = 18.
  Schedule s = build(ScheduleKind::ZeroBubbleH1, 2, 1, 3);
  Costs c = uniformCosts(2);
  c.activationBytes = {10, 10};
  c.weightHeldBytes = {4, 4};
  Simulation sim = simulate(s, c);
  ASSERT_TRUE(sim.ok) << sim.error;
  EXPECT_DOUBLE_EQ(sim.peakActivationBytes[1], 18);
  EXPECT_EQ(sim.peakInFlight[1], 1);
  Simulation flat = simulate(build(ScheduleKind::OneFOneB, 2, 1, 3), c);
  ASSERT_TRUE(flat.ok);
  EXPECT_DOUBLE_EQ(flat.peakActivationBytes[0], 20);
  EXPECT_DOUBLE_EQ(flat.peakActivationBytes[1], 10);
}

// Hand-written steps for the broken schedules.
Step F(int mb, int c) { return Step{true, PieceKind::Forward, mb, c, {}}; }
Step B(int mb, int c) { return Step{true, PieceKind::Backward, mb, c, {}}; }
Transfer sendA(int mb, int c, int peer) { return {true, Payload::Activation, mb, c, peer}; }
Transfer recvA(int mb, int c, int peer) { return {false, Payload::Activation, mb, c, peer}; }
Transfer sendG(int mb, int c, int peer) { return {true, Payload::Gradient, mb, c, peer}; }
Transfer recvG(int mb, int c, int peer) { return {false, Payload::Gradient, mb, c, peer}; }
Step T(std::vector<Transfer> ts) { return Step{false, PieceKind::Forward, 0, 0, std::move(ts)}; }

TEST(SimulateRefuses, TwoSwappedSends) {
  // Tests that swapping two sends on rank 0 (microbatch 1's activation
  // before microbatch 0's) is refused at the first FIFO match, naming the
  // receiving rank and step and the sender's rank and step.
  Schedule s{{ScheduleKind::GPipe, 2, 1, 2}, {}};
  s.ranks = {{F(0, 0), F(1, 0), T({sendA(1, 0, 1)}), T({sendA(0, 0, 1)}), T({recvG(0, 1, 1)}), B(0, 0),
              T({recvG(1, 1, 1)}), B(1, 0)},
             {T({recvA(0, 0, 0)}), F(0, 1), T({recvA(1, 0, 0)}), F(1, 1), B(0, 1), T({sendG(0, 1, 0)}), B(1, 1),
              T({sendG(1, 1, 0)})}};
  Simulation sim = simulate(s, uniformCosts(2));
  EXPECT_FALSE(sim.ok);
  EXPECT_EQ(sim.error, "rank 1 step 0 receives activation (microbatch 0, chunk 0) from rank 0, whose matching "
                       "send at step 2 carries activation (microbatch 1, chunk 0)");
  // The same steps in the right order run.
  std::swap(s.ranks[0][2], s.ranks[0][3]);
  EXPECT_TRUE(simulate(s, uniformCosts(2)).ok);
}

TEST(SimulateRefuses, ADroppedReceive) {
  // Tests that dropping one receive from a built 1F1B schedule (rank 1's
  // receive of microbatch 0's activation) is refused at the forward that
  // needed it, naming the sender's step too.
  Schedule s = build(ScheduleKind::OneFOneB, 4, 1, 8);
  std::vector<Transfer>& first = s.ranks[1][0].transfers;
  ASSERT_EQ(first.size(), 1u);
  ASSERT_FALSE(first[0].isSend);
  s.ranks[1].erase(s.ranks[1].begin());
  Simulation sim = simulate(s, uniformCosts(4));
  EXPECT_FALSE(sim.ok);
  EXPECT_EQ(sim.error, "rank 1 step 0 (forward microbatch 0, chunk 1) needs the activation (microbatch 0, chunk 0) "
                       "that rank 0 sends at step 1, which no earlier step of rank 1 receives");
}

TEST(SimulateRefuses, BothRanksSendingFirstWithoutGrouping) {
  // Tests that a steady-state exchange split into two steps on each side,
  // both sending first (rank 0 its activation, rank 1 its gradient), is a
  // deadlock under rendezvous semantics, named rank by rank; batched into one
  // group per side (send_forward_recv_backward, send_backward_recv_forward)
  // the same transfers run.
  Schedule s{{ScheduleKind::OneFOneB, 2, 1, 2}, {}};
  s.ranks = {{F(0, 0), T({sendA(0, 0, 1)}), F(1, 0), T({sendA(1, 0, 1)}), T({recvG(0, 1, 1)}), B(0, 0),
              T({recvG(1, 1, 1)}), B(1, 0)},
             {T({recvA(0, 0, 0)}), F(0, 1), B(0, 1), T({sendG(0, 1, 0)}), T({recvA(1, 0, 0)}), F(1, 1), B(1, 1),
              T({sendG(1, 1, 0)})}};
  Simulation sim = simulate(s, uniformCosts(2));
  EXPECT_FALSE(sim.ok);
  EXPECT_EQ(sim.error,
            "deadlock: rank 0 waits at step 3 (send activation (microbatch 1, chunk 0) to rank 1) for rank 1, "
            "which waits at step 3 (send gradient (microbatch 0, chunk 1) to rank 0) for rank 0");
  s.ranks[0][3] = T({sendA(1, 0, 1), recvG(0, 1, 1)});
  s.ranks[0].erase(s.ranks[0].begin() + 4);
  s.ranks[1][3] = T({sendG(0, 1, 0), recvA(1, 0, 0)});
  s.ranks[1].erase(s.ranks[1].begin() + 4);
  Simulation fixed = simulate(s, uniformCosts(2));
  EXPECT_TRUE(fixed.ok) << fixed.error;
}

TEST(SimulateRefuses, DataflowViolations) {
  // Tests the dataflow checks: a forward before its input arrived, a backward
  // before its forward, a piece on the wrong rank, a piece run twice, a
  // weight piece outside ZB-H1, a piece never run, a send to oneself.
  auto errorOf = [](std::vector<std::vector<Step>> ranks, ScheduleKind kind = ScheduleKind::GPipe, int m = 1) {
    Schedule s{{kind, int(ranks.size()), 1, m}, std::move(ranks)};
    Simulation sim = simulate(s, uniformCosts(int(s.ranks.size())));
    EXPECT_FALSE(sim.ok);
    return sim.error;
  };
  EXPECT_EQ(errorOf({{F(0, 0), T({sendA(0, 0, 1)}), T({recvG(0, 1, 1)}), B(0, 0)},
                     {F(0, 1), T({recvA(0, 0, 0)}), B(0, 1), T({sendG(0, 1, 0)})}}),
            "rank 1 step 0 (forward microbatch 0, chunk 1) needs the activation (microbatch 0, chunk 0) that "
            "rank 0 sends at step 1, which no earlier step of rank 1 receives");
  EXPECT_EQ(errorOf({{B(0, 0), F(0, 0)}}), "rank 0 step 0 (backward microbatch 0, chunk 0) runs before its forward");
  EXPECT_EQ(errorOf({{F(0, 1)}, {F(0, 0)}}),
            "rank 0 step 0 (forward microbatch 0, chunk 1): chunk 1 lives on rank 1");
  EXPECT_EQ(errorOf({{F(0, 0), F(0, 0)}}), "rank 0 step 1 (forward microbatch 0, chunk 0): already run at rank 0 step 0");
  EXPECT_EQ(errorOf({{F(0, 0), B(0, 0), Step{true, PieceKind::Weight, 0, 0, {}}}}),
            "rank 0 step 2 (weight microbatch 0, chunk 0): a weight piece, but the gpipe schedule runs the "
            "weight gradient inside the backward piece");
  EXPECT_EQ(errorOf({{F(0, 0), B(0, 0)}}, ScheduleKind::GPipe, 2),
            "rank 0 never runs the forward piece of microbatch 1, chunk 0");
  EXPECT_EQ(errorOf({{F(0, 0), B(0, 0)}}, ScheduleKind::ZeroBubbleH1),
            "rank 0 never runs the weight piece of microbatch 0, chunk 0");
  EXPECT_EQ(errorOf({{F(0, 0), T({sendA(0, 0, 0)}), B(0, 0)}}),
            "rank 0 step 1 (send activation (microbatch 0, chunk 0) to rank 0) addresses its own rank");
  EXPECT_EQ(errorOf({{T({sendA(0, 0, 1)}), F(0, 0), B(0, 0), T({recvG(0, 1, 1)})},
                     {T({recvA(0, 0, 0)}), F(0, 1), B(0, 1), T({sendG(0, 1, 0)})}}),
            "rank 0 step 0 (send activation (microbatch 0, chunk 0) to rank 1) before its forward ran");
}

TEST(SimulateRefuses, CostsOfTheWrongShape) {
  // Tests that per-chunk cost vectors must have one entry per chunk.
  Schedule s = build(ScheduleKind::OneFOneB, 2, 1, 2);
  Costs c = uniformCosts(3);
  Simulation sim = simulate(s, c);
  EXPECT_FALSE(sim.ok);
  EXPECT_EQ(sim.error, "costs.forward has 3 entries; expected one per chunk (2)");
}

}  // namespace
}  // namespace mtc::pipeline
