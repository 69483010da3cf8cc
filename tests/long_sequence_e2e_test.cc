// Long sequences through the real daemon with the default 4 MiB message limit: a sequence whose
// page table is larger than one message is allocated, written, committed, compressed, spilled and
// restored, its tables travelling as chunked replies (docs/api.md "Chunked replies"). The layout is
// tiny per page (head_dim 2, one token per page: 8-byte pages) with 1024 (layer, KV head) pairs,
// so 1,200 tokens make a 9.4 MiB table without moving many bytes.
#include <algorithm>
#include <cstring>
#include <vector>

#include "client/stream_call.h"
#include "common/status_matchers.h"
#include "common/table_chunks.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"

namespace kvkeep::testing {
namespace {

using absl::StatusCode;

constexpr uint32_t kLayers = 128;
constexpr uint32_t kKvHeads = 8;
constexpr uint32_t kTokens = 1200;
constexpr uint32_t kKept = 600;  // keep_ratio 0.5
constexpr uint64_t kLimit = 4 << 20;

v1::ModelLayout LongLayout() {
  v1::ModelLayout l = TestLayout("long");
  l.set_layers(kLayers);
  l.set_q_heads(kKvHeads);
  l.set_kv_heads(kKvHeads);
  l.set_head_dim(2);
  l.set_dtype(v1::DTYPE_FP16);
  l.set_tokens_per_page(1);
  return l;
}

// Finite fp16 values in [0.5, 1) with a per-head pattern: 2 values per token.
std::vector<uint16_t> HeadValues(uint32_t head, uint32_t salt) {
  std::vector<uint16_t> v(2 * kTokens);
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = static_cast<uint16_t>(0x3800 | ((i * 131 + head * 7 + salt) & 0x3ff));
  }
  return v;
}

template <typename T>
bool Same(const google::protobuf::RepeatedField<T>& a,
          const google::protobuf::RepeatedField<T>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

class LongSequenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(daemon_.Start({"--pool_mib=64"}));  // default --max_message_mib (4)
    v1::CreateTenantRequest r;
    r.set_name("alpha");
    r.set_spill_quota_bytes(64 << 20);
    ASSERT_OK_AND_ASSIGN(v1::CreateTenantReply t, daemon_.Admin()->CreateTenant(r));
    token_ = t.token();
    ASSERT_OK_AND_ASSIGN(client_, Client::Attach(daemon_.channel(), token_, "w"));
    ASSERT_OK(client_->RegisterModel(LongLayout()));
  }

  // Every head's committed keys and values, read over ReadKV.
  std::vector<HeadData> ReadAll(const std::string& seq) {
    std::vector<HeadData> out;
    for (uint32_t l = 0; l < kLayers; ++l) {
      for (uint32_t h = 0; h < kKvHeads; ++h) {
        absl::StatusOr<HeadData> head = client_->ReadHead(seq, l, h);
        EXPECT_OK(head);
        out.push_back(head.ok() ? std::move(*head) : HeadData{});
      }
    }
    return out;
  }

  DaemonProcess daemon_;
  std::string token_;
  std::unique_ptr<Client> client_;
};

TEST_F(LongSequenceTest, TableOverTheMessageLimitAllocatesCommitsCompressesSpillsAndRestores) {
  ASSERT_OK_AND_ASSIGN(std::string seq, client_->CreateSequence("long", /*retain=*/true));
  // The first allocation of a sequence takes the chunked reply: 1,228,800 pages, 9.4 MiB.
  ASSERT_OK_AND_ASSIGN(v1::PageTableDelta delta, client_->Allocate(seq, kTokens));
  ASSERT_EQ(delta.heads_size(), static_cast<int>(kLayers * kKvHeads));
  for (const v1::HeadTable& head : delta.heads()) {
    ASSERT_EQ(head.pages_size(), static_cast<int>(kTokens));
    ASSERT_FALSE(head.continued());
  }
  ASSERT_GT(delta.ByteSizeLong(), kLimit);
  for (uint32_t l = 0; l < kLayers; ++l) {
    for (uint32_t h = 0; h < kKvHeads; ++h) {
      std::vector<uint16_t> k = HeadValues(l * kKvHeads + h, 1);
      std::vector<uint16_t> v = HeadValues(l * kKvHeads + h, 2);
      ASSERT_OK(client_->WriteInPlace(seq, l, h, 0, kTokens, k.data(), v.data()));
    }
  }
  ASSERT_OK(client_->Commit(seq, kTokens));

  // The unary reply cannot carry the table (this is what failed before chunked replies) ...
  v1::GetSequenceRequest get;
  get.set_sequence_id(seq);
  get.set_with_positions(true);
  {
    auto ctx = MakeCallContext(token_);
    v1::PageTable unary;
    EXPECT_EQ(client_->stub().GetSequence(ctx.get(), get, &unary).error_code(),
              grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  // ... the chunked one does, in several messages each below the limit.
  ASSERT_OK_AND_ASSIGN(std::vector<v1::PageTable> chunks,
                       StreamCall(token_, client_->stub(),
                                  &v1::KvCache::Stub::GetSequenceStream, get));
  ASSERT_GE(chunks.size(), 3u);
  for (const v1::PageTable& c : chunks) EXPECT_LE(c.ByteSizeLong(), kLimit);
  ASSERT_OK_AND_ASSIGN(v1::PageTable full, MergePageTable(chunks));
  ASSERT_EQ(full.heads_size(), static_cast<int>(kLayers * kKvHeads));
  EXPECT_EQ(full.heads(1023).positions(kTokens - 1), static_cast<int32_t>(kTokens - 1));
  for (int i = 0; i < full.heads_size(); ++i) {
    EXPECT_TRUE(Same(full.heads(i).pages(), delta.heads(i).pages())) << "head " << i;
  }

  // Compress: the kept half is still a 4.7 MiB table, sent in chunks.
  v1::Policy policy;
  policy.set_scorer("knorm");
  policy.set_allocation("uniform");
  policy.set_keep_ratio(0.5);
  ASSERT_OK_AND_ASSIGN(v1::CompressReply compressed, client_->Compress(seq, policy));
  EXPECT_EQ(compressed.summary().tokens_after(), uint64_t{kKept} * kLayers * kKvHeads);
  ASSERT_EQ(compressed.table().heads_size(), static_cast<int>(kLayers * kKvHeads));
  ASSERT_GT(compressed.ByteSizeLong(), kLimit);
  for (const v1::HeadTable& head : compressed.table().heads()) {
    ASSERT_EQ(head.token_count(), kKept);
    ASSERT_EQ(head.positions_size(), static_cast<int>(kKept));
  }
  const std::vector<HeadData> before = ReadAll(seq);
  ASSERT_EQ(before[5].keys.size(), kKept * 4u);

  // Spill, then restore through the chunked reply: same positions, bit-exact bytes.
  v1::SpillRequest spill;
  spill.set_session_id(client_->session_id());
  spill.set_sequence_id(seq);
  {
    auto ctx = MakeCallContext(token_);
    v1::SpillReply spilled;
    ASSERT_TRUE(client_->stub().Spill(ctx.get(), spill, &spilled).ok());
    EXPECT_EQ(spilled.pages_freed(), kKept * kLayers * kKvHeads);
  }
  v1::RestoreRequest restore;
  restore.set_session_id(client_->session_id());
  restore.set_sequence_id(seq);
  restore.set_with_positions(true);
  ASSERT_OK_AND_ASSIGN(std::vector<v1::PageTable> restored_chunks,
                       StreamCall(token_, client_->stub(), &v1::KvCache::Stub::RestoreStream,
                                  restore));
  ASSERT_GE(restored_chunks.size(), 2u);
  ASSERT_OK_AND_ASSIGN(v1::PageTable restored, MergePageTable(std::move(restored_chunks)));
  EXPECT_EQ(restored.tier(), v1::TIER_DEVICE);
  ASSERT_EQ(restored.heads_size(), compressed.table().heads_size());
  for (int i = 0; i < restored.heads_size(); ++i) {
    ASSERT_TRUE(Same(restored.heads(i).positions(), compressed.table().heads(i).positions())) << i;
    ASSERT_EQ(restored.heads(i).pages_size(), static_cast<int>(kKept)) << i;
  }
  const std::vector<HeadData> after = ReadAll(seq);
  for (size_t i = 0; i < after.size(); ++i) {
    ASSERT_EQ(after[i].keys, before[i].keys) << "head " << i;
    ASSERT_EQ(after[i].values, before[i].values) << "head " << i;
  }
  // Acquire (chunked) hands the worker the whole table and maps its arenas.
  ASSERT_OK_AND_ASSIGN(v1::PageTable acquired, client_->Acquire(seq));
  EXPECT_EQ(acquired.heads_size(), static_cast<int>(kLayers * kKvHeads));
  std::vector<uint16_t> probe(4 * kKept);  // keys, then values: 2 fp16 per token each
  ASSERT_OK(client_->ReadInPlace(seq, 3, 1, 0, kKept, probe.data(), probe.data() + 2 * kKept));
  EXPECT_EQ(0, std::memcmp(probe.data(), after[3 * kKvHeads + 1].keys.data(), kKept * 4));
}

TEST(TableChunksTest, SplitKeepsEveryMessageUnderTheBudgetAndMergesBack) {
  v1::PageTable table;
  table.set_sequence_id("s");
  table.set_next_position(77);
  for (uint32_t h = 0; h < 6; ++h) {
    v1::HeadTable* head = table.add_heads();
    head->set_layer(h / 2);
    head->set_kv_head(h % 2);
    head->set_token_count(h * 1000);
    for (uint32_t p = 0; p < h * 1000; ++p) {
      head->add_pages((uint64_t{h} << 32) | p);
      head->add_positions(-static_cast<int32_t>(p));  // 10-byte varints: the worst case
    }
  }
  const std::vector<v1::PageTable> chunks = SplitPageTable(table, 8192);
  ASSERT_GT(chunks.size(), 10u);
  EXPECT_EQ(chunks[0].next_position(), 77u);
  for (const v1::PageTable& c : chunks) EXPECT_LE(c.ByteSizeLong(), 8192u);
  ASSERT_OK_AND_ASSIGN(v1::PageTable merged, MergePageTable(chunks));
  EXPECT_EQ(merged.SerializeAsString(), table.SerializeAsString());
  // A piece that continues a different head is refused.
  std::vector<v1::PageTable> bad = chunks;
  v1::HeadTable* stray = bad.back().add_heads();
  stray->set_layer(9);
  stray->set_continued(true);
  EXPECT_THAT(MergePageTable(bad), StatusIs(StatusCode::kInvalidArgument, "continues"));
}

}  // namespace
}  // namespace kvkeep::testing
