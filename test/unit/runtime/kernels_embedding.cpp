// Tests of the host embedding kernels: lookup against the table, rejection of
// out-of-range ids without writing, and the scatter-add gradient with
// repeated tokens against a reference loop and finite differences.
#include "kernels_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::host::test {
namespace {

TEST(KernelEmbedding, ForwardCopiesTableRows) {
  Rng rng(10);
  const int64_t t = 9, v = 5, d = 7;
  auto table = rng.uniform(v * d);
  auto tokens = rng.integers(t, 0, v - 1);
  tokens[0] = 0;
  tokens[1] = v - 1;
  std::vector<float> out(t * d);
  ASSERT_TRUE(embedding_forward(tokens.data(), table.data(), out.data(), t, v, d));
  std::vector<double> ref(t * d);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < d; ++j) ref[i * d + j] = table[tokens[i] * d + j];
  expect_near_all(out, ref, 0, 0, "embedding");
}

TEST(KernelEmbedding, ForwardRejectsOutOfRangeIdsWithoutWriting) {
  Rng rng(11);
  const int64_t t = 4, v = 6, d = 3;
  auto table = rng.uniform(v * d);
  for (int32_t bad : {int32_t(v), int32_t(-1), int32_t(1000000)}) {
    std::vector<int32_t> tokens = {0, 2, bad, 1};
    std::vector<float> out(t * d, 42.0f);
    EXPECT_FALSE(embedding_forward(tokens.data(), table.data(), out.data(), t, v, d))
        << "token " << bad;
    expect_near_all(out, std::vector<double>(t * d, 42.0), 0, 0, "untouched output");
  }
}

TEST(KernelEmbedding, BackwardAccumulatesRepeatedTokens) {
  Rng rng(12);
  const int64_t t = 12, v = 5, d = 6;
  std::vector<int32_t> tokens = {3, 1, 3, 3, 0, 1, 4, 3, 0, 0, 1, 3};  // 2 never used
  auto dout = rng.uniform(t * d);
  std::vector<float> dtable(v * d, 7.0f);
  embedding_backward(tokens.data(), dout.data(), dtable.data(), t, v, d);
  std::vector<double> ref(v * d, 0.0);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < d; ++j) ref[tokens[i] * d + j] += dout[i * d + j];
  expect_near_all(dtable, ref, 1e-6, 1e-7, "dtable");

  // The same gradient by finite differences of L = sum(dout . embedding(table)).
  auto table = rng.uniform(v * d);
  std::vector<float> out(t * d);
  auto objective = [&] {
    EXPECT_TRUE(embedding_forward(tokens.data(), table.data(), out.data(), t, v, d));
    return weighted_sum(out, dout);
  };
  auto fd = finite_difference(table, objective, 1e-2f);
  expect_near_all(dtable, fd, 1e-3, 1e-4, "dtable vs finite differences");
}

// Tests that vocabulary shards sum to the full lookup and that their
// gradients are the rows of the full gradient.
TEST(KernelEmbedding, ShardsSumToTheFullTable) {
  Rng rng(13);
  const int64_t t = 10, v = 8, d = 5, parts = 2, vl = v / parts;
  std::vector<int32_t> tokens = {0, 7, 3, 4, 4, 1, 6, 2, 5, 3};
  auto table = rng.uniform(v * d);
  auto dout = rng.uniform(t * d);
  std::vector<float> full(t * d), dfull(v * d);
  ASSERT_TRUE(embedding_forward(tokens.data(), table.data(), full.data(), t, v, d));
  embedding_backward(tokens.data(), dout.data(), dfull.data(), t, v, d);
  std::vector<double> sum(t * d, 0.0);
  for (int64_t r = 0; r < parts; ++r) {
    std::vector<float> part(t * d, 9.0f), dpart(vl * d, 9.0f);
    embedding_forward_shard(tokens.data(), table.data() + r * vl * d, part.data(), t, vl, d, r * vl);
    for (int64_t i = 0; i < t * d; ++i) sum[i] += part[i];
    embedding_backward_shard(tokens.data(), dout.data(), dpart.data(), t, vl, d, r * vl);
    std::vector<double> rows(dfull.begin() + r * vl * d, dfull.begin() + (r + 1) * vl * d);
    expect_near_all(dpart, rows, 0, 0, "gradient shard");
  }
  expect_near_all(full, sum, 0, 0, "sum of shards");
}

}  // namespace
}  // namespace mtc::rt::host::test
