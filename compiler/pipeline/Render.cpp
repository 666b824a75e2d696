// Human-readable views of a schedule: the per-rank orders as text (the
// notation of the published tables) and the simulated timeline as SVG.
#include "mtc/Pipeline/Schedule.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace mtc::pipeline {
namespace {

char pieceLetter(PieceKind k) {
  return k == PieceKind::Forward ? 'F' : k == PieceKind::Backward ? 'B' : 'W';
}

// "3" when V == 1, "3.1" (microbatch.localChunk) when V > 1.
std::string pieceLabel(const Step& s, const ScheduleSpec& spec) {
  std::string label = std::to_string(s.microbatch);
  if (spec.virtualStages > 1) label += "." + std::to_string(s.chunk / std::max(spec.stages, 1));
  return label;
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

std::string formatOrders(const Schedule& s) {
  std::string out;
  for (size_t r = 0; r < s.ranks.size(); ++r) {
    out += "rank " + std::to_string(r) + ":";
    for (const Step& st : s.ranks[r])
      if (st.isCompute) out += std::string(" ") + pieceLetter(st.piece) + pieceLabel(st, s.spec);
    out += "\n";
  }
  return out;
}

// Layout: a title line, then one row per rank: "rank r" on the left, the
// timeline scaled to a fixed width (idle time is the hatched background,
// transfer groups that took time a thin dark bar), the rank's bubble fraction
// on the right.
std::string renderSvg(const Schedule& s, const Simulation& sim) {
  const int P = int(s.ranks.size());
  const double labelW = 70, plotW = 960, rightW = 110, rowH = 28, top = 44, pad = 4;
  const double width = labelW + plotW + rightW, height = top + rowH * P + 16;
  const double scale = sim.makespan > 0 ? plotW / sim.makespan : 0;
  double busy = 0;
  for (double b : sim.busy) busy += b;
  double overall = sim.makespan > 0 && P > 0 ? 1 - busy / (sim.makespan * P) : 0;

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" viewBox=\"0 0 " << width << " " << height << "\" font-family=\"monospace\" font-size=\"11\">\n";
  o << "<defs><pattern id=\"idle\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
       "patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#eeeeee\"/>"
       "<line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#bbbbbb\" stroke-width=\"2\"/></pattern></defs>\n";
  o << "<text x=\"" << pad << "\" y=\"20\" font-size=\"14\">" << scheduleKindName(s.spec.kind)
    << ": P=" << s.spec.stages << " V=" << s.spec.virtualStages << " m=" << s.spec.microbatches
    << ", makespan " << fixed(sim.makespan, 2) << ", bubble " << fixed(overall, 4) << "</text>\n";
  for (int r = 0; r < P; ++r) {
    double y = top + rowH * r;
    o << "<g class=\"rank\" id=\"rank" << r << "\">\n";
    o << "<text x=\"" << pad << "\" y=\"" << y + rowH / 2 + 4 << "\">rank " << r << "</text>\n";
    o << "<rect x=\"" << labelW << "\" y=\"" << y + 2 << "\" width=\"" << plotW << "\" height=\"" << rowH - 4
      << "\" fill=\"url(#idle)\"/>\n";
    if (r < int(sim.timeline.size())) {
      for (const Interval& iv : sim.timeline[r]) {
        if (iv.stepIndex < 0 || iv.stepIndex >= int(s.ranks[r].size()) || iv.end <= iv.start) continue;
        const Step& st = s.ranks[r][iv.stepIndex];
        double x = labelW + iv.start * scale, w = (iv.end - iv.start) * scale;
        if (!st.isCompute) {
          o << "<rect x=\"" << x << "\" y=\"" << y + rowH - 7 << "\" width=\"" << w
            << "\" height=\"3\" fill=\"#555555\"/>\n";
          continue;
        }
        const char* fill = st.piece == PieceKind::Forward    ? "#4e79a7"
                           : st.piece == PieceKind::Backward ? "#59a14f"
                                                             : "#f28e2b";
        o << "<rect x=\"" << x << "\" y=\"" << y + 2 << "\" width=\"" << w << "\" height=\"" << rowH - 4
          << "\" fill=\"" << fill << "\" stroke=\"#ffffff\" stroke-width=\"0.5\"><title>"
          << pieceLetter(st.piece) << pieceLabel(st, s.spec) << " [" << fixed(iv.start, 2) << ", "
          << fixed(iv.end, 2) << ")</title></rect>\n";
        o << "<text x=\"" << x + w / 2 << "\" y=\"" << y + rowH / 2 + 4
          << "\" text-anchor=\"middle\" fill=\"#ffffff\">" << pieceLabel(st, s.spec) << "</text>\n";
      }
    }
    double bubble = r < int(sim.bubble.size()) ? sim.bubble[r] : 0;
    o << "<text x=\"" << labelW + plotW + pad << "\" y=\"" << y + rowH / 2 + 4 << "\">bubble "
      << fixed(bubble, 4) << "</text>\n";
    o << "</g>\n";
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace mtc::pipeline
