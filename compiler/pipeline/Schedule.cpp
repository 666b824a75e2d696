// Builds the per-rank orders of the four schedules and inserts the transfers.
//
// Two steps, kept apart so that every schedule shares the transfer rule:
//  1. The compute pieces of each rank, in order (the published tables; see the
//     comment on each schedule below).
//  2. The sends and receives those pieces imply, batched into groups.
//     gpipe, 1f1b, zb-h1: placeTransfers() puts each pair at one point of a
//     global timeline and batches consecutive ones into one group. In the
//     1F1B steady state this yields Megatron's batched pairs
//     (send_forward_recv_backward after an F, send_backward_recv_forward
//     after a B); unlike Megatron's hand-placed receives, the construction is
//     proved deadlock-free for any order whose dataflow is acyclic (see
//     below). interleaved: placeLockstep() posts one group per step, as
//     Megatron's send_forward_backward_recv_forward_backward does, also
//     proved deadlock-free (see there); on the global timeline the
//     interleaved pieces of neighbouring ranks leave no common free instant
//     for some transfers when P != 4 and m > P, which stalled ranks (P = 2,
//     v = 2, m = 8: bubble 0.158, the formula 0.059).
#include "mtc/Pipeline/Schedule.h"

#include <algorithm>
#include <tuple>

namespace mtc::pipeline {

bool parseScheduleKind(std::string_view s, ScheduleKind& out) {
  if (s == "gpipe") out = ScheduleKind::GPipe;
  else if (s == "1f1b") out = ScheduleKind::OneFOneB;
  else if (s == "interleaved") out = ScheduleKind::Interleaved;
  else if (s == "zb-h1") out = ScheduleKind::ZeroBubbleH1;
  else return false;
  return true;
}

const char* scheduleKindName(ScheduleKind k) {
  switch (k) {
  case ScheduleKind::GPipe: return "gpipe";
  case ScheduleKind::OneFOneB: return "1f1b";
  case ScheduleKind::Interleaved: return "interleaved";
  case ScheduleKind::ZeroBubbleH1: return "zb-h1";
  }
  return "?";
}

Costs uniformCosts(int chunks, double f, double b, double w) {
  Costs c;
  size_t n = chunks > 0 ? size_t(chunks) : 0;
  c.forward.assign(n, f);
  c.backward.assign(n, b);
  c.weight.assign(n, w);
  c.activationBytes.assign(n, 1.0);
  c.weightHeldBytes.assign(n, 0.0);
  return c;
}

namespace {

Step compute(PieceKind k, int microbatch, int chunk) {
  return Step{true, k, microbatch, chunk, {}};
}

// GPipe: every forward, then every backward, both in microbatch order. The
// GPipe paper's Fig. 2(c) draws the backwards of the last stage in reverse
// microbatch order; we follow Narayanan et al. 2021, Fig. 3 (the baseline
// Megatron compares against), which runs them in microbatch order: gradients
// then leave every rank in the order the activations arrived, and with
// uniform costs the makespan is the same, (m + P - 1)(F + B).
std::vector<Step> gpipeOrder(int rank, int m) {
  std::vector<Step> order;
  for (int i = 0; i < m; ++i) order.push_back(compute(PieceKind::Forward, i, rank));
  for (int i = 0; i < m; ++i) order.push_back(compute(PieceKind::Backward, i, rank));
  return order;
}

// 1F1B (PipeDream-Flush), Megatron's forward_backward_pipelining_without_
// interleaving: rank r runs w = min(P - r - 1, m) warm-up forwards, then
// m - w steady pairs (F i+w, B i), then the w cool-down backwards.
std::vector<Step> oneFOneBOrder(int rank, int P, int m) {
  int warmup = std::min(P - rank - 1, m);
  std::vector<Step> order;
  for (int i = 0; i < warmup; ++i) order.push_back(compute(PieceKind::Forward, i, rank));
  for (int i = 0; i < m - warmup; ++i) {
    order.push_back(compute(PieceKind::Forward, i + warmup, rank));
    order.push_back(compute(PieceKind::Backward, i, rank));
  }
  for (int i = m - warmup; i < m; ++i) order.push_back(compute(PieceKind::Backward, i, rank));
  return order;
}

// ZB-H1 (Qi et al. 2024, Sec. 2.1, Fig. 3 top): the F/B order of 1F1B, with B
// now the input-gradient part only, and rank r's W's delayed by r
// microbatches: W i goes right before B i+r+1 (after that B's preceding F in
// the steady state), the last r+1 W's after the last B. Rank r thus starts its
// W's "based on the number of warm-up microbatches" (P - r - 1): rank 0, with
// the most warm-up, runs B0 F W0 B1 at once; the last rank runs r = P-1 B's
// before its first W. The in-flight forwards (F done, B not) are 1F1B's,
// P - r on rank r, and with T_F = T_B = T_W the W's fill the cool-down:
// every rank idles (P - 1)(T_F + T_B - T_W) against 1F1B's (P - 1)(T_F + T_B
// + T_W), a third.
std::vector<Step> zeroBubbleH1Order(int rank, int P, int m) {
  std::vector<Step> order;
  int nextW = 0;
  for (const Step& s : oneFOneBOrder(rank, P, m)) {
    if (s.piece == PieceKind::Backward && s.microbatch - 1 - rank >= nextW)
      order.push_back(compute(PieceKind::Weight, nextW++, rank));
    order.push_back(s);
  }
  while (nextW < m) order.push_back(compute(PieceKind::Weight, nextW++, rank));
  return order;
}

// Interleaved 1F1B, Megatron's forward_backward_pipelining_with_interleaving.
// Rank r runs m*V forward and m*V backward pieces. The k-th of each is taken
// from groups of P microbatches per chunk (get_model_chunk_id and
// get_microbatch_id_in_model_chunk): within a group of P*V pieces the local
// chunk is (k % (P*V)) / P, counted down from V-1 for backwards, and the
// microbatch is (k / (P*V)) * P + k % P. Warm-up: (P - r - 1) * 2 + (V-1) * P
// forwards, capped at m*V (current Megatron; older versions ran all forwards
// first when m == P, which the cap gives on rank 0 anyway); then steady pairs
// (F k+w, B k); then the cool-down backwards.
std::vector<Step> interleavedOrder(int rank, int P, int V, int m) {
  int total = m * V;
  int warmup = std::min((P - rank - 1) * 2 + (V - 1) * P, total);
  auto piece = [&](int k, PieceKind kind) {
    int inGroup = k % (P * V);
    int local = inGroup / P;
    if (kind == PieceKind::Backward) local = V - 1 - local;
    int microbatch = (k / (P * V)) * P + inGroup % P;
    return compute(kind, microbatch, local * P + rank);
  };
  std::vector<Step> order;
  for (int k = 0; k < warmup; ++k) order.push_back(piece(k, PieceKind::Forward));
  for (int k = 0; k < total - warmup; ++k) {
    order.push_back(piece(k + warmup, PieceKind::Forward));
    order.push_back(piece(k, PieceKind::Backward));
  }
  for (int k = total - warmup; k < total; ++k) order.push_back(piece(k, PieceKind::Backward));
  return order;
}

// The sends piece `s` of rank `rank` implies (none to its own rank): the
// activation leaving chunk c to the rank of c+1, the gradient leaving it to
// the rank of c-1.
std::vector<Transfer> sendsOf(const Step& s, int rank, int P, int chunks) {
  auto rankOf = [&](int c) { return c % P; };
  int c = s.chunk;
  std::vector<Transfer> sends;
  if (s.piece == PieceKind::Forward && c + 1 < chunks && rankOf(c + 1) != rank)
    sends.push_back({true, Payload::Activation, s.microbatch, c, rankOf(c + 1)});
  if (s.piece == PieceKind::Backward && c > 0 && rankOf(c - 1) != rank)
    sends.push_back({true, Payload::Gradient, s.microbatch, c, rankOf(c - 1)});
  return sends;
}

Step group(std::vector<Transfer> transfers) {
  return Step{false, PieceKind::Forward, 0, 0, std::move(transfers)};
}

// Places every transfer at one point of a global timeline shared by its two
// ends, so that no wait can close a cycle under rendezvous semantics.
//  1. Time the compute orders as soon as dataflow allows (F 1, B 1 + W 1 or,
//     split, B 1 and W 1; transfers free).
//  2. A transfer happens at tau, the first time from the end of its producer
//     to the start of its consumer at which neither rank is inside a piece
//     (so, under these costs, the rendezvous stalls neither); the producer's
//     end if there is none. Each rank's steps are sorted by (time, transfers
//     before computes, sender rank, sender piece): computes by their start,
//     transfers by tau. So sends follow their producer and receives precede
//     their consumer.
//  3. Consecutive transfers of a rank (no compute between) form one group.
// Why it cannot deadlock, whatever the real costs: every rank's steps are in
// the order of one global key, and a pair of transfers has one key on both
// ends; the groups before a transfer on either end hold only transfers of
// smaller keys, so by induction on the key every transfer is matched. FIFO
// order holds too: both ends of every ordered pair are sorted by that key.
// (Not used for interleaved: see placeLockstep.)
bool placeTransfers(const std::vector<std::vector<Step>>& orders, const ScheduleSpec& spec,
                    std::vector<std::vector<Step>>& out, std::string& error) {
  const int P = spec.stages, chunks = spec.stages * spec.virtualStages, m = spec.microbatches;
  const bool split = spec.kind == ScheduleKind::ZeroBubbleH1;
  auto cost = [&](PieceKind k) { return k == PieceKind::Backward && !split ? 2.0 : 1.0; };
  // End time of F / B per (microbatch, chunk); < 0 until timed.
  std::vector<double> fEnd(size_t(m) * chunks, -1), bEnd(size_t(m) * chunks, -1);
  std::vector<double> fStart(size_t(m) * chunks, 0), bStart(size_t(m) * chunks, 0);
  std::vector<std::vector<double>> start(P);
  std::vector<size_t> next(P, 0);
  std::vector<double> clock(P, 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < P; ++r)
      while (next[r] < orders[r].size()) {
        const Step& s = orders[r][next[r]];
        size_t k = size_t(s.microbatch) * chunks + s.chunk;
        double ready = clock[r];
        if (s.piece == PieceKind::Forward && s.chunk > 0) {
          if (fEnd[k - 1] < 0) break;
          ready = std::max(ready, fEnd[k - 1]);
        } else if (s.piece == PieceKind::Backward && s.chunk + 1 < chunks) {
          if (bEnd[k + 1] < 0) break;
          ready = std::max(ready, bEnd[k + 1]);
        }
        start[r].push_back(ready);
        clock[r] = ready + cost(s.piece);
        if (s.piece == PieceKind::Forward) fStart[k] = ready, fEnd[k] = clock[r];
        if (s.piece == PieceKind::Backward) bStart[k] = ready, bEnd[k] = clock[r];
        ++next[r];
        progress = true;
      }
  }
  for (int r = 0; r < P; ++r)
    if (next[r] < orders[r].size()) {
      error = std::string(scheduleKindName(spec.kind)) + " schedule: the compute orders wait on each other (rank " +
              std::to_string(r) + " at piece " + std::to_string(next[r]) + ")";
      return false;
    }

  // Rank r is inside a piece at time t when one started before t, ends after.
  auto busyAt = [&](int r, double t) {
    auto it = std::lower_bound(start[r].begin(), start[r].end(), t);
    if (it == start[r].begin()) return false;
    size_t i = size_t(it - start[r].begin()) - 1;
    return start[r][i] + cost(orders[r][i].piece) > t;
  };
  // The first time in [produced, consumed] at which neither end is inside a
  // piece (candidates: `produced` and the ends of both ranks' pieces), so
  // the rendezvous stalls neither; `produced` if there is none.
  auto rendezvousTime = [&](int sender, int receiver, double produced, double consumed) {
    std::vector<double> candidates{produced};
    for (int r : {sender, receiver})
      for (size_t i = 0; i < orders[r].size(); ++i) {
        double end = start[r][i] + cost(orders[r][i].piece);
        if (end > produced && end <= consumed) candidates.push_back(end);
      }
    std::sort(candidates.begin(), candidates.end());
    for (double t : candidates)
      if (!busyAt(sender, t) && !busyAt(receiver, t)) return t;
    return produced;
  };
  struct Item {
    double time;
    int transfersFirst;  // 0 for a transfer, 1 for a compute
    int sender, senderPiece, index;
    Step compute;
    Transfer transfer;
  };
  std::vector<std::vector<Item>> items(P);
  for (int r = 0; r < P; ++r)
    for (size_t i = 0; i < orders[r].size(); ++i) {
      const Step& s = orders[r][i];
      items[r].push_back({start[r][i], 1, r, int(i), 0, s, {}});
      double produced = start[r][i] + cost(s.piece);
      int idx = 0;
      for (const Transfer& t : sendsOf(s, r, P, chunks)) {
        size_t consumer = size_t(t.microbatch) * chunks + (t.what == Payload::Activation ? t.chunk + 1 : t.chunk - 1);
        double tau = rendezvousTime(r, t.peer, produced,
                                    t.what == Payload::Activation ? fStart[consumer] : bStart[consumer]);
        items[r].push_back({tau, 0, r, int(i), idx, {}, t});
        Transfer recv = t;
        recv.isSend = false;
        recv.peer = r;
        items[t.peer].push_back({tau, 0, r, int(i), idx, {}, recv});
        ++idx;
      }
    }
  out.assign(P, {});
  for (int r = 0; r < P; ++r) {
    std::sort(items[r].begin(), items[r].end(), [](const Item& a, const Item& b) {
      return std::tie(a.time, a.transfersFirst, a.sender, a.senderPiece, a.index) <
             std::tie(b.time, b.transfersFirst, b.sender, b.senderPiece, b.index);
    });
    for (const Item& it : items[r]) {
      if (it.transfersFirst) {
        out[r].push_back(it.compute);
      } else {
        if (out[r].empty() || out[r].back().isCompute) out[r].push_back(group({}));
        out[r].back().transfers.push_back(it.transfer);
      }
    }
  }
  return true;
}

// Interleaved 1F1B's transfers in lockstep, as Megatron's
// forward_backward_pipelining_with_interleaving batches them
// (send_forward_recv_forward in the warm-up,
// send_forward_backward_recv_forward_backward in the steady state,
// send_backward_recv_backward in the cool-down): rank r's pieces are cut into
// units, unit u holding F u (u < m*V) and B u - W_r (u >= W_r), F first, where
// W_r = (P - r - 1) * 2 + (V - 1) * P is the warm-up before Megatron's cap at
// m*V (under the cap, m == P, the units between the last F and the first B
// are empty). One group sits before each unit u: it sends what unit u-1
// computed and receives the inputs of unit u's pieces. A rank thus posts one
// group per unit and the data of a piece leaves as soon as its unit ends.
// Why it cannot deadlock, whatever the costs: give rank r's group u the key
// u + r. The F index of a piece is the same on every rank and the B index
// too (the piece order depends on the rank only through W_r), so an
// activation of F k leaves rank r-1 in its group k+1 (key k+r) and reaches
// rank r's group k (key k+r); across the wrap, rank P-1's F k feeds rank 0's
// F k+P (the next local chunk, P pieces later in its group of P*V): key
// k+1+P-1 on both ends. A gradient of B j leaves rank r+1 in group
// j+W_{r+1}+1 and reaches rank r's group j+W_r, and W_r = W_{r+1} + 2: key
// j+W_r+r on both; rank 0's B j feeds rank P-1's B j+P, key j+W_0+1 =
// j+P+W_{P-1}+P-1. So both ends of every transfer carry one key, every
// rank's groups have increasing keys, and (ranks order a group's transfers
// by sender, payload, microbatch, chunk) both ends of every ordered pair of
// ranks list their transfers in one order: the induction of placeTransfers
// applies (the transfer with the smallest key not yet done has every earlier
// group of both its ends done, so both ends post it). Consecutive groups
// with no piece between (empty units) are merged, which keeps that order.
// Timing: in the steady state rank r runs unit u from (u + r) * (F + B) on,
// and its group u meets rank r-1's group u+1 and rank r+1's group u-1, which
// both post at that instant, so with uniform costs and free transfers no
// rank waits beyond the dataflow of its order: the simulated bubble is
// (p-1)/(v*m + p-1) for every P, V, m (SimulateTest). One group per unit,
// not one after each piece, also means fewer groups to pay a transfer time
// for. (Splitting a unit's group in two, the activations right after F and
// the gradients before the next F, keeps both the keys and that bubble, but
// was slower in every case simulated with a transfer time or uneven chunks.)
bool placeLockstep(const std::vector<std::vector<Step>>& orders, const ScheduleSpec& spec,
                   std::vector<std::vector<Step>>& out, std::string& error) {
  const int P = spec.stages, V = spec.virtualStages, chunks = P * V, m = spec.microbatches;
  const int total = m * V;
  // Per rank and per (microbatch, chunk): the unit of F / B.
  std::vector<int> fUnit(size_t(m) * chunks, -1), bUnit(size_t(m) * chunks, -1);
  std::vector<std::vector<int>> unitOf(P);
  for (int r = 0; r < P; ++r) {
    int W = (P - r - 1) * 2 + (V - 1) * P, nf = 0, nb = 0;
    for (const Step& s : orders[r]) {
      size_t k = size_t(s.microbatch) * chunks + s.chunk;
      int u = s.piece == PieceKind::Forward ? nf++ : W + nb++;
      (s.piece == PieceKind::Forward ? fUnit : bUnit)[k] = u;
      if (!unitOf[r].empty() && u < unitOf[r].back()) {
        error = "interleaved schedule: rank " + std::to_string(r) + "'s pieces are not in unit order";
        return false;
      }
      unitOf[r].push_back(u);
    }
    if (nf != total || nb != total) {
      error = "interleaved schedule: rank " + std::to_string(r) + " does not run every piece";
      return false;
    }
  }
  struct Item {
    int key;  // group key (unit + rank)
    int sender;
    int what, microbatch, chunk;
    Transfer transfer;
  };
  std::vector<std::vector<Item>> items(P);
  for (int r = 0; r < P; ++r)
    for (size_t i = 0; i < orders[r].size(); ++i) {
      const Step& s = orders[r][i];
      for (const Transfer& t : sendsOf(s, r, P, chunks)) {
        bool act = t.what == Payload::Activation;
        size_t consumer = size_t(t.microbatch) * chunks + (act ? t.chunk + 1 : t.chunk - 1);
        int sendKey = unitOf[r][i] + 1 + r;
        int recvKey = (act ? fUnit : bUnit)[consumer] + t.peer;
        if (sendKey != recvKey) {
          error = "interleaved schedule: the lockstep keys of a transfer differ (rank " + std::to_string(r) +
                  " piece " + std::to_string(i) + ")";
          return false;
        }
        items[r].push_back({sendKey, r, int(t.what), t.microbatch, t.chunk, t});
        Transfer recv = t;
        recv.isSend = false;
        recv.peer = r;
        items[t.peer].push_back({sendKey, r, int(t.what), t.microbatch, t.chunk, recv});
      }
    }
  out.assign(P, {});
  for (int r = 0; r < P; ++r) {
    std::sort(items[r].begin(), items[r].end(), [](const Item& a, const Item& b) {
      return std::tie(a.key, a.sender, a.what, a.microbatch, a.chunk) <
             std::tie(b.key, b.sender, b.what, b.microbatch, b.chunk);
    });
    size_t next = 0;
    auto flushUpTo = [&](int unit) {  // the groups keyed up to unit + r
      if (next < items[r].size() && items[r][next].key <= unit + r) {
        out[r].push_back(group({}));
        while (next < items[r].size() && items[r][next].key <= unit + r)
          out[r].back().transfers.push_back(items[r][next++].transfer);
      }
    };
    for (size_t i = 0; i < orders[r].size(); ++i) {
      flushUpTo(unitOf[r][i]);
      out[r].push_back(orders[r][i]);
    }
    flushUpTo(1 << 30);
  }
  return true;
}

}  // namespace

bool buildSchedule(const ScheduleSpec& spec, Schedule& out, std::string& error) {
  const char* name = scheduleKindName(spec.kind);
  auto fail = [&](std::string msg) {
    error = std::string(name) + " schedule: " + msg;
    return false;
  };
  if (spec.stages < 1)
    return fail("stages is " + std::to_string(spec.stages) + "; expected at least 1");
  if (spec.microbatches < 1)
    return fail("microbatches is " + std::to_string(spec.microbatches) + "; expected at least 1");
  if (spec.virtualStages < 1)
    return fail("virtualStages is " + std::to_string(spec.virtualStages) + "; expected at least 1");
  if (spec.kind == ScheduleKind::Interleaved) {
    if (spec.virtualStages < 2)
      return fail("virtualStages is " + std::to_string(spec.virtualStages) +
                  "; interleaving needs at least 2 model chunks per rank (use 1f1b for 1)");
    if (spec.microbatches % spec.stages != 0)
      return fail("microbatches (" + std::to_string(spec.microbatches) +
                  ") is not a multiple of stages (" + std::to_string(spec.stages) +
                  "), as Megatron's interleaved schedule requires");
  } else if (spec.virtualStages != 1) {
    return fail("virtualStages is " + std::to_string(spec.virtualStages) +
                "; only the interleaved schedule has more than one model chunk per rank");
  }

  out.spec = spec;
  out.ranks.assign(spec.stages, {});
  std::vector<std::vector<Step>> orders(spec.stages);
  for (int r = 0; r < spec.stages; ++r) {
    std::vector<Step>& order = orders[r];
    switch (spec.kind) {
    case ScheduleKind::GPipe: order = gpipeOrder(r, spec.microbatches); break;
    case ScheduleKind::OneFOneB: order = oneFOneBOrder(r, spec.stages, spec.microbatches); break;
    case ScheduleKind::ZeroBubbleH1: order = zeroBubbleH1Order(r, spec.stages, spec.microbatches); break;
    case ScheduleKind::Interleaved:
      order = interleavedOrder(r, spec.stages, spec.virtualStages, spec.microbatches);
      break;
    }
  }
  bool placed = spec.kind == ScheduleKind::Interleaved ? placeLockstep(orders, spec, out.ranks, error)
                                                       : placeTransfers(orders, spec, out.ranks, error);
  if (!placed) return false;
  error.clear();
  return true;
}

}  // namespace mtc::pipeline
