#include "service/pool/quota.h"

#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using absl::StatusCode;

TEST(QuotaTest, HardMaximumIsEnforcedWithFigures) {
  TenantUsage t{"a", 0, 1000, 900};
  EXPECT_OK(CheckAdmission(t, 100, 10000, 900, 0));
  EXPECT_THAT(CheckAdmission(t, 101, 10000, 900, 0),
              StatusIs(StatusCode::kResourceExhausted, "used 900 of max 1000 bytes"));
}

TEST(QuotaTest, ZeroMaxMeansPoolCapacity) {
  TenantUsage t{"a", 0, 0, 0};
  EXPECT_OK(CheckAdmission(t, 10000, 10000, 0, 0));
  EXPECT_THAT(CheckAdmission(t, 10001, 10000, 0, 0),
              StatusIs(StatusCode::kResourceExhausted, "pool exhausted"));
}

TEST(QuotaTest, OthersGuaranteesAreNotTaken) {
  // Pool 1000; tenant b is guaranteed 600 and uses 0, so a can take at most 400.
  TenantUsage a{"a", 0, 0, 0};
  EXPECT_OK(CheckAdmission(a, 400, 1000, 0, 600));
  EXPECT_THAT(CheckAdmission(a, 401, 1000, 0, 600),
              StatusIs(StatusCode::kResourceExhausted, "reserved for other tenants"));
}

TEST(QuotaTest, OwnGuaranteeIsAlwaysAdmitted) {
  // b is guaranteed 600: even with the pool otherwise full of a's pages it gets them.
  TenantUsage b{"b", 600, 0, 100};
  EXPECT_OK(CheckAdmission(b, 500, 1000, 400, 0));
  // Past its guarantee it competes for unreserved bytes: 1000 - 900 used = 100 free.
  EXPECT_OK(CheckAdmission(b, 600, 1000, 400, 0));  // 500 own + 100 unreserved
  EXPECT_THAT(CheckAdmission(b, 601, 1000, 400, 0), StatusIs(StatusCode::kResourceExhausted));
}

TEST(QuotaTest, HugeRequestDoesNotOverflow) {
  TenantUsage t{"a", 0, 0, 5};
  EXPECT_THAT(CheckAdmission(t, UINT64_MAX, 1000, 5, 0), StatusIs(StatusCode::kResourceExhausted));
  TenantUsage g{"g", UINT64_MAX, 0, 5};
  EXPECT_THAT(CheckAdmission(g, UINT64_MAX - 1, 1000, 5, 0),
              StatusIs(StatusCode::kResourceExhausted));
}

}  // namespace
}  // namespace kvkeep
