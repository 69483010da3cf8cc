// kvkeepctl: the operator CLI of kvkeepd. One subcommand per Admin RPC.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/admin_client.h"
#include "google/protobuf/util/json_util.h"

namespace kvkeep {
namespace {

constexpr char kUsage[] = R"(kvkeepctl - operate a kvkeepd daemon (tenants, quotas, status)

Usage: kvkeepctl [global flags] COMMAND [args]

Commands:
  status                              pool, tenants, sessions and sequences at a glance
  top [--interval S] [--iterations N] live per-tenant usage, refreshed every S seconds
                                      (default 1; N = 0 runs until Ctrl-C)
  tenant list                         every tenant with its quota and usage
  tenant create NAME [--quota SIZE] [--max SIZE] [--weight N] [--spill-quota SIZE]
                     [--token TOKEN]
                                      create a tenant; prints its bearer token ONCE
  tenant set-quota NAME [--quota SIZE] [--max SIZE] [--weight N] [--spill-quota SIZE]
                                      change a tenant's guarantee, hard maximum or weight
  tenant delete NAME [--force]        delete a tenant (--force ends its sessions and drops
                                      its sequences)
  seq list [--tenant T]               sequences (device and spilled) with size and leases
  seq spill TENANT ID                 move a sequence to the spill tier (durable on return)
  seq restore TENANT ID               bring a spilled sequence back to device pages
  seq drop TENANT ID [--force]        free a sequence (--force even while leased)
  pool watermarks [--low F --high F]  show or set the free-pool fractions that trigger spilling
  policy show TENANT                  the tenant's default eviction policy
  policy set TENANT [--scorer S] [--allocation A] [--keep-ratio R | --max-tokens N]
                    [--sinks N] [--window N] [--pool-kernel N] [--ada-alpha A] [--seed N]
                                      replace the default policy (validated, then persisted,
                                      then in effect). --max-tokens also triggers decode-time
                                      eviction inside CommitTokens.

Global flags:
  --socket PATH        daemon socket (default $KVKEEP_SOCKET or ./kvkeep-data/kvkeepd.sock)
  --target ADDR        gRPC target instead of the socket, e.g. unix:/run/kvkeep.sock
  --admin-token-file F file with the admin token (default ./kvkeep-data/admin.token)
  --admin-token T      the admin token itself (or $KVKEEP_ADMIN_TOKEN)
  --json               print the reply as JSON (field names as in admin.proto)

SIZE is bytes or a number with KiB, MiB, GiB, TiB (or K, M, G, T; powers of 1024).

Examples:
  kvkeepctl status
  kvkeepctl top --interval 2
  kvkeepctl tenant create team-a --quota 8GiB --max 16GiB --weight 2
  kvkeepctl tenant set-quota team-a --max 32GiB
  kvkeepctl --json tenant list | jq '.tenants[].usedBytes'
  kvkeepctl policy set team-a --scorer capkv --allocation ada --keep-ratio 0.2
  kvkeepctl policy set team-a --scorer snapkv --max-tokens 4096 --window 32

Scorers: capkv capkv-dot capkv-greedy laprox snapkv expected h2o observed tova knorm
         streaming random.  Allocations: uniform ada pyramid global.
)";

int Fail(const std::string& message, int code = 2) {
  std::fprintf(stderr, "kvkeepctl: %s\n", message.c_str());
  return code;
}

int FailStatus(const absl::Status& status) {
  std::fprintf(stderr, "kvkeepctl: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return 1;
}

bool ParseSize(const std::string& text, uint64_t* out) {
  std::string t = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  static const std::vector<std::pair<std::string, int>> kUnits = {
      {"tib", 40}, {"gib", 30}, {"mib", 20}, {"kib", 10}, {"t", 40}, {"g", 30},
      {"m", 20},   {"k", 10},   {"b", 0}};
  int shift = 0;
  for (const auto& [suffix, s] : kUnits) {
    if (t.size() > suffix.size() && t.compare(t.size() - suffix.size(), suffix.size(), suffix) == 0) {
      t = t.substr(0, t.size() - suffix.size());
      shift = s;
      break;
    }
  }
  uint64_t value = 0;
  if (!absl::SimpleAtoi(t, &value)) return false;
  if (shift > 0 && value > (UINT64_MAX >> shift)) return false;
  *out = value << shift;
  return true;
}

std::string HumanBytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(bytes, " B") : absl::StrFormat("%.1f %s", v, kUnits[u]);
}

// Prints rows as columns aligned to the widest cell.
void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

void PrintJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  std::printf("%s", out.c_str());
}

std::vector<std::string> TenantHeader() {
  return {"TENANT", "GUARANTEED", "MAX", "WEIGHT", "USED", "PAGES", "SESSIONS", "SEQUENCES",
          "SPILLED", "SPILL QUOTA"};
}

std::vector<std::string> TenantRow(const v1::TenantInfo& t) {
  return {t.name(),
          HumanBytes(t.quota_bytes()),
          t.max_bytes() == 0 ? "none" : HumanBytes(t.max_bytes()),
          absl::StrCat(t.weight()),
          HumanBytes(t.used_bytes()),
          absl::StrCat(t.used_pages()),
          absl::StrCat(t.sessions()),
          absl::StrCat(t.sequences()),
          HumanBytes(t.spilled_bytes()),
          HumanBytes(t.spill_quota_bytes())};
}

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;  // --name value (or "" for booleans)
};

bool IsBoolFlag(const std::string& name) { return name == "json" || name == "force" || name == "help"; }

bool ParseArgs(int argc, char** argv, Args* args, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h") a = "--help";
    if (a.rfind("--", 0) == 0) {
      std::string name = a.substr(2), value;
      size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else if (!IsBoolFlag(name)) {
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

std::string ReadTokenFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream ss;
  ss << in.rdbuf();
  return std::string(absl::StripAsciiWhitespace(ss.str()));
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

int RunPolicy(Args& args, AdminClient& admin, bool json) {
  if (args.positional.size() != 3 || (args.positional[1] != "set" && args.positional[1] != "show")) {
    return Fail("usage: kvkeepctl policy set|show TENANT [flags] (see kvkeepctl --help)");
  }
  const std::string& tenant = args.positional[2];
  absl::StatusOr<v1::Policy> result;
  if (args.positional[1] == "show") {
    result = admin.GetPolicy(tenant);
  } else {
    v1::Policy p;
    auto number = [&](const std::string& flag, auto* out) -> bool {
      if (!args.flags.count(flag)) return false;
      if (!absl::SimpleAtoi(args.flags[flag], out)) {
        std::fprintf(stderr, "kvkeepctl: --%s \"%s\" is not a whole number\n", flag.c_str(),
                     args.flags[flag].c_str());
        std::exit(2);
      }
      return true;
    };
    auto real = [&](const std::string& flag, double* out) -> bool {
      if (!args.flags.count(flag)) return false;
      if (!absl::SimpleAtod(args.flags[flag], out)) {
        std::fprintf(stderr, "kvkeepctl: --%s \"%s\" is not a number\n", flag.c_str(),
                     args.flags[flag].c_str());
        std::exit(2);
      }
      return true;
    };
    if (args.flags.count("scorer")) p.set_scorer(args.flags["scorer"]);
    if (args.flags.count("allocation")) p.set_allocation(args.flags["allocation"]);
    uint32_t u = 0;
    uint64_t u64 = 0;
    double d = 0;
    if (number("max-tokens", &u)) p.set_max_tokens(u);
    if (number("sinks", &u)) p.set_sinks(u);
    if (number("window", &u)) p.set_window(u);
    if (number("pool-kernel", &u)) p.set_pool_kernel(u);
    if (number("seed", &u64)) p.set_seed(u64);
    if (real("keep-ratio", &d)) p.set_keep_ratio(d);
    if (real("ada-alpha", &d)) p.set_ada_alpha(d);
    result = admin.SetPolicy(tenant, p);
  }
  if (!result.ok()) return FailStatus(result.status());
  if (json) {
    PrintJson(*result);
  } else {
    std::printf("policy of tenant %s\n", tenant.c_str());
    PrintPolicy(*result);
  }
  return 0;
}

std::string TierName(v1::Tier tier) {
  return tier == v1::TIER_SPILLED ? "spilled" : tier == v1::TIER_DEVICE ? "device" : "?";
}

int RunSeq(Args& args, AdminClient& admin, bool json) {
  const std::string sub = args.positional.size() > 1 ? args.positional[1] : "";
  if (sub == "list") {
    auto r = admin.ListSequences(args.flags.count("tenant") ? args.flags["tenant"] : "");
    if (!r.ok()) return FailStatus(r.status());
    if (json) {
      PrintJson(*r);
      return 0;
    }
    std::vector<std::vector<std::string>> rows = {
        {"TENANT", "SEQUENCE", "MODEL", "TIER", "TOKENS", "PAGES", "BYTES", "LEASES", "RETAIN"}};
    for (const auto& q : r->sequences()) {
      rows.push_back({q.tenant(), q.sequence_id(), q.model(), TierName(q.tier()),
                      absl::StrCat(q.tokens()), absl::StrCat(q.pages()), HumanBytes(q.bytes()),
                      absl::StrCat(q.leases()), q.retain() ? "yes" : "no"});
    }
    PrintTable(rows);
    return 0;
  }
  if ((sub != "spill" && sub != "restore" && sub != "drop") || args.positional.size() != 4) {
    return Fail("usage: kvkeepctl seq list|spill|restore|drop ... (see kvkeepctl --help)");
  }
  v1::SequenceRef ref;
  ref.set_tenant(args.positional[2]);
  ref.set_sequence_id(args.positional[3]);
  ref.set_force(args.flags.count("force") > 0);
  if (sub == "spill") {
    auto r = admin.SpillSequence(ref);
    if (!r.ok()) return FailStatus(r.status());
    if (json) {
      PrintJson(*r);
    } else {
      std::printf("spilled %s: %s written durably, %u device pages freed\n", ref.sequence_id().c_str(),
                  HumanBytes(r->bytes()).c_str(), r->pages_freed());
    }
    return 0;
  }
  if (sub == "restore") {
    auto r = admin.RestoreSequence(ref);
    if (!r.ok()) return FailStatus(r.status());
    if (json) {
      PrintJson(*r);
    } else {
      std::printf("restored %s: %llu pages, %u tokens\n", ref.sequence_id().c_str(),
                  static_cast<unsigned long long>(r->pages()), r->tokens());
    }
    return 0;
  }
  auto r = admin.DropSequence(ref);
  if (!r.ok()) return FailStatus(r.status());
  if (json) {
    PrintJson(*r);
  } else {
    std::printf("dropped %s: %u pages, %s freed\n", ref.sequence_id().c_str(), r->pages_freed(),
                HumanBytes(r->bytes_freed()).c_str());
  }
  return 0;
}

int RunPool(Args& args, AdminClient& admin, bool json) {
  if (args.positional.size() != 2 || args.positional[1] != "watermarks") {
    return Fail("usage: kvkeepctl pool watermarks [--low F --high F]");
  }
  v1::Watermarks w;
  if (args.flags.count("low") || args.flags.count("high")) {
    double low = 0, high = 0;
    if (!args.flags.count("low") || !args.flags.count("high") ||
        !absl::SimpleAtod(args.flags["low"], &low) || !absl::SimpleAtod(args.flags["high"], &high)) {
      return Fail("give both --low and --high as fractions, e.g. --low 0.05 --high 0.1");
    }
    w.set_low_free(low);
    w.set_high_free(high);
    auto r = admin.SetWatermarks(w);
    if (!r.ok()) return FailStatus(r.status());
    w = *r;
  } else {
    auto s = admin.GetStatus();
    if (!s.ok()) return FailStatus(s.status());
    w = s->watermarks();
  }
  if (json) {
    PrintJson(w);
  } else {
    std::printf("spill when free < %.1f %% of the pool, until %.1f %% is free\n",
                100 * w.low_free(), 100 * w.high_free());
  }
  return 0;
}

int RunTop(Args& args, AdminClient& admin, bool json) {
  double interval = 1;
  uint64_t iterations = 0;
  if (args.flags.count("interval") &&
      (!absl::SimpleAtod(args.flags["interval"], &interval) || !(interval >= 0.1))) {
    return Fail("--interval must be a number of seconds >= 0.1");
  }
  if (args.flags.count("iterations") && !absl::SimpleAtoi(args.flags["iterations"], &iterations)) {
    return Fail("--iterations must be a whole number (0 = until Ctrl-C)");
  }
  const bool tty = isatty(fileno(stdout)) && !json;
  uint64_t prev_spills = 0, prev_restores = 0;
  for (uint64_t i = 0; iterations == 0 || i < iterations; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::duration<double>(interval));
    auto s = admin.GetStatus();
    if (!s.ok()) return FailStatus(s.status());
    if (json) {  // one JSON document per refresh, for scripts
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

int Run(int argc, char** argv) {
  Args args;
  std::string error;
  if (!ParseArgs(argc, argv, &args, &error)) return Fail(error);
  if (args.flags.count("help") || args.positional.empty()) {
    std::printf("%s", kUsage);
    return args.positional.empty() && !args.flags.count("help") ? 2 : 0;
  }
  static const std::vector<std::string> kKnown = {"socket", "target", "admin-token-file",
                                                  "admin-token", "json", "force", "help",
                                                  "quota", "max", "weight", "token", "scorer",
                                                  "allocation", "keep-ratio", "max-tokens",
                                                  "sinks", "window", "pool-kernel", "ada-alpha",
                                                  "seed", "spill-quota", "tenant", "low",
                                                  "high", "interval", "iterations"};
  for (const auto& [name, value] : args.flags) {
    if (std::find(kKnown.begin(), kKnown.end(), name) == kKnown.end()) {
      return Fail("unknown flag --" + name + " (see kvkeepctl --help)");
    }
  }
  const bool json = args.flags.count("json") > 0;

  ChannelOptions channel;
  const char* env_socket = std::getenv("KVKEEP_SOCKET");
  std::string socket = args.flags.count("socket") ? args.flags["socket"]
                       : env_socket != nullptr    ? env_socket
                                                  : "./kvkeep-data/kvkeepd.sock";
  channel.target = args.flags.count("target") ? args.flags["target"] : "unix:" + socket;
  std::string token;
  const char* env_token = std::getenv("KVKEEP_ADMIN_TOKEN");
  if (args.flags.count("admin-token")) {
    token = args.flags["admin-token"];
  } else if (env_token != nullptr && *env_token != '\0') {
    token = env_token;
  } else {
    std::string file = args.flags.count("admin-token-file") ? args.flags["admin-token-file"]
                                                             : "./kvkeep-data/admin.token";
    token = ReadTokenFile(file);
    if (token.empty()) {
      return Fail("no admin token: cannot read " + file +
                  " (give --admin-token-file, --admin-token or $KVKEEP_ADMIN_TOKEN)");
    }
  }
  auto admin = AdminClient::Connect(channel, token);

  const std::string& cmd = args.positional[0];
  if (cmd == "status") {
    if (args.positional.size() != 1) return Fail("status takes no arguments");
    auto s = admin->GetStatus();
    if (!s.ok()) return FailStatus(s.status());
    if (json) {
      PrintJson(*s);
      return 0;
    }
    std::printf("kvkeepd %s  backend=%s  uptime=%.0fs\n", s->version().c_str(),
                s->backend().c_str(), s->uptime_seconds());
    if (!s->backend_device().empty()) std::printf("device: %s\n", s->backend_device().c_str());
    std::printf("pool: %s used of %s (%s in %u arenas), %llu pages in use\n",
                HumanBytes(s->pool_used_bytes()).c_str(),
                HumanBytes(s->pool_capacity_bytes()).c_str(),
                HumanBytes(s->pool_arena_bytes()).c_str(), s->arenas(),
                static_cast<unsigned long long>(s->pages_in_use()));
    std::printf("spill tier: %s in %u sequences (%llu spills, %llu restores, %llu errors); "
                "watermarks %.0f%%/%.0f%% free\n",
                HumanBytes(s->spilled_bytes()).c_str(), s->spilled_sequences(),
                static_cast<unsigned long long>(s->spills()),
                static_cast<unsigned long long>(s->restores()),
                static_cast<unsigned long long>(s->spill_errors()),
                100 * s->watermarks().low_free(), 100 * s->watermarks().high_free());
    std::printf("tenants: %u  sessions: %u  sequences: %u\n\n", s->tenants(), s->sessions(),
                s->sequences());
    std::vector<std::vector<std::string>> rows = {TenantHeader()};
    for (const auto& t : s->tenant_usage()) rows.push_back(TenantRow(t));
    PrintTable(rows);
    return 0;
  }
  if (cmd == "policy") return RunPolicy(args, *admin, json);
  if (cmd == "top") return RunTop(args, *admin, json);
  if (cmd == "seq") return RunSeq(args, *admin, json);
  if (cmd == "pool") return RunPool(args, *admin, json);
  if (cmd != "tenant") return Fail("unknown command \"" + cmd + "\" (see kvkeepctl --help)");
  if (args.positional.size() < 2) return Fail("tenant needs a subcommand: create, list, delete, set-quota");
  const std::string& sub = args.positional[1];
  auto size_flag = [&](const std::string& name, uint64_t* out) -> bool {
    if (!args.flags.count(name)) return true;
    if (!ParseSize(args.flags[name], out)) {
      error = "--" + name + " \"" + args.flags[name] + "\" is not a size (e.g. 512MiB, 4GiB)";
      return false;
    }
    return true;
  };
  auto weight_flag = [&](uint32_t* out) -> bool {
    if (!args.flags.count("weight")) return true;
    if (!absl::SimpleAtoi(args.flags["weight"], out) || *out == 0) {
      error = "--weight must be a whole number >= 1";
      return false;
    }
    return true;
  };
  if (sub == "list") {
    auto r = admin->ListTenants();
    if (!r.ok()) return FailStatus(r.status());
    if (json) {
      PrintJson(*r);
      return 0;
    }
    std::vector<std::vector<std::string>> rows = {TenantHeader()};
    for (const auto& t : r->tenants()) rows.push_back(TenantRow(t));
    PrintTable(rows);
    return 0;
  }
  if (args.positional.size() != 3) return Fail("tenant " + sub + " needs exactly one NAME");
  const std::string& name = args.positional[2];
  if (sub == "create") {
    v1::CreateTenantRequest request;
    request.set_name(name);
    uint64_t quota = 0, max = 0;
    uint32_t weight = 0;
    if (!size_flag("quota", &quota) || !size_flag("max", &max) || !weight_flag(&weight)) {
      return Fail(error);
    }
    request.set_quota_bytes(quota);
    request.set_max_bytes(max);
    request.set_weight(weight);
    uint64_t spill_quota = 0;
    if (!size_flag("spill-quota", &spill_quota)) return Fail(error);
    request.set_spill_quota_bytes(spill_quota);
    if (args.flags.count("token")) request.set_token(args.flags["token"]);
    auto r = admin->CreateTenant(request);
    if (!r.ok()) return FailStatus(r.status());
    if (json) {
      PrintJson(*r);
      return 0;
    }
    std::printf("created tenant %s\ntoken: %s\n(store it now: kvkeepd keeps only its hash)\n",
                r->tenant().name().c_str(), r->token().c_str());
    return 0;
  }
  if (sub == "set-quota") {
    v1::SetQuotaRequest request;
    request.set_name(name);
    uint64_t quota = 0, max = 0;
    uint32_t weight = 0;
    if (!size_flag("quota", &quota) || !size_flag("max", &max) || !weight_flag(&weight)) {
      return Fail(error);
    }
    uint64_t spill_quota = 0;
    if (!size_flag("spill-quota", &spill_quota)) return Fail(error);
    if (!args.flags.count("quota") && !args.flags.count("max") && !args.flags.count("weight") &&
        !args.flags.count("spill-quota")) {
      return Fail("set-quota needs at least one of --quota, --max, --weight, --spill-quota");
    }
    if (args.flags.count("spill-quota")) request.set_spill_quota_bytes(spill_quota);
    if (args.flags.count("quota")) request.set_quota_bytes(quota);
    if (args.flags.count("max")) request.set_max_bytes(max);
    if (args.flags.count("weight")) request.set_weight(weight);
    auto r = admin->SetQuota(request);
    if (!r.ok()) return FailStatus(r.status());
    if (json) {
      PrintJson(*r);
      return 0;
    }
    PrintTable({TenantHeader(), TenantRow(*r)});
    return 0;
  }
  if (sub == "delete") {
    auto r = admin->DeleteTenant(name, args.flags.count("force") > 0);
    if (!r.ok()) return FailStatus(r.status());
    if (json) {
      PrintJson(*r);
      return 0;
    }
    std::printf("deleted tenant %s (%u sessions ended, %u sequences dropped)\n", name.c_str(),
                r->sessions_ended(), r->sequences_dropped());
    return 0;
  }
  return Fail("unknown tenant subcommand \"" + sub + "\" (create, list, delete, set-quota)");
}

}  // namespace
}  // namespace kvkeep

int main(int argc, char** argv) { return kvkeep::Run(argc, argv); }
