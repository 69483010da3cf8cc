// kvkeepd: the KV-cache memory manager daemon. See README.md and `kvkeepd --help`.
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <string_view>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "service/rpc/server.h"

ABSL_FLAG(std::string, data_dir, "./kvkeep-data",
          "Folder for the metadata database (RocksDB), the socket and the admin token");
ABSL_FLAG(std::string, socket, "", "Unix socket to listen on (default <data_dir>/kvkeepd.sock)");
ABSL_FLAG(std::string, tcp, "", "Also listen on this host:port (needs --tls_cert/--tls_key)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain for --tcp");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tcp");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA: when set, TCP clients must present a certificate");
ABSL_FLAG(bool, insecure_tcp, false, "Allow --tcp without TLS (loopback tests only)");
ABSL_FLAG(std::string, admin_token_file, "",
          "File holding the admin token (default <data_dir>/admin.token, created 0600 if missing)");
ABSL_FLAG(std::string, backend, "auto", "Memory backend: auto, cpu (POSIX shared memory) or cuda");
ABSL_FLAG(int, cuda_device, 0,
          "CUDA device ordinal for --backend=cuda/auto, as this process numbers them (after "
          "CUDA_VISIBLE_DEVICES); arenas are exported with the device's UUID");
ABSL_FLAG(uint64_t, pool_mib, 1024, "Device (or host) memory the daemon may hand out, in MiB");
ABSL_FLAG(uint64_t, arena_mib, 64, "Size of one exported arena, in MiB");
ABSL_FLAG(uint64_t, max_message_mib, 4, "Largest gRPC message accepted or sent, in MiB");
ABSL_FLAG(double, low_free, 0.05,
          "Spill cold sequences when less than this fraction of the pool is free (persisted "
          "kvkeepctl pool watermarks override it)");
ABSL_FLAG(double, high_free, 0.10, "...until this fraction is free");
ABSL_FLAG(std::string, spill_dir, "",
          "Folder of the spill tier's RocksDB (default <data_dir>/spill); put it on a fast local "
          "disk");
ABSL_FLAG(uint64_t, spill_block_cache_mib, 32, "Block cache of the spill database, MiB");
ABSL_FLAG(uint64_t, spill_min_blob_bytes, 4096, "Spilled values this large go to blob files");
ABSL_FLAG(uint64_t, spill_rate_limit_mib, 0,
          "Limit on background spill-database writes, MiB/s (0 = none)");
ABSL_FLAG(std::string, pressure_policy, "lru",
          "How pool pressure frees pages: lru (spill whole least-recently-used sequences, "
          "lossless) or capacity (drop the cheapest whole pages by capacity cost, then spill)");
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
ABSL_FLAG(uint32_t, max_tokens_per_request, 1u << 20, "Most tokens one AllocatePages may ask for");
ABSL_FLAG(uint64_t, max_pages_per_request, 0,
          "Most pages one AllocatePages may add over all heads (0 = what fits in a reply message)");

namespace {

// Signals reach the daemon through a pipe: a handler runs on whichever thread the kernel picks
// (libraries such as OpenBLAS start threads before main can block signals), and only writes.
int signal_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  const char byte = static_cast<char>(sig);
  (void)!write(signal_pipe[1], &byte, 1);
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

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "kvkeepd - KV-cache memory manager for LLM inference.\n\n"
      "Owns the memory that holds attention keys and values, hands pages of it to inference\n"
      "workers of many tenants over gRPC, and keeps tenants apart.\n\n"
      "Examples:\n"
      "  kvkeepd                                   # host memory, ./kvkeep-data, 1 GiB pool\n"
      "  kvkeepd --data_dir=/var/lib/kvkeep --pool_mib=65536 --backend=cuda\n"
      "  kvkeepd --tcp=0.0.0.0:7070 --tls_cert=cert.pem --tls_key=key.pem\n\n"
      "Then: kvkeepctl --socket <data_dir>/kvkeepd.sock status");
  absl::ParseCommandLine(argc, argv);

  kvkeep::ServiceOptions options;
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.socket_path = absl::GetFlag(FLAGS_socket);
  options.tcp_address = absl::GetFlag(FLAGS_tcp);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.insecure_tcp = absl::GetFlag(FLAGS_insecure_tcp);
  options.admin_token_file = absl::GetFlag(FLAGS_admin_token_file);
  auto backend = kvkeep::ParseBackendKind(absl::GetFlag(FLAGS_backend));
  if (!backend.ok()) {
    std::fprintf(stderr, "kvkeepd: %s\n", std::string(backend.status().message()).c_str());
    return 2;
  }
  options.backend = *backend;
  options.cuda_device = absl::GetFlag(FLAGS_cuda_device);
  options.pool_bytes = absl::GetFlag(FLAGS_pool_mib) << 20;
  options.arena_bytes = absl::GetFlag(FLAGS_arena_mib) << 20;
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_mib) << 20;
  options.keepalive_seconds = absl::GetFlag(FLAGS_keepalive_seconds);
  options.compress_threads = absl::GetFlag(FLAGS_compress_threads);
  options.low_free = absl::GetFlag(FLAGS_low_free);
  options.high_free = absl::GetFlag(FLAGS_high_free);
  options.spill_dir = absl::GetFlag(FLAGS_spill_dir);
  options.spill_block_cache_mib = absl::GetFlag(FLAGS_spill_block_cache_mib);
  options.spill_min_blob_bytes = absl::GetFlag(FLAGS_spill_min_blob_bytes);
  options.spill_rate_limit_mib = absl::GetFlag(FLAGS_spill_rate_limit_mib);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  if (!kvkeep::ParsePressurePolicy(absl::GetFlag(FLAGS_pressure_policy),
                                   &options.pressure_policy)) {
    std::fprintf(stderr, "kvkeepd: --pressure_policy must be lru or capacity, not \"%s\"\n",
                 absl::GetFlag(FLAGS_pressure_policy).c_str());
    return 2;
  }
  options.limits.calls_per_second = absl::GetFlag(FLAGS_session_calls_per_second);
  options.limits.call_burst = absl::GetFlag(FLAGS_session_call_burst);
  options.limits.bytes_per_second = absl::GetFlag(FLAGS_session_bytes_per_second);
  options.limits.byte_burst = absl::GetFlag(FLAGS_session_byte_burst);
  options.limits.max_stats_bytes = absl::GetFlag(FLAGS_max_stats_bytes);
  options.max_tokens_per_request = absl::GetFlag(FLAGS_max_tokens_per_request);
  options.max_pages_per_request = absl::GetFlag(FLAGS_max_pages_per_request);
  const kvkeep::SessionLimitOptions& l = options.limits;
  if (!(l.calls_per_second >= 0) || !(l.bytes_per_second >= 0) ||
      (l.calls_per_second > 0 && !(l.call_burst >= 1)) ||
      (l.bytes_per_second > 0 && !(l.byte_burst >= 1)) || options.max_tokens_per_request == 0) {
    std::fprintf(stderr,
                 "kvkeepd: --session_calls_per_second and --session_bytes_per_second must be >= 0 "
                 "(0 = unlimited), their bursts >= 1, --max_tokens_per_request > 0\n");
    return 2;
  }
  // The default port is best effort (another daemon on the host may hold it); a given one is not.
  options.metrics_optional = !FlagGiven(argc, argv, "metrics_address");
  if (!(options.low_free >= 0 && options.low_free <= options.high_free &&
        options.high_free <= 1)) {
    std::fprintf(stderr, "kvkeepd: need 0 <= --low_free <= --high_free <= 1\n");
    return 2;
  }
  if (options.pool_bytes == 0 || options.arena_bytes == 0 || options.max_message_bytes == 0 ||
      options.max_message_bytes > (1u << 30) || options.keepalive_seconds <= 0 ||
      options.compress_threads <= 0 || options.compress_threads > 64) {
    std::fprintf(stderr, "kvkeepd: --pool_mib, --arena_mib, --keepalive_seconds must be > 0 and "
                         "--max_message_mib in 1..1024, --compress_threads in 1..64\n");
    return 2;
  }

  if (pipe(signal_pipe) != 0) {
    std::perror("kvkeepd: pipe");
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
    std::fprintf(stderr, "kvkeepd: cannot start: %s\n", server.status().ToString().c_str());
    return 1;
  }
  auto status = (*server)->engine().Status();
  std::fprintf(stderr,
               "kvkeepd %s: backend=%s (%s) pool=%llu MiB tenants=%u listening on unix:%s%s\n",
               status.version().c_str(), status.backend().c_str(),
               status.backend_device().c_str(),
               static_cast<unsigned long long>(options.pool_bytes >> 20), status.tenants(),
               (*server)->socket_path().c_str(),
               options.tcp_address.empty() ? "" : (" and " + options.tcp_address).c_str());
  if (!(*server)->metrics_address().empty()) {
    std::fprintf(stderr, "kvkeepd: metrics at http://%s/metrics\n",
                 (*server)->metrics_address().c_str());
  }
  std::fflush(stderr);

  std::thread waiter([&] {
    char sig = 0;
    while (read(signal_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    std::fprintf(stderr, "kvkeepd: signal %d, draining sessions and shutting down\n", sig);
    (*server)->Shutdown();
  });
  (*server)->Wait();
  waiter.join();
  server->reset();
  std::fprintf(stderr, "kvkeepd: stopped\n");
  return 0;
}
