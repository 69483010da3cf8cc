#include "service/rpc/session_limits.h"

#include "common/failure_reason.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using ::testing::HasSubstr;

// A clock the test moves by hand.
struct FakeClock {
  absl::Time now = absl::FromUnixSeconds(1000);
  SessionLimits::Clock Fn() {
    return [this] { return now; };
  }
};

SessionLimitOptions Small() {
  SessionLimitOptions o;
  o.calls_per_second = 10;
  o.call_burst = 3;
  o.bytes_per_second = 1000;
  o.byte_burst = 2000;
  o.max_stats_bytes = 100;
  return o;
}

TEST(SessionLimitsTest, BurstPassesThenRefusesWithLimitSessionAndRetryAfter) {
  FakeClock clock;
  SessionLimits limits(Small(), clock.Fn());
  limits.OpenSession("team-a", "sess-1");
  for (int i = 0; i < 3; ++i) ASSERT_OK(limits.ChargeCall("team-a", "sess-1"));
  absl::Status refused = limits.ChargeCall("team-a", "sess-1");
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("session sess-1 of tenant team-a"));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("--session_calls_per_second"));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("retry after 0.100 s"));
  EXPECT_EQ(limits.rejections(SessionLimits::kCalls), 1u);
  // 10 calls/s: one more fits after 0.1 s, not two.
  clock.now += absl::Milliseconds(100);
  ASSERT_OK(limits.ChargeCall("team-a", "sess-1"));
  EXPECT_THAT(limits.ChargeCall("team-a", "sess-1"),
              StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(SessionLimitsTest, RefillNeverExceedsBurst) {
  FakeClock clock;
  SessionLimits limits(Small(), clock.Fn());
  limits.OpenSession("t", "s");
  clock.now += absl::Hours(1);
  for (int i = 0; i < 3; ++i) ASSERT_OK(limits.ChargeCall("t", "s"));
  EXPECT_THAT(limits.ChargeCall("t", "s"), StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(SessionLimitsTest, SessionsHaveSeparateBuckets) {
  FakeClock clock;
  SessionLimits limits(Small(), clock.Fn());
  limits.OpenSession("t", "a");
  limits.OpenSession("t", "b");
  for (int i = 0; i < 3; ++i) ASSERT_OK(limits.ChargeCall("t", "a"));
  EXPECT_THAT(limits.ChargeCall("t", "a"), StatusIs(absl::StatusCode::kResourceExhausted));
  ASSERT_OK(limits.ChargeCall("t", "b"));
}

TEST(SessionLimitsTest, UnknownOrForeignSessionIdsShareTheTenantBucket) {
  FakeClock clock;
  SessionLimits limits(Small(), clock.Fn());
  limits.OpenSession("other", "theirs");
  // Made-up ids, another tenant's session and no id all land in team-a's one shared bucket: a
  // client cannot mint fresh buckets by inventing session ids.
  ASSERT_OK(limits.ChargeCall("team-a", "made-up-1"));
  ASSERT_OK(limits.ChargeCall("team-a", "theirs"));
  ASSERT_OK(limits.ChargeCall("team-a", ""));
  absl::Status refused = limits.ChargeCall("team-a", "made-up-2");
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("session-less calls of tenant team-a"));
  // The other tenant's session still has its own full bucket.
  ASSERT_OK(limits.ChargeCall("other", "theirs"));
}

TEST(SessionLimitsTest, ClosedSessionFallsBackToTheTenantBucket) {
  FakeClock clock;
  SessionLimits limits(Small(), clock.Fn());
  limits.OpenSession("t", "s");
  for (int i = 0; i < 3; ++i) ASSERT_OK(limits.ChargeCall("t", "s"));
  limits.CloseSession("s");
  // Reopening (or replaying the id) does not refill: after close the id is just unknown.
  for (int i = 0; i < 3; ++i) ASSERT_OK(limits.ChargeCall("t", "s"));
  EXPECT_THAT(limits.ChargeCall("t", "s"), StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(SessionLimitsTest, BytesAreChargedWholeOrNotAtAll) {
  FakeClock clock;
  SessionLimits limits(Small(), clock.Fn());
  limits.OpenSession("t", "s");
  ASSERT_OK(limits.ChargeBytes("t", "s", 1500));
  absl::Status refused = limits.ChargeBytes("t", "s", 600);  // 500 left
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("retry after 0.100 s"));
  ASSERT_OK(limits.ChargeBytes("t", "s", 500));  // the refused charge took nothing
  EXPECT_EQ(limits.rejections(SessionLimits::kBytes), 1u);
}

TEST(SessionLimitsTest, MessageLargerThanTheBurstSaysNoWaitHelps) {
  FakeClock clock;
  SessionLimits limits(Small(), clock.Fn());
  absl::Status refused = limits.ChargeBytes("t", "", 2001);
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("--session_byte_burst"));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("smaller chunks"));
}

TEST(SessionLimitsTest, ZeroMeansUnlimited) {
  FakeClock clock;
  SessionLimitOptions o;
  o.calls_per_second = 0;
  o.bytes_per_second = 0;
  o.max_stats_bytes = 0;
  SessionLimits limits(o, clock.Fn());
  for (int i = 0; i < 1000; ++i) ASSERT_OK(limits.ChargeCall("t", ""));
  ASSERT_OK(limits.ChargeBytes("t", "", uint64_t{1} << 40));
  ASSERT_OK(limits.CheckStatsBytes(uint64_t{1} << 40));
}

TEST(SessionLimitsTest, StatsSizeLimitNamesTheFlag) {
  SessionLimits limits(Small());
  ASSERT_OK(limits.CheckStatsBytes(100));
  absl::Status refused = limits.CheckStatsBytes(101);
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("--max_stats_bytes"));
  EXPECT_EQ(limits.rejections(SessionLimits::kStatsSize), 1u);
}

TEST(SessionLimitsTest, EveryRefusalIsTypedSessionLimit) {
  FakeClock clock;
  SessionLimits limits(Small(), clock.Fn());
  limits.OpenSession("t", "s");
  for (int i = 0; i < 3; ++i) ASSERT_OK(limits.ChargeCall("t", "s"));
  ASSERT_OK(limits.ChargeBytes("t", "s", 1500));
  const absl::Status refusals[] = {
      limits.ChargeCall("t", "s"),        // call rate
      limits.ChargeBytes("t", "s", 600),  // byte rate
      limits.ChargeBytes("t", "s", 2001), // larger than the burst
      limits.CheckStatsBytes(101),        // statistics size
  };
  for (const absl::Status& refused : refusals) {
    EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted));
    EXPECT_EQ(ReasonOf(refused), FailureReason::kSessionLimit) << refused;
  }
  // What passes carries no reason.
  EXPECT_EQ(ReasonOf(limits.ChargeCall("t", "other")), FailureReason::kNone);
}

TEST(SessionLimitsTest, MetricsCountRejectionsByLimit) {
  FakeClock clock;
  SessionLimits limits(Small(), clock.Fn());
  for (int i = 0; i < 5; ++i) (void)limits.ChargeCall("t", "");
  ExpositionWriter w;
  limits.WriteMetrics(&w);
  const std::string text = w.Take();
  EXPECT_THAT(text, HasSubstr("kvkeep_session_limit_rejections_total{limit=\"calls\"} 2"));
  EXPECT_THAT(text, HasSubstr("kvkeep_session_limit_rejections_total{limit=\"bytes\"} 0"));
  EXPECT_THAT(text, HasSubstr("kvkeep_session_limit_buckets 1"));
}

TEST(SessionLimitsTest, ReadStreamsAreBoundedPerTenantUntilTheirHoldersGo) {
  SessionLimitOptions o;
  o.max_read_streams = 2;
  SessionLimits limits(o);
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<const void> a, limits.OpenReadStream("t"));
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<const void> b, limits.OpenReadStream("t"));
  absl::StatusOr<std::shared_ptr<const void>> refused = limits.OpenReadStream("t");
  EXPECT_THAT(refused.status(), StatusIs(absl::StatusCode::kResourceExhausted,
                                         "--max_read_streams_per_tenant"));
  EXPECT_EQ(ReasonOf(refused.status()), FailureReason::kSessionLimit);
  EXPECT_EQ(limits.open_read_streams("t"), 2u);
  EXPECT_EQ(limits.rejections(SessionLimits::kReadStreams), 1u);
  // Another tenant has its own count.
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<const void> other, limits.OpenReadStream("u"));
  ExpositionWriter w;
  limits.WriteMetrics(&w);
  const std::string text = w.Take();
  EXPECT_THAT(text, HasSubstr("kvkeep_read_streams_open 3"));
  EXPECT_THAT(text, HasSubstr("kvkeep_session_limit_rejections_total{limit=\"read_streams\"} 1"));
  // A copy of the holder keeps the stream counted; the last one frees the place.
  std::shared_ptr<const void> copy = a;
  a.reset();
  EXPECT_EQ(limits.open_read_streams("t"), 2u);
  copy.reset();
  EXPECT_EQ(limits.open_read_streams("t"), 1u);
  ASSERT_OK(limits.OpenReadStream("t").status());  // its holder goes at once
  b.reset();
  other.reset();
  EXPECT_EQ(limits.open_read_streams("t"), 0u);
  EXPECT_EQ(limits.open_read_streams("u"), 0u);
  // 0: unlimited.
  o.max_read_streams = 0;
  SessionLimits unlimited(o);
  std::vector<std::shared_ptr<const void>> held;
  for (int i = 0; i < 1000; ++i) {
    ASSERT_OK_AND_ASSIGN(std::shared_ptr<const void> h, unlimited.OpenReadStream("t"));
    held.push_back(std::move(h));
  }
  EXPECT_EQ(unlimited.open_read_streams("t"), 1000u);
}

}  // namespace
}  // namespace kvkeep
