#include "engines/llama/state_format.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "common/status_matchers.h"

namespace kvkeep::llama {
namespace {

using ::kvkeep::testing::StatusIs;

// Per (layer, head): keys and values [cells][head_dim] of 2-byte elements, distinct everywhere.
struct Heads {
  std::vector<std::vector<uint8_t>> keys, values;
};

Heads MakeHeads(const CacheShape& s, uint32_t cells, uint32_t seed) {
  std::mt19937 rng(seed);
  Heads h;
  const size_t bytes = size_t{cells} * s.head_dim * s.elem_bytes;
  for (uint32_t i = 0; i < s.layers * s.kv_heads; ++i) {
    std::vector<uint8_t> k(bytes), v(bytes);
    for (auto& b : k) b = static_cast<uint8_t>(rng());
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    h.keys.push_back(std::move(k));
    h.values.push_back(std::move(v));
  }
  return h;
}

std::string Build(const CacheShape& s, const std::vector<int32_t>& pos, const Heads& h,
                  bool v_trans) {
  SeqStateWriter w(s, pos, 0, v_trans);
  for (uint32_t l = 0; l < s.layers; ++l) {
    for (uint32_t g = 0; g < s.kv_heads; ++g) {
      w.SetHead(l, g, h.keys[l * s.kv_heads + g].data(), h.values[l * s.kv_heads + g].data());
    }
  }
  return w.bytes();
}

absl::Span<const uint8_t> Span(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// The layout of llama_kv_cache::state_write, written out by hand for one tiny case: 2 cells,
// 1 layer, 2 KV heads of dim 2, V transposed.
TEST(StateFormat, MatchesTheLayoutLlamaCppWrites) {
  const CacheShape s{.layers = 1, .kv_heads = 2, .head_dim = 2, .elem_bytes = 2};
  // keys[cell][head][dim] = 0x10*cell + 4*head + dim (as u16); values + 0x100.
  Heads h;
  for (uint32_t g = 0; g < 2; ++g) {
    std::vector<uint8_t> k, v;
    for (uint16_t c = 0; c < 2; ++c) {
      for (uint16_t d = 0; d < 2; ++d) {
        const uint16_t kv = 0x10 * c + 4 * g + d, vv = kv + 0x100;
        k.insert(k.end(), {static_cast<uint8_t>(kv), static_cast<uint8_t>(kv >> 8)});
        v.insert(v.end(), {static_cast<uint8_t>(vv), static_cast<uint8_t>(vv >> 8)});
      }
    }
    h.keys.push_back(k);
    h.values.push_back(v);
  }
  const std::string got = Build(s, {7, 9}, h, /*v_trans=*/true);
  std::string want;
  auto put = [&](auto v) { want.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  put(uint32_t{0xaf143cd8});  // magic
  put(int32_t{0});            // seq_id
  put(uint32_t{1});           // n_stream
  put(uint32_t{2});           // cell_count
  for (int32_t p : {7, 9}) {
    put(p);
    put(uint32_t{1});
    put(int32_t{0});
  }
  put(uint32_t{1});  // v_trans
  put(uint32_t{1});  // n_layer
  put(int32_t{1});   // k type F16
  put(uint64_t{8});  // key row: 2 heads x 2 dims x 2 bytes
  for (uint16_t c = 0; c < 2; ++c)
    for (uint16_t g = 0; g < 2; ++g)
      for (uint16_t d = 0; d < 2; ++d) put(static_cast<uint16_t>(0x10 * c + 4 * g + d));
  put(int32_t{1});                  // v type F16
  put(uint32_t{2});                 // element bytes
  put(uint32_t{4});                 // n_embd_v_gqa
  for (uint16_t e = 0; e < 4; ++e)  // element e = head * 2 + dim, each cell
    for (uint16_t c = 0; c < 2; ++c)
      put(static_cast<uint16_t>(0x100 + 0x10 * c + 4 * (e / 2) + e % 2));
  EXPECT_EQ(got, want);
}

TEST(StateFormat, ParseReadsBackWhatTheWriterWroteBothVLayouts) {
  const CacheShape s{.layers = 3, .kv_heads = 2, .head_dim = 8, .elem_bytes = 2};
  const std::vector<int32_t> pos = {0, 1, 2, 5, 6, 40};
  const Heads h = MakeHeads(s, 6, 3);
  for (bool v_trans : {false, true}) {
    const std::string bytes = Build(s, pos, h, v_trans);
    ASSERT_OK_AND_ASSIGN(SeqState parsed, SeqState::Parse(Span(bytes), s));
    EXPECT_EQ(parsed.positions(), pos);
    EXPECT_EQ(parsed.v_trans(), v_trans);
    std::vector<uint8_t> k(6 * 8 * 2), v(6 * 8 * 2);
    for (uint32_t l = 0; l < 3; ++l) {
      for (uint32_t g = 0; g < 2; ++g) {
        parsed.CopyHeadKeys(l, g, k.data());
        parsed.CopyHeadValues(l, g, v.data());
        EXPECT_EQ(k, h.keys[l * 2 + g]) << l << " " << g;
        EXPECT_EQ(v, h.values[l * 2 + g]) << l << " " << g;
      }
    }
  }
}

TEST(StateFormat, RefusesWhatDoesNotMatchTheModelOrTheRelease) {
  const CacheShape s{.layers = 2, .kv_heads = 2, .head_dim = 4, .elem_bytes = 2};
  const std::string good = Build(s, {0, 1, 2}, MakeHeads(s, 3, 1), true);
  ASSERT_OK(SeqState::Parse(Span(good), s).status());

  CacheShape other = s;
  other.layers = 3;
  EXPECT_THAT(
      SeqState::Parse(Span(good), other),
      StatusIs(absl::StatusCode::kInvalidArgument, "n_layer is 2, the model's cache needs 3"));
  other = s;
  other.head_dim = 8;
  EXPECT_THAT(SeqState::Parse(Span(good), other),
              StatusIs(absl::StatusCode::kInvalidArgument, "key row bytes"));
  EXPECT_THAT(SeqState::Parse(Span(good.substr(0, good.size() - 1)), s),
              StatusIs(absl::StatusCode::kInvalidArgument, "ends inside values"));
  EXPECT_THAT(SeqState::Parse(Span(good + "x"), s),
              StatusIs(absl::StatusCode::kInvalidArgument, "after the last layer"));
  std::string two_streams = good;
  two_streams[8] = 2;
  EXPECT_THAT(SeqState::Parse(Span(two_streams), s),
              StatusIs(absl::StatusCode::kFailedPrecondition, "2 streams"));
  // A quantised (Q8_0 = 8) key cache: another type than F16.
  std::string q8 = good;
  const size_t k_type_at = 16 + 3 * 12 + 8;
  ASSERT_EQ(q8[k_type_at], 1);
  q8[k_type_at] = 8;
  EXPECT_THAT(SeqState::Parse(Span(q8), s),
              StatusIs(absl::StatusCode::kInvalidArgument, "k_type of layer 0 is 8"));
  EXPECT_THAT(SeqState::Parse(Span(std::string()), s),
              StatusIs(absl::StatusCode::kInvalidArgument, "magic"));
  std::string other_magic = good;
  other_magic[0] ^= 1;
  EXPECT_THAT(SeqState::Parse(Span(other_magic), s),
              StatusIs(absl::StatusCode::kFailedPrecondition, "magic 0xaf143cd9"));

  EXPECT_OK(CheckLlamaVersion("0.4.0-dev"));
  EXPECT_THAT(CheckLlamaVersion("0.4.0"), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(CheckLlamaVersion("0.5.0"),
              StatusIs(absl::StatusCode::kFailedPrecondition, "libllama is version 0.5.0"));
}

}  // namespace
}  // namespace kvkeep::llama
