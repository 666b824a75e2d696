// The compile-time proof of a pipeline schedule: runs every rank's steps under
// NCCL's rendezvous semantics and the model's dataflow, and times them.
//
// Rules, checked in this order:
//  1. Shape: one list of steps per pp rank; every transfer names a peer that
//     is another rank of the pipeline.
//  2. Matching: sends from rank a to rank b and receives at b from a pair up
//     in FIFO order (the k-th with the k-th), whatever they carry, as NCCL
//     point-to-point operations do. A pair completes only when each side has
//     posted it, i.e. each rank's *current* step is the group holding it; a
//     group completes, and its rank moves on, when all of its transfers have
//     completed. The receive's (payload, microbatch, chunk) must equal the
//     send's, else the schedule is refused.
//  3. Dataflow, per rank in step order: a piece runs on the rank that holds
//     its chunk; F of chunk c > 0 needs the activation of chunk c-1 received
//     by an earlier step (or computed earlier on this rank when it holds
//     c-1); B of chunk c needs its F done and, for c < last, the gradient of
//     chunk c+1 received (or computed here); W needs its B and exists only
//     under zb-h1; a send carries a piece already computed here, to the rank
//     of the next chunk (activations) or the previous one (gradients); every
//     (microbatch, chunk) runs F and B (and W) exactly once.
//  4. Progress: ranks advance in rank order, each as far as it can, until all
//     finish; if none can move before that, the schedule deadlocks and the
//     error names every blocked rank, its step and what it waits for.
//
// Timing: a compute step takes its cost; a transfer group starts when its
// rank posts it, each of its transfers when both sides have posted, and it
// ends `transfer` after the last one started (the transfers of one group run
// concurrently). Posting never takes time; waiting does.
#include "mtc/Pipeline/Schedule.h"

#include <algorithm>
#include <sstream>

namespace mtc::pipeline {
namespace {

const char* payloadName(Payload p) { return p == Payload::Activation ? "activation" : "gradient"; }

const char* pieceName(PieceKind k) {
  switch (k) {
  case PieceKind::Forward: return "forward";
  case PieceKind::Backward: return "backward";
  case PieceKind::Weight: return "weight";
  }
  return "?";
}

std::string payloadText(Payload what, int microbatch, int chunk) {
  return std::string(payloadName(what)) + " (microbatch " + std::to_string(microbatch) +
         ", chunk " + std::to_string(chunk) + ")";
}

std::string transferText(const Transfer& t) {
  return std::string(t.isSend ? "send " : "recv ") + payloadText(t.what, t.microbatch, t.chunk) +
         (t.isSend ? " to rank " : " from rank ") + std::to_string(t.peer);
}

std::string pieceText(const Step& s) {
  return std::string(pieceName(s.piece)) + " microbatch " + std::to_string(s.microbatch) +
         ", chunk " + std::to_string(s.chunk);
}

std::string at(int rank, int step) {
  return "rank " + std::to_string(rank) + " step " + std::to_string(step);
}

// Where a transfer's FIFO partner sits: rank, step index, transfer index.
struct Ref {
  int rank = -1, step = -1, op = -1;
};

class Simulator {
public:
  Simulator(const Schedule& s, const Costs& c) : s_(s), c_(c) {}

  Simulation run() {
    if (!checkShape() || !pairTransfers()) return fail();
    init();
    while (true) {
      bool progress = false;
      for (int r = 0; r < P_; ++r) {
        while (!done(r)) {
          bool moved = false;
          if (!advance(r, moved)) return fail();
          if (!moved) break;
          progress = true;
        }
      }
      if (!progress) break;
    }
    for (int r = 0; r < P_; ++r)
      if (!done(r)) return fail(deadlockMessage());
    if (!checkComplete()) return fail();
    sim_.ok = true;
    for (int r = 0; r < P_; ++r) sim_.makespan = std::max(sim_.makespan, clock_[r]);
    for (int r = 0; r < P_; ++r)
      sim_.bubble[r] = sim_.makespan > 0 ? 1 - sim_.busy[r] / sim_.makespan : 0;
    return sim_;
  }

private:
  const Schedule& s_;
  const Costs& c_;
  Simulation sim_;
  std::string error_;
  int P_ = 0, chunks_ = 0, m_ = 0;
  bool splitBackward_ = false;
  std::vector<std::vector<std::vector<Ref>>> partner_;  // [rank][step][op]
  std::vector<int> pc_;
  std::vector<double> clock_;
  std::vector<std::vector<char>> matched_;         // [rank][op] of the current step
  std::vector<std::vector<double>> matchTime_;     // [rank][op]
  std::vector<int> inFlight_;
  std::vector<double> bytes_;
  // Per (microbatch, chunk): the step index that ran F / B / W, -1 if none.
  std::vector<int> fStep_, bStep_, wStep_;
  // Per rank, per (microbatch, chunk): received activation / gradient.
  std::vector<std::vector<char>> gotActivation_, gotGradient_;

  Simulation fail(std::string msg = {}) {
    Simulation out;
    out.error = msg.empty() ? error_ : std::move(msg);
    return out;
  }
  bool error(std::string msg) {
    error_ = std::move(msg);
    return false;
  }
  bool done(int r) const { return pc_[r] >= int(s_.ranks[r].size()); }
  int rankOf(int chunk) const { return chunk % P_; }
  int key(int microbatch, int chunk) const { return microbatch * chunks_ + chunk; }

  bool checkShape() {
    const ScheduleSpec& spec = s_.spec;
    P_ = spec.stages;
    m_ = spec.microbatches;
    chunks_ = spec.stages * spec.virtualStages;
    splitBackward_ = spec.kind == ScheduleKind::ZeroBubbleH1;
    if (P_ < 1 || m_ < 1 || spec.virtualStages < 1)
      return error("schedule spec has stages " + std::to_string(P_) + ", virtualStages " +
                   std::to_string(spec.virtualStages) + ", microbatches " + std::to_string(m_) +
                   "; each must be at least 1");
    if (int(s_.ranks.size()) != P_)
      return error("schedule has " + std::to_string(s_.ranks.size()) + " ranks of steps; its spec has " +
                   std::to_string(P_) + " stages");
    auto sized = [&](const std::vector<double>& v, const char* name, bool mayBeEmpty) {
      if (int(v.size()) == chunks_ || (mayBeEmpty && v.empty())) return true;
      return error(std::string("costs.") + name + " has " + std::to_string(v.size()) +
                   " entries; expected one per chunk (" + std::to_string(chunks_) + ")");
    };
    if (!sized(c_.forward, "forward", false) || !sized(c_.backward, "backward", false) ||
        !sized(c_.weight, "weight", false) || !sized(c_.activationBytes, "activationBytes", true) ||
        !sized(c_.weightHeldBytes, "weightHeldBytes", true))
      return false;
    for (int r = 0; r < P_; ++r)
      for (size_t i = 0; i < s_.ranks[r].size(); ++i) {
        const Step& st = s_.ranks[r][i];
        if (st.isCompute) continue;
        for (const Transfer& t : st.transfers) {
          if (t.peer == r)
            return error(at(r, int(i)) + " (" + transferText(t) + ") addresses its own rank");
          if (t.peer < 0 || t.peer >= P_)
            return error(at(r, int(i)) + " (" + transferText(t) + ") addresses no rank of the pipeline (0.." +
                         std::to_string(P_ - 1) + ")");
        }
      }
    return true;
  }

  // FIFO pairing of sends and receives per ordered pair of ranks.
  bool pairTransfers() {
    std::vector<std::vector<std::vector<Ref>>> sends(P_, std::vector<std::vector<Ref>>(P_));
    std::vector<std::vector<std::vector<Ref>>> recvs(P_, std::vector<std::vector<Ref>>(P_));
    partner_.assign(P_, {});
    for (int r = 0; r < P_; ++r) {
      partner_[r].resize(s_.ranks[r].size());
      for (size_t i = 0; i < s_.ranks[r].size(); ++i) {
        const Step& st = s_.ranks[r][i];
        if (st.isCompute) continue;
        partner_[r][i].resize(st.transfers.size());
        for (size_t j = 0; j < st.transfers.size(); ++j) {
          const Transfer& t = st.transfers[j];
          Ref self{r, int(i), int(j)};
          if (t.isSend) sends[r][t.peer].push_back(self);
          else recvs[t.peer][r].push_back(self);
        }
      }
    }
    for (int a = 0; a < P_; ++a)
      for (int b = 0; b < P_; ++b) {
        size_t n = std::min(sends[a][b].size(), recvs[a][b].size());
        for (size_t k = 0; k < n; ++k) {
          Ref snd = sends[a][b][k], rcv = recvs[a][b][k];
          partner_[snd.rank][snd.step][snd.op] = rcv;
          partner_[rcv.rank][rcv.step][rcv.op] = snd;
        }
      }
    return true;
  }

  void init() {
    pc_.assign(P_, 0);
    clock_.assign(P_, 0);
    matched_.assign(P_, {});
    matchTime_.assign(P_, {});
    inFlight_.assign(P_, 0);
    bytes_.assign(P_, 0);
    fStep_.assign(size_t(m_) * chunks_, -1);
    bStep_ = wStep_ = fStep_;
    gotActivation_.assign(P_, std::vector<char>(size_t(m_) * chunks_, 0));
    gotGradient_ = gotActivation_;
    sim_.busy.assign(P_, 0);
    sim_.bubble.assign(P_, 0);
    sim_.peakInFlight.assign(P_, 0);
    sim_.peakActivationBytes.assign(P_, 0);
    sim_.timeline.assign(P_, {});
    for (int r = 0; r < P_; ++r) enterStep(r);
  }

  // Called when rank r's pc moves onto a step (posts it if a transfer group).
  void enterStep(int r) {
    if (done(r) || s_.ranks[r][pc_[r]].isCompute) return;
    size_t n = s_.ranks[r][pc_[r]].transfers.size();
    matched_[r].assign(n, 0);
    matchTime_[r].assign(n, 0);
  }

  void finishStep(int r, double start, double end) {
    sim_.timeline[r].push_back({start, end, pc_[r]});
    clock_[r] = end;
    ++pc_[r];
    enterStep(r);
  }

  // One step of rank r: runs it (moved = true), or leaves it waiting.
  bool advance(int r, bool& moved) {
    const Step& st = s_.ranks[r][pc_[r]];
    return st.isCompute ? runCompute(r, st, moved) : runTransfers(r, st, moved);
  }

  bool runCompute(int r, const Step& st, bool& moved) {
    int i = pc_[r], mb = st.microbatch, c = st.chunk;
    std::string where = at(r, i) + " (" + pieceText(st) + ")";
    if (mb < 0 || mb >= m_)
      return error(where + ": no such microbatch (0.." + std::to_string(m_ - 1) + ")");
    if (c < 0 || c >= chunks_)
      return error(where + ": no such chunk (0.." + std::to_string(chunks_ - 1) + ")");
    if (rankOf(c) != r)
      return error(where + ": chunk " + std::to_string(c) + " lives on rank " + std::to_string(rankOf(c)));
    if (st.piece == PieceKind::Weight && !splitBackward_)
      return error(where + ": a weight piece, but the " + scheduleKindName(s_.spec.kind) +
                   " schedule runs the weight gradient inside the backward piece");
    std::vector<int>& doneAt = st.piece == PieceKind::Forward    ? fStep_
                               : st.piece == PieceKind::Backward ? bStep_
                                                                 : wStep_;
    int k = key(mb, c);
    if (doneAt[k] >= 0)
      return error(where + ": already run at " + at(r, doneAt[k]));

    double cost = 0, freed = 0, held = 0;
    double act = c_.activationBytes.empty() ? 0 : c_.activationBytes[c];
    double weightHeld = splitBackward_ && !c_.weightHeldBytes.empty() ? c_.weightHeldBytes[c] : 0;
    if (st.piece == PieceKind::Forward) {
      if (c > 0) {
        if (rankOf(c - 1) == r) {
          if (fStep_[key(mb, c - 1)] < 0)
            return error(where + " needs the output of forward (microbatch " + std::to_string(mb) +
                         ", chunk " + std::to_string(c - 1) + "), which rank " + std::to_string(r) +
                         " has not run before");
        } else if (!gotActivation_[r][key(mb, c - 1)]) {
          return error(missingInput(where, r, Payload::Activation, mb, c - 1));
        }
      }
      cost = c_.forward[c];
      held = act;
    } else if (st.piece == PieceKind::Backward) {
      if (fStep_[k] < 0)
        return error(where + " runs before its forward");
      if (c + 1 < chunks_) {
        if (rankOf(c + 1) == r) {
          if (bStep_[key(mb, c + 1)] < 0)
            return error(where + " needs the output of backward (microbatch " + std::to_string(mb) +
                         ", chunk " + std::to_string(c + 1) + "), which rank " + std::to_string(r) +
                         " has not run before");
        } else if (!gotGradient_[r][key(mb, c + 1)]) {
          return error(missingInput(where, r, Payload::Gradient, mb, c + 1));
        }
      }
      cost = splitBackward_ ? c_.backward[c] : c_.backward[c] + c_.weight[c];
      freed = act - weightHeld;
    } else {
      if (bStep_[k] < 0)
        return error(where + " runs before its backward");
      cost = c_.weight[c];
      freed = weightHeld;
    }
    doneAt[k] = i;
    if (st.piece == PieceKind::Forward) ++inFlight_[r];
    if (st.piece == PieceKind::Backward) --inFlight_[r];
    bytes_[r] += held - freed;
    sim_.peakInFlight[r] = std::max(sim_.peakInFlight[r], inFlight_[r]);
    sim_.peakActivationBytes[r] = std::max(sim_.peakActivationBytes[r], bytes_[r]);
    sim_.busy[r] += cost;
    finishStep(r, clock_[r], clock_[r] + cost);
    moved = true;
    return true;
  }

  // "<where> needs the activation (...) that rank q sends at step s, which no
  // earlier step of rank r receives" (or "..., which rank q never sends").
  std::string missingInput(const std::string& where, int r, Payload what, int mb, int chunk) const {
    int from = rankOf(chunk);
    std::string msg = where + " needs the " + payloadText(what, mb, chunk);
    for (size_t i = 0; i < s_.ranks[from].size(); ++i)
      for (const Transfer& t : s_.ranks[from][i].transfers)
        if (t.isSend && t.what == what && t.microbatch == mb && t.chunk == chunk && t.peer == r)
          return msg + " that rank " + std::to_string(from) + " sends at step " + std::to_string(i) +
                 ", which no earlier step of rank " + std::to_string(r) + " receives";
    return msg + " from rank " + std::to_string(from) + ", which never sends it to rank " + std::to_string(r);
  }

  // A send must carry a piece this rank ran, to the rank that consumes it.
  bool checkSend(int r, int i, const Transfer& t) {
    std::string where = at(r, i) + " (" + transferText(t) + ")";
    if (t.microbatch < 0 || t.microbatch >= m_ || t.chunk < 0 || t.chunk >= chunks_)
      return error(where + ": no such microbatch or chunk");
    if (rankOf(t.chunk) != r)
      return error(where + ": chunk " + std::to_string(t.chunk) + " lives on rank " +
                   std::to_string(rankOf(t.chunk)));
    int k = key(t.microbatch, t.chunk);
    bool forward = t.what == Payload::Activation;
    int consumer = forward ? t.chunk + 1 : t.chunk - 1;
    if (consumer < 0 || consumer >= chunks_)
      return error(where + ": no chunk consumes it");
    if (rankOf(consumer) != t.peer)
      return error(where + ": its consumer, chunk " + std::to_string(consumer) + ", lives on rank " +
                   std::to_string(rankOf(consumer)));
    if ((forward ? fStep_[k] : bStep_[k]) < 0)
      return error(where + " before its " + (forward ? "forward" : "backward") + " ran");
    return true;
  }

  bool runTransfers(int r, const Step& st, bool& moved) {
    int i = pc_[r];
    for (size_t j = 0; j < st.transfers.size(); ++j) {
      if (matched_[r][j]) continue;
      const Transfer& t = st.transfers[j];
      if (t.isSend && !checkSend(r, i, t)) return false;
      Ref p = partner_[r][i][j];
      if (p.rank < 0 || pc_[p.rank] != p.step) continue;  // partner not posted
      const Transfer& u = s_.ranks[p.rank][p.step].transfers[p.op];
      const Transfer& snd = t.isSend ? t : u;
      const Transfer& rcv = t.isSend ? u : t;
      int sndRank = t.isSend ? r : p.rank, sndStep = t.isSend ? i : p.step;
      int rcvRank = t.isSend ? p.rank : r, rcvStep = t.isSend ? p.step : i;
      if (u.isSend && !checkSend(p.rank, p.step, u)) return false;
      if (snd.what != rcv.what || snd.microbatch != rcv.microbatch || snd.chunk != rcv.chunk)
        return error(at(rcvRank, rcvStep) + " receives " + payloadText(rcv.what, rcv.microbatch, rcv.chunk) +
                     " from rank " + std::to_string(sndRank) + ", whose matching send at step " +
                     std::to_string(sndStep) + " carries " + payloadText(snd.what, snd.microbatch, snd.chunk));
      double when = std::max(clock_[r], clock_[p.rank]);
      matched_[r][j] = 1;
      matchTime_[r][j] = when;
      matched_[p.rank][p.op] = 1;
      matchTime_[p.rank][p.op] = when;
      auto& got = rcv.what == Payload::Activation ? gotActivation_ : gotGradient_;
      got[rcvRank][key(rcv.microbatch, rcv.chunk)] = 1;
    }
    if (std::find(matched_[r].begin(), matched_[r].end(), 0) != matched_[r].end()) return true;
    double end = clock_[r];
    for (double tm : matchTime_[r]) end = std::max(end, tm + c_.transfer);
    finishStep(r, clock_[r], end);
    moved = true;
    return true;
  }

  // The first transfer rank r still waits for, and the rank it waits on.
  std::pair<const Transfer*, int> waitsFor(int r) const {
    const Step& st = s_.ranks[r][pc_[r]];
    for (size_t j = 0; j < st.transfers.size(); ++j)
      if (!matched_[r][j]) return {&st.transfers[j], st.transfers[j].peer};
    return {nullptr, -1};
  }

  std::string deadlockMessage() const {
    std::vector<char> named(P_, 0);
    std::string msg = "deadlock: ";
    bool first = true;
    for (int r = 0; r < P_; ++r) {
      if (done(r) || named[r]) continue;
      if (!first) msg += "; ";
      first = false;
      int cur = r;
      msg += "rank " + std::to_string(r);
      while (true) {
        named[cur] = 1;
        auto [t, peer] = waitsFor(cur);
        msg += " waits at step " + std::to_string(pc_[cur]) + " (" + transferText(*t) + ") for rank " +
               std::to_string(peer);
        if (done(peer)) {
          msg += ", which has finished";
          break;
        }
        if (named[peer]) break;
        msg += ", which";
        cur = peer;
      }
    }
    return msg;
  }

  bool checkComplete() {
    for (int c = 0; c < chunks_; ++c)
      for (int mb = 0; mb < m_; ++mb) {
        int k = key(mb, c);
        const char* missing = fStep_[k] < 0                     ? "forward"
                              : bStep_[k] < 0                   ? "backward"
                              : splitBackward_ && wStep_[k] < 0 ? "weight"
                                                                : nullptr;
        if (missing)
          return error("rank " + std::to_string(rankOf(c)) + " never runs the " + missing +
                       " piece of microbatch " + std::to_string(mb) + ", chunk " + std::to_string(c));
      }
    return true;
  }
};

}  // namespace

Simulation simulate(const Schedule& s, const Costs& c) { return Simulator(s, c).run(); }

}  // namespace mtc::pipeline
