// Shared by the compressor tests (compressor_test.cc: selection and compaction on the CPU path;
// compressor_device_test.cc: device backends, batched copies and device scoring requests): a CPU
// backend wrapper that refuses overlapping copies and can inject copy failures, and the
// CompressorTest fixture, which builds a model and a sequence table, appends tokens with known
// bytes and keeps a byte-exact reference of what every head slot must hold.
#ifndef KVKEEP_SERVICE_COMPRESS_COMPRESSOR_TEST_FIXTURE_H_
#define KVKEEP_SERVICE_COMPRESS_COMPRESSOR_TEST_FIXTURE_H_

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

namespace kvkeep::compressor_testing {

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

}  // namespace kvkeep::compressor_testing

#endif  // KVKEEP_SERVICE_COMPRESS_COMPRESSOR_TEST_FIXTURE_H_
