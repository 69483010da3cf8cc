#include "service/pool/page_costs.h"

#include <cmath>
#include <random>

#include "gpu/cpu/cpu_backend.h"
#include "gtest/gtest.h"
#include "service/eviction/naive_reference.h"

namespace kvkeep {
namespace {

// Plain re-computation: A = I + Σ v vᵀ by Gauss-Jordan inverse, s_j = v_jᵀ A⁻¹ v_j.
std::vector<double> NaiveLeverage(const std::vector<float>& v, int n, int d) {
  std::vector<double> a(d * d, 0.0), inv(d * d, 0.0);
  for (int j = 0; j < n; ++j)
    for (int r = 0; r < d; ++r)
      for (int c = 0; c < d; ++c) a[r * d + c] += double(v[j * d + r]) * v[j * d + c];
  for (int r = 0; r < d; ++r) {
    a[r * d + r] += 1;
    inv[r * d + r] = 1;
  }
  for (int c = 0; c < d; ++c) {
    const double p = a[c * d + c];
    for (int k = 0; k < d; ++k) {
      a[c * d + k] /= p;
      inv[c * d + k] /= p;
    }
    for (int r = 0; r < d; ++r) {
      if (r == c) continue;
      const double f = a[r * d + c];
      for (int k = 0; k < d; ++k) {
        a[r * d + k] -= f * a[c * d + k];
        inv[r * d + k] -= f * inv[c * d + k];
      }
    }
  }
  std::vector<double> s(n, 0.0);
  for (int j = 0; j < n; ++j)
    for (int r = 0; r < d; ++r)
      for (int c = 0; c < d; ++c) s[j] += v[j * d + r] * inv[r * d + c] * v[j * d + c];
  return s;
}

TEST(UnweightedLeverage, MatchesANaiveInverse) {
  const int n = 40, d = 8;
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  std::vector<float> v(n * d);
  for (float& x : v) x = g(rng);
  std::vector<double> gram, s;
  UnweightedLeverage(v.data(), n, d, &gram, &s);
  std::vector<double> want = NaiveLeverage(v, n, d);
  double sum = 0;
  for (int j = 0; j < n; ++j) {
    EXPECT_NEAR(s[j], want[j], 1e-9);
    EXPECT_GE(s[j], 0);
    EXPECT_LT(s[j], 1);
    sum += s[j];
  }
  // Σ_j s_j = tr(A⁻¹ Σ v vᵀ) = d − tr(A⁻¹) < d.
  EXPECT_LT(sum, d);
}

TEST(TokenCapacityCost, IsTheLogDetDropOfOneToken) {
  EXPECT_DOUBLE_EQ(TokenCapacityCost(0), 0);
  EXPECT_NEAR(TokenCapacityCost(0.5), std::log(2.0), 1e-12);
  EXPECT_TRUE(std::isfinite(TokenCapacityCost(1.0)));
  EXPECT_DOUBLE_EQ(TokenCapacityCost(-0.1), 0);
  // log det(I + Σ v vᵀ) − log det(I + Σ_{k≠j} v vᵀ) = −log(1 − s_j): checked with d = 1.
  const double v1 = 0.7, v2 = 1.3;
  const double s2 = v2 * v2 / (1 + v1 * v1 + v2 * v2);
  EXPECT_NEAR(TokenCapacityCost(s2), std::log(1 + v1 * v1 + v2 * v2) - std::log(1 + v1 * v1),
              1e-12);
}

TEST(PageCosts, GrownHeadsKeepOldCostsAndEstimateNewPages) {
  SequenceTable table(1, 4);
  table.AppendPages(0, std::vector<uint64_t>{1, 2, 3});
  ASSERT_TRUE(table.Commit(8, {}).ok());
  PageCosts c;
  c.computed = true;
  c.per_head = {{2.0, 6.0}};
  c.counts = {8};
  EXPECT_TRUE(c.FreshFor(table));
  EXPECT_DOUBLE_EQ(c.Cost(table, 0, 1), 6.0);
  ASSERT_TRUE(table.Commit(2, {}).ok());
  EXPECT_FALSE(c.FreshFor(table));
  EXPECT_DOUBLE_EQ(c.Cost(table, 0, 0), 2.0);
  EXPECT_DOUBLE_EQ(c.Cost(table, 0, 2), 1.0 * 2);  // mean 1 per token, 2 tokens so far
  std::vector<uint64_t> freed;
  ASSERT_TRUE(table.RemoveFullPage(0, 0, &freed).ok());
  c.RemovePage(0, 0, 4);
  EXPECT_EQ(freed, std::vector<uint64_t>{1});
  EXPECT_DOUBLE_EQ(c.Cost(table, 0, 0), 6.0);
  EXPECT_EQ(c.counts[0], 4u);
}

TEST(SequenceTableRemoveFullPage, DropsThePagesTokensAndKeepsTheRestInOrder) {
  SequenceTable table(2, 4);
  table.AppendPages(0, std::vector<uint64_t>{10, 11, 12});
  table.AppendPages(1, std::vector<uint64_t>{20, 21, 22});
  ASSERT_TRUE(table.Commit(10, {}).ok());
  std::vector<uint64_t> freed;
  ASSERT_TRUE(table.RemoveFullPage(0, 1, &freed).ok());
  EXPECT_EQ(freed, std::vector<uint64_t>{11});
  EXPECT_EQ(table.head(0).pages, (std::vector<uint64_t>{10, 12}));
  EXPECT_EQ(table.head(0).count, 6u);
  EXPECT_EQ(table.head(0).positions, (std::vector<int32_t>{0, 1, 2, 3, 8, 9}));
  EXPECT_EQ(table.head(1).count, 10u);  // other heads untouched
  // The partial last page and pages past the end are refused; nothing changes.
  EXPECT_EQ(table.RemoveFullPage(0, 1, &freed).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(table.RemoveFullPage(0, 5, &freed).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(table.RemoveFullPage(7, 0, &freed).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(table.head(0).count, 6u);
  EXPECT_EQ(freed.size(), 1u);
}

}  // namespace
}  // namespace kvkeep

namespace kvkeep {
namespace {

// The capkv path end to end: keys and values written into real pool pages (cpu backend), query
// moments applied as a worker sends them; the costs must be the page sums of −log(1 − s_j) with
// s_j from the independent double-precision capkv reference.
TEST(ComputePageCosts, AnchoredCostsArePageSumsOfTheCapKvReference) {
  v1::ModelLayout l;
  l.set_name("m");
  l.set_layers(2);
  l.set_q_heads(2);
  l.set_kv_heads(1);
  l.set_head_dim(16);
  l.set_dtype(v1::DTYPE_FP32);
  l.set_tokens_per_page(8);
  auto model = Model::FromLayout(l);
  ASSERT_TRUE(model.ok()) << model.status();
  const PageGeometry& g = model->geometry();
  auto backend = CreateBackend({.kind = BackendKind::kCpu, .shm_prefix = "kvkeep-pagecosttest"});
  ASSERT_TRUE(backend.ok());
  PagePool pool(backend->get(), {.capacity_bytes = 64 * g.page_bytes, .arena_bytes = 64 * g.page_bytes});
  const uint32_t n = 44, pages_per_head = 6;  // 5 full pages + a partial one
  SequenceTable table(2, 8);
  std::vector<std::vector<float>> keys(2), values(2);
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  for (uint32_t h = 0; h < 2; ++h) {
    std::vector<uint64_t> pages;
    std::vector<ArenaInfo> arenas;
    ASSERT_TRUE(pool.Allocate("t", g, pages_per_head, &pages, &arenas).ok());
    table.AppendPages(h, pages);
    keys[h].resize(n * 16);
    values[h].resize(n * 16);
    for (float& x : keys[h]) x = normal(rng);
    for (float& x : values[h]) x = normal(rng) * (1 + (&x - values[h].data()) / 16 % 3);
    for (uint32_t j = 0; j < n; ++j) {
      Arena* arena = pool.ArenaOf(pages[j / 8]);
      const size_t base = size_t{PageRef::Unpack(pages[j / 8]).index} * g.page_bytes +
                          size_t{j % 8} * g.token_bytes;
      ASSERT_TRUE((*backend)->Write(*arena, base, &keys[h][j * 16], g.token_bytes).ok());
      ASSERT_TRUE(
          (*backend)->Write(*arena, base + g.value_offset, &values[h][j * 16], g.token_bytes).ok());
    }
  }
  ASSERT_TRUE(table.Commit(n, {}).ok());
  SequenceStats stats;
  PageCostScratch scratch;
  // Without query moments: the unweighted estimate.
  auto plain = ComputePageCosts(*model, table, stats, **backend, pool, scratch);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->from_query_moments);
  std::vector<double> gram, lev;
  UnweightedLeverage(values[1].data(), n, 16, &gram, &lev);
  double page2 = 0;
  for (uint32_t j = 16; j < 24; ++j) page2 += TokenCapacityCost(lev[j]);
  EXPECT_NEAR(plain->per_head[1][2], page2, 1e-9);

  for (uint32_t layer = 0; layer < 2; ++layer) {
    v1::LayerStats s;
    s.set_layer(layer);
    s.set_query_count(5);
    for (int i = 0; i < 2 * 16; ++i) s.add_query_sum(5 * normal(rng));
    ASSERT_TRUE(ApplyLayerStats(*model, table, s, &stats).ok());
  }
  auto costs = ComputePageCosts(*model, table, stats, **backend, pool, scratch);
  ASSERT_TRUE(costs.ok()) << costs.status();
  EXPECT_TRUE(costs->from_query_moments);
  EXPECT_TRUE(costs->FreshFor(table));
  eviction::Policy capkv;
  capkv.scorer = eviction::ScorerKind::kCapKv;
  for (uint32_t layer = 0; layer < 2; ++layer) {
    eviction::LayerInputs in;
    const float* k = keys[layer].data();
    const float* v = values[layer].data();
    BuildLayerInputs(*model, table, stats, capkv, layer, absl::MakeConstSpan(&k, 1),
                     absl::MakeConstSpan(&v, 1), &in);
    const std::vector<std::vector<double>> s = eviction::naive::Score(capkv, in);
    ASSERT_EQ(costs->per_head[layer].size(), pages_per_head);
    for (uint32_t p = 0; p < pages_per_head; ++p) {
      double want = 0;
      for (uint32_t j = p * 8; j < std::min(n, (p + 1) * 8); ++j) want += TokenCapacityCost(s[0][j]);
      EXPECT_NEAR(costs->per_head[layer][p], want, 1e-4 * (1 + want)) << layer << " " << p;
    }
  }
}

}  // namespace
}  // namespace kvkeep
