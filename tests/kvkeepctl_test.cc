// kvkeepctl against the real daemon: the operator's commands, tables, --json, exit codes.
#include <sys/wait.h>

#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "kvkeep/v1/admin.grpc.pb.h"
#include "service/engine/metadata_charge.h"
#include "service/engine/model_layout.h"
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


bool Has(const CtlRun& r, const std::string& text) { return r.out.find(text) != std::string::npos; }

TEST_F(KvkeepctlTest, EveryAdminRpcHasACommandInTheHelpTable) {
  CtlRun help = Ctl("--help");
  ASSERT_EQ(help.code, 0);
  const auto* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName("kvkeep.v1.Admin");
  ASSERT_NE(service, nullptr);
  for (int i = 0; i < service->method_count(); ++i) {
    EXPECT_TRUE(Has(help, "  " + service->method(i)->name()))
        << service->method(i)->name() << " has no kvkeepctl command";
  }
}

TEST_F(KvkeepctlTest, EachCommandHasHelpAndUsageErrorsExitTwo) {
  CtlRun help = Ctl("seq show --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_TRUE(Has(help, "Usage: kvkeepctl seq show TENANT ID")) << help.out;
  EXPECT_TRUE(Has(help, "Admin RPC: GetSequence"));
  EXPECT_TRUE(Has(help, "Examples:"));
  EXPECT_TRUE(Has(Ctl("policy validate -h"), "--keep-ratio R"));
  CtlRun group = Ctl("tenant");
  EXPECT_EQ(group.code, 2);
  EXPECT_TRUE(Has(group, "kvkeepctl tenant set-quota NAME")) << group.out;
  CtlRun missing = Ctl("seq show alpha");
  EXPECT_EQ(missing.code, 2);
  EXPECT_TRUE(Has(missing, "wrong number of arguments; usage: kvkeepctl seq show TENANT ID"));
  CtlRun flag = Ctl("seq show alpha seq-1 --keep-ratio 0.5");
  EXPECT_EQ(flag.code, 2);
  EXPECT_TRUE(Has(flag, "unknown flag --keep-ratio for `seq show`")) << flag.out;
  CtlRun number = Ctl("seq compress alpha seq-1 --max-tokens lots");
  EXPECT_EQ(number.code, 2);
  EXPECT_TRUE(Has(number, "--max-tokens \"lots\" is not a whole number"));
  CtlRun sub = Ctl("seq frob");
  EXPECT_EQ(sub.code, 2);
  EXPECT_TRUE(Has(sub, "unknown seq subcommand \"frob\""));
}

TEST_F(KvkeepctlTest, SeqShowAndCompressRunTheWorkerPath) {
  ASSERT_OK_AND_ASSIGN(std::string token, daemon_.CreateTenant("alpha"));
  auto client = Client::Attach(daemon_.channel(), token, "worker-9");
  ASSERT_OK(client);
  ASSERT_OK((*client)->RegisterModel(TestLayout()));
  ASSERT_OK_AND_ASSIGN(std::string seq, (*client)->CreateSequence("test-model"));
  ASSERT_OK((*client)->Allocate(seq, 40));
  // Finite fp16 values (1.0 .. 1.25, varying per token), as knorm scores the keys.
  std::string bytes(40 * 16, '\0');
  for (size_t i = 0; i < bytes.size() / 2; ++i) {
    const uint16_t half = static_cast<uint16_t>(0x3C00 + (i * 37) % 256);
    std::memcpy(&bytes[2 * i], &half, 2);
  }
  for (uint32_t l = 0; l < 2; ++l) {
    for (uint32_t h = 0; h < 2; ++h) {
      ASSERT_OK((*client)->WriteInPlace(seq, l, h, 0, 40, bytes.data(), bytes.data()));
    }
  }
  ASSERT_OK((*client)->Commit(seq, 40));

  CtlRun show = Ctl("seq show alpha " + seq);
  ASSERT_EQ(show.code, 0) << show.out;
  EXPECT_TRUE(Has(show, "tier: device  tokens: 40  pages: 40")) << show.out;
  EXPECT_TRUE(Has(show, "owner: worker-9  leases: 1 by worker-9")) << show.out;
  EXPECT_TRUE(Has(show, "LAYER  KV-HEAD  TOKENS  CAPACITY  PAGES"));
  EXPECT_TRUE(Has(show, "1      1        40      40        10")) << show.out;
  CtlRun json = Ctl("--json seq show alpha " + seq);
  ASSERT_EQ(json.code, 0);
  EXPECT_TRUE(Has(json, "\"tokenCount\": 40"));
  EXPECT_TRUE(Has(json, "\"leaseWorkers\": [\n  \"worker-9\"")) << json.out;

  // No budget in the request nor the tenant default: refused, nothing changed.
  CtlRun no_budget = Ctl("seq compress alpha " + seq + " --scorer knorm");
  EXPECT_EQ(no_budget.code, 1);
  EXPECT_TRUE(Has(no_budget, "INVALID_ARGUMENT")) << no_budget.out;
  // snapkv needs window queries the worker never sent.
  CtlRun no_stats = Ctl("seq compress alpha " + seq + " --scorer snapkv --keep-ratio 0.5");
  EXPECT_EQ(no_stats.code, 1);
  EXPECT_TRUE(Has(no_stats, "FAILED_PRECONDITION")) << no_stats.out;
  ASSERT_OK_AND_ASSIGN(v1::PageTable same, (*client)->GetSequence(seq, false));
  EXPECT_EQ(same.heads(0).token_count(), 40u);

  CtlRun compressed =
      Ctl("seq compress alpha " + seq + " --scorer knorm --keep-ratio 0.5 --sinks 0 --window 0");
  ASSERT_EQ(compressed.code, 0) << compressed.out;
  EXPECT_TRUE(Has(compressed, "knorm/uniform: 160 -> 80 tokens")) << compressed.out;
  EXPECT_TRUE(Has(compressed, "20 pages")) << compressed.out;
  ASSERT_OK_AND_ASSIGN(v1::PageTable after, (*client)->GetSequence(seq, false));
  for (const auto& head : after.heads()) EXPECT_EQ(head.token_count(), 20u);
  EXPECT_EQ(Ctl("seq compress alpha seq-nope --keep-ratio 0.5").code, 1);
  CtlRun ghost = Ctl("seq show ghost " + seq);
  EXPECT_EQ(ghost.code, 1);
  EXPECT_TRUE(Has(ghost, "NOT_FOUND: no tenant \"ghost\"")) << ghost.out;
}

TEST_F(KvkeepctlTest, PolicyValidateExplainsAndAppliesNothing) {
  ASSERT_EQ(Ctl("tenant create alpha").code, 0);
  CtlRun ok = Ctl("policy validate alpha --scorer snapkv --max-tokens 256");
  ASSERT_EQ(ok.code, 0) << ok.out;
  EXPECT_TRUE(Has(ok, "valid policy for tenant alpha (nothing applied"));
  EXPECT_TRUE(Has(ok, "effective: scorer snapkv, allocation uniform"));
  EXPECT_TRUE(Has(ok, "also compresses inside CommitTokens"));
  EXPECT_TRUE(Has(ok, "workers must send: window_queries")) << ok.out;
  CtlRun json = Ctl("--json policy validate alpha --scorer laprox --keep-ratio 0.3");
  ASSERT_EQ(json.code, 0);
  EXPECT_TRUE(Has(json, "\"allocation\": \"global\"")) << json.out;
  EXPECT_TRUE(Has(json, "\"decodeTimeEviction\": false"));
  EXPECT_TRUE(Has(Ctl("policy show alpha"), "snapkv (default)"));  // nothing applied
  CtlRun bad = Ctl("policy validate alpha --pool-kernel 4");
  EXPECT_EQ(bad.code, 1);
  EXPECT_TRUE(Has(bad, "INVALID_ARGUMENT: policy.pool_kernel")) << bad.out;
  EXPECT_EQ(Ctl("policy validate alpha --keep-ratio 0.5 --max-tokens 9").code, 1);
  CtlRun ghost = Ctl("policy validate ghost --keep-ratio 0.5");
  EXPECT_EQ(ghost.code, 1);
  EXPECT_TRUE(Has(ghost, "NOT_FOUND"));
}

TEST_F(KvkeepctlTest, PolicySetFromTheCliSurvivesADaemonRestart) {
  ASSERT_EQ(Ctl("tenant create alpha --quota 1MiB --weight 2 --spill-quota 4MiB").code, 0);
  ASSERT_EQ(Ctl("policy set alpha --scorer h2o --max-tokens 512 --window 16").code, 0);
  ASSERT_EQ(Ctl("pool watermarks --low 0.2 --high 0.3").code, 0);
  daemon_.Stop(SIGTERM);
  ASSERT_OK(daemon_.Start());
  CtlRun show = Ctl("--json policy show alpha");
  ASSERT_EQ(show.code, 0) << show.out;
  EXPECT_TRUE(Has(show, "\"scorer\": \"h2o\""));
  EXPECT_TRUE(Has(show, "\"maxTokens\": 512"));
  EXPECT_TRUE(Has(show, "\"window\": 16"));
  CtlRun list = Ctl("--json tenant list");
  EXPECT_TRUE(Has(list, "\"weight\": 2"));
  EXPECT_TRUE(Has(list, "\"spillQuotaBytes\": \"4194304\""));
  EXPECT_TRUE(Has(Ctl("pool watermarks"), "spill when free < 20.0 % of the pool, until 30.0 %"));
}

TEST_F(KvkeepctlTest, TenantTablesShowWeightMaxSpillQuotaAndSharingGroup) {
  // The flag reaches CreateTenant / SetQuota; the engine's sharing-group support is separate.
  ASSERT_EQ(Ctl("tenant create alpha --max 8MiB --weight 3 --spill-quota 2GiB --sharing-group "
                "llama").code,
            0);
  CtlRun list = Ctl("tenant list");
  ASSERT_EQ(list.code, 0);
  EXPECT_TRUE(Has(list, "WEIGHT")) << list.out;
  EXPECT_TRUE(Has(list, "SPILL-QUOTA  GROUP  SHARED")) << list.out;
  EXPECT_TRUE(Has(list, "8.0 MiB")) << list.out;
  EXPECT_TRUE(Has(list, "2.0 GiB")) << list.out;
  EXPECT_TRUE(Has(Ctl("--json tenant list"), "\"sharingGroup\""));
  CtlRun set = Ctl("tenant set-quota alpha --sharing-group ''");
  EXPECT_NE(set.code, 2) << set.out;  // accepted by the CLI ("" = leave the group)
  CtlRun none = Ctl("tenant set-quota alpha");
  EXPECT_EQ(none.code, 2);
  EXPECT_TRUE(Has(none, "--sharing-group"));
}

// Issue 13: the daemon heap charged to a tenant (page tables, statistics, models) and its bound,
// through the real ListTenants RPC, then in kvkeepctl's tables and --json.
TEST_F(KvkeepctlTest, TenantMetadataChargeAndBoundAreShownByTheApiAndTheTables) {
  daemon_.Stop(SIGTERM);
  ASSERT_OK(daemon_.Start({"--max_metadata_bytes_per_tenant=3145728"}));  // 3 MiB
  ASSERT_OK_AND_ASSIGN(std::string token, daemon_.CreateTenant("alpha"));
  auto admin = daemon_.Admin();
  auto alpha = [&]() -> v1::TenantInfo {
    absl::StatusOr<v1::ListTenantsReply> list = admin->ListTenants();
    EXPECT_OK(list);
    if (!list.ok() || list->tenants_size() != 1) return {};
    return list->tenants(0);
  };
  EXPECT_EQ(alpha().metadata_bytes(), 0u);
  EXPECT_EQ(alpha().max_metadata_bytes(), 3u << 20);

  ASSERT_OK_AND_ASSIGN(auto client, Client::Attach(daemon_.channel(), token, "worker-1"));
  ASSERT_OK(client->RegisterModel(TestLayout()));
  const uint64_t model_bytes = alpha().metadata_bytes();
  EXPECT_GT(model_bytes, 0u);
  ASSERT_OK_AND_ASSIGN(Model model, Model::FromLayout(TestLayout()));
  ASSERT_OK_AND_ASSIGN(std::string seq, client->CreateSequence("test-model"));
  EXPECT_EQ(alpha().metadata_bytes(), model_bytes + EmptySequenceBytes(model));
  ASSERT_OK(client->Allocate(seq, 40).status());  // 10 page ids per head table
  const uint64_t with_table = alpha().metadata_bytes();
  EXPECT_GE(with_table, model_bytes + EmptySequenceBytes(model) +
                            uint64_t{model.head_tables()} * 10 * sizeof(uint64_t));

  CtlRun list = Ctl("tenant list");
  ASSERT_EQ(list.code, 0) << list.out;
  EXPECT_TRUE(Has(list, "SHARED  METADATA")) << list.out;
  EXPECT_TRUE(Has(list, "METADATA-MAX")) << list.out;
  EXPECT_TRUE(Has(list, "3.0 MiB")) << list.out;
  CtlRun json = Ctl("--json tenant list");
  ASSERT_EQ(json.code, 0);
  EXPECT_TRUE(Has(json, absl::StrCat("\"metadataBytes\": \"", with_table, "\""))) << json.out;
  EXPECT_TRUE(Has(json, "\"maxMetadataBytes\": \"3145728\"")) << json.out;
  EXPECT_TRUE(Has(Ctl("status"), "METADATA-MAX"));
  EXPECT_TRUE(Has(Ctl("top --iterations 1"), "METADATA-MAX"));

  ASSERT_OK(client->Drop(seq).status());
  EXPECT_EQ(alpha().metadata_bytes(), model_bytes);
}

}  // namespace
}  // namespace kvkeep::testing
