// kvkeepctl: the operator CLI of kvkeepd, one command per Admin RPC (kCommands, docs/api.md).
// Exit status: 0 done, 1 the daemon refused or could not be reached (the gRPC code is printed),
// 2 a usage error (nothing was sent).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/admin_client.h"
#include "client/kvkeepctl_connect.h"
#include "client/kvkeepctl_fleet.h"
#include "client/kvkeepctl_format.h"
#include "google/protobuf/util/json_util.h"

namespace kvkeep {
namespace {

using ctl::HumanBytes;
using ctl::ParseSize;
using ctl::PrintJson;
using ctl::PrintTable;

// One command of the CLI and the Admin RPC it calls.
struct Command {
  std::string name;                // "tenant create"
  std::string args;                // positional arguments and flags
  std::string brief;               // one line for the command list
  std::string summary;
  std::string rpc;                 // Admin RPC(s)
  std::vector<std::string> flags;  // command flags it accepts (global flags always)
  std::string examples;            // one per line
};

const std::vector<std::string> kPolicyFlags = {"scorer",      "allocation", "keep-ratio",
                                               "max-tokens",  "sinks",      "window",
                                               "pool-kernel", "ada-alpha",  "seed"};

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
       "SetPolicy", kPolicyFlags,
       "kvkeepctl policy set team-a --scorer capkv --allocation ada --keep-ratio 0.2\n"
       "kvkeepctl policy set team-a --scorer snapkv --max-tokens 4096 --window 32"},
      {"policy validate", "TENANT [POLICY FLAGS]", "check a policy, apply nothing",
       "check a policy as `policy set` would, apply nothing; prints what it means (effective "
       "scorer and allocation, budget, statistics workers must send)",
       "ValidatePolicy", kPolicyFlags,
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
       "CompressSequence", kPolicyFlags,
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
  if (c.flags == kPolicyFlags) std::printf("%s\n", kPolicyHelp);
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

int Fail(const std::string& message, int code = 2) {
  std::fprintf(stderr, "kvkeepctl: %s\n", message.c_str());
  return code;
}

int FailStatus(const absl::Status& status) {
  std::fprintf(stderr, "kvkeepctl: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return 1;
}

std::vector<std::string> TenantHeader() {
  return {"TENANT",    "GUARANTEED", "MAX",     "WEIGHT", "FAIR-SHARE", "USED",  "PAGES",
          "SESSIONS",  "SEQUENCES",  "SPILLED", "SPILL-QUOTA", "GROUP", "SHARED", "METADATA",
          "METADATA-MAX"};
}

std::vector<std::string> TenantRow(const v1::TenantInfo& t) {
  return {t.name(),
          HumanBytes(t.quota_bytes()),
          t.max_bytes() == 0 ? "none" : HumanBytes(t.max_bytes()),
          absl::StrCat(t.weight()),
          HumanBytes(t.fair_share_bytes()),
          HumanBytes(t.used_bytes()),
          absl::StrCat(t.used_pages()),
          absl::StrCat(t.sessions()),
          absl::StrCat(t.sequences()),
          HumanBytes(t.spilled_bytes()),
          HumanBytes(t.spill_quota_bytes()),
          t.sharing_group().empty() ? "-" : t.sharing_group(),
          HumanBytes(t.shared_charge_bytes()),
          HumanBytes(t.metadata_bytes()),
          t.max_metadata_bytes() == 0 ? "none" : HumanBytes(t.max_metadata_bytes())};
}

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;  // --name value (or "" for booleans)
};

bool IsBoolFlag(const std::string& name) {
  return name == "json" || name == "force" || name == "help";
}

const std::vector<std::string> kGlobalFlags = {"socket", "target", "admin-token-file",
                                               "admin-token", "json", "help"};

// A global flag or one that some command accepts.
bool IsKnownFlag(const std::string& name) {
  if (std::find(kGlobalFlags.begin(), kGlobalFlags.end(), name) != kGlobalFlags.end()) return true;
  return std::any_of(Commands().begin(), Commands().end(), [&](const Command& c) {
    return std::find(c.flags.begin(), c.flags.end(), name) != c.flags.end();
  });
}

bool ParseArgs(int argc, char** argv, Args* args, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h") a = "--help";
    if (a.rfind("--", 0) == 0 && a.size() > 2) {
      std::string name = a.substr(2), value;
      size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else if (!IsBoolFlag(name) && IsKnownFlag(name)) {  // Run names unknown flags
        if (i + 1 >= argc) {
          *error = "flag --" + name + " needs a value";
          return false;
        }
        value = argv[++i];
      }
      args->flags[name] = value;
    } else {
      args->positional.push_back(a);
    }
  }
  return true;
}

bool ParseNumber(const std::string& text, double* out) { return absl::SimpleAtod(text, out); }
template <typename T>  // an integer
bool ParseNumber(const std::string& text, T* out) { return absl::SimpleAtoi(text, out); }

// The policy flags of `args` as a wire Policy; a usage error in *error otherwise.
bool PolicyFromFlags(const Args& args, v1::Policy* p, std::string* error) {
  auto value = [&](const std::string& flag) -> const std::string* {
    auto it = args.flags.find(flag);
    return it == args.flags.end() ? nullptr : &it->second;
  };
  // Sets the field from --flag when given; false (with *error) when its value does not parse.
  auto set = [&]<typename T>(const std::string& flag, void (v1::Policy::*setter)(T)) {
    const std::string* v = value(flag);
    if (v == nullptr) return true;
    T out;
    if (!ParseNumber(*v, &out)) {
      *error = absl::StrCat("--", flag, " \"", *v, "\" is not a ",
                            std::is_floating_point_v<T> ? "" : "whole ", "number");
      return false;
    }
    (p->*setter)(out);
    return true;
  };
  if (const std::string* v = value("scorer")) p->set_scorer(*v);
  if (const std::string* v = value("allocation")) p->set_allocation(*v);
  return set("max-tokens", &v1::Policy::set_max_tokens) && set("sinks", &v1::Policy::set_sinks) &&
         set("window", &v1::Policy::set_window) && set("pool-kernel", &v1::Policy::set_pool_kernel) &&
         set("seed", &v1::Policy::set_seed) && set("keep-ratio", &v1::Policy::set_keep_ratio) &&
         set("ada-alpha", &v1::Policy::set_ada_alpha);
}

void PrintPolicy(const v1::Policy& p) {
  auto or_default = [](bool has, const std::string& value, const std::string& def) {
    return has ? value : def + " (default)";
  };
  std::vector<std::vector<std::string>> rows = {
      {"scorer", p.scorer().empty() ? "snapkv (default)" : p.scorer()},
      {"allocation", p.allocation().empty() ? "scorer's default" : p.allocation()},
      {"keep_ratio", p.has_keep_ratio() ? absl::StrCat(p.keep_ratio()) : "-"},
      {"max_tokens", p.has_max_tokens() ? absl::StrCat(p.max_tokens()) : "-"},
      {"sinks", or_default(p.has_sinks(), absl::StrCat(p.sinks()), "4")},
      {"window", or_default(p.has_window(), absl::StrCat(p.window()), "32")},
      {"pool_kernel", or_default(p.has_pool_kernel(), absl::StrCat(p.pool_kernel()), "7")},
      {"ada_alpha", or_default(p.has_ada_alpha(), absl::StrCat(p.ada_alpha()), "0.2 GQA / 0.5")},
      {"seed", or_default(p.has_seed(), absl::StrCat(p.seed()), "0")}};
  PrintTable(rows);
}

std::string TierName(v1::Tier tier) {
  return tier == v1::TIER_SPILLED ? "spilled" : tier == v1::TIER_DEVICE ? "device" : "?";
}

// Everything a command needs: its parsed arguments, the client, the output mode.
struct Ctx {
  Args& args;
  AdminClient& admin;
  bool json;
  bool has(const std::string& flag) const { return args.flags.count(flag) > 0; }
  const std::string& flag(const std::string& name) { return args.flags[name]; }
  const std::string& pos(size_t i) const { return args.positional[i]; }
};

// Prints `reply` as JSON, or calls `human`.
template <typename Reply, typename Human>
int Output(const Ctx& c, const absl::StatusOr<Reply>& reply, Human human) {
  if (!reply.ok()) return FailStatus(reply.status());
  if (c.json) {
    PrintJson(*reply);
  } else {
    human(*reply);
  }
  return 0;
}

int RunStatus(Ctx& c) {
  return Output(c, c.admin.GetStatus(), [](const v1::DaemonStatus& s) {
    std::printf("kvkeepd %s  backend=%s  uptime=%.0fs\n", s.version().c_str(),
                s.backend().c_str(), s.uptime_seconds());
    if (!s.backend_device().empty()) std::printf("device: %s\n", s.backend_device().c_str());
    std::printf("pool: %s used of %s (%s in %u arenas), %llu pages in use\n",
                HumanBytes(s.pool_used_bytes()).c_str(),
                HumanBytes(s.pool_capacity_bytes()).c_str(),
                HumanBytes(s.pool_arena_bytes()).c_str(), s.arenas(),
                static_cast<unsigned long long>(s.pages_in_use()));
    std::printf("spill tier: %s in %u sequences (%llu spills, %llu restores, %llu errors); "
                "watermarks %.0f%%/%.0f%% free\n",
                HumanBytes(s.spilled_bytes()).c_str(), s.spilled_sequences(),
                static_cast<unsigned long long>(s.spills()),
                static_cast<unsigned long long>(s.restores()),
                static_cast<unsigned long long>(s.spill_errors()),
                100 * s.watermarks().low_free(), 100 * s.watermarks().high_free());
    std::fputs(absl::StrFormat("pressure: policy %s, %d pages (%d tokens) evicted by capacity "
                               "cost, %d compressions freed %d pages, %d sequences spilled\n",
                               s.pressure_policy(), s.pressure_evicted_pages(),
                               s.pressure_evicted_tokens(), s.pressure_compressions(),
                               s.pressure_compressed_pages(), s.pressure_spills())
                   .c_str(), stdout);
    std::printf("tenants: %u  sessions: %u  sequences: %u\n\n", s.tenants(), s.sessions(),
                s.sequences());
    std::vector<std::vector<std::string>> rows = {TenantHeader()};
    for (const auto& t : s.tenant_usage()) rows.push_back(TenantRow(t));
    PrintTable(rows);
  });
}

int RunTop(Ctx& c) {
  double interval = 1;
  uint64_t iterations = 0;
  if (c.has("interval") && (!absl::SimpleAtod(c.flag("interval"), &interval) || !(interval >= 0.1))) {
    return Fail("--interval must be a number of seconds >= 0.1");
  }
  if (c.has("iterations") && !absl::SimpleAtoi(c.flag("iterations"), &iterations)) {
    return Fail("--iterations must be a whole number (0 = until Ctrl-C)");
  }
  const bool tty = isatty(fileno(stdout)) && !c.json;
  uint64_t prev_spills = 0, prev_restores = 0;
  for (uint64_t i = 0; iterations == 0 || i < iterations; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::duration<double>(interval));
    auto s = c.admin.GetStatus();
    if (!s.ok()) return FailStatus(s.status());
    if (c.json) {  // one JSON document per line and refresh, for scripts
      google::protobuf::util::JsonPrintOptions options;
      options.always_print_primitive_fields = true;
      std::string line;
      (void)google::protobuf::util::MessageToJsonString(*s, &line, options);
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
      continue;
    }
    if (tty) std::printf("\033[H\033[2J");
    std::printf("kvkeepd %s  %s  up %.0fs  pool %s / %s  pages %llu  sessions %u  sequences %u\n",
                s->version().c_str(), s->backend().c_str(), s->uptime_seconds(),
                HumanBytes(s->pool_used_bytes()).c_str(),
                HumanBytes(s->pool_capacity_bytes()).c_str(),
                static_cast<unsigned long long>(s->pages_in_use()), s->sessions(), s->sequences());
    std::printf("spill %s in %u sequences  spills %+lld  restores %+lld  errors %llu\n\n",
                HumanBytes(s->spilled_bytes()).c_str(), s->spilled_sequences(),
                static_cast<long long>(s->spills() - (i ? prev_spills : s->spills())),
                static_cast<long long>(s->restores() - (i ? prev_restores : s->restores())),
                static_cast<unsigned long long>(s->spill_errors()));
    prev_spills = s->spills();
    prev_restores = s->restores();
    std::vector<v1::TenantInfo> tenants(s->tenant_usage().begin(), s->tenant_usage().end());
    std::sort(tenants.begin(), tenants.end(), [](const v1::TenantInfo& a, const v1::TenantInfo& b) {
      return a.used_bytes() > b.used_bytes();
    });
    std::vector<std::vector<std::string>> rows = {TenantHeader()};
    for (const auto& t : tenants) rows.push_back(TenantRow(t));
    PrintTable(rows);
    std::fflush(stdout);
  }
  return 0;
}

int RunTenant(Ctx& c, const std::string& sub) {
  std::string error;
  auto size_flag = [&](const std::string& name, uint64_t* out) -> bool {
    if (!c.has(name)) return true;
    if (!ParseSize(c.flag(name), out)) {
      error = "--" + name + " \"" + c.flag(name) + "\" is not a size (e.g. 512MiB, 4GiB)";
      return false;
    }
    return true;
  };
  auto print_tenants = [](const auto& list) {
    std::vector<std::vector<std::string>> rows = {TenantHeader()};
    for (const auto& t : list) rows.push_back(TenantRow(t));
    PrintTable(rows);
  };
  if (sub == "list") {
    return Output(c, c.admin.ListTenants(),
                  [&](const v1::ListTenantsReply& r) { print_tenants(r.tenants()); });
  }
  const std::string& name = c.pos(2);
  uint64_t quota = 0, max = 0, spill_quota = 0;
  uint32_t weight = 0;
  if (!size_flag("quota", &quota) || !size_flag("max", &max) ||
      !size_flag("spill-quota", &spill_quota)) {
    return Fail(error);
  }
  if (c.has("weight") && (!absl::SimpleAtoi(c.flag("weight"), &weight) || weight == 0)) {
    return Fail("--weight must be a whole number >= 1");
  }
  if (sub == "create") {
    v1::CreateTenantRequest request;
    request.set_name(name);
    request.set_quota_bytes(quota);
    request.set_max_bytes(max);
    request.set_weight(weight);
    request.set_spill_quota_bytes(spill_quota);
    if (c.has("sharing-group")) request.set_sharing_group(c.flag("sharing-group"));
    if (c.has("token")) request.set_token(c.flag("token"));
    return Output(c, c.admin.CreateTenant(request), [](const v1::CreateTenantReply& r) {
      std::printf("created tenant %s\ntoken: %s\n(store it now: kvkeepd keeps only its hash)\n",
                  r.tenant().name().c_str(), r.token().c_str());
    });
  }
  if (sub == "set-quota") {
    v1::SetQuotaRequest request;
    request.set_name(name);
    if (!c.has("quota") && !c.has("max") && !c.has("weight") && !c.has("spill-quota") &&
        !c.has("sharing-group")) {
      return Fail(
          "set-quota needs at least one of --quota, --max, --weight, --spill-quota, "
          "--sharing-group");
    }
    if (c.has("quota")) request.set_quota_bytes(quota);
    if (c.has("max")) request.set_max_bytes(max);
    if (c.has("weight")) request.set_weight(weight);
    if (c.has("spill-quota")) request.set_spill_quota_bytes(spill_quota);
    if (c.has("sharing-group")) request.set_sharing_group(c.flag("sharing-group"));
    return Output(c, c.admin.SetQuota(request), [](const v1::TenantInfo& t) {
      PrintTable({TenantHeader(), TenantRow(t)});
    });
  }
  return Output(c, c.admin.DeleteTenant(name, c.has("force")),
                [&](const v1::DeleteTenantReply& r) {
                  std::printf("deleted tenant %s (%u sessions ended, %u sequences dropped)\n",
                              name.c_str(), r.sessions_ended(), r.sequences_dropped());
                });
}

int RunPolicy(Ctx& c, const std::string& sub) {
  const std::string& tenant = c.pos(2);
  if (sub == "show") {
    return Output(c, c.admin.GetPolicy(tenant), [&](const v1::Policy& p) {
      std::printf("policy of tenant %s\n", tenant.c_str());
      PrintPolicy(p);
    });
  }
  v1::Policy p;
  std::string error;
  if (!PolicyFromFlags(c.args, &p, &error)) return Fail(error);
  if (sub == "set") {
    return Output(c, c.admin.SetPolicy(tenant, p), [&](const v1::Policy& stored) {
      std::printf("policy of tenant %s (persisted, in effect)\n", tenant.c_str());
      PrintPolicy(stored);
    });
  }
  return Output(c, c.admin.ValidatePolicy(tenant, p), [&](const v1::ValidatePolicyReply& r) {
    std::printf("valid policy for tenant %s (nothing applied; `policy set` with the same flags "
                "stores it)\n",
                tenant.c_str());
    PrintPolicy(r.policy());
    std::printf("\neffective: scorer %s, allocation %s\n", r.scorer().c_str(),
                r.allocation().c_str());
    std::printf("budget: %s\n", r.has_budget()
                                    ? (r.decode_time_eviction()
                                           ? "max_tokens (also compresses inside CommitTokens)"
                                           : "keep_ratio")
                                    : "none: every Compress request must give one");
    std::printf("workers must send: %s\n",
                r.needs().empty() ? "nothing (keys/values only)"
                                  : absl::StrJoin(r.needs(), ", ").c_str());
  });
}

int RunSeq(Ctx& c, const std::string& sub) {
  if (sub == "list") {
    auto r = c.admin.ListSequences(c.has("tenant") ? c.flag("tenant") : "");
    return Output(c, r, [](const v1::ListSequencesReply& r) {
      std::vector<std::vector<std::string>> rows = {
          {"TENANT", "SEQUENCE", "MODEL", "TIER", "TOKENS", "PAGES", "BYTES", "LEASES", "RETAIN"}};
      for (const auto& q : r.sequences()) {
        rows.push_back({q.tenant(), q.sequence_id(), q.model(), TierName(q.tier()),
                        absl::StrCat(q.tokens()), absl::StrCat(q.pages()), HumanBytes(q.bytes()),
                        absl::StrCat(q.leases()), q.retain() ? "yes" : "no"});
      }
      PrintTable(rows);
    });
  }
  v1::SequenceRef ref;
  ref.set_tenant(c.pos(2));
  ref.set_sequence_id(c.pos(3));
  ref.set_force(c.has("force"));
  const std::string& id = ref.sequence_id();
  if (sub == "show") {
    return Output(c, c.admin.GetSequence(ref), [](const v1::SequenceDetail& d) {
      const v1::SequenceInfo& i = d.info();
      std::printf("sequence %s of tenant %s, model %s (%u layers x %u KV heads, %u tokens/page, "
                  "%s/page)\n",
                  i.sequence_id().c_str(), i.tenant().c_str(), i.model().c_str(), d.layers(),
                  d.kv_heads(), d.tokens_per_page(), HumanBytes(d.page_bytes()).c_str());
      std::printf("tier: %s  tokens: %u  pages: %llu  bytes: %s  next position: %llu\n",
                  TierName(i.tier()).c_str(), i.tokens(),
                  static_cast<unsigned long long>(i.pages()), HumanBytes(i.bytes()).c_str(),
                  static_cast<unsigned long long>(d.next_position()));
      std::printf("owner: %s  leases: %u%s%s  retain: %s\n",
                  d.owner_worker().empty() ? "none (session ended)" : d.owner_worker().c_str(),
                  i.leases(), d.lease_workers().empty() ? "" : " by ",
                  absl::StrJoin(d.lease_workers(), ", ").c_str(), i.retain() ? "yes" : "no");
      std::printf("arenas: %s  statistics: %u of %u layers (%s)\n",
                  d.arena_ids().empty() ? "-" : absl::StrJoin(d.arena_ids(), ", ").c_str(),
                  d.stats_layers(), d.layers(), HumanBytes(d.stats_bytes()).c_str());
      std::printf("tenant policy:\n");
      PrintPolicy(d.policy());
      if (d.heads().empty()) return;
      std::printf("\n");
      std::vector<std::vector<std::string>> rows = {
          {"LAYER", "KV-HEAD", "TOKENS", "CAPACITY", "PAGES"}};
      for (const auto& h : d.heads()) {
        rows.push_back({absl::StrCat(h.layer()), absl::StrCat(h.kv_head()),
                        absl::StrCat(h.token_count()), absl::StrCat(h.capacity()),
                        absl::StrCat(h.pages())});
      }
      PrintTable(rows);
    });
  }
  if (sub == "compress") {
    v1::CompressSequenceRequest request;
    request.set_tenant(ref.tenant());
    request.set_sequence_id(id);
    std::string error;
    if (!PolicyFromFlags(c.args, request.mutable_policy(), &error)) return Fail(error);
    return Output(c, c.admin.CompressSequence(request), [&](const v1::CompressReply& r) {
      const v1::EvictionSummary& s = r.summary();
      std::printf("compressed %s with %s/%s: %llu -> %llu tokens (over all heads), %u pages (%s) "
                  "freed in %.3f s\n",
                  id.c_str(), s.scorer().c_str(), s.allocation().c_str(),
                  static_cast<unsigned long long>(s.tokens_before()),
                  static_cast<unsigned long long>(s.tokens_after()), s.pages_freed(),
                  HumanBytes(s.bytes_freed()).c_str(), s.seconds());
    });
  }
  if (sub == "spill") {
    return Output(c, c.admin.SpillSequence(ref), [&](const v1::SpillReply& r) {
      std::printf("spilled %s: %s written durably, %u device pages freed\n", id.c_str(),
                  HumanBytes(r.bytes()).c_str(), r.pages_freed());
    });
  }
  if (sub == "restore") {
    return Output(c, c.admin.RestoreSequence(ref), [&](const v1::SequenceInfo& r) {
      std::printf("restored %s: %llu pages, %u tokens\n", id.c_str(),
                  static_cast<unsigned long long>(r.pages()), r.tokens());
    });
  }
  return Output(c, c.admin.DropSequence(ref), [&](const v1::DropReply& r) {
    std::printf("dropped %s: %u pages, %s freed\n", id.c_str(), r.pages_freed(),
                HumanBytes(r.bytes_freed()).c_str());
  });
}

int RunPool(Ctx& c) {
  auto print = [](const v1::Watermarks& w) {
    std::printf("spill when free < %.1f %% of the pool, until %.1f %% is free\n",
                100 * w.low_free(), 100 * w.high_free());
  };
  if (c.has("low") || c.has("high")) {
    double low = 0, high = 0;
    if (!c.has("low") || !c.has("high") || !absl::SimpleAtod(c.flag("low"), &low) ||
        !absl::SimpleAtod(c.flag("high"), &high)) {
      return Fail("give both --low and --high as fractions, e.g. --low 0.05 --high 0.1");
    }
    v1::Watermarks w;
    w.set_low_free(low);
    w.set_high_free(high);
    return Output(c, c.admin.SetWatermarks(w), print);
  }
  auto s = c.admin.GetStatus();
  if (!s.ok()) return FailStatus(s.status());
  return Output(c, absl::StatusOr<v1::Watermarks>(s->watermarks()), print);
}

// Positional arguments after the command words, from its usage line.
size_t ExpectedOperands(const Command& cmd) {
  size_t n = 0;
  for (absl::string_view word : absl::StrSplit(cmd.args, ' ', absl::SkipEmpty())) {
    if (word.empty() || word[0] == '[' || word[0] == '-') break;
    ++n;
  }
  return n;
}

int Run(int argc, char** argv) {
  Args args;
  std::string error;
  if (!ParseArgs(argc, argv, &args, &error)) return Fail(error);
  if (!args.positional.empty() && args.positional[0] == "help") {
    args.positional.erase(args.positional.begin());
    args.flags["help"] = "";
  }
  const bool help = args.flags.count("help") > 0;
  for (const auto& [name, value] : args.flags) {
    if (!help && args.positional.empty() && !IsKnownFlag(name)) {
      return Fail("unknown flag --" + name + " (see kvkeepctl --help)");
    }
  }
  if (args.positional.empty()) {
    PrintGlobalHelp(help ? stdout : stderr);
    return help ? 0 : 2;
  }
  // The command: one word (status, top) or a group and a subcommand.
  const Command* cmd = nullptr;
  bool group = false;
  for (const Command& c : Commands()) {
    if (c.name == args.positional[0] ||
        (args.positional.size() > 1 && c.name == args.positional[0] + " " + args.positional[1])) {
      cmd = &c;
      break;
    }
    if (c.name.rfind(args.positional[0] + " ", 0) == 0) group = true;
  }
  if (cmd == nullptr) {
    if (!group) {
      return Fail("unknown command \"" + args.positional[0] + "\" (see kvkeepctl --help)");
    }
    PrintGroupHelp(args.positional[0]);
    if (help) return 0;
    return Fail(args.positional.size() > 1
                    ? "unknown " + args.positional[0] + " subcommand \"" + args.positional[1] + "\""
                    : args.positional[0] + " needs a subcommand");
  }
  if (help) {
    PrintCommandHelp(*cmd);
    return 0;
  }
  for (const auto& [name, value] : args.flags) {
    if (std::find(kGlobalFlags.begin(), kGlobalFlags.end(), name) == kGlobalFlags.end() &&
        std::find(cmd->flags.begin(), cmd->flags.end(), name) == cmd->flags.end()) {
      return Fail(absl::StrCat("unknown flag --", name, " for `", cmd->name, "`; usage: ",
                               CommandUsage(*cmd)));
    }
  }
  const size_t words = std::count(cmd->name.begin(), cmd->name.end(), ' ') + 1;
  if (args.positional.size() != words + ExpectedOperands(*cmd)) {
    return Fail(absl::StrCat("wrong number of arguments; usage: ", CommandUsage(*cmd)));
  }

  absl::StatusOr<ctl::Connection> connection = ctl::ResolveConnection(args.flags);
  if (!connection.ok()) return Fail(std::string(connection.status().message()));
  auto admin = AdminClient::Connect(connection->channel, connection->token);
  Ctx c{args, *admin, args.flags.count("json") > 0};
  const std::string first = args.positional[0];
  const std::string sub = words > 1 ? args.positional[1] : "";
  if (first == "status") return RunStatus(c);
  if (first == "top") return RunTop(c);
  if (first == "tenant") return RunTenant(c, sub);
  if (first == "policy") return RunPolicy(c, sub);
  if (first == "seq") return RunSeq(c, sub);
  if (first == "group") return ctl::RunGroupSetSecret(c.admin, c.pos(2), c.flag("from-file"), c.json);
  if (first == "fleet") return ctl::RunFleetStatus(c.admin, c.json);
  return RunPool(c);
}

}  // namespace
}  // namespace kvkeep

int main(int argc, char** argv) { return kvkeep::Run(argc, argv); }
