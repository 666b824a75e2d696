// MTC_PROFILE's grouping of op labels (host code: runs without a GPU).
#include <gtest/gtest.h>

#include "mtc/rt/cuda_profile.h"

namespace {

using mtc::rt::cuda::profile::split_label;

TEST(CudaProfileLabels, OpsGroupedByKindAndLayerlessName) {
  auto p = split_label("mtc.matmul loc(\"layers.12.attn.qkv\"(\"spec.json\":1:1))");
  EXPECT_EQ(p.kind, "mtc.matmul");
  EXPECT_EQ(p.name, "layers.*.attn.qkv");
  p = split_label("mtc.cross_entropy loc(\"loss\"(\"spec.json\":1:1))");
  EXPECT_EQ(p.kind, "mtc.cross_entropy");
  EXPECT_EQ(p.name, "loss");
}

TEST(CudaProfileLabels, CollectivesAreStartsOrWaits) {
  auto p = split_label("shard.all_reduce loc(\"layers.3.mlp.fc2\"(\"spec.json\":1:1)) (started)");
  EXPECT_EQ(p.kind, "shard.all_reduce (start)");
  EXPECT_EQ(p.name, "layers.*.mlp.fc2");
  p = split_label("shard.all_reduce loc(\"layers.3.mlp.fc2\"(\"spec.json\":1:1))");
  EXPECT_EQ(p.kind, "shard.all_reduce (wait)");
  p = split_label("shard.reduce_scatter loc(\"embedding\"(\"spec.json\":1:1))");
  EXPECT_EQ(p.kind, "shard.reduce_scatter (wait)");
  EXPECT_EQ(p.name, "embedding");
  p = split_label("shard.all_reduce of the gradient of layers.7.input_norm.weight (sequence parallelism)");
  EXPECT_EQ(p.kind, "shard.all_reduce of gradients (wait)");
  EXPECT_EQ(p.name, "layers.*.input_norm.weight (sequence parallelism)");
}

TEST(CudaProfileLabels, RuntimeLabelsAreTheirOwnKind) {
  auto p = split_label("cuda backend: zero");
  EXPECT_EQ(p.kind, "cuda backend: zero");
  EXPECT_EQ(p.name, "");
}

}  // namespace
