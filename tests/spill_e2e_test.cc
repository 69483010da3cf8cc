// The spill tier through the real daemon: spill and restore bit-exact, leases, quotas, pressure
// (LRU, watermarks), restart, corruption. Real RocksDB on disk.
#include <signal.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "service/storage/spill_store.h"
#include "tests/daemon_process.h"

namespace kvkeep::testing {
namespace {

using absl::StatusCode;

// 2 layers x 2 KV heads, head_dim 128, fp32, 64 tokens per page: 64 KiB pages, so 64 tokens of
// a sequence take 256 KiB.
v1::ModelLayout BigPages() {
  v1::ModelLayout l = TestLayout("big");
  l.set_head_dim(128);
  l.set_dtype(v1::DTYPE_FP32);
  l.set_tokens_per_page(64);
  return l;
}
constexpr uint64_t kTokenBytes = 128 * 4;

class SpillTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(daemon_.Start({"--pool_mib=4"}));
    v1::CreateTenantRequest r;
    r.set_name("alpha");
    r.set_spill_quota_bytes(64 << 20);
    auto t = daemon_.Admin()->CreateTenant(r);
    ASSERT_OK(t);
    token_ = t->token();
    client_ = Connect("w");
  }

  std::unique_ptr<Client> Connect(const std::string& worker) {
    auto c = Client::Attach(daemon_.channel(), token_, worker);
    EXPECT_OK(c);
    if (!c.ok()) return nullptr;
    EXPECT_OK((*c)->RegisterModel(BigPages()));
    return std::move(*c);
  }

  // A retained sequence of `n` tokens with pattern `seed`, lease released (spillable).
  std::string Make(uint32_t n, uint64_t seed, bool release = true) {
    auto seq = client_->CreateSequence("big", /*retain=*/true);
    EXPECT_OK(seq);
    EXPECT_OK(client_->Allocate(*seq, n));
    for (uint32_t l = 0; l < 2; ++l) {
      for (uint32_t h = 0; h < 2; ++h) {
        std::string k = PatternBytes(seed * 10 + l * 2 + h, n * kTokenBytes);
        EXPECT_OK(client_->WriteInPlace(*seq, l, h, 0, n, k.data(), k.data() + 1));
      }
    }
    EXPECT_OK(client_->Commit(*seq, n));
    if (release) {
      EXPECT_OK(client_->Release(*seq));
    }
    return *seq;
  }

  void Verify(Client& c, const std::string& seq, uint32_t n, uint64_t seed) {
    for (uint32_t l = 0; l < 2; ++l) {
      for (uint32_t h = 0; h < 2; ++h) {
        std::string k = PatternBytes(seed * 10 + l * 2 + h, n * kTokenBytes);
        ASSERT_OK_AND_ASSIGN(HeadData back, c.ReadHead(seq, l, h));
        ASSERT_EQ(back.keys, k);
        ASSERT_EQ(back.values, std::string(k.data() + 1, n * kTokenBytes));
      }
    }
  }

  v1::Tier TierOf(const std::string& seq) {
    auto list = daemon_.Admin()->ListSequences("alpha");
    EXPECT_OK(list);
    for (const auto& s : list->sequences()) {
      if (s.sequence_id() == seq) return s.tier();
    }
    return v1::TIER_UNSPECIFIED;
  }

  DaemonProcess daemon_;
  std::string token_;
  std::unique_ptr<Client> client_;
};

TEST_F(SpillTest, SpillAndTransparentRestoreAreBitExact) {
  std::string seq = Make(100, 1, /*release=*/false);
  auto before = daemon_.Admin()->GetStatus();
  ASSERT_OK(before);
  v1::SpillRequest spill;
  spill.set_session_id(client_->session_id());  // the lease holder may spill its own sequence
  spill.set_sequence_id(seq);
  auto ctx = MakeCallContext(token_);
  v1::SpillReply reply;
  ASSERT_TRUE(client_->stub().Spill(ctx.get(), spill, &reply).ok());
  EXPECT_EQ(reply.bytes(), 4u * 2 * 64 * kTokenBytes * 2);  // 4 heads x 2 pages x 64 KiB
  EXPECT_EQ(TierOf(seq), v1::TIER_SPILLED);
  auto after = daemon_.Admin()->GetStatus();
  ASSERT_OK(after);
  EXPECT_EQ(before->pages_in_use() - after->pages_in_use(), reply.pages_freed());
  EXPECT_EQ(after->spilled_bytes(), reply.bytes());
  // Device-only calls are refused while spilled; Acquire brings it back.
  EXPECT_THAT(client_->ReadHead(seq, 0, 0), StatusIs(StatusCode::kFailedPrecondition, "spill"));
  EXPECT_THAT(client_->Allocate(seq, 1), StatusIs(StatusCode::kFailedPrecondition));
  ASSERT_OK(client_->Acquire(seq));
  EXPECT_EQ(TierOf(seq), v1::TIER_DEVICE);
  Verify(*client_, seq, 100, 1);
  ASSERT_OK_AND_ASSIGN(v1::PageTable table, client_->GetSequence(seq, true));
  EXPECT_EQ(table.heads(3).positions(99), 99);
  EXPECT_EQ(daemon_.Admin()->GetStatus()->spilled_bytes(), 0u);
}

TEST_F(SpillTest, LeasedSequencesAreNotSpilledUnderTheirReader) {
  std::string seq = Make(64, 2, /*release=*/false);
  v1::SequenceRef ref;
  ref.set_tenant("alpha");
  ref.set_sequence_id(seq);
  EXPECT_THAT(daemon_.Admin()->SpillSequence(ref), StatusIs(StatusCode::kFailedPrecondition, "leased"));
  EXPECT_EQ(TierOf(seq), v1::TIER_DEVICE);
  ASSERT_OK(client_->Release(seq));
  ASSERT_OK(daemon_.Admin()->SpillSequence(ref));
  EXPECT_EQ(TierOf(seq), v1::TIER_SPILLED);
  EXPECT_THAT(daemon_.Admin()->SpillSequence(ref), StatusIs(StatusCode::kFailedPrecondition));
  ASSERT_OK(daemon_.Admin()->RestoreSequence(ref));
  Verify(*client_, seq, 64, 2);
}

TEST_F(SpillTest, SpillQuotaIsEnforced) {
  v1::SetQuotaRequest q;
  q.set_name("alpha");
  q.set_spill_quota_bytes(100 << 10);  // less than one 256 KiB sequence
  ASSERT_OK(daemon_.Admin()->SetQuota(q));
  std::string seq = Make(64, 3);
  v1::SequenceRef ref;
  ref.set_tenant("alpha");
  ref.set_sequence_id(seq);
  EXPECT_THAT(daemon_.Admin()->SpillSequence(ref),
              StatusIs(StatusCode::kResourceExhausted, "spill quota"));
  EXPECT_EQ(TierOf(seq), v1::TIER_DEVICE);
  Verify(*client_, seq, 64, 3);
}

TEST_F(SpillTest, PoolPressureSpillsLeastRecentlyUsedFirst) {
  // Pool 4 MiB = 16 units of 256 KiB. A, B, C take 4 units each (256 tokens).
  std::string a = Make(256, 10);
  std::string b = Make(256, 11);
  std::string c = Make(256, 12);
  ASSERT_OK(client_->GetSequence(a, false));  // GetSequence does not count as use
  // D needs 5 units: only 4 are free, so the least recently used unleased sequence (A) goes.
  auto d = client_->CreateSequence("big");
  ASSERT_OK(d);
  ASSERT_OK(client_->Allocate(*d, 320));
  EXPECT_EQ(TierOf(a), v1::TIER_SPILLED);
  EXPECT_EQ(TierOf(b), v1::TIER_DEVICE);
  EXPECT_EQ(TierOf(c), v1::TIER_DEVICE);
  // Acquiring A restores it; room comes from the next least recently used (B).
  ASSERT_OK(client_->Acquire(a));
  Verify(*client_, a, 256, 10);
  EXPECT_EQ(TierOf(b), v1::TIER_SPILLED);
  EXPECT_EQ(TierOf(c), v1::TIER_DEVICE);
  auto status = daemon_.Admin()->GetStatus();
  ASSERT_OK(status);
  EXPECT_GE(status->spills(), 2u);
  EXPECT_EQ(status->restores(), 1u);
}

TEST_F(SpillTest, LowWatermarkSpillsInTheBackground) {
  std::string a = Make(256, 20);
  std::string b = Make(256, 21);
  std::string c = Make(256, 22);
  // 12 of 16 units used: 25 % free. Raising the low watermark to 30 % makes the daemon spill
  // until 60 % (9.6 units) is free: A then B go (LRU), C stays.
  v1::Watermarks w;
  w.set_low_free(0.3);
  w.set_high_free(0.6);
  ASSERT_OK(daemon_.Admin()->SetWatermarks(w));
  for (int i = 0; i < 500 && TierOf(b) != v1::TIER_SPILLED; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(TierOf(a), v1::TIER_SPILLED);
  EXPECT_EQ(TierOf(b), v1::TIER_SPILLED);
  EXPECT_EQ(TierOf(c), v1::TIER_DEVICE);
  w.set_low_free(0.6);
  w.set_high_free(0.5);
  EXPECT_THAT(daemon_.Admin()->SetWatermarks(w), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(SpillTest, SpilledSequencesSurviveRestartAndCorruptionIsDataLoss) {
  std::string good = Make(100, 30);
  std::string bad = Make(100, 31);
  for (const std::string& seq : {good, bad}) {
    v1::SequenceRef ref;
    ref.set_tenant("alpha");
    ref.set_sequence_id(seq);
    ASSERT_OK(daemon_.Admin()->SpillSequence(ref));
  }
  client_.reset();
  daemon_.Stop(SIGKILL);
  {
    // Flip bytes of one stored page while the daemon is down.
    SpillStore::Options o;
    o.path = daemon_.dir() + "/spill";
    ASSERT_OK_AND_ASSIGN(auto store, SpillStore::Open(o));
    ASSERT_OK(store->OverwritePageForTest("alpha", bad, 1, 0, std::string(64 << 10, 'x')));
  }
  ASSERT_OK(daemon_.Start());
  EXPECT_EQ(TierOf(good), v1::TIER_SPILLED);
  client_ = Connect("w2");
  ASSERT_OK(client_->Acquire(good));
  Verify(*client_, good, 100, 30);
  EXPECT_THAT(client_->Acquire(bad), StatusIs(StatusCode::kDataLoss));
  EXPECT_EQ(TierOf(bad), v1::TIER_SPILLED);  // never served, still listed for the operator
  ASSERT_OK(client_->Ping());
  v1::SequenceRef ref;
  ref.set_tenant("alpha");
  ref.set_sequence_id(bad);
  ASSERT_OK(daemon_.Admin()->DropSequence(ref));
}

}  // namespace
}  // namespace kvkeep::testing
