#include "client/kvkeepctl_commands.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace kvkeep::ctl {

const std::vector<std::string>& PolicyFlags() {
  static const std::vector<std::string> kPolicyFlags = {
      "scorer", "allocation", "keep-ratio", "max-tokens", "sinks",
      "window", "pool-kernel", "ada-alpha", "seed"};
  return kPolicyFlags;
}

const std::vector<Command>& Commands() {
  static const std::vector<Command> kCommands = {
      {"status", "", "the daemon at a glance", "pool, tenants, sessions, sequences and the spill tier at a glance",
       "GetStatus", {}, "kvkeepctl status\nkvkeepctl --json status"},
      {"top", "[--interval S] [--iterations N]", "live per-tenant usage",
       "live per-tenant usage (pool bytes and pages, spill, charged daemon memory), refreshed "
       "every S seconds (default 1; N = 0 runs until Ctrl-C; "
       "--json prints one document per refresh)",
       "GetStatus (polled)", {"interval", "iterations"},
       "kvkeepctl top --interval 2\nkvkeepctl --json top --iterations 10 --interval 5"},
      {"tenant list", "", "tenants with budgets and usage",
       "every tenant: guarantee, maximum, weight, usage, spill, sharing group, and the daemon "
       "memory (page tables, statistics, models) charged to it with its bound (METADATA, "
       "METADATA-MAX)",
       "ListTenants", {},
       "kvkeepctl tenant list\nkvkeepctl --json tenant list | jq '.tenants[].usedBytes'\n"
       "kvkeepctl --json tenant list | jq '.tenants[] | {name, metadataBytes}'"},
      {"tenant create",
       "NAME [--quota SIZE] [--max SIZE] [--weight N] [--spill-quota SIZE] [--sharing-group G] "
       "[--token TOKEN]", "create a tenant (prints its token once)",
       "create a tenant; prints its bearer token ONCE (kvkeepd keeps only its hash)",
       "CreateTenant", {"quota", "max", "weight", "spill-quota", "sharing-group", "token"},
       "kvkeepctl tenant create team-a --quota 8GiB --max 16GiB --weight 2\n"
       "kvkeepctl tenant create team-b --quota 4GiB --spill-quota 100GiB --sharing-group llama"},
      {"tenant set-quota",
       "NAME [--quota SIZE] [--max SIZE] [--weight N] [--spill-quota SIZE] [--sharing-group G]", "change a tenant's budgets or sharing group",
       "change a tenant's guarantee, maximum, weight, spill quota or sharing group (only the "
       "flags given change; --sharing-group '' leaves the group)",
       "SetQuota", {"quota", "max", "weight", "spill-quota", "sharing-group"},
       "kvkeepctl tenant set-quota team-a --max 32GiB\n"
       "kvkeepctl tenant set-quota team-a --spill-quota 100GiB --weight 3\n"
       "kvkeepctl tenant set-quota team-a --sharing-group ''"},
      {"tenant delete", "NAME [--force]", "delete a tenant",
       "delete a tenant (--force ends its sessions and drops its sequences)", "DeleteTenant",
       {"force"}, "kvkeepctl tenant delete team-a\nkvkeepctl tenant delete team-a --force"},
      {"policy show", "TENANT", "a tenant's default eviction policy", "the tenant's default eviction policy", "GetPolicy", {},
       "kvkeepctl policy show team-a\nkvkeepctl --json policy show team-a"},
      {"policy set", "TENANT [POLICY FLAGS]", "set it (validated, persisted, in effect)",
       "replace the default policy: validated, persisted, then in effect (it survives restarts). "
       "--max-tokens also triggers decode-time eviction inside CommitTokens",
       "SetPolicy", PolicyFlags(),
       "kvkeepctl policy set team-a --scorer capkv --allocation ada --keep-ratio 0.2\n"
       "kvkeepctl policy set team-a --scorer snapkv --max-tokens 4096 --window 32"},
      {"policy validate", "TENANT [POLICY FLAGS]", "check a policy, apply nothing",
       "check a policy as `policy set` would, apply nothing; prints what it means (effective "
       "scorer and allocation, budget, statistics workers must send)",
       "ValidatePolicy", PolicyFlags(),
       "kvkeepctl policy validate team-a --scorer laprox --keep-ratio 0.3\n"
       "kvkeepctl policy validate team-a --scorer snapkv --pool-kernel 4   # exit 1: even kernel"},
      {"seq list", "[--tenant T]", "sequences, device and spilled", "sequences (device and spilled) with size and leases",
       "ListSequences", {"tenant"}, "kvkeepctl seq list\nkvkeepctl seq list --tenant team-a"},
      {"seq show", "TENANT ID", "one sequence in detail",
       "one sequence: tier, tokens and pages per (layer, KV head), arenas, owner and leasing "
       "workers, statistics held, the tenant policy",
       "GetSequence", {}, "kvkeepctl seq show team-a seq-0123456789abcdef01234567"},
      {"seq compress", "TENANT ID [POLICY FLAGS]", "compress a sequence now",
       "compress a sequence now, as the worker's Compress does (the flags override the tenant "
       "default field by field; a budget must come from them or the default)",
       "CompressSequence", PolicyFlags(),
       "kvkeepctl seq compress team-a seq-0123456789abcdef01234567 --keep-ratio 0.5\n"
       "kvkeepctl seq compress team-a seq-0123456789abcdef01234567 --scorer knorm --max-tokens 256"},
      {"seq spill", "TENANT ID", "move a sequence to the spill tier", "move a sequence to the spill tier (durable on return)",
       "SpillSequence", {}, "kvkeepctl seq spill team-a seq-0123456789abcdef01234567"},
      {"seq restore", "TENANT ID", "bring a spilled sequence back", "bring a spilled sequence back to device pages",
       "RestoreSequence", {}, "kvkeepctl seq restore team-a seq-0123456789abcdef01234567"},
      {"seq drop", "TENANT ID [--force]", "free a sequence", "free a sequence (--force even while leased)",
       "DropSequence", {"force"}, "kvkeepctl seq drop team-a seq-0123456789abcdef01234567 --force"},
      {"pool watermarks", "[--low F --high F]", "show or set the spill watermarks",
       "show, or set (persisted), the free-pool fractions that trigger spilling",
       "SetWatermarks (GetStatus to show)", {"low", "high"},
       "kvkeepctl pool watermarks\nkvkeepctl pool watermarks --low 0.05 --high 0.10"},
      {"group set-secret", "GROUP --from-file PATH", "set a sharing group's fleet secret",
       "store the group's fleet secret (>= 16 bytes; the same on every node; never shown again) "
       "and print its fingerprint (docs/fleet.md)", "SetGroupSecret", {"from-file"},
       "kvkeepctl group set-secret llama --from-file /etc/kvkeep/groups/llama.secret"},
      {"fleet status", "", "the fleet tier's cluster and counters",
       "the Redis Cluster as this daemon sees it (slots, nodes, roles), its fleet counters in "
       "total and per group, its groups' fingerprints", "GetFleetStatus", {},
       "kvkeepctl fleet status\nkvkeepctl --json fleet status"},
  };
  return kCommands;
}

namespace {

constexpr char kGlobalHelp[] = R"(Global flags (before or after the command):
  --socket PATH        daemon socket (default $KVKEEP_SOCKET or ./kvkeep-data/kvkeepd.sock)
  --target ADDR        gRPC target instead of the socket, e.g. unix:/run/kvkeep.sock
  --admin-token-file F file with the admin token (default ./kvkeep-data/admin.token)
  --admin-token T      the admin token itself (or $KVKEEP_ADMIN_TOKEN)
  --json               print the reply as JSON (field names as in admin.proto, lowerCamelCase)
  --help, -h           this help, or a command's (kvkeepctl seq show --help)
)";

constexpr char kPolicyHelp[] = R"(Policy flags (unset ones keep the tenant default / built-in default):
  --scorer S           capkv capkv-dot capkv-greedy laprox snapkv expected h2o observed tova
                       knorm streaming random (default snapkv)
  --allocation A       uniform ada pyramid global sequence (default: global for laprox, else uniform)
  --keep-ratio R       budget: fraction of the tokens kept, (0, 1]
  --max-tokens N       budget: average tokens per (layer, KV head); in a tenant default also the
                       decode-time trigger (one of --keep-ratio / --max-tokens)
  --sinks N (4)  --window N (32)  --pool-kernel N (7, odd)  --ada-alpha A ([0,1])  --seed N
)";
}  // namespace

std::string CommandUsage(const Command& c) {
  return absl::StrCat("kvkeepctl ", c.name, c.args.empty() ? "" : " ", c.args);
}

// To stdout for --help, to stderr after a usage error.
void PrintGlobalHelp(std::FILE* out) {
  std::fprintf(out, "kvkeepctl - operate a kvkeepd daemon: tenants, budgets and policies, sequences, "
              "the pool\n\nUsage: kvkeepctl [global flags] COMMAND [args] [--json]\n\n");
  std::vector<std::vector<std::string>> rows = {{"COMMAND", "ADMIN RPC", "WHAT"}};
  for (const Command& c : Commands()) {
    rows.push_back({c.name, c.rpc, c.brief});
  }
  size_t w0 = 0, w1 = 0;
  for (const auto& r : rows) {
    w0 = std::max(w0, r[0].size());
    w1 = std::max(w1, r[1].size());
  }
  for (const auto& r : rows) {
    std::fprintf(out, "  %-*s  %-*s  %s\n", static_cast<int>(w0), r[0].c_str(), static_cast<int>(w1),
                r[1].c_str(), r[2].c_str());
  }
  std::fprintf(out, "\n%s\n%s\nSIZE is bytes or a number with KiB, MiB, GiB, TiB (or K, M, G, T; powers "
              "of 1024).\nExit status: 0 done, 1 the daemon refused (the gRPC code is printed) or "
              "is unreachable, 2 usage error.\n\nExamples:\n",
              kGlobalHelp, kPolicyHelp);
  for (const char* e :
       {"kvkeepctl status", "kvkeepctl top --interval 2",
        "kvkeepctl tenant create team-a --quota 8GiB --max 16GiB --weight 2",
        "kvkeepctl --json tenant list | jq '.tenants[].usedBytes'",
        "kvkeepctl policy validate team-a --scorer capkv --allocation ada --keep-ratio 0.2",
        "kvkeepctl policy set team-a --scorer capkv --allocation ada --keep-ratio 0.2",
        "kvkeepctl seq show team-a seq-0123456789abcdef01234567",
        "kvkeepctl seq compress team-a seq-0123456789abcdef01234567 --keep-ratio 0.5",
        "kvkeepctl tenant create --help"}) {
    std::fprintf(out, "  %s\n", e);
  }
}

void PrintCommandHelp(const Command& c) {
  std::printf("Usage: %s\n\n%s.\nAdmin RPC: %s\n\n", CommandUsage(c).c_str(), c.summary.c_str(),
              c.rpc.c_str());
  if (c.flags == PolicyFlags()) std::printf("%s\n", kPolicyHelp);
  std::printf("Examples:\n");
  for (absl::string_view line : absl::StrSplit(c.examples, '\n')) {
    std::printf("  %s\n", std::string(line).c_str());
  }
  std::printf("\n%s", kGlobalHelp);
}

// Prints the commands of a group ("kvkeepctl seq --help").
void PrintGroupHelp(const std::string& group) {
  std::printf("kvkeepctl %s commands:\n", group.c_str());
  for (const Command& c : Commands()) {
    if (c.name.rfind(group + " ", 0) == 0) {
      std::printf("  %s\n      %s\n", CommandUsage(c).c_str(), c.summary.c_str());
    }
  }
  std::printf("\nkvkeepctl %s SUBCOMMAND --help for one of them.\n", group.c_str());
}

size_t ExpectedOperands(const Command& cmd) {
  size_t n = 0;
  for (absl::string_view word : absl::StrSplit(cmd.args, ' ', absl::SkipEmpty())) {
    if (word.empty() || word[0] == '[' || word[0] == '-') break;
    ++n;
  }
  return n;
}

}  // namespace kvkeep::ctl
