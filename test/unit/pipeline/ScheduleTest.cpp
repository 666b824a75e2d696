// Tests of buildSchedule and formatOrders: the per-rank orders against the
// published tables, the transfers Megatron batches, and the specs refused.
#include "mtc/Pipeline/Schedule.h"

#include <gtest/gtest.h>

namespace mtc::pipeline {
namespace {

std::string orders(ScheduleKind kind, int P, int V, int m) {
  Schedule s;
  std::string error;
  EXPECT_TRUE(buildSchedule({kind, P, V, m}, s, error)) << error;
  return formatOrders(s);
}

// The tables below are 0-indexed (the papers number microbatches from 1).

TEST(ScheduleOrders, GPipeMatchesNarayananFig3) {
  // Tests that GPipe runs all forwards, then all backwards, both in
  // microbatch order. Source: Narayanan et al. 2021, "Efficient Large-Scale
  // Language Model Training on GPU Clusters Using Megatron-LM", Fig. 3 (the
  // GPipe paper's Fig. 2(c) draws the last stage's backwards in reverse
  // order; with uniform costs both give the same makespan, see
  // Schedule.cpp).
  EXPECT_EQ(orders(ScheduleKind::GPipe, 4, 1, 8),
            "rank 0: F0 F1 F2 F3 F4 F5 F6 F7 B0 B1 B2 B3 B4 B5 B6 B7\n"
            "rank 1: F0 F1 F2 F3 F4 F5 F6 F7 B0 B1 B2 B3 B4 B5 B6 B7\n"
            "rank 2: F0 F1 F2 F3 F4 F5 F6 F7 B0 B1 B2 B3 B4 B5 B6 B7\n"
            "rank 3: F0 F1 F2 F3 F4 F5 F6 F7 B0 B1 B2 B3 B4 B5 B6 B7\n");
}

TEST(ScheduleOrders, OneFOneBMatchesNarayananFig4Top) {
  // Tests that 1F1B (PipeDream-Flush) with p = 4, m = 8 gives the orders of
  // Narayanan et al. 2021, Fig. 4 (top), device 1 reading "1 2 3 4 1 5 2 6 3 7
  // 4 8 5 6 7 8": rank r runs min(p - r - 1, m) warm-up forwards, steady
  // (F, B) pairs, then the cool-down backwards (Megatron's
  // forward_backward_pipelining_without_interleaving).
  EXPECT_EQ(orders(ScheduleKind::OneFOneB, 4, 1, 8),
            "rank 0: F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7\n"
            "rank 1: F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 F6 B4 F7 B5 B6 B7\n"
            "rank 2: F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 F6 B5 F7 B6 B7\n"
            "rank 3: F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7\n");
}

TEST(ScheduleOrders, InterleavedMatchesNarayananFig4Bottom) {
  // Tests that interleaved 1F1B with p = 4, v = 2, m = 8 gives the orders of
  // Narayanan et al. 2021, Fig. 4 (bottom), written microbatch.localChunk:
  // microbatches in groups of p per chunk, (p - r - 1) * 2 + (v - 1) * p
  // warm-up forwards on rank r (10, 8, 6, 4), then (F, B) pairs, then the
  // cool-down (Megatron's forward_backward_pipelining_with_interleaving).
  EXPECT_EQ(orders(ScheduleKind::Interleaved, 4, 2, 8),
            "rank 0: F0.0 F1.0 F2.0 F3.0 F0.1 F1.1 F2.1 F3.1 F4.0 F5.0 "
            "F6.0 B0.1 F7.0 B1.1 F4.1 B2.1 F5.1 B3.1 F6.1 B0.0 F7.1 B1.0 "
            "B2.0 B3.0 B4.1 B5.1 B6.1 B7.1 B4.0 B5.0 B6.0 B7.0\n"
            "rank 1: F0.0 F1.0 F2.0 F3.0 F0.1 F1.1 F2.1 F3.1 "
            "F4.0 B0.1 F5.0 B1.1 F6.0 B2.1 F7.0 B3.1 F4.1 B0.0 F5.1 B1.0 F6.1 B2.0 F7.1 B3.0 "
            "B4.1 B5.1 B6.1 B7.1 B4.0 B5.0 B6.0 B7.0\n"
            "rank 2: F0.0 F1.0 F2.0 F3.0 F0.1 F1.1 "
            "F2.1 B0.1 F3.1 B1.1 F4.0 B2.1 F5.0 B3.1 F6.0 B0.0 F7.0 B1.0 F4.1 B2.0 F5.1 B3.0 "
            "F6.1 B4.1 F7.1 B5.1 B6.1 B7.1 B4.0 B5.0 B6.0 B7.0\n"
            "rank 3: F0.0 F1.0 F2.0 F3.0 "
            "F0.1 B0.1 F1.1 B1.1 F2.1 B2.1 F3.1 B3.1 F4.0 B0.0 F5.0 B1.0 F6.0 B2.0 F7.0 B3.0 "
            "F4.1 B4.1 F5.1 B5.1 F6.1 B6.1 F7.1 B7.1 B4.0 B5.0 B6.0 B7.0\n");
}

TEST(ScheduleOrders, ZeroBubbleH1MatchesQiFig3Top) {
  // Tests that ZB-H1 with p = 4, m = 8 gives the handcrafted schedule of Qi
  // et al. 2024, "Zero Bubble Pipeline Parallelism" (ICLR 2024), Fig. 3 top
  // and Sec. 2.1: 1F1B's F/B order with B the input gradient only, and rank
  // r's weight-gradient passes W delayed by r microbatches (W i right before
  // B i+r+1), so the first worker runs "1 2 3 4 _ _ _ 1 5 1 2 6 2 ..." (F1-4,
  // idle, B1 F5 W1 B2 F6 W2 ...) and the last worker its first r B's
  // without W; the trailing W's fill 1F1B's cool-down bubble.
  EXPECT_EQ(orders(ScheduleKind::ZeroBubbleH1, 4, 1, 8),
            "rank 0: F0 F1 F2 F3 B0 F4 W0 B1 F5 W1 B2 F6 W2 B3 F7 W3 B4 W4 B5 W5 B6 W6 B7 W7\n"
            "rank 1: F0 F1 F2 B0 F3 B1 F4 W0 B2 F5 W1 B3 F6 W2 B4 F7 W3 B5 W4 B6 W5 B7 W6 W7\n"
            "rank 2: F0 F1 B0 F2 B1 F3 B2 F4 W0 B3 F5 W1 B4 F6 W2 B5 F7 W3 B6 W4 B7 W5 W6 W7\n"
            "rank 3: F0 B0 F1 B1 F2 B2 F3 B3 F4 W0 B4 F5 W1 B5 F6 W2 B6 F7 W3 B7 W4 W5 W6 W7\n");
}

TEST(ScheduleOrders, FewerMicrobatchesThanStagesCapsTheWarmUp) {
  // Tests that 1F1B with m < p caps rank r's warm-up at m (min(p - r - 1, m)):
  // ranks 0 and 1 run both forwards first, rank 2 one warm-up forward and
  // one steady (F1, B0) pair.
  EXPECT_EQ(orders(ScheduleKind::OneFOneB, 4, 1, 2),
            "rank 0: F0 F1 B0 B1\n"
            "rank 1: F0 F1 B0 B1\n"
            "rank 2: F0 F1 B0 B1\n"
            "rank 3: F0 B0 F1 B1\n");
}

// Transfers of one rank as text: "{sa0.1>2 rg1.2<2}" = a group sending the
// activation of (microbatch 0, chunk 1) to rank 2 and receiving the gradient
// of (microbatch 1, chunk 2) from rank 2.
std::string stepsOf(const Schedule& s, int rank) {
  std::string out;
  for (const Step& st : s.ranks[rank]) {
    if (!out.empty()) out += " ";
    if (st.isCompute) {
      out += "FBW"[int(st.piece)] + std::to_string(st.microbatch);
      continue;
    }
    out += "{";
    for (size_t i = 0; i < st.transfers.size(); ++i) {
      const Transfer& t = st.transfers[i];
      out += (i ? " " : "") + std::string(t.isSend ? "s" : "r") + (t.what == Payload::Activation ? "a" : "g") +
             std::to_string(t.microbatch) + "." + std::to_string(t.chunk) + (t.isSend ? ">" : "<") +
             std::to_string(t.peer);
    }
    out += "}";
  }
  return out;
}

TEST(ScheduleTransfers, OneFOneBBatchesLikeMegatronInTheSteadyState) {
  // Tests that the steady state of 1F1B batches the send after an F with the
  // receive before the next B (send_forward_recv_backward) and the send after
  // a B with the receive before the next F (send_backward_recv_forward). In
  // the warm-up the next activation is received with the send of the last
  // (Megatron's interleaved send_forward_recv_forward; its 1F1B posts the
  // two separately, which is equally deadlock-free).
  Schedule s;
  std::string error;
  ASSERT_TRUE(buildSchedule({ScheduleKind::OneFOneB, 4, 1, 8}, s, error)) << error;
  EXPECT_EQ(stepsOf(s, 1),
            "{ra0.0<0} F0 {ra1.0<0 sa0.1>2} F1 {ra2.0<0 sa1.1>2} F2 {ra3.0<0 sa2.1>2 rg0.2<2} B0 {sg0.1>0} "
            "F3 {sa3.1>2 rg1.2<2} B1 {ra4.0<0 sg1.1>0} F4 {sa4.1>2 rg2.2<2} B2 {ra5.0<0 sg2.1>0} "
            "F5 {sa5.1>2 rg3.2<2} B3 {ra6.0<0 sg3.1>0} F6 {sa6.1>2 rg4.2<2} B4 {ra7.0<0 sg4.1>0} "
            "F7 {sa7.1>2 rg5.2<2} B5 {sg5.1>0 rg6.2<2} B6 {sg6.1>0 rg7.2<2} B7 {sg7.1>0}");
}

TEST(ScheduleTransfers, ZeroBubbleH1SendsTheGradientAfterBAndNothingAfterW) {
  // Tests that under ZB-H1 the gradient leaves right after B and a W has no
  // transfers; the last rank receives activations and sends gradients only.
  Schedule s;
  std::string error;
  ASSERT_TRUE(buildSchedule({ScheduleKind::ZeroBubbleH1, 2, 1, 3}, s, error)) << error;
  EXPECT_EQ(stepsOf(s, 1), "{ra0.0<0} F0 {ra1.0<0} B0 {sg0.1>0} F1 B1 {ra2.0<0 sg1.1>0} F2 W0 B2 {sg2.1>0} W1 W2");
  for (const Step& st : s.ranks[1]) {
    if (st.isCompute) continue;
    for (const Transfer& t : st.transfers)
      EXPECT_TRUE(t.isSend ? t.what == Payload::Gradient : t.what == Payload::Activation);
  }
}

TEST(ScheduleTransfers, InterleavedPostsOneGroupPerStepLikeMegatron) {
  // Tests that interleaved 1F1B batches its transfers as Megatron's
  // forward_backward_pipelining_with_interleaving does: one group before
  // each step (a warm-up F, a steady (F, B) pair or a cool-down B) that sends
  // what the previous step computed and receives the inputs of this one
  // (send_forward_recv_forward in the warm-up,
  // send_forward_backward_recv_forward_backward in the steady state,
  // send_backward_recv_backward in the cool-down). P = 2, V = 2, m = 4
  // (chunks 0, 2 on rank 0 and 1, 3 on rank 1; rank 0's warm-up is 4, rank
  // 1's 2): e.g. rank 1's steady group {ra3.0<0 rg1.2<0 sa2.1>0 sg0.1>0}
  // after F2 (chunk 1) and B0 (chunk 1) sends both and receives the inputs
  // of F3 (chunk 1) and B1 (chunk 1).
  Schedule s;
  std::string error;
  ASSERT_TRUE(buildSchedule({ScheduleKind::Interleaved, 2, 2, 4}, s, error)) << error;
  EXPECT_EQ(stepsOf(s, 0),
            "F0 {sa0.0>1} F1 {sa1.0>1 ra0.1<1} F0 {sa0.2>1 ra1.1<1} F1 {sa1.2>1 rg0.3<1} F2 B0 "
            "{sa2.0>1 sg0.2>1 rg1.3<1} F3 B1 {sa3.0>1 sg1.2>1 ra2.1<1 rg0.1<1} F2 B0 {sa2.2>1 ra3.1<1 rg1.1<1} "
            "F3 B1 {sa3.2>1 rg2.3<1} B2 {sg2.2>1 rg3.3<1} B3 {sg3.2>1 rg2.1<1} B2 {rg3.1<1} B3");
  EXPECT_EQ(stepsOf(s, 1),
            "{ra0.0<0} F0 {ra1.0<0 sa0.1>0} F1 {ra0.2<0 sa1.1>0} F0 B0 {ra1.2<0 sg0.3>0} F1 B1 "
            "{ra2.0<0 rg0.2<0 sg1.3>0} F2 B0 {ra3.0<0 rg1.2<0 sa2.1>0 sg0.1>0} F3 B1 {ra2.2<0 sa3.1>0 sg1.1>0} "
            "F2 B2 {ra3.2<0 sg2.3>0} F3 B3 {rg2.2<0 sg3.3>0} B2 {rg3.2<0 sg2.1>0} B3 {sg3.1>0}");
  // Over a grid: never two groups in a row, and a group holds at most one
  // transfer of each kind (send or receive, activation or gradient).
  for (int P : {2, 3, 4, 8})
    for (int V : {2, 3})
      for (int m : {P, 2 * P, 4 * P}) {
        ASSERT_TRUE(buildSchedule({ScheduleKind::Interleaved, P, V, m}, s, error)) << error;
        for (int r = 0; r < P; ++r)
          for (size_t i = 0; i < s.ranks[r].size(); ++i) {
            const Step& st = s.ranks[r][i];
            if (st.isCompute) continue;
            EXPECT_TRUE(i + 1 == s.ranks[r].size() || s.ranks[r][i + 1].isCompute)
                << "P=" << P << " V=" << V << " m=" << m << " rank " << r << " step " << i;
            int kinds[2][2] = {{0, 0}, {0, 0}};
            for (const Transfer& t : st.transfers) ++kinds[t.isSend][int(t.what)];
            for (auto& k : kinds)
              for (int n : k) EXPECT_LE(n, 1) << "P=" << P << " V=" << V << " m=" << m << " rank " << r;
          }
      }
}

TEST(ScheduleTransfers, InterleavedWrapsFromTheLastRankToTheFirst) {
  // Tests that with V > 1 the activation of chunk P-1 (last rank) goes to
  // chunk P on rank 0, and that a single stage never transfers.
  Schedule s;
  std::string error;
  ASSERT_TRUE(buildSchedule({ScheduleKind::Interleaved, 2, 2, 2}, s, error)) << error;
  bool wraps = false;
  for (const Step& st : s.ranks[1])
    for (const Transfer& t : st.transfers)
      wraps |= t.isSend && t.what == Payload::Activation && t.chunk == 1 && t.peer == 0;
  EXPECT_TRUE(wraps);
  ASSERT_TRUE(buildSchedule({ScheduleKind::Interleaved, 1, 3, 4}, s, error)) << error;
  for (const Step& st : s.ranks[0]) EXPECT_TRUE(st.isCompute);
  EXPECT_EQ(formatOrders(s), "rank 0: F0.0 F0.1 F0.2 B0.2 F1.0 B0.1 F1.1 B0.0 F1.2 B1.2 F2.0 B1.1 F2.1 B1.0 "
                             "F2.2 B2.2 F3.0 B2.1 F3.1 B2.0 F3.2 B3.2 B3.1 B3.0\n");
}

TEST(ScheduleSpec, ParsesAndPrintsKinds) {
  // Tests that the four kind names round-trip and anything else is refused.
  for (ScheduleKind k : {ScheduleKind::GPipe, ScheduleKind::OneFOneB, ScheduleKind::Interleaved,
                         ScheduleKind::ZeroBubbleH1}) {
    ScheduleKind parsed;
    ASSERT_TRUE(parseScheduleKind(scheduleKindName(k), parsed));
    EXPECT_EQ(parsed, k);
  }
  ScheduleKind parsed;
  EXPECT_FALSE(parseScheduleKind("1F1B", parsed));
  EXPECT_FALSE(parseScheduleKind("zbh1", parsed));
  EXPECT_STREQ(scheduleKindName(ScheduleKind::ZeroBubbleH1), "zb-h1");
}

TEST(ScheduleSpec, RefusesWhatTheSchedulesDoNotSupport) {
  // Tests that buildSchedule refuses each unsupported spec with a message
  // naming the field, its value and what would be valid.
  auto refusal = [](ScheduleSpec spec) {
    Schedule s;
    std::string error;
    EXPECT_FALSE(buildSchedule(spec, s, error));
    return error;
  };
  EXPECT_EQ(refusal({ScheduleKind::OneFOneB, 0, 1, 4}), "1f1b schedule: stages is 0; expected at least 1");
  EXPECT_EQ(refusal({ScheduleKind::GPipe, 2, 1, 0}), "gpipe schedule: microbatches is 0; expected at least 1");
  EXPECT_EQ(refusal({ScheduleKind::Interleaved, 4, 1, 8}),
            "interleaved schedule: virtualStages is 1; interleaving needs at least 2 model chunks per rank "
            "(use 1f1b for 1)");
  EXPECT_EQ(refusal({ScheduleKind::Interleaved, 4, 2, 6}),
            "interleaved schedule: microbatches (6) is not a multiple of stages (4), as Megatron's interleaved "
            "schedule requires");
  EXPECT_EQ(refusal({ScheduleKind::ZeroBubbleH1, 4, 2, 8}),
            "zb-h1 schedule: virtualStages is 2; only the interleaved schedule has more than one model chunk "
            "per rank");
  EXPECT_EQ(refusal({ScheduleKind::OneFOneB, 4, 0, 8}), "1f1b schedule: virtualStages is 0; expected at least 1");
}

}  // namespace
}  // namespace mtc::pipeline
