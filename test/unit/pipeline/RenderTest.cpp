// Tests of renderSvg: a well-formed standalone SVG of the simulated timeline.
#include "mtc/Pipeline/Schedule.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace mtc::pipeline {
namespace {

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(RenderSvg, DrawsOneRowPerRankWithItsBubble) {
  // Tests that the SVG starts with <svg and closes, has one row group per
  // rank, one box per compute piece, the per-rank and overall bubble
  // fractions and the title; it is written to a temp file named in the log.
  Schedule s;
  std::string error;
  ASSERT_TRUE(buildSchedule({ScheduleKind::Interleaved, 4, 2, 8}, s, error)) << error;
  Simulation sim = simulate(s, uniformCosts(8, 0.5, 0.5, 0.5));
  ASSERT_TRUE(sim.ok) << sim.error;
  std::string svg = renderSvg(s, sim);
  EXPECT_EQ(svg.rfind("<svg ", 0), 0u);
  EXPECT_NE(svg.find("</svg>\n"), std::string::npos);
  EXPECT_EQ(count(svg, "<g class=\"rank\""), 4);
  EXPECT_EQ(count(svg, "</g>"), 4);
  EXPECT_EQ(count(svg, "<title>"), 4 * 2 * 16);
  EXPECT_NE(svg.find("interleaved: P=4 V=2 m=8, makespan 28.50, bubble 0.1579"), std::string::npos);
  EXPECT_EQ(count(svg, ">bubble 0.1579</text>"), 4);
  EXPECT_NE(svg.find(">F3.1 ["), std::string::npos);  // microbatch.localChunk

  auto path = std::filesystem::temp_directory_path() / "mtc-pipeline-interleaved-p4-v2-m8.svg";
  std::ofstream(path) << svg;
  std::printf("wrote %s\n", path.c_str());
  EXPECT_TRUE(std::filesystem::exists(path));
}

TEST(RenderSvg, LabelsWeightPiecesAndMicrobatchesWithoutChunks) {
  // Tests that with V == 1 boxes are labelled with the microbatch alone and
  // that ZB-H1's W pieces are drawn (their own colour).
  Schedule s;
  std::string error;
  ASSERT_TRUE(buildSchedule({ScheduleKind::ZeroBubbleH1, 4, 1, 8}, s, error)) << error;
  Simulation sim = simulate(s, uniformCosts(4));
  ASSERT_TRUE(sim.ok) << sim.error;
  std::string svg = renderSvg(s, sim);
  EXPECT_EQ(count(svg, "<title>W"), 4 * 8);
  EXPECT_EQ(count(svg, "#f28e2b"), 4 * 8);
  EXPECT_NE(svg.find("<title>F7 ["), std::string::npos);
  EXPECT_NE(svg.find("zb-h1: P=4 V=1 m=8, makespan 27.00, bubble 0.1111"), std::string::npos);
}

}  // namespace
}  // namespace mtc::pipeline
