// kvkeepctl against the real daemon: the operator's commands, tables, --json, exit codes.
#include <sys/wait.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"

namespace kvkeep::testing {
namespace {

struct CtlRun {
  int code = -1;
  std::string out;
};

class KvkeepctlTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_OK(daemon_.Start()); }

  CtlRun Ctl(const std::string& args) {
    const std::string cmd = absl::StrCat(DaemonProcess::BinaryDir(), "/kvkeepctl --socket ",
                                         daemon_.dir(), "/kvkeepd.sock --admin-token-file ",
                                         daemon_.dir(), "/admin.token ", args, " 2>&1");
    CtlRun r;
    FILE* p = popen(cmd.c_str(), "r");
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
    int status = pclose(p);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
  }

  DaemonProcess daemon_;
};

TEST_F(KvkeepctlTest, TenantLifecycleWithTablesAndJson) {
  CtlRun created = Ctl("tenant create team-a --quota 1MiB --max 4MiB --weight 3 --spill-quota 1GiB");
  ASSERT_EQ(created.code, 0) << created.out;
  EXPECT_NE(created.out.find("token: "), std::string::npos);
  CtlRun list = Ctl("tenant list");
  ASSERT_EQ(list.code, 0) << list.out;
  EXPECT_NE(list.out.find("TENANT"), std::string::npos);
  EXPECT_NE(list.out.find("team-a  1.0 MiB"), std::string::npos) << list.out;  // aligned columns
  CtlRun json = Ctl("--json tenant list");
  ASSERT_EQ(json.code, 0);
  EXPECT_NE(json.out.find("\"quotaBytes\": \"1048576\""), std::string::npos) << json.out;
  EXPECT_NE(json.out.find("\"weight\": 3"), std::string::npos);
  CtlRun quota = Ctl("tenant set-quota team-a --max 8MiB");
  ASSERT_EQ(quota.code, 0) << quota.out;
  EXPECT_NE(quota.out.find("8.0 MiB"), std::string::npos);
  CtlRun policy = Ctl("policy set team-a --scorer capkv --allocation ada --keep-ratio 0.2");
  ASSERT_EQ(policy.code, 0) << policy.out;
  EXPECT_NE(Ctl("--json policy show team-a").out.find("\"scorer\": \"capkv\""), std::string::npos);
  CtlRun status = Ctl("status");
  ASSERT_EQ(status.code, 0);
  EXPECT_NE(status.out.find("tenants: 1"), std::string::npos) << status.out;
  EXPECT_EQ(Ctl("top --iterations 1").code, 0);
  EXPECT_EQ(Ctl("pool watermarks --low 0.1 --high 0.2").code, 0);
  EXPECT_NE(Ctl("--json status").out.find("\"lowFree\": 0.1"), std::string::npos);
  EXPECT_EQ(Ctl("seq list").code, 0);
  CtlRun deleted = Ctl("tenant delete team-a");
  ASSERT_EQ(deleted.code, 0) << deleted.out;
  EXPECT_EQ(Ctl("tenant list").out.find("team-a"), std::string::npos);
}

TEST_F(KvkeepctlTest, ErrorsSayWhatWasWrongWithDistinctExitCodes) {
  CtlRun usage = Ctl("frobnicate");
  EXPECT_EQ(usage.code, 2);
  EXPECT_NE(usage.out.find("unknown command"), std::string::npos);
  CtlRun size = Ctl("tenant create x --quota lots");
  EXPECT_EQ(size.code, 2);
  EXPECT_NE(size.out.find("is not a size"), std::string::npos);
  CtlRun missing = Ctl("tenant delete ghost");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.out.find("NOT_FOUND"), std::string::npos) << missing.out;
  CtlRun bad_policy = Ctl("policy set ghost --scorer nope");
  EXPECT_EQ(bad_policy.code, 1);
  EXPECT_NE(bad_policy.out.find("INVALID_ARGUMENT"), std::string::npos) << bad_policy.out;
  CtlRun help = Ctl("--help");
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("Examples:"), std::string::npos);
}

TEST_F(KvkeepctlTest, WrongAdminTokenIsUnauthenticated) {
  const std::string cmd = absl::StrCat(DaemonProcess::BinaryDir(), "/kvkeepctl --socket ",
                                       daemon_.dir(), "/kvkeepd.sock --admin-token wrong-token-0123456789 status 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  char buf[1024] = {};
  fread(buf, 1, sizeof(buf) - 1, p);
  int status = pclose(p);
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(std::string(buf).find("UNAUTHENTICATED"), std::string::npos) << buf;
}

}  // namespace
}  // namespace kvkeep::testing
