// Prometheus metrics of kvkeepd (design.md §8): what the daemon exposes on GET /metrics.
//
// Two sources, no engine instrumentation needed:
//   * state read at scrape time from CacheEngine::Status() and PagePool::Stats() (pool, pages by
//     tier and tenant, fragmentation, sessions, sequences, spill counters, uptime);
//   * per-call figures recorded by a gRPC server interceptor (MetricsInterceptorFactory): calls
//     started/handled by method and status code, latency histograms, page allocations and
//     allocation failures by reason, compressions (requested and decode-time) with the tokens they
//     evicted, restore latency.
//
//   Metrics metrics;
//   builder.experimental().SetInterceptorCreators(MetricsInterceptorCreators(&metrics));
//   std::string text = RenderMetrics(engine.Status(), engine.pool().Stats(), metrics);
//
// Text format: Prometheus exposition format 0.0.4 (kMetricsContentType). Names are `kvkeep_*`
// with their unit in the name; label values are escaped per the format. Per-tenant series are
// bounded: the `max_tenant_series` tenants with the most bytes (device + spill) get their own
// series, the rest are summed under tenant="_other" (a name no tenant can have).
//
// Thread-safe: recording and rendering may run concurrently from any threads.
#ifndef KVKEEP_SERVICE_OBSERVABILITY_METRICS_H_
#define KVKEEP_SERVICE_OBSERVABILITY_METRICS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/failure_reason.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/server_interceptor.h"
#include "kvkeep/v1/admin.pb.h"
#include "service/pool/page_pool.h"

namespace kvkeep {

inline constexpr char kMetricsContentType[] = "text/plain; version=0.0.4; charset=utf-8";
// Label value of the tenants beyond the per-tenant series cap (tenant names never start with '_').
inline constexpr char kOtherTenantLabel[] = "_other";

// Escapes a label value: backslash, double quote and line feed (exposition format 0.0.4).
std::string EscapeLabelValue(absl::string_view value);
// Escapes HELP text: backslash and line feed.
std::string EscapeHelp(absl::string_view help);
// A sample value: integers without exponent, +Inf / -Inf / NaN spelled as the format wants.
std::string FormatMetricValue(double value);

using Labels = std::vector<std::pair<std::string, std::string>>;

// Writes one exposition: families in order, each with its HELP and TYPE lines once.
class ExpositionWriter {
 public:
  // Starts a family. `type` is counter, gauge, histogram or untyped.
  void Family(absl::string_view name, absl::string_view type, absl::string_view help);
  // One sample line `name{labels} value`.
  void Sample(absl::string_view name, const Labels& labels, double value);
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

// Cumulative histogram with fixed bucket bounds (seconds). Lock-free to record.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  // Writes `<name>_bucket{labels,le}`, `<name>_sum`, `<name>_count`.
  void Write(ExpositionWriter* w, absl::string_view name, const Labels& labels) const;

  static std::vector<double> LatencyBounds();  // 100 µs .. 60 s

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // non-cumulative, bounds_.size() + 1
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_nanos_{0};  // sum in nanoseconds (or 1e-9 units of the value)
};

struct MetricsOptions {
  int max_tenant_series = 100;  // Default: 100 tenants get their own series; the rest "_other"
};

// The registry of per-call figures. Owned by the server; outlives the gRPC server that records
// into it.
class Metrics {
 public:
  // Distinct method names kept; calls of further (unknown) methods count as method "_other".
  static constexpr int kMaxMethods = 128;
  static constexpr int kCodes = 17;  // gRPC status codes 0..16

  enum class CallType { kUnary, kClientStream, kServerStream, kBidiStream };

  explicit Metrics(MetricsOptions options = {});

  // Per-method call statistics.
  struct Method {
    Method(std::string service, std::string name, CallType type);
    const std::string service;  // e.g. kvkeep.v1.KvCache
    const std::string name;     // e.g. AllocatePages
    const CallType type;
    std::atomic<uint64_t> started{0};
    std::array<std::atomic<uint64_t>, kCodes> handled{};
    Histogram seconds;
  };
  // The slot of a full method name ("/pkg.Service/Method"); never null.
  Method* MethodFor(absl::string_view full_method, CallType type);

  // Reasons an AllocatePages call failed, from its status (see ClassifyAllocationFailure).
  static constexpr int kAllocReasons = 8;
  static absl::string_view AllocationFailureReason(int reason);
  // Maps a failed AllocatePages status to a reason index, by its code and its FailureReason
  // (common/failure_reason.h), never its message: tenant_max (kTenantMax: the tenant's hard
  // maximum), pool_reserved (kPoolShort: the rest of the pool is guaranteed to others or used),
  // pool_capacity (kBackendExhausted, or RESOURCE_EXHAUSTED without a reason: the page pool's
  // arenas cannot hold it), invalid_argument, not_found, permission_denied, unauthenticated, other.
  static int ClassifyAllocationFailure(const absl::Status& status);
  // The status a handler sent, with its FailureReason when the RPC layer carried one in the
  // error details as "<kFailureReasonPayloadUrl>=<FailureReasonName>" (the interceptor strips it
  // before the status leaves the daemon).
  static absl::Status SentStatus(const grpc::Status& status);

  enum class Trigger { kRequest = 0, kDecode = 1 };

  // Recorded by the interceptor.
  void RecordAllocation(uint64_t pages);
  void RecordAllocationFailure(int reason) { alloc_failures_[reason].fetch_add(1); }
  void RecordCompression(Trigger trigger, uint64_t tokens_before, uint64_t tokens_after,
                         uint64_t pages_freed, uint64_t bytes_freed, double seconds);
  void RecordCompressionFailure(Trigger trigger) {
    compress_failures_[static_cast<int>(trigger)].fetch_add(1);
  }
  // `admin`: Admin.RestoreSequence, else KvCache.Restore.
  void RecordRestore(bool admin, double seconds, bool ok);

  // Writes every family this registry holds.
  void Write(ExpositionWriter* w) const;
  const MetricsOptions& options() const { return options_; }

 private:
  struct PerTrigger {
    std::atomic<uint64_t> compressions{0};
    std::atomic<uint64_t> tokens_evicted{0};
    std::atomic<uint64_t> pages_freed{0};
    std::atomic<uint64_t> bytes_freed{0};
  };

  const MetricsOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Method>> methods_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Method> other_;  // beyond kMaxMethods

  std::atomic<uint64_t> allocations_{0};
  std::atomic<uint64_t> pages_allocated_{0};
  std::array<std::atomic<uint64_t>, kAllocReasons> alloc_failures_{};
  std::array<PerTrigger, 2> compress_{};
  std::array<std::atomic<uint64_t>, 2> compress_failures_{};
  std::array<Histogram, 2> compress_seconds_;
  std::array<std::atomic<uint64_t>, 2> restore_failures_{};
  std::array<Histogram, 2> restore_seconds_;  // worker, admin
};

// Interceptor factory recording every call of the server it is installed on into `metrics`.
class MetricsInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(Metrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  Metrics* const metrics_;
};

// The creators list ServerBuilder::experimental().SetInterceptorCreators wants.
std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
MetricsInterceptorCreators(Metrics* metrics);

// The whole exposition: daemon state from `status` and `pool`, then the recorded figures.
std::string RenderMetrics(const v1::DaemonStatus& status, const PoolStats& pool,
                          const Metrics& metrics);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_OBSERVABILITY_METRICS_H_
