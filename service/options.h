// Everything kvkeepd can be told, in one place. Parsed once from flags in main.cc.
#ifndef KVKEEP_SERVICE_OPTIONS_H_
#define KVKEEP_SERVICE_OPTIONS_H_

#include <cstdint>
#include <string>

#include "gpu/backend.h"
#include "service/observability/log.h"
#include "service/pool/pool_shares.h"
#include "service/rpc/session_limits.h"

namespace kvkeep {

struct ServiceOptions {
  std::string data_dir = "./kvkeep-data";  // Default: ./kvkeep-data (RocksDB, socket, admin token)
  std::string socket_path;       // Default: <data_dir>/kvkeepd.sock (mode 0660)
  std::string tcp_address;       // Default: none. "host:port" to also listen on TCP (TLS required)
  std::string tls_cert_file;     // PEM certificate chain for TCP
  std::string tls_key_file;      // PEM private key for TCP
  std::string tls_client_ca_file;  // Default: none. When set, TCP clients must present a cert
  bool insecure_tcp = false;     // Default: false. Plain-text TCP, for tests on loopback only
  // The bulk channel "<socket>.bulk" (service/bulk_channel): the bytes path beside gRPC.
  bool bulk_channel = true;      // Default: on (--bulk_channel)
  std::string admin_token_file;  // Default: <data_dir>/admin.token (created 0600 when missing)
  BackendKind backend = BackendKind::kAuto;  // Default: auto (CUDA when present, else host)
  int cuda_device = 0;                       // Default: 0. CUDA device ordinal for cuda/auto
  // How CUDA arenas are allocated and exported (gpu/backend.h, CudaArenaKind).
  CudaArenaKind cuda_arena_kind = CudaArenaKind::kAuto;  // Default: auto (VMM fds where supported)
  uint64_t pool_bytes = 1ull << 30;          // Default: 1 GiB of arenas
  uint64_t arena_bytes = 64ull << 20;        // Default: 64 MiB per arena
  uint64_t max_message_bytes = 4ull << 20;   // Default: 4 MiB (gRPC's default)
  double low_free = 0.05;        // Default: spill cold sequences below 5 % free pool...
  double high_free = 0.10;       // Default: ...until 10 % is free (kvkeepctl pool can change it)
  std::string spill_dir;         // Default: <data_dir>/spill (the spill tier's RocksDB)
  uint64_t spill_block_cache_mib = 32;  // Default: 32 MiB block cache of the spill database
  uint64_t spill_min_blob_bytes = 4096;  // Default: values >= 4 KiB go to blob files
  uint64_t spill_rate_limit_mib = 0;     // Default: 0 = no limit on background disk writes
  // Default: lru. How pool pressure frees pages (docs/architecture.md, "Pool allocation").
  PressurePolicy pressure_policy = PressurePolicy::kLru;
  int compress_threads = 2;      // Default: 2 threads for Compress (scoring + compaction)
  int keepalive_seconds = 10;    // Default: 10 s between keepalive pings on idle sessions
  // Default: 127.0.0.1:9464. HTTP GET /metrics (Prometheus text format); "" turns it off.
  std::string metrics_address = "127.0.0.1:9464";
  // Default: false. When true, a metrics address that cannot be bound only disables metrics (with
  // a warning); main.cc sets it when --metrics_address was not given, so that several daemons on
  // one host (tests) do not fight over the default port.
  bool metrics_optional = false;
  // Per-session rate limits and the statistics size limit (service/session_limits.h).
  SessionLimitOptions limits;
  uint32_t max_tokens_per_request = 1u << 20;  // Default: 1M tokens in one AllocatePages
  // Default: 0 = derived from the message limit, (max_message_bytes - 64 KiB) / 16: the most
  // page references one AllocatePages may add, so that its reply always fits in a message.
  uint64_t max_pages_per_request = 0;
  // The most daemon heap (page tables, statistics, model layouts) one tenant may make the daemon
  // hold, charged by the ledger (service/engine/metadata_charge.h). Default: 256 MiB; 0 = no bound.
  uint64_t max_metadata_bytes_per_tenant = uint64_t{256} << 20;
  log::Level log_level = log::Level::kInfo;     // Default: info (--log_level); main.cc applies it
  log::Format log_format = log::Format::kText;  // Default: text (--log_format)
  // ---- Fleet tier (docs/fleet.md) ----
  std::string fleet_redis;          // Default: none (no fleet tier). Seeds "host:port[,...]"
  std::string fleet_user;           // Default: none. Redis ACL user
  std::string fleet_password;       // Default: none. Read from --fleet_password_file
  std::string node_name;            // Default: the hostname. This daemon's name in the fleet
  uint32_t fleet_lookup_timeout_ms = 50;   // Default: 50 ms per LookupPrefix cluster check
  uint32_t fleet_fetch_timeout_ms = 1000;  // Default: 1 s per CreateSequence prefix fetch
  uint64_t fleet_queue_mib = 256;          // Default: 256 MiB write-behind queue
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_OPTIONS_H_
