// Tests of the pipeline part of the spec: resolvePipelineLayout (even,
// uneven, empty chunks and the layouts that do not cover the model), and
// the checks of parallel.schedule / virtual_stages / the microbatches that
// the pipeline flags feed (reported at the flag the user typed).
#include "mtc/Spec/Spec.h"

#include <gtest/gtest.h>

namespace mtc::spec {
namespace {

// One chunk as text, "E t0-1 L" (E embedding, layers first..last, L head).
std::string str(const LayoutChunk& c) {
  std::string s;
  if (c.embedding) s += "E ";
  if (c.num_layers > 0)
    s += "t" + std::to_string(c.first_layer) + "-" + std::to_string(c.first_layer + c.num_layers - 1) + " ";
  if (c.head) s += "L ";
  return s.empty() ? "-" : s.substr(0, s.size() - 1);
}

// The resolved layout as "E t0-1 | t2-3 L", or "error: ..." when refused.
std::string resolve(const std::string& layout, int64_t layers, int64_t chunks) {
  std::vector<LayoutChunk> out;
  std::string error;
  if (!resolvePipelineLayout(layout, layers, chunks, out, error)) return "error: " + error;
  EXPECT_EQ(static_cast<int64_t>(out.size()), chunks);
  std::string s;
  for (const LayoutChunk& c : out) s += (s.empty() ? "" : " | ") + str(c);
  return s;
}

TEST(PipelineLayout, EvenGivesTheFirstChunksOneLayerMore) {
  // Tests the default: E on the first chunk, L on the last, the remainder
  // of num_layers / chunks on the first chunks.
  EXPECT_EQ(resolve("", 4, 2), "E t0-1 | t2-3 L");
  EXPECT_EQ(resolve("", 4, 4), "E t0-0 | t1-1 | t2-2 | t3-3 L");
  EXPECT_EQ(resolve("", 5, 3), "E t0-1 | t2-3 | t4-4 L");
  EXPECT_EQ(resolve("", 3, 1), "E t0-2 L");
}

TEST(PipelineLayout, UserLayoutsMayBeUnevenAndHaveEmptyChunks) {
  // Tests Megatron's syntax: repeats, uneven chunks, whitespace, a chunk
  // with only E or only L, and empty chunks in the middle.
  EXPECT_EQ(resolve("E,t*3|t,L", 4, 2), "E t0-2 | t3-3 L");
  EXPECT_EQ(resolve("E | t*4 , L", 4, 2), "E | t0-3 L");
  EXPECT_EQ(resolve("E,t*4|L", 4, 2), "E t0-3 | L");
  EXPECT_EQ(resolve("E,t*2||t*2,L", 4, 3), "E t0-1 | - | t2-3 L");
  EXPECT_EQ(resolve("E|||t,t,t,t,L", 4, 4), "E | - | - | t0-3 L");
  EXPECT_EQ(resolve("E,t|t|t|t,L", 4, 4), "E t0-0 | t1-1 | t2-2 | t3-3 L");
}

TEST(PipelineLayout, LayoutsThatDoNotCoverTheModelAreRefused) {
  // Tests that every way of missing the model is refused with the layer or
  // chunk at fault named.
  EXPECT_EQ(resolve("E,t*2|t,L", 4, 2),
            "error: layer 3 is missing: the layout places 3 layers (t) but the model has 4");
  EXPECT_EQ(resolve("E,t*3|t*2,L", 4, 2),
            "error: chunk 1 (\"t*2,L\"): layer 4 is extra: the model has 4 layers (0..3)");
  EXPECT_EQ(resolve("E,t*4,L", 4, 2),
            "error: has 1 chunk (separated by '|') but the plan has pp * virtual_stages = 2");
  EXPECT_EQ(resolve("E,t|t|t|t,L", 4, 2),
            "error: has 4 chunks (separated by '|') but the plan has pp * virtual_stages = 2");
  EXPECT_EQ(resolve("t,E,t*3|L", 4, 2),
            "error: chunk 0 (\"t,E,t*3\"): the embedding (E) must open the first chunk, once");
  EXPECT_EQ(resolve("E,E,t*4|L", 4, 2),
            "error: chunk 0 (\"E,E,t*4\"): the embedding (E) must open the first chunk, once");
  EXPECT_EQ(resolve("t*2|E,t*2,L", 4, 2),
            "error: chunk 1 (\"E,t*2,L\"): the embedding (E) must open the first chunk, once");
  EXPECT_EQ(resolve("t*2|t*2,L", 4, 2), "error: the first chunk must start with E (the embedding)");
  EXPECT_EQ(resolve("E,t*2,L|t*2", 4, 2),
            "error: chunk 0 (\"E,t*2,L\"): L (final norm, LM head, loss) must close the last chunk, once");
  EXPECT_EQ(resolve("E,t*2|t*2,L,L", 4, 2),
            "error: chunk 1 (\"t*2,L,L\"): L (final norm, LM head, loss) must close the last chunk, once");
  EXPECT_EQ(resolve("E,t*2|t,L,t", 4, 2),
            "error: chunk 1 (\"t,L,t\"): a layer (t) after L; L (final norm, LM head, loss) ends the model");
  EXPECT_EQ(resolve("E,t*2|t*2", 4, 2),
            "error: the last chunk must end with L (final norm, LM head and loss)");
  EXPECT_EQ(resolve("E,t*2|t*2,X", 4, 2),
            "error: chunk 1 (\"t*2,X\"): unknown item 'X' (E embedding, t layer, L head and loss)");
  // Commas between items are optional, as in Megatron's "Et*3|t*4L".
  EXPECT_EQ(resolve("E,t*2|tt,L", 4, 2), "E t0-1 | t2-3 L");
  EXPECT_EQ(resolve("Et*2|t*2L", 4, 2), "E t0-1 | t2-3 L");
  EXPECT_EQ(resolve("E,t*2|t*,L", 4, 2),
            "error: chunk 1 (\"t*,L\"): 't*': the repeat count must be a number");
  EXPECT_EQ(resolve("E,t*2|t*2x,L", 4, 2),
            "error: chunk 1 (\"t*2x,L\"): unknown item 'x' (E embedding, t layer, L head and loss)");
  // A repeat count too large to hold is refused, not wrapped around.
  EXPECT_EQ(resolve("E,t*99999999999999999999|L", 4, 2),
            "error: chunk 0 (\"E,t*99999999999999999999\"): 't*99999999999999999999': the repeat count "
            "is too large");
  EXPECT_EQ(resolve("E,t*4,L", 4, 0), "error: needs at least one chunk");
}

// 8 layers, micro 4, global 32 (8 microbatches); the pipeline flags apply on top.
const char* kSpec = R"({
  "model": {"num_layers": 8, "hidden_size": 64, "num_heads": 4, "vocab_size": 256, "seq_length": 32},
  "training": {"micro_batch_size": 4, "global_batch_size": 32, "train_steps": 100,
               "optimizer": {"warmup_steps": 10}}
})";

std::vector<Diagnostic> apply(const Overrides& o, Spec* out = nullptr) {
  std::vector<Diagnostic> diags;
  std::optional<Spec> s = parseSpec(kSpec, diags);
  EXPECT_TRUE(s.has_value()) << formatDiagnostics("spec.json", diags);
  if (!s) return diags;
  bool ok = applyOverridesAndValidate(*s, o, diags);
  EXPECT_EQ(ok, diags.empty()) << formatDiagnostics("spec.json", diags);
  if (out) *out = *s;
  return diags;
}

// The one diagnostic, at `path`, containing every word.
void expectOnly(const std::vector<Diagnostic>& diags, const std::string& path,
                std::initializer_list<std::string> words) {
  ASSERT_EQ(diags.size(), 1u) << formatDiagnostics("spec.json", diags);
  EXPECT_EQ(diags[0].path, path) << diags[0].message;
  for (const std::string& w : words)
    EXPECT_NE(diags[0].message.find(w), std::string::npos) << "'" << w << "' not in: " << diags[0].message;
}

TEST(PipelineSpec, LayersPerVirtualStageSetsTheVirtualStages) {
  // Tests Megatron's older flag: virtual_stages = num_layers / (pp * per).
  Overrides o;
  o.pp = 2;
  o.schedule = Schedule::interleaved;
  o.layers_per_virtual_stage = 2;
  Spec s;
  EXPECT_TRUE(apply(o, &s).empty());
  EXPECT_EQ(s.parallel.virtual_stages, 2);  // 8 / (2 * 2)

  o.layers_per_virtual_stage = 3;  // 8 / 2 = 4 layers per rank: 3 does not divide
  expectOnly(apply(o), kFlagLayersPerVirtualStage, {"divide num_layers / pp = 8 / 2", "got 3"});
  o.layers_per_virtual_stage = 0;
  expectOnly(apply(o), kFlagLayersPerVirtualStage, {">= 1", "got 0"});
}

TEST(PipelineSpec, VirtualStagesNeedTheInterleavedSchedule) {
  // Tests that zb-h1 (and 1f1b) with virtual stages is refused, and
  // interleaved without them.
  Overrides zb;
  zb.pp = 2;
  zb.schedule = Schedule::zb_h1;
  zb.virtual_stages = 2;
  expectOnly(apply(zb), kFlagVirtualStages, {"needs parallel.schedule 'interleaved'", "got 'zb-h1'"});

  Overrides plain;
  plain.pp = 2;
  plain.schedule = Schedule::zb_h1;
  EXPECT_TRUE(apply(plain).empty());

  Overrides one;
  one.pp = 2;
  one.schedule = Schedule::interleaved;
  expectOnly(apply(one), kFlagSchedule, {"needs parallel.virtual_stages > 1"});
}

TEST(PipelineSpec, InterleavedNeedsMicrobatchesDivisibleByPp) {
  // Tests that interleaved 1F1B needs m % pp == 0 (Megatron's rule): 8
  // microbatches on pp = 4 pass, 6 (global 24) do not.
  Overrides o;
  o.pp = 4;
  o.virtual_stages = 2;
  o.schedule = Schedule::interleaved;
  EXPECT_TRUE(apply(o).empty());
  o.global_batch_size = 24;
  std::vector<Diagnostic> d = apply(o);
  ASSERT_EQ(d.size(), 1u) << formatDiagnostics("spec.json", d);
  EXPECT_NE(d[0].message.find("number of microbatches"), std::string::npos) << d[0].message;
  EXPECT_NE(d[0].message.find("= 6, to be divisible by --pp (4)"), std::string::npos) << d[0].message;
}

TEST(PipelineSpec, LayoutIsCheckedAgainstThePlan) {
  // Tests that the layout flag is checked with pp * virtual_stages chunks
  // and reported at the flag; "auto" and an empty chunk are accepted.
  Overrides o;
  o.pp = 2;
  o.pipeline_layout = "E,t*3|t*4,L";
  expectOnly(apply(o), kFlagPipelineLayout, {"layer 7 is missing"});
  o.pipeline_layout = "E,t*4||t*4,L";  // 3 chunks for pp = 2
  expectOnly(apply(o), kFlagPipelineLayout, {"has 3 chunks", "pp * virtual_stages = 2"});
  o.pp = 3;
  o.global_batch_size = 24;
  EXPECT_TRUE(apply(o).empty());
  o.pipeline_layout = "auto";
  EXPECT_TRUE(apply(o).empty());
}

}  // namespace
}  // namespace mtc::spec
