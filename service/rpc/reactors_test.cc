#include "service/rpc/reactors.h"

#include <string>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/observability/log.h"

namespace kvkeep {
namespace {

using ::testing::HasSubstr;

// What CallStatus writes to the log (stderr) while converting `status`.
std::string LoggedBy(const absl::Status& status, grpc::Status* converted) {
  ::testing::internal::CaptureStderr();
  *converted = CallStatus("/kvkeep.v1.KvCache/Compress", "team-a", status);
  return ::testing::internal::GetCapturedStderr();
}

TEST(CallStatusTest, InternalDataLossAndUnknownAreLoggedOnceWithMethodTenantAndStatus) {
  log::Configure(log::Level::kInfo, log::Format::kText);
  for (const absl::Status& status :
       {absl::InternalError("scorer broke"), absl::DataLossError("checksum mismatch"),
        absl::UnknownError("who knows")}) {
    grpc::Status converted;
    const std::string logged = LoggedBy(status, &converted);
    EXPECT_EQ(static_cast<int>(converted.error_code()), static_cast<int>(status.code()));
    EXPECT_EQ(converted.error_message(), status.message());
    std::vector<std::string> lines = absl::StrSplit(logged, '\n', absl::SkipEmpty());
    ASSERT_EQ(lines.size(), 1u) << logged;
    EXPECT_THAT(lines[0], HasSubstr("ERROR rpc.internal_error"));
    EXPECT_THAT(lines[0], HasSubstr("method=/kvkeep.v1.KvCache/Compress"));
    EXPECT_THAT(lines[0], HasSubstr("tenant=team-a"));
    EXPECT_THAT(lines[0], HasSubstr(std::string(status.message())));
  }
}

TEST(CallStatusTest, CallerMistakesAndSuccessAreNotLogged) {
  log::Configure(log::Level::kInfo, log::Format::kText);
  for (const absl::Status& status :
       {absl::OkStatus(), absl::NotFoundError("no sequence"),
        absl::ResourceExhaustedError("quota"), absl::PermissionDeniedError("not yours"),
        absl::InvalidArgumentError("bad"), absl::UnavailableError("shutting down")}) {
    grpc::Status converted;
    EXPECT_EQ(LoggedBy(status, &converted), "") << status;
    EXPECT_EQ(static_cast<int>(converted.error_code()), static_cast<int>(status.code()));
  }
}

TEST(CallStatusTest, JsonLogCarriesTheFields) {
  log::Configure(log::Level::kInfo, log::Format::kJson);
  grpc::Status converted;
  const std::string logged = LoggedBy(absl::InternalError("bad page"), &converted);
  log::Configure(log::Level::kInfo, log::Format::kText);
  EXPECT_THAT(logged, HasSubstr("\"event\":\"rpc.internal_error\""));
  EXPECT_THAT(logged, HasSubstr("\"method\":\"/kvkeep.v1.KvCache/Compress\""));
  EXPECT_THAT(logged, HasSubstr("\"tenant\":\"team-a\""));
  EXPECT_THAT(logged, HasSubstr("INTERNAL: bad page"));
}

TEST(FullMethodNameTest, IsTheGrpcPath) {
  EXPECT_EQ(FullMethodName("kvkeep.v1.Admin", "GetStatus"), "/kvkeep.v1.Admin/GetStatus");
}

}  // namespace
}  // namespace kvkeep
