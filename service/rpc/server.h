// kvkeepd assembled: metadata store, backend, engine, gRPC services and listeners.
//
//   ASSIGN_OR_RETURN(auto server, Server::Start(options));
//   server->Wait();          // until Shutdown() from a signal handler thread
//
// Start() logs what it set up, for the operator (service/observability/log.h; docs/deploy.md,
// "Logs"): arenas.stale_removed, backend.ready / backend.fallback, spill.opened,
// admin_token.ready (the path, never the token), listener.bound per listener, metrics.disabled.
// Thread-safe: Shutdown() may be called from any thread, once or more.
#ifndef KVKEEP_SERVICE_RPC_SERVER_H_
#define KVKEEP_SERVICE_RPC_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/server.h"
#include "service/arena_channel/arena_channel_server.h"
#include "service/arena_channel/engine_arena_fd_source.h"
#include "service/bulk_channel/bulk_channel_server.h"
#include "service/rpc/admin_service.h"
#include "service/engine/cache_engine.h"
#include "service/fleet/fleet_tier.h"
#include "service/rpc/kv_batch_service.h"
#include "service/rpc/kvcache_service.h"
#include "service/observability/metrics.h"
#include "service/observability/metrics_http.h"
#include "service/options.h"

namespace kvkeep {

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServiceOptions& options);
  ~Server();

  // Ends worker sessions with a drain event, stops accepting calls, waits up to `grace` for
  // in-flight calls.
  void Shutdown(absl::Duration grace = absl::Seconds(5));
  void Wait();

  const std::string& socket_path() const { return socket_path_; }
  CacheEngine& engine() { return *engine_; }
  // Where GET /metrics is served (e.g. 127.0.0.1:9464); empty when metrics are off.
  std::string metrics_address() const { return metrics_http_ ? metrics_http_->address() : ""; }

 private:
  Server() = default;

  // The steps of Start(), in order; each fills the members it names and logs what it set up.
  // Arenas left by a crashed daemon on this data dir are removed, then the backend is created.
  absl::Status OpenBackend(const ServiceOptions& options, const std::string& data_dir);
  // Opens the spill tier and recovers it (orphan pages removed, corrupt manifests counted).
  absl::Status OpenSpillStore(const ServiceOptions& options, const std::string& data_dir);
  // The admin token (created when missing), the executor, session limits, and both services.
  absl::Status CreateServices(const ServiceOptions& options, const std::string& data_dir);
  // The gRPC server on the Unix socket (mode 0660) and, when asked, on TCP.
  absl::Status StartGrpc(const ServiceOptions& options, const std::string& data_dir);
  // The arena channel at "<socket>.arenas" (service/arena_channel); without it (a path too long
  // for a Unix socket) workers get arenas by handle only and say so in the log.
  absl::Status StartArenaChannel();
  // The bulk channel at "<socket>.bulk" (service/bulk_channel), unless --bulk_channel=false;
  // without it (a path too long) the bytes path is gRPC's only, and the log says so.
  absl::Status StartBulkChannel();
  // The HTTP /metrics endpoint, when --metrics_address is set.
  absl::Status StartMetricsHttp(const ServiceOptions& options);
  // The fleet tier's Redis Cluster client (docs/fleet.md), when --fleet_redis is set. It does not
  // contact the cluster: a cluster that is down only makes the fleet miss.
  absl::Status OpenFleet(const ServiceOptions& options);

  std::string socket_path_;
  std::unique_ptr<MetadataStore> store_;
  std::unique_ptr<SpillStore> spill_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<fleet::FleetTier> fleet_;  // null without --fleet_redis; outlives engine_
  std::unique_ptr<CacheEngine> engine_;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<SessionLimits> limits_;  // used by kvcache_ and the metrics endpoint
  std::unique_ptr<KvCacheService> kvcache_;
  std::unique_ptr<KvBatchService> kv_batch_;  // serves through kvcache_
  // Arenas as fds (service/arena_channel): used by kvcache_'s sessions, reads engine_.
  std::unique_ptr<EngineArenaFdSource> arena_fd_source_;
  std::unique_ptr<ArenaChannelServer> arena_channel_;
  std::unique_ptr<BulkChannelServer> bulk_channel_;  // uses engine_ and limits_
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<Metrics> metrics_;  // recorded into by grpc_'s interceptors: outlives it
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;  // reads engine_ and metrics_
};

// Reads the admin token from `path`, creating it (64 hex digits, mode 0600) when missing.
absl::StatusOr<std::string> LoadOrCreateAdminToken(const std::string& path);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_RPC_SERVER_H_
