#include "service/rpc/server.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/backend.h"
#include "common/bulk_frame.h"
#include "service/arena_channel/arena_channel_wire.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "service/fleet/fleet_metrics.h"
#include "service/fleet/node_address.h"
#include "service/fleet/redis_fleet_tier.h"
#include "service/observability/log.h"
#include "service/storage/private_dir.h"
#include "service/token_auth.h"

namespace kvkeep {
namespace {

absl::Status MakeDirs(const std::string& path) {
  std::string partial;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || (path[i] == '/' && i > 0)) {
      partial = path.substr(0, i);
      if (mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST) {
        return absl::PermissionDeniedError(
            absl::StrCat("cannot create ", partial, ": ", std::strerror(errno)));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const char* BackendKindName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kAuto:
      return "auto";
    case BackendKind::kCpu:
      return "cpu";
    case BackendKind::kCuda:
      return "cuda";
  }
  return "unknown";
}

// The backend in use, and why when --backend=auto did not find CUDA.
void LogBackend(const ServiceOptions& options, const Backend& backend,
                const std::string& fallback_reason) {
  const bool cuda = backend.device_ordinal() >= 0;
  log::Info("backend.ready", {{"requested", BackendKindName(options.backend)},
                              {"backend", backend.name()},
                              {"device", backend.device()},
                              {"cuda_device", cuda ? options.cuda_device : -1}});
  if (!fallback_reason.empty()) {
    log::Warn("backend.fallback",
              {{"requested", BackendKindName(options.backend)},
               {"backend", backend.name()},
               {"reason", fallback_reason}});
  }
}

void LogTcpListener(const ServiceOptions& options, int port) {
  const char* security = !options.tls_cert_file.empty()
                             ? (options.tls_client_ca_file.empty() ? "tls" : "mutual_tls")
                             : "none";
  // Plain-text TCP carries tokens in the clear: loud, even though the operator asked for it.
  log::Write(options.tls_cert_file.empty() ? log::Level::kWarn : log::Level::kInfo,
             "listener.bound",
             {{"transport", "tcp"},
              {"address", options.tcp_address},
              {"port", port},
              {"security", security}});
}

// The data dir, created when missing (mode 0700), as an absolute path without symlinks.
absl::StatusOr<std::string> ResolveDataDir(const std::string& data_dir) {
  // Everything the daemon creates from here on is private to its uid, whatever the umask.
  RestrictNewFiles();
  RETURN_IF_ERROR(MakeDirs(data_dir));
  char resolved[PATH_MAX];
  if (realpath(data_dir.c_str(), resolved) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("bad data dir ", data_dir));
  }
  RETURN_IF_ERROR(PreparePrivateDir(resolved, "data dir"));
  return std::string(resolved);
}

EngineOptions EngineOptionsFrom(const ServiceOptions& options) {
  EngineOptions engine_options;
  engine_options.low_free = options.low_free;
  engine_options.high_free = options.high_free;
  engine_options.pool.capacity_bytes = options.pool_bytes;
  engine_options.pool.arena_bytes = options.arena_bytes;
  engine_options.max_message_bytes = options.max_message_bytes;
  engine_options.pressure_policy = options.pressure_policy;
  engine_options.max_tokens_per_allocation = options.max_tokens_per_request;
  engine_options.max_metadata_bytes_per_tenant = options.max_metadata_bytes_per_tenant;
  engine_options.max_pages_per_request =
      options.max_pages_per_request != 0
          ? options.max_pages_per_request
          : (options.max_message_bytes - std::min<uint64_t>(options.max_message_bytes / 2, 64 << 10)) / 16;
  engine_options.max_pages_per_chunked_request = options.max_pages_per_request;
  return engine_options;
}

// Adds the TCP listener of --tcp_address to `builder`: TLS (mutual when a client CA is given), or
// plain text only when --insecure_tcp asks for it. `tcp_port` receives the port bound.
absl::Status AddTcpListener(const ServiceOptions& options, grpc::ServerBuilder* builder,
                            int* tcp_port) {
  if (!options.tls_cert_file.empty()) {
    grpc::SslServerCredentialsOptions ssl(
        options.tls_client_ca_file.empty()
            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ASSIGN_OR_RETURN(std::string cert, ReadFile(options.tls_cert_file));
    ASSIGN_OR_RETURN(std::string key, ReadFile(options.tls_key_file));
    ssl.pem_key_cert_pairs.push_back({key, cert});
    if (!options.tls_client_ca_file.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFile(options.tls_client_ca_file));
    }
    builder->AddListeningPort(options.tcp_address, grpc::SslServerCredentials(ssl), tcp_port);
  } else if (options.insecure_tcp) {
    builder->AddListeningPort(options.tcp_address, grpc::InsecureServerCredentials(), tcp_port);
  } else {
    return absl::InvalidArgumentError(
        "TCP needs TLS: give --tls_cert and --tls_key (or --insecure_tcp for loopback tests)");
  }
  return absl::OkStatus();
}

}  // namespace

// The most header bytes one call may carry (all its metadata together).
constexpr int kMaxHeaderListBytes = 256 << 10;

absl::StatusOr<std::string> LoadOrCreateAdminToken(const std::string& path) {
  if (access(path.c_str(), F_OK) == 0) {
    ASSIGN_OR_RETURN(std::string token, ReadFile(path));
    token = std::string(absl::StripAsciiWhitespace(token));
    if (token.size() < 16) {
      return absl::InvalidArgumentError(
          absl::StrCat("admin token in ", path, " is shorter than 16 characters"));
    }
    return token;
  }
  std::string token = GenerateToken();
  std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr || fchmod(fileno(f), 0600) != 0) {
    if (f != nullptr) std::fclose(f);
    return absl::PermissionDeniedError(absl::StrCat("cannot write ", tmp, ": ", std::strerror(errno)));
  }
  std::fprintf(f, "%s\n", token.c_str());
  if (std::fflush(f) != 0 || fsync(fileno(f)) != 0 || std::fclose(f) != 0 ||
      std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  return token;
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServiceOptions& options) {
  auto server = std::unique_ptr<Server>(new Server());
  ASSIGN_OR_RETURN(const std::string data_dir, ResolveDataDir(options.data_dir));
  // RocksDB's LOCK keeps a second daemon off this data dir, so the clean-up in OpenBackend is safe.
  ASSIGN_OR_RETURN(server->store_, MetadataStore::Open(data_dir + "/db"));
  RETURN_IF_ERROR(server->OpenBackend(options, data_dir));
  RETURN_IF_ERROR(server->OpenSpillStore(options, data_dir));
  RETURN_IF_ERROR(server->OpenFleet(options));
  EngineOptions engine_options = EngineOptionsFrom(options);
  engine_options.fleet = server->fleet_.get();
  engine_options.fleet_lookup_timeout = absl::Milliseconds(options.fleet_lookup_timeout_ms);
  engine_options.fleet_fetch_timeout = absl::Milliseconds(options.fleet_fetch_timeout_ms);
  engine_options.fleet_node_name = options.node_name;
  ASSIGN_OR_RETURN(server->engine_,
                   CacheEngine::Create(server->backend_.get(), server->store_.get(),
                                       engine_options, server->spill_.get()));
  RETURN_IF_ERROR(server->CreateServices(options, data_dir));
  RETURN_IF_ERROR(server->StartGrpc(options, data_dir));
  RETURN_IF_ERROR(server->StartMetricsHttp(options));
  return server;
}

absl::Status Server::OpenFleet(const ServiceOptions& options) {
  if (options.fleet_redis.empty()) return absl::OkStatus();
  fleet::RedisFleetOptions fleet_options;
  absl::StatusOr<std::vector<fleet::NodeAddress>> seeds = fleet::ParseSeedList(options.fleet_redis);
  if (!seeds.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--fleet_redis: ", seeds.status().message()));
  }
  fleet_options.cluster.seeds = *std::move(seeds);
  fleet_options.cluster.connection.user = options.fleet_user;
  fleet_options.cluster.connection.password = options.fleet_password;
  fleet_options.max_queue_bytes = options.fleet_queue_mib << 20;
  ASSIGN_OR_RETURN(fleet_, fleet::RedisFleetTier::Create(std::move(fleet_options)));
  log::Info("fleet.configured", {{"seeds", options.fleet_redis},
                                 {"user", options.fleet_user},
                                 {"node_name", options.node_name},
                                 {"queue_mib", options.fleet_queue_mib}});
  return absl::OkStatus();
}

absl::Status Server::OpenBackend(const ServiceOptions& options, const std::string& data_dir) {
  BackendOptions backend_options;
  backend_options.kind = options.backend;
  backend_options.cuda_device = options.cuda_device;
  backend_options.cuda_arena_kind = options.cuda_arena_kind;
  // Arenas are named after the data dir, so a restarted daemon finds what its crashed
  // predecessor left in /dev/shm.
  backend_options.shm_prefix = "kvkeep-" + HashToken(data_dir).substr(0, 12);
  int stale = RemoveStaleArenas(backend_options);
  if (stale > 0) {
    log::Warn("arenas.stale_removed", {{"count", stale}, {"prefix", backend_options.shm_prefix}});
  }
  std::string fallback_reason;
  ASSIGN_OR_RETURN(backend_, CreateBackend(backend_options, &fallback_reason));
  LogBackend(options, *backend_, fallback_reason);
  return absl::OkStatus();
}

absl::Status Server::OpenSpillStore(const ServiceOptions& options, const std::string& data_dir) {
  SpillStore::Options spill_options;
  spill_options.path = options.spill_dir.empty() ? data_dir + "/spill" : options.spill_dir;
  if (!options.spill_dir.empty()) {
    RETURN_IF_ERROR(MakeDirs(options.spill_dir));
    RETURN_IF_ERROR(PreparePrivateDir(options.spill_dir, "spill dir"));
  }
  spill_options.block_cache_mib = options.spill_block_cache_mib;
  spill_options.min_blob_size = options.spill_min_blob_bytes;
  spill_options.rate_limit_bytes_per_sec = static_cast<int64_t>(options.spill_rate_limit_mib << 20);
  ASSIGN_OR_RETURN(spill_, SpillStore::Open(spill_options));
  ASSIGN_OR_RETURN(SpillRecoveryReport recovered, spill_->Recover());
  // Corrupt manifests mean spilled sequences that cannot come back: the operator should know.
  log::Write(recovered.corrupt_manifests > 0 ? log::Level::kWarn : log::Level::kInfo,
             "spill.opened",
             {{"path", spill_options.path},
              {"sequences", recovered.sequences},
              {"bytes", recovered.bytes},
              {"orphan_pages_removed", recovered.orphan_pages},
              {"orphan_sequences", recovered.orphan_sequences},
              {"corrupt_manifests", recovered.corrupt_manifests}});
  return absl::OkStatus();
}

absl::Status Server::CreateServices(const ServiceOptions& options, const std::string& data_dir) {
  const std::string token_file =
      options.admin_token_file.empty() ? data_dir + "/admin.token" : options.admin_token_file;
  const bool token_existed = access(token_file.c_str(), F_OK) == 0;
  ASSIGN_OR_RETURN(std::string admin_token, LoadOrCreateAdminToken(token_file));
  log::Info("admin_token.ready", {{"path", token_file}, {"created", !token_existed}});
  const std::string admin_hash = HashToken(admin_token);
  // Tenants were loaded above: none may hold the admin token, and none may take it later.
  RETURN_IF_ERROR(engine_->ReserveAdminToken(admin_hash));
  executor_ = std::make_unique<Executor>(options.compress_threads);
  limits_ = std::make_unique<SessionLimits>(options.limits);
  kvcache_ = std::make_unique<KvCacheService>(engine_.get(), executor_.get(), admin_hash,
                                              limits_.get());
  kv_batch_ = std::make_unique<KvBatchService>(kvcache_.get());
  admin_ = std::make_unique<AdminService>(engine_.get(), executor_.get(), admin_hash);
  return absl::OkStatus();
}

absl::Status Server::StartGrpc(const ServiceOptions& options, const std::string& data_dir) {
  socket_path_ = options.socket_path.empty() ? data_dir + "/kvkeepd.sock" : options.socket_path;
  if (socket_path_.size() >= 107) {
    return absl::InvalidArgumentError(absl::StrCat(
        "socket path ", socket_path_, " is longer than a Unix socket allows (107)"));
  }
  unlink(socket_path_.c_str());  // a leftover from a crash; the DB lock proves it unused

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();  // grpc.reflection.v1alpha
  metrics_ = std::make_unique<Metrics>();
  grpc::ServerBuilder builder;
  builder.experimental().SetInterceptorCreators(MetricsInterceptorCreators(metrics_.get()));
  builder.AddListeningPort("unix:" + socket_path_, grpc::InsecureServerCredentials());
  int tcp_port = 0;  // the port bound, filled in by BuildAndStart (":0" asks for any free one)
  if (!options.tcp_address.empty()) {
    RETURN_IF_ERROR(AddTcpListener(options, &builder, &tcp_port));
  }
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  const int keepalive_ms = options.keepalive_seconds * 1000;
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, keepalive_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, keepalive_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  // Bulk bytes (WriteKV/ReadKV): 1 MiB HTTP/2 frames instead of 16 KiB (a chunk's keys then
  // arrive in one slice and are written to the pages straight from it) and a 4 MiB stream window
  // (several chunks in flight instead of stalling on the 64 KiB default).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 1 << 20);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4 << 20);
  // Header lists (e.g. an oversized authorization header) are bounded explicitly and the bound is
  // advertised in SETTINGS_MAX_HEADER_LIST_SIZE, so a client checks it before sending and an
  // oversized call fails alone instead of disturbing the connection's other calls (api.md §6.2).
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, kMaxHeaderListBytes);
  RETURN_IF_ERROR(StartArenaChannel());
  if (options.bulk_channel) RETURN_IF_ERROR(StartBulkChannel());
  builder.RegisterService(kvcache_.get());
  builder.RegisterService(kv_batch_.get());
  builder.RegisterService(admin_.get());
  grpc_ = builder.BuildAndStart();
  if (grpc_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot listen on unix:", socket_path_,
                                               options.tcp_address.empty() ? "" : " or ",
                                               options.tcp_address));
  }
  if (chmod(socket_path_.c_str(), 0660) != 0) {
    return absl::PermissionDeniedError(absl::StrCat("cannot chmod ", socket_path_));
  }
  log::Info("listener.bound", {{"transport", "unix"}, {"address", socket_path_}, {"mode", "0660"}});
  if (!options.tcp_address.empty()) LogTcpListener(options, tcp_port);
  return absl::OkStatus();
}

absl::Status Server::StartArenaChannel() {
  arena_fd_source_ = std::make_unique<EngineArenaFdSource>(engine_.get());
  auto channel =
      ArenaChannelServer::Start(ArenaChannelPathFor(socket_path_), arena_fd_source_.get());
  if (absl::IsInvalidArgument(channel.status())) {
    log::Warn("arena_channel.disabled", {{"status", channel.status()}});
    return absl::OkStatus();
  }
  if (!channel.ok()) return channel.status();
  arena_channel_ = *std::move(channel);
  kvcache_->set_arena_channel(arena_channel_.get());
  return absl::OkStatus();
}

absl::Status Server::StartBulkChannel() {
  auto channel =
      BulkChannelServer::Start(BulkChannelPathFor(socket_path_), engine_.get(), limits_.get());
  if (absl::IsInvalidArgument(channel.status())) {
    log::Warn("bulk_channel.disabled", {{"status", channel.status()}});
    return absl::OkStatus();
  }
  if (!channel.ok()) return channel.status();
  bulk_channel_ = *std::move(channel);
  kvcache_->set_bulk_channel(bulk_channel_.get());
  return absl::OkStatus();
}

absl::Status Server::StartMetricsHttp(const ServiceOptions& options) {
  if (options.metrics_address.empty()) return absl::OkStatus();
  auto http = MetricsHttpServer::Start(options.metrics_address, [this] {
    ExpositionWriter extra;  // families kept outside Metrics
    limits_->WriteMetrics(&extra);
    if (bulk_channel_ != nullptr) bulk_channel_->WriteMetrics(&extra);
    std::string text =
        RenderMetrics(engine_->Status(), engine_->pool().Stats(), *metrics_) + extra.Take();
    if (fleet_ != nullptr) {  // the fleet tier's families (docs/fleet.md)
      text += fleet::RenderFleetMetrics(*fleet_, absl::Now() + absl::Milliseconds(200));
    }
    return text;
  });
  if (http.ok()) {
    metrics_http_ = std::move(*http);
    log::Info("listener.bound", {{"transport", "http"},
                                 {"address", metrics_http_->address()},
                                 {"path", "/metrics"}});
  } else if (options.metrics_optional) {
    log::Warn("metrics.disabled", {{"address", options.metrics_address}, {"status", http.status()}});
  } else {
    return http.status();
  }
  return absl::OkStatus();
}

void Server::Shutdown(absl::Duration grace) {
  if (grpc_ == nullptr) return;
  engine_->EndAllSessions(absl::OkStatus());
  grpc_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
}

void Server::Wait() {
  if (grpc_ != nullptr) grpc_->Wait();
}

Server::~Server() {
  metrics_http_.reset();  // its thread reads the engine
  Shutdown(absl::ZeroDuration());
  Wait();
  grpc_.reset();
  metrics_.reset();
  executor_.reset();  // runs what is queued (the server no longer accepts calls)
  kv_batch_.reset();
  kvcache_.reset();
  admin_.reset();
  arena_channel_.reset();  // after every session ended (grpc_ is gone), before the engine
  bulk_channel_.reset();   // likewise; before limits_ and the engine its connections use
  arena_fd_source_.reset();
  engine_.reset();
  backend_.reset();
  spill_.reset();
  store_.reset();
  unlink(socket_path_.c_str());
}

}  // namespace kvkeep
