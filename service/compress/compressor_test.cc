#include "service/compress/compressor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <tuple>

#include "common/status_matchers.h"
#include "gpu/cpu/cpu_backend.h"
#include "gpu/device_scoring.h"
#include "gpu/math/dtype.h"
#include "service/compress/device_scoring_request.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using absl::StatusCode;
using eviction::Allocation;
using eviction::ScorerKind;
using ::kvkeep::testing::StatusIs;

// What a head slot should hold: the token's original position and its raw key / value bytes.
struct Token {
  int32_t position = 0;
  std::vector<uint8_t> key, value;
};
using Reference = std::vector<std::vector<Token>>;  // [head table][slot]

struct Shape {
  v1::DType dtype = v1::DTYPE_FP32;
  uint32_t layers = 2, q_heads = 4, kv_heads = 2, head_dim = 8, tokens_per_page = 3;
};

// Forwards to the CPU backend, but refuses a Copy whose source and destination overlap (a device
// memcpy of overlapping ranges is undefined) and can fail every copy after the first `fail_after`.
class CheckingBackend : public Backend {
 public:
  explicit CheckingBackend(Backend* inner) : inner_(inner) {}
  std::string name() const override { return inner_->name(); }
  absl::StatusOr<std::unique_ptr<Arena>> CreateArena(std::size_t bytes) override {
    return inner_->CreateArena(bytes);
  }
  absl::Status Write(Arena& arena, std::size_t offset, const void* src, std::size_t n) override {
    return inner_->Write(arena, offset, src, n);
  }
  absl::Status Read(const Arena& arena, std::size_t offset, void* dst,
                    std::size_t n) const override {
    ++reads;
    return inner_->Read(arena, offset, dst, n);
  }
  absl::Status Copy(const Arena& src, std::size_t src_offset, Arena& dst, std::size_t dst_offset,
                    std::size_t n) override {
    ++copies;
    if (&src == &dst && src_offset < dst_offset + n && dst_offset < src_offset + n) {
      ++overlaps;
      return absl::InternalError("overlapping copy");
    }
    if (fail_after >= 0 && copies > fail_after) return absl::UnavailableError("injected failure");
    return inner_->Copy(src, src_offset, dst, dst_offset, n);
  }

  mutable int reads = 0;
  int copies = 0;
  int overlaps = 0;
  int fail_after = -1;

 private:
  Backend* const inner_;
};

class CompressorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto backend = CreateBackend({.kind = BackendKind::kCpu, .shm_prefix = "kvkeep-comptest"});
    ASSERT_OK(backend);
    backend_ = std::move(*backend);
    pool_ = std::make_unique<PagePool>(
        backend_.get(), PoolOptions{.capacity_bytes = 16 << 20, .arena_bytes = 1 << 20});
    checking_ = std::make_unique<CheckingBackend>(backend_.get());
  }

  void Init(const Shape& shape) {
    v1::ModelLayout layout;
    layout.set_name("m");
    layout.set_layers(shape.layers);
    layout.set_q_heads(shape.q_heads);
    layout.set_kv_heads(shape.kv_heads);
    layout.set_head_dim(shape.head_dim);
    layout.set_dtype(shape.dtype);
    layout.set_tokens_per_page(shape.tokens_per_page);
    layout.mutable_rope()->set_theta(5e5);
    absl::StatusOr<Model> model = Model::FromLayout(layout);
    ASSERT_OK(model);
    model_ = std::make_unique<Model>(*std::move(model));
    table_ = std::make_unique<SequenceTable>(model_->head_tables(), shape.tokens_per_page);
    ref_.assign(model_->head_tables(), {});
  }

  std::vector<uint8_t> Encode(const std::vector<float>& x) const {
    const v1::DType dtype = model_->geometry().dtype;
    std::vector<uint8_t> out(x.size() * DTypeSize(dtype));
    for (size_t i = 0; i < x.size(); ++i) {
      if (dtype == v1::DTYPE_FP32) {
        std::memcpy(out.data() + 4 * i, &x[i], 4);
      } else {
        const uint16_t b = dtype == v1::DTYPE_FP16 ? gpu_math::FloatToHalfBits(x[i])
                                                   : gpu_math::FloatToBf16Bits(x[i]);
        std::memcpy(out.data() + 2 * i, &b, 2);
      }
    }
    return out;
  }

  std::vector<double> Decode(const std::vector<uint8_t>& bytes) const {
    const v1::DType dtype = model_->geometry().dtype;
    const size_t size = DTypeSize(dtype);
    std::vector<double> out(bytes.size() / size);
    for (size_t i = 0; i < out.size(); ++i) {
      if (dtype == v1::DTYPE_FP32) {
        float f;
        std::memcpy(&f, bytes.data() + 4 * i, 4);
        out[i] = f;
      } else {
        uint16_t b;
        std::memcpy(&b, bytes.data() + 2 * i, 2);
        out[i] =
            dtype == v1::DTYPE_FP16 ? gpu_math::HalfBitsToFloat(b) : gpu_math::Bf16BitsToFloat(b);
      }
    }
    return out;
  }

  // Byte offset of a slot's key (or value) and its arena.
  std::pair<Arena*, size_t> Where(uint32_t head, uint32_t slot, bool value) const {
    const PageGeometry& geo = model_->geometry();
    const uint64_t page = table_->head(head).pages[slot / geo.tokens_per_page];
    return {pool_->ArenaOf(page), size_t{PageRef::Unpack(page).index} * geo.page_bytes +
                                      (value ? geo.value_offset : 0) +
                                      size_t{slot % geo.tokens_per_page} * geo.token_bytes};
  }

  // Appends `n` tokens to every head (allocating pages, plus `reserve` extra tokens of room),
  // writes their bytes and commits them with positions 3 apart. Keys of KV head g have norm
  // (1 + g) * (1 + 0.07 * rank), the ranks a random permutation, so norms are distinct and far
  // apart compared with fp16/bf16 rounding.
  void Append(uint32_t n, uint32_t reserve = 0) {
    const PageGeometry& geo = model_->geometry();
    uint64_t total = 0;
    std::vector<uint32_t> need = table_->PagesNeeded(n + reserve, &total);
    for (uint32_t h = 0; h < table_->heads(); ++h) {
      std::vector<uint64_t> pages;
      std::vector<ArenaInfo> fresh;
      ASSERT_OK(pool_->Allocate("t", geo, need[h], &pages, &fresh));
      table_->AppendPages(h, pages);
    }
    std::vector<int32_t> positions(n);
    for (uint32_t i = 0; i < n; ++i) positions[i] = next_position_ + 3 * static_cast<int32_t>(i);
    next_position_ += 3 * static_cast<int32_t>(n);
    std::normal_distribution<float> normal;
    for (uint32_t h = 0; h < table_->heads(); ++h) {
      const uint32_t g = h % model_->kv_heads();
      std::vector<int> rank(n);
      std::iota(rank.begin(), rank.end(), 0);
      std::shuffle(rank.begin(), rank.end(), rng_);
      for (uint32_t i = 0; i < n; ++i) {
        std::vector<float> key(geo.head_dim), value(geo.head_dim);
        double norm = 0;
        for (float& x : key) {
          x = normal(rng_);
          norm += double{x} * x;
        }
        const double scale = (1 + g) * (1 + 0.07 * rank[i]) / std::sqrt(norm);
        for (float& x : key) x = static_cast<float>(x * scale);
        for (float& x : value) x = normal(rng_);
        Token t{.position = positions[i], .key = Encode(key), .value = Encode(value)};
        const uint32_t slot = table_->head(h).count + i;
        auto [arena, offset] = Where(h, slot, false);
        ASSERT_OK(backend_->Write(*arena, offset, t.key.data(), t.key.size()));
        std::tie(arena, offset) = Where(h, slot, true);
        ASSERT_OK(backend_->Write(*arena, offset, t.value.data(), t.value.size()));
        ref_[h].push_back(std::move(t));
      }
    }
    ASSERT_OK(table_->Commit(n, positions));
  }

  // Every head's committed slots hold exactly ref_, byte for byte, with ref_'s positions.
  void ExpectContentsMatchReference() const {
    const PageGeometry& geo = model_->geometry();
    for (uint32_t h = 0; h < table_->heads(); ++h) {
      const SequenceTable::Head& head = table_->head(h);
      ASSERT_EQ(head.count, ref_[h].size()) << "head " << h;
      ASSERT_EQ(head.positions.size(), head.count);
      ASSERT_GE(table_->capacity(h), head.count);
      std::vector<uint8_t> bytes(geo.token_bytes);
      for (uint32_t s = 0; s < head.count; ++s) {
        EXPECT_EQ(head.positions[s], ref_[h][s].position) << "head " << h << " slot " << s;
        auto [arena, offset] = Where(h, s, false);
        ASSERT_OK(backend_->Read(*arena, offset, bytes.data(), bytes.size()));
        EXPECT_EQ(bytes, ref_[h][s].key) << "key of head " << h << " slot " << s;
        std::tie(arena, offset) = Where(h, s, true);
        ASSERT_OK(backend_->Read(*arena, offset, bytes.data(), bytes.size()));
        EXPECT_EQ(bytes, ref_[h][s].value) << "value of head " << h << " slot " << s;
      }
    }
  }

  // After a compression: the reference keeps the tokens whose positions the table kept, which must
  // be a subsequence of the old ones (order preserved).
  void FollowTable() {
    for (uint32_t h = 0; h < table_->heads(); ++h) {
      std::vector<Token> kept;
      size_t at = 0;
      for (int32_t p : table_->head(h).positions) {
        while (at < ref_[h].size() && ref_[h][at].position != p) ++at;
        ASSERT_LT(at, ref_[h].size()) << "head " << h << " kept unknown position " << p;
        kept.push_back(ref_[h][at++]);
      }
      ref_[h] = std::move(kept);
    }
  }

  // The knorm choice for a head computed from the reference: forced sinks and window plus the
  // `candidates` smallest-norm others. Returns positions, ascending.
  std::vector<int32_t> KnormChoice(uint32_t h, int sinks, int window, size_t candidates) const {
    const int64_t n = static_cast<int64_t>(ref_[h].size());
    std::vector<std::pair<double, int64_t>> order;
    std::set<int64_t> keep;
    for (int64_t j = 0; j < n; ++j) {
      if (j < sinks || j >= n - window) {
        keep.insert(j);
        continue;
      }
      double norm = 0;
      for (double x : Decode(ref_[h][j].key)) norm += x * x;
      order.emplace_back(std::sqrt(norm), j);
    }
    std::sort(order.begin(), order.end());
    for (size_t i = 0; i < std::min(candidates, order.size()); ++i) keep.insert(order[i].second);
    std::vector<int32_t> out;
    for (int64_t j : keep) out.push_back(ref_[h][j].position);
    return out;
  }

  uint64_t PagesHeld() const { return table_->page_count(); }

  // The table's heads, to check that a failed call changed nothing.
  std::vector<std::tuple<std::vector<uint64_t>, uint32_t, std::vector<int32_t>>> Heads() const {
    std::vector<std::tuple<std::vector<uint64_t>, uint32_t, std::vector<int32_t>>> out;
    for (uint32_t h = 0; h < table_->heads(); ++h) {
      const SequenceTable::Head& head = table_->head(h);
      out.emplace_back(head.pages, head.count, head.positions);
    }
    return out;
  }

  void ApplyWindow(uint32_t layer, uint32_t window) {
    std::normal_distribution<float> normal;
    v1::LayerStats s;
    s.set_layer(layer);
    s.set_window(window);
    for (uint32_t i = 0; i < model_->q_heads() * window * model_->head_dim(); ++i) {
      s.add_window_queries(normal(rng_));
    }
    ASSERT_OK(ApplyLayerStats(*model_, *table_, s, &stats_));
  }

  void ApplyMoments(uint32_t layer) {
    std::normal_distribution<double> normal;
    v1::LayerStats s;
    s.set_layer(layer);
    s.set_query_count(16);
    for (uint32_t i = 0; i < model_->q_heads() * model_->head_dim(); ++i) {
      s.add_query_sum(16 * normal(rng_));
    }
    ASSERT_OK(ApplyLayerStats(*model_, *table_, s, &stats_));
  }

  absl::StatusOr<CompressOutcome> Compress(const eviction::Policy& policy,
                                           const eviction::Budget& budget) {
    return CompressSequence(*model_, *table_, stats_, policy, budget, *checking_, *pool_, scratch_);
  }

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<PagePool> pool_;
  std::unique_ptr<CheckingBackend> checking_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<SequenceTable> table_;
  SequenceStats stats_;
  CompressScratch scratch_{1};
  Reference ref_;
  int32_t next_position_ = 5;
  std::mt19937 rng_{1234};
};

class CompressorDtypeTest : public CompressorTest,
                            public ::testing::WithParamInterface<v1::DType> {};

// Uniform knorm with a token budget: every head keeps exactly sinks + window + its smallest keys,
// in order and bit-exact; emptied pages come back exactly; a second compression after more commits
// works on the compacted table.
TEST_P(CompressorDtypeTest, UniformKeepsExactlyTheSelectedTokensBitExact) {
  Init({.dtype = GetParam(), .tokens_per_page = 3});
  Append(20);
  const eviction::Policy policy{.scorer = ScorerKind::kKnorm, .sinks = 2, .window = 3};
  const uint64_t pages_before = PagesHeld();
  const uint64_t used_before = pool_->Stats().used_pages;
  std::vector<std::vector<int32_t>> want(table_->heads());
  for (uint32_t h = 0; h < table_->heads(); ++h) want[h] = KnormChoice(h, 2, 3, 9 - 5);

  ASSERT_OK_AND_ASSIGN(CompressOutcome out, Compress(policy, {.tokens = 9}));
  EXPECT_TRUE(out.changed);
  EXPECT_EQ(out.tokens_before, 20u * table_->heads());
  EXPECT_EQ(out.tokens_after, 9u * table_->heads());
  ASSERT_EQ(out.kept_per_head.size(), table_->heads());
  for (uint32_t h = 0; h < table_->heads(); ++h) {
    EXPECT_EQ(out.kept_per_head[h], 9u);
    EXPECT_EQ(table_->head(h).positions, want[h]) << "head " << h;
  }
  // 20 tokens = 7 pages of 3, 9 tokens = 3 pages: 4 emptied per head.
  EXPECT_EQ(out.freed_pages.size(), 4u * table_->heads());
  EXPECT_EQ(PagesHeld(), pages_before - out.freed_pages.size());
  std::set<uint64_t> held;
  for (uint32_t h = 0; h < table_->heads(); ++h) {
    held.insert(table_->head(h).pages.begin(), table_->head(h).pages.end());
  }
  for (uint64_t p : out.freed_pages) EXPECT_EQ(held.count(p), 0u);
  EXPECT_EQ(std::set<uint64_t>(out.freed_pages.begin(), out.freed_pages.end()).size(),
            out.freed_pages.size());
  EXPECT_EQ(pool_->Stats().used_pages, used_before);  // the pool is the caller's business
  FollowTable();
  ExpectContentsMatchReference();
  // Score summary: knorm scores are -||k||; kept candidates are the smaller norms.
  ASSERT_TRUE(out.has_kept_score);
  ASSERT_TRUE(out.has_evicted_score);
  EXPECT_LT(out.kept_score_min, 0);
  v1::EvictionSummary summary;
  ToProto(out, policy, model_->geometry(), &summary);
  EXPECT_EQ(summary.scorer(), "knorm");
  EXPECT_EQ(summary.allocation(), "uniform");
  EXPECT_EQ(summary.pages_freed(), out.freed_pages.size());
  EXPECT_EQ(summary.bytes_freed(), out.freed_pages.size() * model_->geometry().page_bytes);
  EXPECT_EQ(summary.tokens_after(), out.tokens_after);
  pool_->Free(out.freed_pages);

  // More tokens, then compress again.
  Append(7);
  for (uint32_t h = 0; h < table_->heads(); ++h) want[h] = KnormChoice(h, 2, 3, 6 - 5);
  ASSERT_OK_AND_ASSIGN(out, Compress(policy, {.tokens = 6}));
  EXPECT_EQ(out.tokens_after, 6u * table_->heads());
  for (uint32_t h = 0; h < table_->heads(); ++h) {
    EXPECT_EQ(table_->head(h).positions, want[h]) << "head " << h;
  }
  // 16 tokens = 6 pages, 6 tokens = 2 pages.
  EXPECT_EQ(out.freed_pages.size(), 4u * table_->heads());
  FollowTable();
  ExpectContentsMatchReference();
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CompressorDtypeTest,
                         ::testing::Values(v1::DTYPE_FP32, v1::DTYPE_FP16, v1::DTYPE_BF16),
                         [](const ::testing::TestParamInfo<v1::DType>& info) {
                           return std::string(v1::DType_Name(info.param)).substr(6);
                         });

// Ada gives the heads of a layer different lengths; compaction, positions and pages follow each
// head's own count, and a later compression starts from those different lengths.
TEST_F(CompressorTest, AdaHeadsOfDifferentLengthsCompactExactly) {
  Init({.dtype = v1::DTYPE_FP16,
        .layers = 2,
        .q_heads = 8,
        .kv_heads = 4,
        .head_dim = 8,
        .tokens_per_page = 4});
  Append(30);
  const eviction::Policy policy{
      .scorer = ScorerKind::kKnorm, .allocation = Allocation::kAda, .sinks = 1, .window = 2};
  ASSERT_OK_AND_ASSIGN(CompressOutcome out, Compress(policy, {.keep_ratio = 0.4}));
  ASSERT_TRUE(out.changed);
  std::set<uint32_t> counts(out.kept_per_head.begin(), out.kept_per_head.end());
  EXPECT_GT(counts.size(), 1u) << "ada should give heads different lengths";
  uint64_t freed = 0;
  for (uint32_t h = 0; h < table_->heads(); ++h) {
    const uint32_t kept = out.kept_per_head[h];
    EXPECT_EQ(table_->head(h).count, kept);
    // Within a head the kept candidates are its smallest keys, whatever its share.
    EXPECT_EQ(table_->head(h).positions, KnormChoice(h, 1, 2, kept - 3)) << "head " << h;
    freed += 8 - (kept + 3) / 4;
  }
  EXPECT_EQ(out.freed_pages.size(), freed);
  EXPECT_EQ(out.tokens_after, static_cast<uint64_t>(std::llround(0.4 * 30 * 8)));
  FollowTable();
  ExpectContentsMatchReference();
  pool_->Free(out.freed_pages);

  Append(9);  // heads grow from their different lengths (different page needs)
  ExpectContentsMatchReference();
  ASSERT_OK_AND_ASSIGN(out, Compress(policy, {.tokens = 10}));
  for (uint32_t h = 0; h < table_->heads(); ++h) {
    EXPECT_EQ(table_->head(h).positions, KnormChoice(h, 1, 2, out.kept_per_head[h] - 3));
  }
  FollowTable();
  ExpectContentsMatchReference();
}

// Attention mass (h2o): the stored mass decides, and it is compacted with the tokens so that a
// second compression without new statistics still ranks correctly.
TEST_F(CompressorTest, H2oFollowsTheMassAndCompactsIt) {
  Init({.dtype = v1::DTYPE_BF16,
        .layers = 1,
        .q_heads = 2,
        .kv_heads = 2,
        .head_dim = 4,
        .tokens_per_page = 2});
  Append(10);
  // Mass of token j: head 0 prefers odd tokens, head 1 larger j.
  v1::LayerStats s;
  s.set_layer(0);
  for (int j = 0; j < 10; ++j) s.add_attention_mass(j % 2 ? 10.0f + j : 1.0f * j / 100);
  for (int j = 0; j < 10; ++j) s.add_attention_mass(static_cast<float>(j));
  ASSERT_OK(ApplyLayerStats(*model_, *table_, s, &stats_));
  const eviction::Policy policy{.scorer = ScorerKind::kH2o, .sinks = 1, .window = 1};
  ASSERT_OK_AND_ASSIGN(CompressOutcome out, Compress(policy, {.tokens = 5}));
  auto pos = [&](std::vector<int> idx) {
    std::vector<int32_t> p;
    for (int j : idx) p.push_back(5 + 3 * j);
    return p;
  };
  // Head 0: sink 0, window 9, and the three heaviest candidates 7, 5, 3 (odd j weigh 10 + j).
  EXPECT_EQ(table_->head(0).positions, pos({0, 3, 5, 7, 9}));
  EXPECT_EQ(table_->head(1).positions, pos({0, 6, 7, 8, 9}));
  EXPECT_EQ(stats_.layers[0].attention_mass[1], (std::vector<float>{0, 6, 7, 8, 9}));
  EXPECT_FLOAT_EQ(out.kept_score_min, 6.0f);
  EXPECT_FLOAT_EQ(out.evicted_score_max, 11.0f);  // head 0's j = 1
  FollowTable();
  ExpectContentsMatchReference();
  // Again, tighter, with the compacted mass.
  ASSERT_OK_AND_ASSIGN(out, Compress(policy, {.tokens = 3}));
  EXPECT_EQ(table_->head(0).positions, pos({0, 7, 9}));
  EXPECT_EQ(table_->head(1).positions, pos({0, 8, 9}));
  EXPECT_EQ(stats_.layers[0].attention_mass[0], (std::vector<float>{0, 17, 19}));
  FollowTable();
  ExpectContentsMatchReference();
}

// Streaming keeps the sinks and the most recent tokens: the long run behind the evicted block moves
// by less than its length, which must be split so that no copy overlaps itself.
TEST_F(CompressorTest, ShiftedRunsAreCopiedWithoutOverlap) {
  Init({.layers = 1, .q_heads = 2, .kv_heads = 1, .head_dim = 4, .tokens_per_page = 4});
  Append(14);
  ASSERT_OK_AND_ASSIGN(
      CompressOutcome out,
      Compress({.scorer = ScorerKind::kStreaming, .sinks = 2, .window = 0}, {.tokens = 11}));
  std::vector<int32_t> want = {5, 8};
  for (int j = 5; j < 14; ++j) want.push_back(5 + 3 * j);
  EXPECT_EQ(table_->head(0).positions, want);
  EXPECT_EQ(checking_->overlaps, 0);
  EXPECT_GT(checking_->copies, 0);
  EXPECT_EQ(checking_->reads, 0);  // streaming reads no keys
  EXPECT_EQ(out.freed_pages.size(), 1u);
  FollowTable();
  ExpectContentsMatchReference();

  // Evicting a single early token: every later token moves by one slot.
  ASSERT_OK_AND_ASSIGN(
      out, Compress({.scorer = ScorerKind::kStreaming, .sinks = 1, .window = 0}, {.tokens = 10}));
  EXPECT_EQ(checking_->overlaps, 0);
  FollowTable();
  ExpectContentsMatchReference();
}

// A device backend (device_ordinal() >= 0) compacts each head with one CopyBatch, runs as long as
// the pages allow (sources overlapping destinations): the result is the same bit-exact compaction.
class BatchingBackend : public CheckingBackend {
 public:
  explicit BatchingBackend(Backend* inner) : CheckingBackend(inner), inner_(inner) {}
  int device_ordinal() const override { return 0; }
  absl::Status CopyBatch(absl::Span<const CopyOp> ops) override {
    ++batches;
    ops_total += static_cast<int>(ops.size());
    return inner_->CopyBatch(ops);
  }
  int batches = 0;
  int ops_total = 0;

 private:
  Backend* const inner_;
};

TEST_F(CompressorTest, DeviceBackendsCompactEachHeadWithOneBatch) {
  Init({.dtype = v1::DTYPE_FP16, .layers = 2, .q_heads = 4, .kv_heads = 2, .head_dim = 4,
        .tokens_per_page = 4});
  Append(30);
  BatchingBackend batching(backend_.get());
  const eviction::Policy policy{.scorer = ScorerKind::kKnorm, .sinks = 1, .window = 2};
  ASSERT_OK_AND_ASSIGN(CompressOutcome out,
                       CompressSequence(*model_, *table_, stats_, policy, {.tokens = 12}, batching,
                                        *pool_, scratch_));
  EXPECT_TRUE(out.changed);
  EXPECT_EQ(batching.copies, 0);                     // no per-run Copy on a device backend
  EXPECT_EQ(batching.batches, 4);                    // one per (layer, KV head)
  EXPECT_GT(batching.ops_total, batching.batches);  // keys and values, several runs each
  for (uint32_t h = 0; h < table_->heads(); ++h) EXPECT_EQ(table_->head(h).count, 12u);
  pool_->Free(out.freed_pages);
  FollowTable();
  ExpectContentsMatchReference();

  // A single early eviction shifts every later token by one slot: with batches, runs span whole
  // pages (source overlapping destination) and the contents still come out exact.
  const int batches_before = batching.batches;
  ASSERT_OK_AND_ASSIGN(out, CompressSequence(*model_, *table_, stats_,
                                             {.scorer = ScorerKind::kStreaming, .sinks = 1, .window = 0},
                                             {.tokens = 11}, batching, *pool_, scratch_));
  EXPECT_TRUE(out.changed);
  EXPECT_EQ(batching.batches, batches_before + 4);
  EXPECT_EQ(batching.copies, 0);
  FollowTable();
  ExpectContentsMatchReference();
}

TEST_F(CompressorTest, BudgetCoveringTheSequenceChangesNothing) {
  Init({.dtype = v1::DTYPE_FP16});
  Append(10);
  const auto heads = Heads();
  for (eviction::Budget budget : {eviction::Budget{.tokens = 10}, eviction::Budget{.tokens = 500},
                                  eviction::Budget{.keep_ratio = 1.0}}) {
    ASSERT_OK_AND_ASSIGN(CompressOutcome out,
                         Compress({.scorer = ScorerKind::kKnorm, .sinks = 1, .window = 1}, budget));
    EXPECT_FALSE(out.changed);
    EXPECT_TRUE(out.freed_pages.empty());
    EXPECT_EQ(out.tokens_before, out.tokens_after);
    EXPECT_EQ(out.kept_per_head, std::vector<uint32_t>(table_->heads(), 10));
  }
  EXPECT_EQ(Heads(), heads);
  EXPECT_EQ(checking_->copies, 0);
  ExpectContentsMatchReference();
}

TEST_F(CompressorTest, MissingStatisticsFailPreconditionAndChangeNothing) {
  Init({});
  Append(12);
  const auto heads = Heads();
  EXPECT_THAT(Compress({.scorer = ScorerKind::kSnapKv}, {.keep_ratio = 0.5}),
              StatusIs(StatusCode::kFailedPrecondition,
                       "snapkv needs window queries (LayerStats.window_queries)"));
  EXPECT_THAT(Compress({.scorer = ScorerKind::kCapKv}, {.keep_ratio = 0.5}),
              StatusIs(StatusCode::kFailedPrecondition,
                       "capkv needs query moments (LayerStats.query_sum); layer 0 has none; send "
                       "them with CommitTokens or PutStats"));
  EXPECT_THAT(Compress({.scorer = ScorerKind::kObserved}, {.keep_ratio = 0.5}),
              StatusIs(StatusCode::kFailedPrecondition, "attention mass"));
  // Layer 0 only: layer 1 is named.
  ApplyMoments(0);
  EXPECT_THAT(Compress({.scorer = ScorerKind::kExpected}, {.keep_ratio = 0.5}),
              StatusIs(StatusCode::kFailedPrecondition, "layer 1 has none"));
  EXPECT_EQ(Heads(), heads);
  EXPECT_EQ(checking_->copies, 0);
  ExpectContentsMatchReference();
}

TEST_F(CompressorTest, BadPolicyOrBudgetIsInvalidAndChangesNothing) {
  Init({});
  Append(12);
  const auto heads = Heads();
  const eviction::Policy knorm{.scorer = ScorerKind::kKnorm};
  EXPECT_THAT(Compress(knorm, {}), StatusIs(StatusCode::kInvalidArgument, "exactly one"));
  EXPECT_THAT(Compress(knorm, {.keep_ratio = 0.5, .tokens = 3}),
              StatusIs(StatusCode::kInvalidArgument, "exactly one"));
  EXPECT_THAT(Compress(knorm, {.keep_ratio = 1.5}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Compress(knorm, {.keep_ratio = std::nan("")}),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Compress(knorm, {.tokens = -2}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Compress({.scorer = ScorerKind::kKnorm, .pool_kernel = 4}, {.keep_ratio = 0.5}),
              StatusIs(StatusCode::kInvalidArgument, "pool_kernel"));
  EXPECT_EQ(Heads(), heads);
  ExpectContentsMatchReference();
}

// Room reserved by AllocatePages past the committed tokens stays with the head; only pages emptied
// by the compaction are freed.
TEST_F(CompressorTest, ReservedRoomStaysAndEmptiedPagesGo) {
  Init({.layers = 1, .q_heads = 2, .kv_heads = 2, .head_dim = 4, .tokens_per_page = 4});
  Append(10, /*reserve=*/6);  // 16 slots: 4 pages, 3 of them hold tokens
  const std::vector<uint64_t> pages0 = table_->head(0).pages;
  ASSERT_EQ(pages0.size(), 4u);
  ASSERT_OK_AND_ASSIGN(
      CompressOutcome out,
      Compress({.scorer = ScorerKind::kStreaming, .sinks = 1, .window = 2}, {.tokens = 3}));
  EXPECT_EQ(out.freed_pages.size(), 4u);  // pages 1 and 2 of each head
  EXPECT_EQ(table_->head(0).pages, (std::vector<uint64_t>{pages0[0], pages0[3]}));
  EXPECT_EQ(table_->capacity(0), 8u);
  FollowTable();
  ExpectContentsMatchReference();
  uint64_t total = 0;
  table_->PagesNeeded(5, &total);
  EXPECT_EQ(total, 0u);
  Append(5);
  ExpectContentsMatchReference();
}

// Window scorers read the keys, post-RoPE queries and positions through BuildLayerInputs; a window
// made stale by a commit is refused until it is sent again.
TEST_F(CompressorTest, SnapKvWithWindowQueriesAndStaleWindow) {
  Init({.dtype = v1::DTYPE_FP16,
        .layers = 2,
        .q_heads = 4,
        .kv_heads = 2,
        .head_dim = 8,
        .tokens_per_page = 4});
  Append(24);
  for (uint32_t l = 0; l < 2; ++l) ApplyWindow(l, 4);
  const eviction::Policy policy{
      .scorer = ScorerKind::kSnapKv, .allocation = Allocation::kAda, .sinks = 2, .window = 4};
  ASSERT_OK_AND_ASSIGN(CompressOutcome out, Compress(policy, {.keep_ratio = 0.5}));
  EXPECT_TRUE(out.changed);
  EXPECT_EQ(out.tokens_after, 48u);
  for (uint32_t h = 0; h < table_->heads(); ++h) {
    // Sinks and window always stay.
    const auto& p = table_->head(h).positions;
    ASSERT_GE(p.size(), 6u);
    EXPECT_EQ(p[0], 5);
    EXPECT_EQ(p[1], 8);
    EXPECT_EQ(p.back(), 5 + 3 * 23);
    EXPECT_EQ(p[p.size() - 4], 5 + 3 * 20);
  }
  FollowTable();
  ExpectContentsMatchReference();
  pool_->Free(out.freed_pages);

  Append(4);
  EXPECT_THAT(Compress(policy, {.keep_ratio = 0.5}),
              StatusIs(StatusCode::kFailedPrecondition, "window queries of the latest positions"));
  for (uint32_t l = 0; l < 2; ++l) ApplyWindow(l, 4);
  ASSERT_OK_AND_ASSIGN(out, Compress(policy, {.keep_ratio = 0.5}));
  // Ratio 0.5 of 64 tokens; heads shorter than 12 have their share raised to sinks + window.
  EXPECT_GE(out.tokens_after, 32u);
  EXPECT_LE(out.tokens_after, 36u);
  FollowTable();
  ExpectContentsMatchReference();
}

// capkv reads keys and values (both gathered and converted from bf16) and the query moments.
TEST_F(CompressorTest, CapKvWithMomentsCompacts) {
  Init({.dtype = v1::DTYPE_BF16,
        .layers = 2,
        .q_heads = 4,
        .kv_heads = 2,
        .head_dim = 8,
        .tokens_per_page = 5});
  Append(23);
  for (uint32_t l = 0; l < 2; ++l) ApplyMoments(l);
  ASSERT_OK_AND_ASSIGN(
      CompressOutcome out,
      Compress({.scorer = ScorerKind::kCapKv, .sinks = 2, .window = 2}, {.tokens = 8}));
  EXPECT_EQ(out.tokens_after, 8u * 4);
  EXPECT_EQ(out.freed_pages.size(), 4u * (5 - 2));
  EXPECT_GT(checking_->reads, 0);
  FollowTable();
  ExpectContentsMatchReference();
  EXPECT_GT(scratch_.bytes(), 0u);
}

// A failing backend copy leaves the table as it was (no page is lost) and says to drop it.
TEST_F(CompressorTest, CopyFailureLeavesTheTableUnchanged) {
  Init({});
  Append(12);
  const auto heads = Heads();
  checking_->fail_after = 3;
  EXPECT_THAT(Compress({.scorer = ScorerKind::kStreaming, .sinks = 1, .window = 1}, {.tokens = 4}),
              StatusIs(StatusCode::kInternal, "drop it"));
  EXPECT_EQ(Heads(), heads);
}

// capkv-greedy under a uniform budget stops ranking after the most a head can keep; the kept sets
// must equal those of a full greedy ranking computed here from the reference bytes.
TEST_F(CompressorTest, CapKvGreedyMatchesAFullGreedyRanking) {
  Init({.layers = 2, .q_heads = 2, .kv_heads = 2, .head_dim = 8, .tokens_per_page = 4});
  Append(40);
  for (uint32_t l = 0; l < 2; ++l) ApplyMoments(l);
  const eviction::Policy policy{.scorer = ScorerKind::kCapKvGreedy, .sinks = 2, .window = 3};
  for (eviction::Budget budget :
       {eviction::Budget{.tokens = 12}, eviction::Budget{.keep_ratio = 0.3}}) {
    std::vector<eviction::HeadScores> scores(2);
    std::vector<std::vector<float>> keys(table_->heads()), values(table_->heads());
    eviction::ScoringWorkspace ws(1);
    for (uint32_t l = 0; l < 2; ++l) {
      std::vector<const float*> kp, vp;
      for (uint32_t g = 0; g < 2; ++g) {
        const uint32_t h = l * 2 + g;
        for (const Token& t : ref_[h]) {
          for (double x : Decode(t.key)) keys[h].push_back(static_cast<float>(x));
          for (double x : Decode(t.value)) values[h].push_back(static_cast<float>(x));
        }
        kp.push_back(keys[h].data());
        vp.push_back(values[h].data());
      }
      eviction::LayerInputs in;
      BuildLayerInputs(*model_, *table_, stats_, policy, l, kp, vp, &in);
      ASSERT_OK(eviction::ScoreLayerInto(policy, in, ws, &scores[l]));  // greedy_picks = 0: full
    }
    ASSERT_OK_AND_ASSIGN(eviction::Selection want,
                         eviction::SelectTokens(policy, budget, scores, 1));
    ASSERT_OK_AND_ASSIGN(CompressOutcome out, Compress(policy, budget));
    for (uint32_t h = 0; h < table_->heads(); ++h) {
      std::vector<int32_t> positions;
      for (int32_t j : want.kept[h / 2][h % 2]) positions.push_back(ref_[h][j].position);
      EXPECT_EQ(table_->head(h).positions, positions) << "head " << h;
    }
    FollowTable();
    ExpectContentsMatchReference();
    Append(20);
    for (uint32_t l = 0; l < 2; ++l) ApplyMoments(l);
  }
}

// ---------------------------------------------------------------------------------------------
// Scoring on the device (Backend::layer_scorer): the request the compressor builds is checked here
// with a host stand-in for the device. It reads the pages through the request's runs only (host
// addresses of the CPU backend's arenas play the device addresses), rebuilds LayerInputs from the
// request and scores with eviction::ScoreLayer; any error in the runs (offsets, order, dtype) or in
// the borrowed statistics changes the scores and the selection.

// Element i of a run's keys or values, widened to float.
float RunElement(DevicePageDType dtype, const void* base, size_t i) {
  if (dtype == DevicePageDType::kFp32) return static_cast<const float*>(base)[i];
  const uint16_t b = static_cast<const uint16_t*>(base)[i];
  return dtype == DevicePageDType::kFp16 ? gpu_math::HalfBitsToFloat(b)
                                         : gpu_math::Bf16BitsToFloat(b);
}

class HostLayerScorer : public DeviceLayerScorer {
 public:
  absl::Status ScoreLayer(const DeviceLayerRequest& r,
                          std::vector<std::vector<float>>* scores) override {
    ++calls;
    if (!fail.ok()) return fail;
    if (absl::Status s = ValidateDeviceLayerRequest(r); !s.ok()) return s;
    const int d = r.head_dim;
    eviction::LayerInputs in;
    in.q_heads = r.q_heads;
    in.kv_heads = r.kv_heads;
    in.head_dim = d;
    in.layer_index = r.layer_index;
    in.heads.resize(r.kv_heads);
    keys_.assign(r.kv_heads, {});
    values_.assign(r.kv_heads, {});
    const DeviceScorerNeeds needs = DeviceNeeds(r.scorer.kind);
    for (int g = 0; g < r.kv_heads; ++g) {
      for (const DeviceTokenRun& run : r.heads[g].runs) {
        for (size_t i = 0; i < size_t{run.tokens} * d; ++i) {
          if (needs.keys) keys_[g].push_back(RunElement(r.dtype, run.keys, i));
          if (needs.values) values_[g].push_back(RunElement(r.dtype, run.values, i));
        }
      }
      in.heads[g] = eviction::HeadKV{.n = r.heads[g].n,
                                     .keys = needs.keys ? keys_[g].data() : nullptr,
                                     .values = needs.values ? values_[g].data() : nullptr,
                                     .positions = r.heads[g].positions};
    }
    in.rope.theta = r.rope.theta;
    in.rope.rotary_dim = r.rope.rotary_dim;
    in.rope.interleaved = r.rope.interleaved;
    const int rd = r.rope.rotary_dim == 0 ? d : r.rope.rotary_dim;
    if (r.rope.inv_freq != nullptr) in.rope.inv_freq.assign(r.rope.inv_freq, r.rope.inv_freq + rd / 2);
    in.next_position = r.next_position;
    const size_t qd = size_t(r.q_heads) * d;
    in.window = r.window;
    if (r.window_queries) in.window_queries.assign(r.window_queries, r.window_queries + qd * r.window);
    if (r.query_sum) in.query_sum.assign(r.query_sum, r.query_sum + qd);
    if (r.query_sq_sum) in.query_sq_sum.assign(r.query_sq_sum, r.query_sq_sum + qd);
    in.query_count = r.query_count;
    for (size_t h = 0; h < r.attention_mass.size(); ++h) {
      const int n = r.heads[h / (r.q_heads / r.kv_heads)].n;
      in.attention_mass.emplace_back(r.attention_mass[h], r.attention_mass[h] + n);
    }
    if (r.wo_gram) in.wo_gram.assign(r.wo_gram, r.wo_gram + qd * d);
    const DeviceScorerParams& p = r.scorer;
    const eviction::Policy policy{.scorer = static_cast<ScorerKind>(static_cast<int>(p.kind)),
                                  .sinks = p.sinks,
                                  .window = p.window,
                                  .pool_kernel = p.pool_kernel,
                                  .pool_max = p.pool_max,
                                  .capkv_tau = p.capkv_tau,
                                  .rope_horizon = p.rope_horizon,
                                  .seed = p.seed,
                                  .greedy_picks = p.greedy_picks};
    eviction::HeadScores out;
    if (absl::Status s = eviction::ScoreLayerInto(policy, in, workspace_, &out); !s.ok()) return s;
    *scores = std::move(out.per_head);
    return absl::OkStatus();
  }
  size_t scratch_bytes() const override { return 0; }

  int calls = 0;
  absl::Status fail;

 private:
  std::vector<std::vector<float>> keys_, values_;
  eviction::ScoringWorkspace workspace_{1};
};

// The CPU backend dressed as a device backend: host arena addresses, the host scorer above.
class DeviceScoringBackend : public CheckingBackend {
 public:
  explicit DeviceScoringBackend(Backend* inner) : CheckingBackend(inner) {}
  const void* DeviceAddress(const Arena& arena) const override { return HostArenaData(arena); }
  DeviceLayerScorer* layer_scorer() override { return &scorer; }
  HostLayerScorer scorer;
};

class CompressorDeviceTest : public CompressorTest,
                             public ::testing::WithParamInterface<v1::DType> {
 protected:
  // Scores every layer on the CPU from the reference bytes and selects: the kept positions per head.
  std::vector<std::vector<int32_t>> CpuChoice(const eviction::Policy& policy,
                                              const eviction::Budget& budget) {
    const uint32_t layers = model_->layers(), kv = model_->kv_heads();
    std::vector<eviction::HeadScores> scores(layers);
    std::vector<std::vector<float>> keys(table_->heads()), values(table_->heads());
    eviction::ScoringWorkspace ws(1);
    for (uint32_t l = 0; l < layers; ++l) {
      std::vector<const float*> kp, vp;
      for (uint32_t g = 0; g < kv; ++g) {
        const uint32_t h = l * kv + g;
        for (const Token& t : ref_[h]) {
          for (double x : Decode(t.key)) keys[h].push_back(static_cast<float>(x));
          for (double x : Decode(t.value)) values[h].push_back(static_cast<float>(x));
        }
        kp.push_back(keys[h].data());
        vp.push_back(values[h].data());
      }
      eviction::LayerInputs in;
      BuildLayerInputs(*model_, *table_, stats_, policy, l, kp, vp, &in);
      EXPECT_OK(eviction::ScoreLayerInto(policy, in, ws, &scores[l]));
    }
    absl::StatusOr<eviction::Selection> want = eviction::SelectTokens(
        policy, budget, scores, static_cast<int>(model_->q_heads() / kv));
    EXPECT_OK(want);
    std::vector<std::vector<int32_t>> out(table_->heads());
    for (uint32_t h = 0; h < table_->heads(); ++h) {
      for (int32_t j : want->kept[h / kv][h % kv]) out[h].push_back(ref_[h][j].position);
    }
    return out;
  }

  absl::StatusOr<CompressOutcome> CompressOnDevice(const eviction::Policy& policy,
                                                   const eviction::Budget& budget) {
    return CompressSequence(*model_, *table_, stats_, policy, budget, *device_, *pool_, scratch_);
  }

  void SetUp() override {
    CompressorTest::SetUp();
    device_ = std::make_unique<DeviceScoringBackend>(backend_.get());
  }

  std::unique_ptr<DeviceScoringBackend> device_;
};

// The runs of a request cover every committed token of every head, in order, page by page, and
// address exactly the bytes the CPU gather reads (Backend::Read at the same page offsets).
TEST_P(CompressorDeviceTest, RequestRunsAddressEveryTokenInOrder) {
  Init({.dtype = GetParam(), .layers = 2, .q_heads = 4, .kv_heads = 2, .head_dim = 8,
        .tokens_per_page = 3});
  Append(10, /*reserve=*/2);
  Append(4);
  for (uint32_t l = 0; l < 2; ++l) ApplyWindow(l, 3);
  const eviction::Policy policy{.scorer = ScorerKind::kLaProx, .sinks = 2, .window = 3};
  for (uint32_t layer = 0; layer < 2; ++layer) {
    eviction::LayerInputs in;
    std::vector<const float*> none(2, nullptr);
    BuildLayerInputs(*model_, *table_, stats_, policy, layer, none, none, &in);
    DeviceLayerRequest request;
    const PageAddressFn address = [&](uint64_t page) -> absl::StatusOr<const char*> {
      return static_cast<const char*>(HostArenaData(*pool_->ArenaOf(page))) +
             size_t{PageRef::Unpack(page).index} * model_->geometry().page_bytes;
    };
    ASSERT_OK(BuildDeviceLayerRequest(*model_, *table_, in, policy, layer, address, &request));
    ASSERT_OK(ValidateDeviceLayerRequest(request));
    EXPECT_EQ(request.dtype, GetParam() == v1::DTYPE_FP32   ? DevicePageDType::kFp32
                             : GetParam() == v1::DTYPE_FP16 ? DevicePageDType::kFp16
                                                            : DevicePageDType::kBf16);
    EXPECT_EQ(request.scorer.kind, DeviceScorerKind::kLaProx);
    EXPECT_EQ(request.scorer.sinks, 2);
    ASSERT_EQ(request.heads.size(), 2u);
    for (uint32_t g = 0; g < 2; ++g) {
      const uint32_t h = layer * 2 + g;
      const DeviceHeadRequest& head = request.heads[g];
      EXPECT_EQ(head.n, 14);
      EXPECT_EQ(head.positions, table_->head(h).positions.data());
      // 14 tokens over pages of 3: 5 runs (3, 3, 3, 3, 2).
      ASSERT_EQ(head.runs.size(), 5u);
      uint32_t slot = 0;
      std::vector<uint8_t> bytes(model_->geometry().token_bytes);
      for (const DeviceTokenRun& run : head.runs) {
        for (uint32_t t = 0; t < run.tokens; ++t, ++slot) {
          const size_t tb = model_->geometry().token_bytes;
          auto [arena, offset] = Where(h, slot, false);
          ASSERT_OK(backend_->Read(*arena, offset, bytes.data(), tb));
          EXPECT_EQ(0, std::memcmp(bytes.data(), static_cast<const char*>(run.keys) + t * tb, tb))
              << "key of head " << h << " slot " << slot;
          EXPECT_EQ(bytes, ref_[h][slot].key);
          std::tie(arena, offset) = Where(h, slot, true);
          ASSERT_OK(backend_->Read(*arena, offset, bytes.data(), tb));
          EXPECT_EQ(0, std::memcmp(bytes.data(), static_cast<const char*>(run.values) + t * tb, tb))
              << "value of head " << h << " slot " << slot;
        }
      }
      EXPECT_EQ(slot, 14u);
    }
    // Statistics are borrowed, not copied.
    EXPECT_EQ(request.window, 3);
    EXPECT_EQ(request.window_queries, in.window_queries.data());
  }
}

// A page whose address cannot be had fails the request with that error, naming layer and head.
TEST_F(CompressorDeviceTest, RequestPropagatesAddressErrors) {
  Init({});
  Append(5);
  eviction::LayerInputs in;
  std::vector<const float*> none(2, nullptr);
  const eviction::Policy policy{.scorer = ScorerKind::kKnorm};
  BuildLayerInputs(*model_, *table_, stats_, policy, 1, none, none, &in);
  DeviceLayerRequest request;
  EXPECT_THAT(BuildDeviceLayerRequest(
                  *model_, *table_, in, policy, 1,
                  [](uint64_t) -> absl::StatusOr<const char*> {
                    return absl::FailedPreconditionError("no device address");
                  },
                  &request),
              StatusIs(StatusCode::kFailedPrecondition, "layer 1 KV head 0: no device address"));
}

// Through a backend that scores on its device, the compressor keeps exactly what the CPU path
// keeps, reads nothing back, and moves the same bytes.
TEST_P(CompressorDeviceTest, DevicePathKeepsWhatTheCpuPathKeeps) {
  struct Case {
    eviction::Policy policy;
    eviction::Budget budget;
  };
  const Case cases[] = {
      {{.scorer = ScorerKind::kKnorm, .sinks = 2, .window = 3}, {.tokens = 9}},
      {{.scorer = ScorerKind::kSnapKv, .sinks = 1, .window = 2}, {.keep_ratio = 0.5}},
      {{.scorer = ScorerKind::kCapKv, .sinks = 2, .window = 2}, {.tokens = 8}},
      {{.scorer = ScorerKind::kCapKvGreedy, .sinks = 2, .window = 2}, {.tokens = 8}},
      {{.scorer = ScorerKind::kLaProx, .allocation = Allocation::kGlobal, .sinks = 1, .window = 2},
       {.keep_ratio = 0.4}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(eviction::ScorerName(c.policy.scorer)));
    Init({.dtype = GetParam(), .layers = 2, .q_heads = 4, .kv_heads = 2, .head_dim = 8,
          .tokens_per_page = 4});
    device_->scorer.calls = 0;
    device_->reads = 0;
    stats_.Clear();
    Append(21);
    for (uint32_t l = 0; l < 2; ++l) {
      ApplyWindow(l, 2);
      ApplyMoments(l);
    }
    const std::vector<std::vector<int32_t>> want = CpuChoice(c.policy, c.budget);
    ASSERT_OK_AND_ASSIGN(CompressOutcome out, CompressOnDevice(c.policy, c.budget));
    EXPECT_TRUE(out.changed);
    EXPECT_EQ(device_->scorer.calls, 2);
    EXPECT_EQ(device_->reads, 0);  // nothing was read back to the host
    for (uint32_t h = 0; h < table_->heads(); ++h) {
      EXPECT_EQ(table_->head(h).positions, want[h]) << "head " << h;
    }
    FollowTable();
    ExpectContentsMatchReference();
    pool_->Free(out.freed_pages);
  }
}

// A device scorer's error reaches the caller with its code and the layer; nothing changes.
TEST_F(CompressorDeviceTest, DeviceScorerErrorsChangeNothing) {
  Init({});
  Append(12);
  const auto heads = Heads();
  device_->scorer.fail = absl::ResourceExhaustedError("device memory");
  EXPECT_THAT(CompressOnDevice({.scorer = ScorerKind::kKnorm, .sinks = 1, .window = 1},
                               {.tokens = 4}),
              StatusIs(StatusCode::kResourceExhausted, "scoring layer 0 on the device: device memory"));
  EXPECT_EQ(Heads(), heads);
  // A statistic the scorer needs is still checked first (FAILED_PRECONDITION, nothing scored).
  device_->scorer.fail = absl::OkStatus();
  device_->scorer.calls = 0;
  EXPECT_THAT(CompressOnDevice({.scorer = ScorerKind::kSnapKv}, {.tokens = 4}),
              StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(device_->scorer.calls, 0);
  EXPECT_EQ(Heads(), heads);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CompressorDeviceTest,
                         ::testing::Values(v1::DTYPE_FP32, v1::DTYPE_FP16, v1::DTYPE_BF16),
                         [](const ::testing::TestParamInfo<v1::DType>& info) {
                           return std::string(v1::DType_Name(info.param)).substr(6);
                         });

}  // namespace
}  // namespace kvkeep
