// GoogleTest matchers for absl::Status / absl::StatusOr (Abseil 20220623 has none).
//
//   EXPECT_THAT(pool.Allocate(...), StatusIs(absl::StatusCode::kResourceExhausted));
//   ASSERT_OK(status);  ASSERT_OK_AND_ASSIGN(auto v, MakeThing());
#ifndef KVKEEP_COMMON_STATUS_MATCHERS_H_
#define KVKEEP_COMMON_STATUS_MATCHERS_H_

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/status_macros.h"

namespace kvkeep::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER_P(StatusIs, code,
          std::string("has status code ") + absl::StatusCodeToString(code)) {
  const absl::Status& s = ::kvkeep::testing::GetStatus(arg);
  if (s.code() != code) {
    *result_listener << "actual status: " << s;
    return false;
  }
  return true;
}

MATCHER_P2(StatusIs, code, substring,
           std::string("has status code ") + absl::StatusCodeToString(code) +
               " and a message containing \"" + std::string(substring) + "\"") {
  const absl::Status& s = ::kvkeep::testing::GetStatus(arg);
  if (s.code() != code || s.message().find(substring) == absl::string_view::npos) {
    *result_listener << "actual status: " << s;
    return false;
  }
  return true;
}

}  // namespace kvkeep::testing

#define ASSERT_OK(expr) ASSERT_TRUE(::kvkeep::testing::GetStatus(expr).ok()) \
  << ::kvkeep::testing::GetStatus(expr)
#define EXPECT_OK(expr) EXPECT_TRUE(::kvkeep::testing::GetStatus(expr).ok()) \
  << ::kvkeep::testing::GetStatus(expr)
#define ASSERT_OK_AND_ASSIGN(lhs, expr)                                         \
  auto KVKEEP_CONCAT_(kvkeep_or_, __LINE__) = (expr);                           \
  ASSERT_TRUE(KVKEEP_CONCAT_(kvkeep_or_, __LINE__).ok())                        \
      << KVKEEP_CONCAT_(kvkeep_or_, __LINE__).status();                         \
  lhs = std::move(KVKEEP_CONCAT_(kvkeep_or_, __LINE__)).value()

#endif  // KVKEEP_COMMON_STATUS_MATCHERS_H_
