// MTC_PROFILE's grouping of op labels (host code: runs without a GPU).
#include <gtest/gtest.h>

#include "mtc/rt/cuda_profile.h"

namespace {

struct LabelCase {
  const char* label;
  const char* kind;
  const char* name;
};

// Ops by kind and by location with the layer index starred; collectives as
// starts or waits; parameter-gradient collectives as waits; the runtime's
// own labels as their own kind.
const LabelCase kCases[] = {
    {"mtc.matmul loc(\"layers.12.attn.qkv\"(\"spec.json\":1:1))", "mtc.matmul",
     "layers.*.attn.qkv"},
    {"mtc.cross_entropy loc(\"loss\"(\"spec.json\":1:1))", "mtc.cross_entropy", "loss"},
    {"shard.all_reduce loc(\"layers.3.mlp.fc2\"(\"spec.json\":1:1)) (started)",
     "shard.all_reduce (start)", "layers.*.mlp.fc2"},
    {"shard.all_reduce loc(\"layers.3.mlp.fc2\"(\"spec.json\":1:1))", "shard.all_reduce (wait)",
     "layers.*.mlp.fc2"},
    {"shard.reduce_scatter loc(\"embedding\"(\"spec.json\":1:1))", "shard.reduce_scatter (wait)",
     "embedding"},
    {"shard.all_reduce of the gradient of layers.7.input_norm.weight (sequence parallelism)",
     "shard.all_reduce of gradients (wait)", "layers.*.input_norm.weight (sequence parallelism)"},
    {"cuda backend: zero", "cuda backend: zero", ""},
};

TEST(CudaProfileLabels, GroupsByKindAndLayerlessName) {
  for (const LabelCase& c : kCases) {
    auto p = mtc::rt::cuda::profile::split_label(c.label);
    EXPECT_EQ(p.kind, c.kind) << c.label;
    EXPECT_EQ(p.name, c.name) << c.label;
  }
}

}  // namespace
