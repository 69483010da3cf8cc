// kvkeepd: the KV-cache memory manager daemon. See README.md and `kvkeepd --help`.
//
// main() reads the flags into one ServiceOptions (a bad flag or value is a usage error: a plain
// message on stderr, exit 2), configures the log (service/observability/log.h), starts the Server
// and waits for SIGTERM/SIGINT. From the log's configuration on, everything the daemon says on
// stderr is a log event: the configuration, listeners, backend, spill recovery, shutdown.
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gpu/cuda_arena_kind.h"
#include "grpc/support/log.h"
#include "service/observability/log.h"
#include "common/process_tuning.h"
#include "service/rpc/server.h"

ABSL_FLAG(std::string, data_dir, "./kvkeep-data",
          "Folder for the metadata database (RocksDB), the socket and the admin token");
ABSL_FLAG(std::string, socket, "", "Unix socket to listen on (default <data_dir>/kvkeepd.sock)");
ABSL_FLAG(std::string, tcp, "", "Also listen on this host:port (needs --tls_cert/--tls_key)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain for --tcp");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tcp");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA: when set, TCP clients must present a certificate");
ABSL_FLAG(bool, insecure_tcp, false, "Allow --tcp without TLS (loopback tests only)");
ABSL_FLAG(bool, bulk_channel, true,
          "Serve the bulk channel <socket>.bulk: WriteKV/ReadKV bytes as raw frames on a Unix "
          "socket, received straight into pages (1.4-2.4x gRPC's bytes path in "
          "docs/benchmarks.md; docs/api.md 5.2)");
ABSL_FLAG(std::string, admin_token_file, "",
          "File holding the admin token (default <data_dir>/admin.token, created 0600 if missing)");
ABSL_FLAG(std::string, backend, "auto", "Memory backend: auto, cpu (POSIX shared memory) or cuda");
ABSL_FLAG(int, cuda_device, 0,
          "CUDA device ordinal for --backend=cuda/auto, as this process numbers them (after "
          "CUDA_VISIBLE_DEVICES); arenas are exported with the device's UUID");
ABSL_FLAG(std::string, cuda_arena_kind, "auto",
          "How CUDA arenas reach workers: vmm (cuMemCreate, POSIX fds over the arena channel; "
          "no hostIPC), ipc (cudaMalloc + cudaIpc handles; workers need hostIPC) or auto (vmm "
          "where the device supports it, else ipc)");
ABSL_FLAG(uint64_t, pool_mib, 1024, "Device (or host) memory the daemon may hand out, in MiB");
ABSL_FLAG(uint64_t, arena_mib, 64, "Size of one exported arena, in MiB");
ABSL_FLAG(uint64_t, max_message_mib, 4, "Largest gRPC message accepted or sent, in MiB");
ABSL_FLAG(double, low_free, 0.05,
          "Spill cold sequences when less than this fraction of the pool is free (persisted "
          "kvkeepctl pool watermarks override it)");
ABSL_FLAG(double, high_free, 0.10,
          "Once spilling starts, spill until this fraction of the pool is free (see --low_free)");
ABSL_FLAG(std::string, spill_dir, "",
          "Folder of the spill tier's RocksDB (default <data_dir>/spill); put it on a fast local "
          "disk");
ABSL_FLAG(uint64_t, spill_block_cache_mib, 32, "Block cache of the spill database, MiB");
ABSL_FLAG(uint64_t, spill_min_blob_bytes, 4096, "Spilled values this large go to blob files");
ABSL_FLAG(uint64_t, spill_rate_limit_mib, 0,
          "Limit on background spill-database writes, MiB/s (0 = none)");
ABSL_FLAG(std::string, pressure_policy, "lru",
          "How pool pressure frees pages: lru (spill whole least-recently-used sequences, "
          "lossless), capacity (drop the cheapest whole pages by capacity cost, then spill) or "
          "compress (compress the unleased sequences whose loss per freed page is smallest, "
          "then spill)");
ABSL_FLAG(int, compress_threads, 2, "Threads that run Compress (scoring and compaction)");
ABSL_FLAG(int, keepalive_seconds, 10, "Keepalive ping interval that detects lost workers");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1:9464",
          "Serve Prometheus metrics over HTTP at GET /metrics on this host:port (\"\" = off; "
          "0.0.0.0:9464 for a scraper on another host)");
ABSL_FLAG(double, session_calls_per_second, 100000,
          "Worker calls one session may make per second (token bucket; calls without a session "
          "share one bucket per tenant); 0 = unlimited");
ABSL_FLAG(double, session_call_burst, 200000, "Calls a session may make at once (bucket size)");
ABSL_FLAG(double, session_bytes_per_second, 64.0 * (1ull << 30),
          "WriteKV/ReadKV/PutStats payload bytes one session may move per second; 0 = unlimited");
ABSL_FLAG(double, session_byte_burst, 4.0 * (1ull << 30),
          "Payload bytes a session may move at once (bucket size; >= the message limit)");
ABSL_FLAG(uint64_t, max_stats_bytes, 4ull << 20,
          "Largest statistics payload of one PutStats chunk or CommitTokens, bytes; 0 = unlimited");
ABSL_FLAG(uint32_t, max_read_streams_per_tenant, 128,
          "ReadKV/ReadKVBatch streams one tenant may have open at once (a stalled reader keeps "
          "its stream's message pinned in the pool); 0 = unlimited");
ABSL_FLAG(uint32_t, max_tokens_per_request, 1u << 20, "Most tokens one AllocatePages may ask for");
ABSL_FLAG(uint64_t, max_pages_per_request, 0,
          "Most pages one AllocatePages may add over all heads (0 = what fits in a reply message)");
ABSL_FLAG(uint64_t, max_metadata_bytes_per_tenant, 256ull << 20,
          "Most daemon memory (page tables, statistics, model layouts) one tenant may hold, bytes; "
          "0 = unbounded");
ABSL_FLAG(std::string, fleet_redis, "",
          "Fleet tier: seed nodes HOST:PORT[,HOST:PORT...] of the Redis Cluster that shares "
          "sharing groups' prompt prefixes across nodes (docs/fleet.md); empty = no fleet tier");
ABSL_FLAG(std::string, fleet_user, "", "Fleet tier: the Redis ACL user of this daemon");
ABSL_FLAG(std::string, fleet_password_file, "",
          "Fleet tier: file holding the Redis user's password (trailing newline stripped)");
ABSL_FLAG(std::string, node_name, "", "This daemon's name in the fleet (default: the hostname)");
ABSL_FLAG(uint32_t, fleet_lookup_timeout_ms, 50,
          "Fleet tier: bound of LookupPrefix's existence checks in the cluster, ms");
ABSL_FLAG(uint32_t, fleet_fetch_timeout_ms, 1000,
          "Fleet tier: bound of CreateSequence's fetch of prefix pages from the cluster, ms");
ABSL_FLAG(uint64_t, fleet_queue_mb, 256,
          "Fleet tier: write-behind queue of published pages, MiB (beyond it pages are dropped)");
ABSL_FLAG(std::string, log_level, "info",
          "Least severe log events written to stderr: debug, info, warn, error or off");
// Issue 13: a non-dumpable process's /proc/<pid>/fd/* (the memfd arenas) and ptrace are closed to
// other processes of its uid; --dumpable keeps core dumps (and that access) for debugging.
ABSL_FLAG(bool, dumpable, false,
          "Leave the daemon dumpable (core dumps; other processes of its uid can then open its "
          "arena fds under /proc/<pid>/fd): for debugging only");
// Process-wide tuning of the data path (common/process_tuning.h).
ABSL_FLAG(uint64_t, malloc_retain_mib, 256,
          "Freed heap memory the daemon keeps for reuse instead of returning it to the kernel, in "
          "MiB (0: glibc's defaults, at most 2047). Re-faulting returned memory made WriteKV 3-5x "
          "slower in docs/benchmarks.md's measurement, and with 0 a restore from the spill tier "
          "page-faults every page it reads (RocksDB's per-value read buffers; architecture.md "
          "section 8, Restore speed)");
ABSL_FLAG(bool, mutex_deadlock_detection, false,
          "Keep Abseil's run-time lock-order checking on every mutex (Debian builds Abseil with it "
          "on; it serialises every lock through one global graph). For debugging");
ABSL_FLAG(std::string, log_format, "text",
          "Log line format: text (time LEVEL event key=value ...) or json (one object per line, "
          "for log collectors)");

namespace {

constexpr char kUsage[] =
    "kvkeepd - KV-cache memory manager for LLM inference.\n\n"
    "Owns the memory that holds attention keys and values, hands pages of it to inference\n"
    "workers of many tenants over gRPC, and keeps tenants apart.\n\n"
    "Examples:\n"
    "  kvkeepd                                   # host memory, ./kvkeep-data, 1 GiB pool\n"
    "  kvkeepd --data_dir=/var/lib/kvkeep --pool_mib=65536 --backend=cuda\n"
    "  kvkeepd --tcp=0.0.0.0:7070 --tls_cert=cert.pem --tls_key=key.pem\n"
    "  kvkeepd --log_format=json                 # one JSON object per log line\n\n"
    "Then: kvkeepctl --socket <data_dir>/kvkeepd.sock status";

// The flags of --help, by topic. A flag defined in this file but missing here is still shown
// (under "Other"), so --help never hides one.
struct FlagGroup {
  const char* title;
  std::vector<const char*> names;
};
const std::vector<FlagGroup>& FlagGroups() {
  static const auto* groups = new std::vector<FlagGroup>{
      {"Files and the Unix socket", {"data_dir", "socket", "admin_token_file", "bulk_channel"}},
      {"TCP and TLS",
       {"tcp", "tls_cert", "tls_key", "tls_client_ca", "insecure_tcp", "max_message_mib",
        "keepalive_seconds"}},
      {"Memory pool and backend",
       {"backend", "cuda_device", "cuda_arena_kind", "pool_mib", "arena_mib", "low_free",
        "high_free", "pressure_policy", "compress_threads"}},
      {"Spill tier (RocksDB on local disk)",
       {"spill_dir", "spill_block_cache_mib", "spill_min_blob_bytes", "spill_rate_limit_mib"}},
      {"Per-session limits",
       {"session_calls_per_second", "session_call_burst", "session_bytes_per_second",
        "session_byte_burst", "max_stats_bytes", "max_read_streams_per_tenant",
        "max_tokens_per_request",
        "max_pages_per_request", "max_metadata_bytes_per_tenant"}},
      {"Metrics and logs", {"metrics_address", "log_level", "log_format", "dumpable"}},
      {"Process", {"malloc_retain_mib", "mutex_deadlock_detection"}},
      {"Fleet tier (Redis Cluster)",
       {"fleet_redis", "fleet_user", "fleet_password_file", "node_name",
        "fleet_lookup_timeout_ms", "fleet_fetch_timeout_ms", "fleet_queue_mb"}},
  };
  return *groups;
}

// Whether a flag is one of kvkeepd's own (defined in this file), not one of Abseil's.
bool IsDaemonFlag(absl::string_view filename) {
  return absl::EndsWith(filename, "service/main.cc");
}

// Appends `text` wrapped at `width` columns, each line indented by `indent` spaces.
void AppendWrapped(absl::string_view text, size_t indent, size_t width, std::string* out) {
  std::string line;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (!line.empty() && indent + line.size() + 1 + word.size() > width) {
      absl::StrAppend(out, std::string(indent, ' '), line, "\n");
      line.clear();
    }
    absl::StrAppend(&line, line.empty() ? "" : " ", word);
  }
  if (!line.empty()) absl::StrAppend(out, std::string(indent, ' '), line, "\n");
}

void AppendFlagHelp(const absl::CommandLineFlag& flag, std::string* out) {
  const bool quoted = flag.IsOfType<std::string>();
  absl::StrAppend(out, "  --", flag.Name(), "  (default: ", quoted ? "\"" : "", flag.DefaultValue(),
                  quoted ? "\"" : "", ")\n");
  AppendWrapped(flag.Help(), 6, 100, out);
}

// `kvkeepd --help`: every flag of the daemon with its default and what it does.
std::string HelpText() {
  std::string out = absl::StrCat(kUsage, "\n\nFlags (--name=value):\n");
  const auto all = absl::GetAllFlags();
  std::vector<std::string> shown;
  for (const FlagGroup& group : FlagGroups()) {
    absl::StrAppend(&out, "\n", group.title, ":\n");
    for (const char* name : group.names) {
      auto it = all.find(name);
      if (it == all.end()) continue;
      AppendFlagHelp(*it->second, &out);
      shown.push_back(name);
    }
  }
  std::vector<const absl::CommandLineFlag*> others;
  for (const auto& [name, flag] : all) {
    if (IsDaemonFlag(flag->Filename()) &&
        std::find(shown.begin(), shown.end(), name) == shown.end()) {
      others.push_back(flag);
    }
  }
  std::sort(others.begin(), others.end(), [](auto* a, auto* b) { return a->Name() < b->Name(); });
  if (!others.empty()) absl::StrAppend(&out, "\nOther:\n");
  for (const absl::CommandLineFlag* flag : others) AppendFlagHelp(*flag, &out);
  absl::StrAppend(&out,
                  "\nLogs go to stderr, one event per line (docs/deploy.md, \"Logs\").\n"
                  "--helpfull also lists the flags of the libraries (Abseil's --flagfile, "
                  "--fromenv, ...);\n--version prints the version.\n\n"
                  "Exit status: 0 after --help or a clean stop (SIGTERM, SIGINT), 1 when the "
                  "daemon cannot\nstart (the log says why), 2 on a usage error (an unknown flag "
                  "or a bad value, named).\n");
  return out;
}

// Checks the command line before Abseil parses it, so that the answers are kvkeepd's: --help
// prints HelpText() and exits 0; an unknown flag, a bad value or a stray argument prints a message
// naming it and exits 2 (Abseil 20220623 would exit 1). Returns -1 to go on.
int CheckCommandLine(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg == "--help" || arg == "-help" || arg == "--helpshort" || arg == "-helpshort") {
      std::cout << HelpText();
      return 0;
    }
  }
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg.size() < 2 || arg[0] != '-') {
      std::fprintf(stderr,
                   "kvkeepd: unexpected argument \"%s\": kvkeepd takes only flags "
                   "(kvkeepd --help lists them)\n",
                   argv[i]);
      return 2;
    }
    arg.remove_prefix(arg.substr(0, 2) == "--" ? 2 : 1);
    const size_t eq = arg.find('=');
    const std::string name(arg.substr(0, eq));
    // Abseil's usage flags are not registered flags: ParseCommandLine answers them.
    if (name == "helpfull" || name == "helppackage" || name == "helpon" || name == "helpmatch" ||
        name == "version" || name == "only_check_args") {
      continue;
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && eq == std::string_view::npos && absl::StartsWith(name, "no")) {
      absl::CommandLineFlag* negated = absl::FindCommandLineFlag(name.substr(2));
      if (negated != nullptr && negated->IsOfType<bool>()) continue;  // --noinsecure_tcp
    }
    if (flag == nullptr) {
      std::fprintf(stderr, "kvkeepd: unknown flag --%s (kvkeepd --help lists the flags)\n",
                   name.c_str());
      return 2;
    }
    if (!IsDaemonFlag(flag->Filename())) continue;  // Abseil's own (--flagfile ...): its rules
    std::string value;
    if (eq != std::string_view::npos) {
      value = std::string(arg.substr(eq + 1));
    } else if (flag->IsOfType<bool>()) {
      value = "true";
    } else if (i + 1 < argc) {
      value = argv[++i];  // --flag value
    } else {
      std::fprintf(stderr, "kvkeepd: --%s needs a value (kvkeepd --help)\n", name.c_str());
      return 2;
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      std::fprintf(stderr, "kvkeepd: --%s=%s: %s (kvkeepd --help)\n", name.c_str(), value.c_str(),
                   error.c_str());
      return 2;
    }
  }
  return -1;
}

// Whether --name (or -name, with or without =value) is on the command line.
bool FlagGiven(int argc, char** argv, std::string_view name) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg.substr(0, 2) == "--") {
      arg.remove_prefix(2);
    } else if (arg.substr(0, 1) == "-") {
      arg.remove_prefix(1);
    } else {
      continue;
    }
    if (arg.substr(0, name.size()) == name &&
        (arg.size() == name.size() || arg[name.size()] == '=')) {
      return true;
    }
  }
  return false;
}

// The fleet tier's flags (docs/fleet.md). The password file is read here, once.
absl::Status ReadFleetOptions(kvkeep::ServiceOptions* options) {
  options->fleet_redis = absl::GetFlag(FLAGS_fleet_redis);
  options->fleet_user = absl::GetFlag(FLAGS_fleet_user);
  options->node_name = absl::GetFlag(FLAGS_node_name);
  if (options->node_name.empty()) {
    char host[256] = {};
    if (gethostname(host, sizeof(host) - 1) == 0) options->node_name = host;
  }
  options->fleet_lookup_timeout_ms = absl::GetFlag(FLAGS_fleet_lookup_timeout_ms);
  options->fleet_fetch_timeout_ms = absl::GetFlag(FLAGS_fleet_fetch_timeout_ms);
  options->fleet_queue_mib = absl::GetFlag(FLAGS_fleet_queue_mb);
  if (options->fleet_lookup_timeout_ms == 0 || options->fleet_fetch_timeout_ms == 0 ||
      options->fleet_queue_mib == 0) {
    return absl::InvalidArgumentError(
        "--fleet_lookup_timeout_ms, --fleet_fetch_timeout_ms and --fleet_queue_mb must be > 0");
  }
  const std::string password_file = absl::GetFlag(FLAGS_fleet_password_file);
  if (!password_file.empty()) {
    std::ifstream in(password_file);
    std::stringstream text;
    text << in.rdbuf();
    if (!in) {
      return absl::InvalidArgumentError(
          absl::StrCat("--fleet_password_file: cannot read ", password_file));
    }
    options->fleet_password = text.str();
    while (!options->fleet_password.empty() &&
           (options->fleet_password.back() == '\n' || options->fleet_password.back() == '\r')) {
      options->fleet_password.pop_back();
    }
  }
  if (options->fleet_redis.empty() &&
      (!options->fleet_user.empty() || !password_file.empty())) {
    return absl::InvalidArgumentError("--fleet_user and --fleet_password_file need --fleet_redis");
  }
  return absl::OkStatus();
}

// The parsed flags as options, or the usage error (naming the flag) that main prints.
absl::Status ReadOptions(int argc, char** argv, kvkeep::ServiceOptions* options) {
  options->data_dir = absl::GetFlag(FLAGS_data_dir);
  options->socket_path = absl::GetFlag(FLAGS_socket);
  options->tcp_address = absl::GetFlag(FLAGS_tcp);
  options->tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options->tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options->tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options->insecure_tcp = absl::GetFlag(FLAGS_insecure_tcp);
  options->bulk_channel = absl::GetFlag(FLAGS_bulk_channel);
  options->admin_token_file = absl::GetFlag(FLAGS_admin_token_file);
  auto backend = kvkeep::ParseBackendKind(absl::GetFlag(FLAGS_backend));
  if (!backend.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--backend: ", backend.status().message()));
  }
  options->backend = *backend;
  options->cuda_device = absl::GetFlag(FLAGS_cuda_device);
  auto cuda_arena_kind = kvkeep::ParseCudaArenaKind(absl::GetFlag(FLAGS_cuda_arena_kind));
  if (!cuda_arena_kind.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cuda_arena_kind: ", cuda_arena_kind.status().message()));
  }
  options->cuda_arena_kind = *cuda_arena_kind;
  options->pool_bytes = absl::GetFlag(FLAGS_pool_mib) << 20;
  options->arena_bytes = absl::GetFlag(FLAGS_arena_mib) << 20;
  options->max_message_bytes = absl::GetFlag(FLAGS_max_message_mib) << 20;
  options->keepalive_seconds = absl::GetFlag(FLAGS_keepalive_seconds);
  options->compress_threads = absl::GetFlag(FLAGS_compress_threads);
  options->low_free = absl::GetFlag(FLAGS_low_free);
  options->high_free = absl::GetFlag(FLAGS_high_free);
  options->spill_dir = absl::GetFlag(FLAGS_spill_dir);
  options->spill_block_cache_mib = absl::GetFlag(FLAGS_spill_block_cache_mib);
  options->spill_min_blob_bytes = absl::GetFlag(FLAGS_spill_min_blob_bytes);
  options->spill_rate_limit_mib = absl::GetFlag(FLAGS_spill_rate_limit_mib);
  options->metrics_address = absl::GetFlag(FLAGS_metrics_address);
  if (!kvkeep::ParsePressurePolicy(absl::GetFlag(FLAGS_pressure_policy),
                                   &options->pressure_policy)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--pressure_policy must be lru, capacity or compress, not \"",
                     absl::GetFlag(FLAGS_pressure_policy), "\""));
  }
  options->limits.calls_per_second = absl::GetFlag(FLAGS_session_calls_per_second);
  options->limits.call_burst = absl::GetFlag(FLAGS_session_call_burst);
  options->limits.bytes_per_second = absl::GetFlag(FLAGS_session_bytes_per_second);
  options->limits.byte_burst = absl::GetFlag(FLAGS_session_byte_burst);
  options->limits.max_stats_bytes = absl::GetFlag(FLAGS_max_stats_bytes);
  options->limits.max_read_streams = absl::GetFlag(FLAGS_max_read_streams_per_tenant);
  options->max_tokens_per_request = absl::GetFlag(FLAGS_max_tokens_per_request);
  options->max_pages_per_request = absl::GetFlag(FLAGS_max_pages_per_request);
  options->max_metadata_bytes_per_tenant = absl::GetFlag(FLAGS_max_metadata_bytes_per_tenant);
  const kvkeep::SessionLimitOptions& l = options->limits;
  if (!(l.calls_per_second >= 0) || !(l.bytes_per_second >= 0) ||
      (l.calls_per_second > 0 && !(l.call_burst >= 1)) ||
      (l.bytes_per_second > 0 && !(l.byte_burst >= 1)) || options->max_tokens_per_request == 0) {
    return absl::InvalidArgumentError(
        "--session_calls_per_second and --session_bytes_per_second must be >= 0 (0 = unlimited), "
        "their bursts >= 1, --max_tokens_per_request > 0");
  }
  // The default port is best effort (another daemon on the host may hold it); a given one is not.
  options->metrics_optional = !FlagGiven(argc, argv, "metrics_address");
  if (!(options->low_free >= 0 && options->low_free <= options->high_free &&
        options->high_free <= 1)) {
    return absl::InvalidArgumentError("need 0 <= --low_free <= --high_free <= 1");
  }
  if (options->pool_bytes == 0 || options->arena_bytes == 0 || options->max_message_bytes == 0 ||
      options->max_message_bytes > (1u << 30) || options->keepalive_seconds <= 0 ||
      options->compress_threads <= 0 || options->compress_threads > 64) {
    return absl::InvalidArgumentError(
        "--pool_mib, --arena_mib, --keepalive_seconds must be > 0 and --max_message_mib in "
        "1..1024, --compress_threads in 1..64");
  }
  auto level = kvkeep::log::ParseLevel(absl::GetFlag(FLAGS_log_level));
  if (!level.ok())
    return absl::InvalidArgumentError(absl::StrCat("--log_level: ", level.status().message()));
  auto format = kvkeep::log::ParseFormat(absl::GetFlag(FLAGS_log_format));
  if (!format.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--log_format: ", format.status().message()));
  }
  options->log_level = *level;
  options->log_format = *format;
  return ReadFleetOptions(options);
}

// The first event: the effective configuration, one field per flag (under the flag's name, in
// the flag's unit). File paths only: never the admin token or the contents of TLS files.
void LogStart(const kvkeep::ServiceOptions& o) {
  const kvkeep::SessionLimitOptions& l = o.limits;
  kvkeep::log::Info("daemon.start",
                    {{"version", KVKEEP_VERSION},
                     {"pid", static_cast<long>(getpid())},
                     {"data_dir", o.data_dir},
                     {"socket", o.socket_path},
                     {"admin_token_file", o.admin_token_file},
                     {"tcp", o.tcp_address},
                     {"tls_cert", o.tls_cert_file},
                     {"tls_key", o.tls_key_file},
                     {"tls_client_ca", o.tls_client_ca_file},
                     {"insecure_tcp", o.insecure_tcp},
                     {"bulk_channel", o.bulk_channel},
                     {"max_message_mib", o.max_message_bytes >> 20},
                     {"keepalive_seconds", o.keepalive_seconds},
                     {"backend", absl::GetFlag(FLAGS_backend)},
                     {"cuda_device", o.cuda_device},
                     {"cuda_arena_kind", absl::GetFlag(FLAGS_cuda_arena_kind)},
                     {"pool_mib", o.pool_bytes >> 20},
                     {"arena_mib", o.arena_bytes >> 20},
                     {"low_free", o.low_free},
                     {"high_free", o.high_free},
                     {"pressure_policy", kvkeep::PressurePolicyName(o.pressure_policy)},
                     {"compress_threads", o.compress_threads},
                     {"spill_dir", o.spill_dir},
                     {"spill_block_cache_mib", o.spill_block_cache_mib},
                     {"spill_min_blob_bytes", o.spill_min_blob_bytes},
                     {"spill_rate_limit_mib", o.spill_rate_limit_mib},
                     {"session_calls_per_second", l.calls_per_second},
                     {"session_call_burst", l.call_burst},
                     {"session_bytes_per_second", l.bytes_per_second},
                     {"session_byte_burst", l.byte_burst},
                     {"max_stats_bytes", l.max_stats_bytes},
                     {"max_read_streams_per_tenant", l.max_read_streams},
                     {"max_tokens_per_request", o.max_tokens_per_request},
                     {"max_pages_per_request", o.max_pages_per_request},
                     {"max_metadata_bytes_per_tenant", o.max_metadata_bytes_per_tenant},
                     {"metrics_address", o.metrics_address},
                     {"log_level", absl::GetFlag(FLAGS_log_level)},
                     {"log_format", absl::GetFlag(FLAGS_log_format)},
                     {"dumpable", absl::GetFlag(FLAGS_dumpable)},
                     {"malloc_retain_mib", absl::GetFlag(FLAGS_malloc_retain_mib)},
                     {"mutex_deadlock_detection", absl::GetFlag(FLAGS_mutex_deadlock_detection)},
                     // The fleet tier (the password file's path, never the password).
                     {"fleet_redis", o.fleet_redis},
                     {"fleet_user", o.fleet_user},
                     {"fleet_password_file", absl::GetFlag(FLAGS_fleet_password_file)},
                     {"node_name", o.node_name},
                     {"fleet_lookup_timeout_ms", o.fleet_lookup_timeout_ms},
                     {"fleet_fetch_timeout_ms", o.fleet_fetch_timeout_ms},
                     {"fleet_queue_mb", o.fleet_queue_mib}});
}

// gRPC's own messages (gpr_log) as log events, so that a JSON log stays JSON.
void ForwardGrpcLog(gpr_log_func_args* args) {
  const kvkeep::log::Level level =
      args->severity == GPR_LOG_SEVERITY_ERROR  ? kvkeep::log::Level::kError
      : args->severity == GPR_LOG_SEVERITY_INFO ? kvkeep::log::Level::kInfo
                                                : kvkeep::log::Level::kDebug;
  if (!kvkeep::log::Enabled(level)) return;
  kvkeep::log::Write(level, "grpc.log",
                     {{"message", args->message != nullptr ? args->message : ""},
                      {"file", args->file != nullptr ? args->file : ""},
                      {"line", args->line}});
}

// Signals reach the daemon through a pipe: a handler runs on whichever thread the kernel picks
// (libraries such as OpenBLAS start threads before main can block signals), and only writes.
int signal_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  const char byte = static_cast<char>(sig);
  (void)!write(signal_pipe[1], &byte, 1);
}

const char* SignalName(int sig) {
  switch (sig) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    default:
      return "signal";
  }
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = IsDaemonFlag;
  usage_config.contains_helpshort_flags = IsDaemonFlag;
  usage_config.version_string = [] { return std::string("kvkeepd " KVKEEP_VERSION "\n"); };
  absl::SetFlagsUsageConfig(usage_config);
  if (int exit_code = CheckCommandLine(argc, argv); exit_code >= 0) return exit_code;
  absl::ParseCommandLine(argc, argv);

  kvkeep::ServiceOptions options;
  if (absl::Status usage = ReadOptions(argc, argv, &options); !usage.ok()) {
    std::fprintf(stderr, "kvkeepd: %s\n", std::string(usage.message()).c_str());
    return 2;
  }
  // Before any thread starts: process-wide allocator and mutex settings.
  if (absl::Status tuned = kvkeep::TuneAllocator(absl::GetFlag(FLAGS_malloc_retain_mib) << 20);
      !tuned.ok()) {
    std::fprintf(stderr, "kvkeepd: --malloc_retain_mib: %s\n", std::string(tuned.message()).c_str());
    return 2;
  }
  kvkeep::SetMutexDeadlockDetection(absl::GetFlag(FLAGS_mutex_deadlock_detection));
  kvkeep::log::Configure(options.log_level, options.log_format);
  gpr_set_log_function(ForwardGrpcLog);
  const absl::Time started = absl::Now();
  LogStart(options);
  if (!absl::GetFlag(FLAGS_dumpable) && prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    kvkeep::log::Error("daemon.start_failed",
                       {{"status", absl::StrCat("prctl(PR_SET_DUMPABLE, 0): ",
                                                std::strerror(errno))}});
    return 1;
  }
  kvkeep::log::Info("daemon.dumpable", {{"dumpable", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)}});

  if (pipe(signal_pipe) != 0) {
    kvkeep::log::Error("daemon.start_failed",
                       {{"status", absl::StrCat("pipe: ", std::strerror(errno))}});
    return 1;
  }
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  auto server = kvkeep::Server::Start(options);
  if (!server.ok()) {
    kvkeep::log::Error("daemon.start_failed", {{"status", server.status()}});
    return 1;
  }
  const auto status = (*server)->engine().Status();
  kvkeep::log::Info("daemon.ready",
                    {{"version", status.version()},
                     {"backend", status.backend()},
                     {"backend_device", status.backend_device()},
                     {"pool_mib", status.pool_capacity_bytes() >> 20},
                     {"tenants", status.tenants()},
                     {"spilled_sequences", status.spilled_sequences()},
                     {"socket", (*server)->socket_path()},
                     {"tcp", options.tcp_address},
                     {"metrics", (*server)->metrics_address()},
                     {"startup_seconds", absl::ToDoubleSeconds(absl::Now() - started)}});

  std::thread waiter([&] {
    char sig = 0;
    while (read(signal_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    constexpr absl::Duration kGrace = absl::Seconds(5);
    kvkeep::log::Info("daemon.stopping", {{"signal", SignalName(sig)},
                                          {"signal_number", static_cast<int>(sig)},
                                          {"sessions", (*server)->engine().Status().sessions()},
                                          {"grace_seconds", absl::ToDoubleSeconds(kGrace)}});
    (*server)->Shutdown(kGrace);
  });
  (*server)->Wait();
  waiter.join();
  server->reset();
  kvkeep::log::Info("daemon.stopped",
                    {{"uptime_seconds", absl::ToDoubleSeconds(absl::Now() - started)}});
  return 0;
}
