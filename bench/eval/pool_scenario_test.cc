#include "bench/eval/pool_scenario.h"

#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace kvkeep::eval {
namespace {

using ::kvkeep::testing::StatusIs;

PoolScenarioOptions Small() {
  PoolScenarioOptions o;
  o.sequences = 3;  // 512, 2048 and 1024 tokens
  o.seeds = {7};
  o.layers = 1;
  o.future = 8;
  o.budget = 0.5;
  return o;
}

TEST(PoolScenario, EveryMethodFitsTheBudgetAndLruLosesWholeSequences) {
  ASSERT_OK_AND_ASSIGN(PoolScenarioReport r, RunPoolScenario(Small(), nullptr));
  ASSERT_EQ(r.summary.size(), PoolMethods().size());
  ASSERT_EQ(r.rows.size(), 3u);
  for (const PoolMethodSummary& s : r.summary) {
    if (s.method == "lru-restore") {
      EXPECT_EQ(s.kept_fraction, 1.0);
      EXPECT_LT(s.rel_error_mean, 1e-6);  // the full cache: rounding only
      EXPECT_GT(s.restore_mib, 0.0);
      continue;
    }
    // Page methods drop whole pages: within one page per head of the budget.
    EXPECT_LE(s.kept_fraction, 0.5 + 1e-9) << s.method;
    if (s.method != "lru-lost") {
      EXPECT_GE(s.kept_fraction, 0.5 - 0.01) << s.method;
    }
    EXPECT_GE(s.rel_error_mean, 0.0) << s.method;
    EXPECT_LE(s.rel_error_min, s.rel_error_max) << s.method;
  }
  for (const PoolSequenceRow& row : r.rows) {
    // lru-lost: a sequence is either whole (no error) or gone (error 1).
    const double kept = row.kept_fraction[4], err = row.rel_error[4];
    EXPECT_TRUE((kept == 1.0 && err < 1e-6) || (kept == 0.0 && err == 1.0)) << row.index;
  }
  EXPECT_NE(FormatPoolTable(r).find("| capacity |"), std::string::npos);
}

TEST(PoolScenario, BadOptionsAreInvalidArgument) {
  PoolScenarioOptions o = Small();
  o.budget = 1.0;
  EXPECT_THAT(RunPoolScenario(o, nullptr), StatusIs(absl::StatusCode::kInvalidArgument, "budget"));
  o = Small();
  o.sequences = 0;
  EXPECT_THAT(RunPoolScenario(o, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, "sequences"));
  o = Small();
  o.seeds.clear();
  EXPECT_THAT(RunPoolScenario(o, nullptr), StatusIs(absl::StatusCode::kInvalidArgument, "seed"));
  o = Small();
  o.tokens_per_page = 0;
  EXPECT_THAT(RunPoolScenario(o, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, "tokens-per-page"));
}

}  // namespace
}  // namespace kvkeep::eval
