// Per-session rate and size limits against the real daemon, started with low limits: a refused
// call is RESOURCE_EXHAUSTED naming the limit, the session and when to retry, changes nothing, and
// the session recovers after waiting; other sessions keep their own budget; /metrics counts the
// refusals. (Every other e2e suite runs with the default limits: they do not throttle it.)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"
#include "tests/local_http.h"

namespace kvkeep::testing {
namespace {

using absl::StatusCode;
using ::testing::HasSubstr;
constexpr uint64_t kTokenBytes = 8 * 2;  // head_dim 8, fp16

class SessionLimitsE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // 2 calls/s with a burst of 6; 1000 payload bytes/s with a burst of 2048 (one 64-token head);
    // statistics up to 256 bytes; at most 64 pages per AllocatePages.
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = FreePort();
      ASSERT_GT(port_, 0);
      if (daemon_
              .Start({"--session_calls_per_second=2", "--session_call_burst=6",
                      "--session_bytes_per_second=1000", "--session_byte_burst=2048",
                      "--max_stats_bytes=256", "--max_pages_per_request=64",
                      absl::StrCat("--metrics_address=127.0.0.1:", port_)})
              .ok()) {
        break;
      }
    }
    ASSERT_TRUE(daemon_.running());
    ASSERT_OK_AND_ASSIGN(token_, daemon_.CreateTenant("alpha"));
    // Session + RegisterModel: two session-less calls (the tenant's shared bucket).
    auto c = Client::Attach(daemon_.channel(), token_, "w1");
    ASSERT_OK(c);
    client_ = std::move(*c);
    ASSERT_OK(client_->RegisterModel(TestLayout()));
    ASSERT_OK_AND_ASSIGN(seq_, client_->CreateSequence("test-model"));  // session call 1
  }

  uint64_t PagesInUse() {
    auto s = daemon_.Admin()->GetStatus();
    EXPECT_OK(s);
    return s.ok() ? s->pages_in_use() : 0;
  }

  // Waits out the call bucket: 6 calls at 2/s.
  void Refill() { absl::SleepFor(absl::Seconds(3.1)); }

  DaemonProcess daemon_;
  int port_ = 0;
  std::string token_, seq_;
  std::unique_ptr<Client> client_;
};

TEST_F(SessionLimitsE2eTest, CallRateLimitRefusesChangesNothingAndRecovers) {
  absl::Status refused;
  int accepted = 0;
  uint64_t pages_before_refusal = 0;
  for (int i = 0; i < 10; ++i) {
    pages_before_refusal = PagesInUse();
    auto r = client_->Allocate(seq_, 4 * (i + 1));  // each grows the sequence by one page/head
    if (!r.ok()) {
      refused = r.status();
      break;
    }
    ++accepted;
  }
  // Burst 6, one spent on CreateSequence; a little refill while the loop runs.
  EXPECT_GE(accepted, 5);
  EXPECT_LE(accepted, 7);
  EXPECT_THAT(refused, StatusIs(StatusCode::kResourceExhausted));
  const std::string message(refused.message());
  EXPECT_THAT(message, HasSubstr("call rate limit"));
  EXPECT_THAT(message, HasSubstr("session " + client_->session_id()));
  EXPECT_THAT(message, HasSubstr("--session_calls_per_second"));
  EXPECT_THAT(message, HasSubstr("retry after"));
  EXPECT_EQ(PagesInUse(), pages_before_refusal);  // nothing was allocated

  // Another session of the same tenant has its own bucket (its Session and RegisterModel calls
  // go to the tenant's session-less bucket, which this test has barely used).
  auto other = Client::Attach(daemon_.channel(), token_, "w2");
  ASSERT_OK(other);
  ASSERT_OK((*other)->RegisterModel(TestLayout()));
  ASSERT_OK((*other)->CreateSequence("test-model"));

  Refill();
  ASSERT_OK(client_->Allocate(seq_, 40));

  const std::string metrics = HttpGet(port_, "/metrics");
  EXPECT_THAT(metrics, HasSubstr("kvkeep_session_limit_rejections_total{limit=\"calls\"} 1"));
  EXPECT_THAT(metrics, HasSubstr("kvkeep_session_limit_buckets"));
}

TEST_F(SessionLimitsE2eTest, ByteRateLimitRefusesTheChunkAndKeepsEarlierData) {
  ASSERT_OK(client_->Allocate(seq_, 64));  // 64 pages (the per-request maximum)
  ASSERT_OK(client_->Commit(seq_, 64));
  const std::string a = PatternBytes(1, 64 * kTokenBytes);
  const std::string b = PatternBytes(2, 64 * kTokenBytes);
  // 2 x 1024 payload bytes: the whole burst.
  ASSERT_OK(client_->WriteHead(seq_, 0, 0, 0, 64, a.data(), a.data()));
  absl::StatusOr<v1::WriteSummary> refused = client_->WriteHead(seq_, 0, 0, 0, 64, b.data(),
                                                                b.data());
  EXPECT_THAT(refused, StatusIs(StatusCode::kResourceExhausted));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("byte rate limit"));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("--session_bytes_per_second"));
  // ReadKV is session-less (the tenant's bucket): the refused write left the data as it was.
  ASSERT_OK_AND_ASSIGN(HeadData back, client_->ReadHead(seq_, 0, 0));
  EXPECT_EQ(back.keys, a);
  EXPECT_EQ(back.values, a);
  // The tenant bucket is now spent too: the next read is refused, then allowed after a wait.
  EXPECT_THAT(client_->ReadHead(seq_, 0, 0), StatusIs(StatusCode::kResourceExhausted));
  absl::SleepFor(absl::Seconds(2.2));
  ASSERT_OK(client_->ReadHead(seq_, 0, 0));
}

TEST_F(SessionLimitsE2eTest, RequestSizeLimitsRefuseBeforeAnythingChanges) {
  // 65 tokens need 17 pages in each of 4 heads = 68 > 64.
  const uint64_t pages = PagesInUse();
  auto big = client_->Allocate(seq_, 65);
  EXPECT_THAT(big, StatusIs(StatusCode::kResourceExhausted));
  EXPECT_THAT(std::string(big.status().message()), HasSubstr("--max_pages_per_request"));
  EXPECT_EQ(PagesInUse(), pages);

  ASSERT_OK(client_->Allocate(seq_, 8));
  // Statistics above 256 bytes, in PutStats and in CommitTokens.
  v1::LayerStats stats;
  stats.set_layer(0);
  for (int i = 0; i < 64; ++i) stats.add_query_sum(1.0);  // 4 q_heads x head_dim 8 = 32 needed
  auto put = client_->PutStats(seq_, {stats});
  EXPECT_THAT(put, StatusIs(StatusCode::kResourceExhausted));
  EXPECT_THAT(std::string(put.status().message()), HasSubstr("--max_stats_bytes"));
  auto commit = client_->Commit(seq_, 8, {}, {stats});
  EXPECT_THAT(commit, StatusIs(StatusCode::kResourceExhausted));
  ASSERT_OK_AND_ASSIGN(v1::PageTable table, client_->GetSequence(seq_, false));
  EXPECT_EQ(table.heads(0).token_count(), 0u);  // the refused commit committed nothing
}

}  // namespace
}  // namespace kvkeep::testing
