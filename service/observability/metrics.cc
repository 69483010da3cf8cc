#include "service/observability/metrics.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "grpcpp/support/status.h"
#include "kvkeep/v1/kvcache.pb.h"

namespace kvkeep {
namespace {

constexpr absl::string_view kCodeNames[Metrics::kCodes] = {
    "OK",      "CANCELLED",          "UNKNOWN",           "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS",   "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",     "UNIMPLEMENTED",    "INTERNAL",
    "UNAVAILABLE", "DATA_LOSS",      "UNAUTHENTICATED"};

constexpr absl::string_view kAllocReasonNames[Metrics::kAllocReasons] = {
    "tenant_max",   "pool_reserved",     "pool_capacity",   "invalid_argument",
    "not_found",    "permission_denied", "unauthenticated", "other"};

constexpr absl::string_view kTriggerNames[2] = {"request", "decode"};

absl::string_view CallTypeName(Metrics::CallType type) {
  switch (type) {
    case Metrics::CallType::kUnary: return "unary";
    case Metrics::CallType::kClientStream: return "client_stream";
    case Metrics::CallType::kServerStream: return "server_stream";
    case Metrics::CallType::kBidiStream: return "bidi_stream";
  }
  return "unary";
}

// "/pkg.Service/Method" -> (pkg.Service, Method).
std::pair<std::string, std::string> SplitMethod(absl::string_view full) {
  if (!full.empty() && full.front() == '/') full.remove_prefix(1);
  const size_t slash = full.find('/');
  if (slash == absl::string_view::npos) return {"_unknown", std::string(full)};
  return {std::string(full.substr(0, slash)), std::string(full.substr(slash + 1))};
}

uint64_t Load(const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); }

// What the interceptor does beyond counting, decided once per call from the method name.
enum class MethodKind { kPlain, kAllocatePages, kCompress, kCommitTokens, kRestore, kAdminRestore };

MethodKind KindOf(absl::string_view full) {
  // The *Stream twins (api.md §6.3) do the same and reply with the same message type, in pieces:
  // pages are summed over the pieces, the summary is in the first one only.
  if (full == "/kvkeep.v1.KvCache/AllocatePages") return MethodKind::kAllocatePages;
  if (full == "/kvkeep.v1.KvCache/AllocatePagesStream") return MethodKind::kAllocatePages;
  if (full == "/kvkeep.v1.KvCache/Compress") return MethodKind::kCompress;
  if (full == "/kvkeep.v1.KvCache/CompressStream") return MethodKind::kCompress;
  if (full == "/kvkeep.v1.Admin/CompressSequence") return MethodKind::kCompress;  // same reply
  if (full == "/kvkeep.v1.KvCache/CommitTokens") return MethodKind::kCommitTokens;
  if (full == "/kvkeep.v1.KvCache/Restore") return MethodKind::kRestore;
  if (full == "/kvkeep.v1.KvCache/RestoreStream") return MethodKind::kRestore;
  if (full == "/kvkeep.v1.Admin/RestoreSequence") return MethodKind::kAdminRestore;
  return MethodKind::kPlain;
}

class MetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(Metrics* metrics, grpc::experimental::ServerRpcInfo* info)
      : metrics_(metrics), start_(std::chrono::steady_clock::now()) {
    const char* method = info->method();
    const absl::string_view full = method == nullptr ? absl::string_view("/_unknown/_unknown")
                                                    : absl::string_view(method);
    Metrics::CallType type = Metrics::CallType::kUnary;
    switch (info->type()) {
      case grpc::experimental::ServerRpcInfo::Type::UNARY: break;
      case grpc::experimental::ServerRpcInfo::Type::CLIENT_STREAMING:
        type = Metrics::CallType::kClientStream;
        break;
      case grpc::experimental::ServerRpcInfo::Type::SERVER_STREAMING:
        type = Metrics::CallType::kServerStream;
        break;
      case grpc::experimental::ServerRpcInfo::Type::BIDI_STREAMING:
        type = Metrics::CallType::kBidiStream;
        break;
    }
    slot_ = metrics_->MethodFor(full, type);
    kind_ = KindOf(full);
    slot_->started.fetch_add(1, std::memory_order_relaxed);
  }

  ~MetricsInterceptor() override {
    // A call torn down without a status sent (e.g. the server shut down under it).
    if (!done_) Record(absl::CancelledError());
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      InspectReply(methods->GetSendMessage());
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) && !done_) {
      const grpc::Status status = methods->GetSendStatus();
      const absl::Status sent = Metrics::SentStatus(status);
      if (ReasonOf(sent) != FailureReason::kNone) {
        // The reason stays inside the daemon: the client gets the code and the message.
        methods->ModifySendStatus(grpc::Status(status.error_code(), status.error_message()));
      }
      Record(sent);
    }
    methods->Proceed();
  }

 private:
  double Seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

  // The reply of a kvkeep method, in its non-serialized form (callback handlers send by pointer).
  void InspectReply(const void* message) {
    if (message == nullptr) return;
    const bool first = replies_++ == 0;
    switch (kind_) {
      case MethodKind::kAllocatePages: {
        const auto* delta = static_cast<const v1::PageTableDelta*>(message);
        for (const v1::HeadTable& head : delta->heads()) reply_pages_ += head.pages_size();
        break;
      }
      case MethodKind::kCompress: {
        if (!first) break;  // a later piece of CompressStream: heads only
        const auto& s = static_cast<const v1::CompressReply*>(message)->summary();
        metrics_->RecordCompression(Metrics::Trigger::kRequest, s.tokens_before(),
                                    s.tokens_after(), s.pages_freed(), s.bytes_freed(),
                                    s.seconds());
        break;
      }
      case MethodKind::kCommitTokens: {
        const auto* reply = static_cast<const v1::CommitReply*>(message);
        if (reply->has_compressed()) {
          const auto& s = reply->compressed().summary();
          metrics_->RecordCompression(Metrics::Trigger::kDecode, s.tokens_before(),
                                      s.tokens_after(), s.pages_freed(), s.bytes_freed(),
                                      s.seconds());
        }
        if (!reply->compress_error().empty()) {
          metrics_->RecordCompressionFailure(Metrics::Trigger::kDecode);
        }
        break;
      }
      default:
        break;
    }
  }

  void Record(const absl::Status& status) {
    done_ = true;
    const grpc::StatusCode code = static_cast<grpc::StatusCode>(status.code());
    const int c = static_cast<int>(code);
    const double seconds = Seconds();
    slot_->handled[c >= 0 && c < Metrics::kCodes ? c : 2].fetch_add(1, std::memory_order_relaxed);
    slot_->seconds.Observe(seconds);
    const bool ok = code == grpc::StatusCode::OK;
    switch (kind_) {
      case MethodKind::kAllocatePages:
        if (ok) {
          metrics_->RecordAllocation(reply_pages_);
        } else {
          metrics_->RecordAllocationFailure(Metrics::ClassifyAllocationFailure(status));
        }
        break;
      case MethodKind::kCompress:
        if (!ok) metrics_->RecordCompressionFailure(Metrics::Trigger::kRequest);
        break;
      case MethodKind::kRestore:
      case MethodKind::kAdminRestore:
        metrics_->RecordRestore(kind_ == MethodKind::kAdminRestore, seconds, ok);
        break;
      default:
        break;
    }
  }

  Metrics* const metrics_;
  const std::chrono::steady_clock::time_point start_;
  Metrics::Method* slot_ = nullptr;
  MethodKind kind_ = MethodKind::kPlain;
  uint64_t reply_pages_ = 0;  // pages in the replies sent (summed over a stream's pieces)
  uint64_t replies_ = 0;      // reply messages sent
  bool done_ = false;
};

void WriteGauge(ExpositionWriter* w, absl::string_view name, absl::string_view help, double v) {
  w->Family(name, "gauge", help);
  w->Sample(name, {}, v);
}

void WriteCounter(ExpositionWriter* w, absl::string_view name, absl::string_view help, double v) {
  w->Family(name, "counter", help);
  w->Sample(name, {}, v);
}

}  // namespace

// ---- Text format ----------------------------------------------------------------------------

std::string EscapeLabelValue(absl::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string EscapeHelp(absl::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (char c : help) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string FormatMetricValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (value == std::trunc(value) && std::fabs(value) < 1e15) {
    return absl::StrCat(static_cast<int64_t>(value));
  }
  // The shortest of %.15g..%.17g that reads back as the same double (0.1, not 0.10000000000000001).
  char buf[32];
  for (int digits = 15; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof(buf), "%.*g", digits, value);
    if (std::strtod(buf, nullptr) == value) break;
  }
  return buf;
}

void ExpositionWriter::Family(absl::string_view name, absl::string_view type,
                              absl::string_view help) {
  absl::StrAppend(&out_, "# HELP ", name, " ", EscapeHelp(help), "\n# TYPE ", name, " ", type,
                  "\n");
}

void ExpositionWriter::Sample(absl::string_view name, const Labels& labels, double value) {
  out_.append(name.data(), name.size());
  if (!labels.empty()) {
    out_ += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
      if (i > 0) out_ += ',';
      absl::StrAppend(&out_, labels[i].first, "=\"", EscapeLabelValue(labels[i].second), "\"");
    }
    out_ += '}';
  }
  absl::StrAppend(&out_, " ", FormatMetricValue(value), "\n");
}

// ---- Histogram ------------------------------------------------------------------------------

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0);
}

std::vector<double> Histogram::LatencyBounds() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60};
}

void Histogram::Observe(double value) {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  if (value > 0) {
    sum_nanos_.fetch_add(static_cast<uint64_t>(std::llround(value * 1e9)),
                         std::memory_order_relaxed);
  }
}

void Histogram::Write(ExpositionWriter* w, absl::string_view name, const Labels& labels) const {
  // Read the buckets first and derive the count from them, so that +Inf == _count always holds
  // even while calls are being recorded.
  uint64_t cumulative = 0;
  const std::string bucket = absl::StrCat(name, "_bucket");
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += Load(buckets_[i]);
    Labels l = labels;
    l.emplace_back("le", i < bounds_.size() ? FormatMetricValue(bounds_[i]) : "+Inf");
    w->Sample(bucket, l, static_cast<double>(cumulative));
  }
  w->Sample(absl::StrCat(name, "_sum"), labels, static_cast<double>(Load(sum_nanos_)) * 1e-9);
  w->Sample(absl::StrCat(name, "_count"), labels, static_cast<double>(cumulative));
}

// ---- Metrics --------------------------------------------------------------------------------

Metrics::Method::Method(std::string service, std::string name, CallType type)
    : service(std::move(service)), name(std::move(name)), type(type),
      seconds(Histogram::LatencyBounds()) {
  for (auto& h : handled) h.store(0);
}

Metrics::Metrics(MetricsOptions options)
    : options_(options),
      other_(std::make_unique<Method>("_other", "_other", CallType::kUnary)),
      compress_seconds_{Histogram(Histogram::LatencyBounds()),
                        Histogram(Histogram::LatencyBounds())},
      restore_seconds_{Histogram(Histogram::LatencyBounds()),
                       Histogram(Histogram::LatencyBounds())} {
  for (auto& a : alloc_failures_) a.store(0);
  for (auto& a : compress_failures_) a.store(0);
  for (auto& a : restore_failures_) a.store(0);
}

Metrics::Method* Metrics::MethodFor(absl::string_view full_method, CallType type) {
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = methods_.find(full_method);
    if (it != methods_.end()) return it->second.get();
  }
  absl::MutexLock lock(&mu_);
  auto it = methods_.find(full_method);
  if (it != methods_.end()) return it->second.get();
  if (methods_.size() >= kMaxMethods) return other_.get();
  auto [service, name] = SplitMethod(full_method);
  auto slot = std::make_unique<Method>(std::move(service), std::move(name), type);
  Method* out = slot.get();
  methods_.emplace(std::string(full_method), std::move(slot));
  return out;
}

absl::string_view Metrics::AllocationFailureReason(int reason) {
  return reason >= 0 && reason < kAllocReasons ? kAllocReasonNames[reason] : "other";
}

absl::Status Metrics::SentStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status out(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  return WithReason(out, ReasonFromDetails(status.error_details()));
}

int Metrics::ClassifyAllocationFailure(const absl::Status& status) {
  switch (static_cast<grpc::StatusCode>(status.code())) {
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      // The reasons of service/pool/quota.cc and service/pool/page_pool.cc.
      switch (ReasonOf(status)) {
        case FailureReason::kTenantMax: return 0;
        case FailureReason::kPoolShort: return 1;
        default: return 2;
      }
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
      return 3;
    case grpc::StatusCode::NOT_FOUND: return 4;
    case grpc::StatusCode::PERMISSION_DENIED: return 5;
    case grpc::StatusCode::UNAUTHENTICATED: return 6;
    default: return 7;
  }
}

void Metrics::RecordAllocation(uint64_t pages) {
  allocations_.fetch_add(1, std::memory_order_relaxed);
  pages_allocated_.fetch_add(pages, std::memory_order_relaxed);
}

void Metrics::RecordCompression(Trigger trigger, uint64_t tokens_before, uint64_t tokens_after,
                                uint64_t pages_freed, uint64_t bytes_freed, double seconds) {
  const int t = static_cast<int>(trigger);
  PerTrigger& p = compress_[t];
  p.compressions.fetch_add(1, std::memory_order_relaxed);
  p.tokens_evicted.fetch_add(tokens_before > tokens_after ? tokens_before - tokens_after : 0,
                             std::memory_order_relaxed);
  p.pages_freed.fetch_add(pages_freed, std::memory_order_relaxed);
  p.bytes_freed.fetch_add(bytes_freed, std::memory_order_relaxed);
  if (std::isfinite(seconds) && seconds >= 0) compress_seconds_[t].Observe(seconds);
}

void Metrics::RecordRestore(bool admin, double seconds, bool ok) {
  const int i = admin ? 1 : 0;
  if (ok) {
    restore_seconds_[i].Observe(seconds);
  } else {
    restore_failures_[i].fetch_add(1, std::memory_order_relaxed);
  }
}

void Metrics::Write(ExpositionWriter* w) const {
  std::vector<const Method*> methods;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [full, m] : methods_) methods.push_back(m.get());
  }
  if (Load(other_->started) > 0) methods.push_back(other_.get());
  std::sort(methods.begin(), methods.end(), [](const Method* a, const Method* b) {
    return std::tie(a->service, a->name) < std::tie(b->service, b->name);
  });
  auto method_labels = [](const Method& m) {
    return Labels{{"grpc_service", m.service},
                  {"grpc_method", m.name},
                  {"grpc_type", std::string(CallTypeName(m.type))}};
  };

  w->Family("kvkeep_grpc_server_started_total", "counter",
            "gRPC calls started on the server, by method.");
  for (const Method* m : methods) {
    w->Sample("kvkeep_grpc_server_started_total", method_labels(*m), Load(m->started));
  }
  w->Family("kvkeep_grpc_server_handled_total", "counter",
            "gRPC calls completed on the server, by method and status code.");
  for (const Method* m : methods) {
    for (int c = 0; c < kCodes; ++c) {
      const uint64_t n = Load(m->handled[c]);
      // OK is always written (so rate() has a series from the first call); other codes once seen.
      if (n == 0 && c != 0) continue;
      Labels l = method_labels(*m);
      l.emplace_back("grpc_code", std::string(kCodeNames[c]));
      w->Sample("kvkeep_grpc_server_handled_total", l, n);
    }
  }
  w->Family("kvkeep_grpc_server_handling_seconds", "histogram",
            "Time from the start of a gRPC call to its status, by method (for streams: the "
            "stream's lifetime; a worker Session lasts as long as the worker).");
  for (const Method* m : methods) {
    m->seconds.Write(w, "kvkeep_grpc_server_handling_seconds", method_labels(*m));
  }

  WriteCounter(w, "kvkeep_page_allocations_total",
               "AllocatePages calls that succeeded.", Load(allocations_));
  WriteCounter(w, "kvkeep_pages_allocated_total",
               "Device pages handed out by successful AllocatePages calls.",
               Load(pages_allocated_));
  w->Family("kvkeep_page_allocation_failures_total", "counter",
            "AllocatePages calls that failed, by reason: tenant_max (the tenant's hard maximum), "
            "pool_reserved (admission: the free pool is guaranteed to other tenants), "
            "pool_capacity (the pool's arenas cannot hold the pages), or the status code.");
  for (int r = 0; r < kAllocReasons; ++r) {
    w->Sample("kvkeep_page_allocation_failures_total",
              {{"reason", std::string(kAllocReasonNames[r])}}, Load(alloc_failures_[r]));
  }

  w->Family("kvkeep_compressions_total", "counter",
            "Sequence compressions (evictions) that succeeded, by trigger: request (Compress, "
            "Admin.CompressSequence) or "
            "decode (CommitTokens passing the policy's max_tokens).");
  for (int t = 0; t < 2; ++t) {
    w->Sample("kvkeep_compressions_total", {{"trigger", std::string(kTriggerNames[t])}},
              Load(compress_[t].compressions));
  }
  w->Family("kvkeep_compression_failures_total", "counter",
            "Compressions that failed, by trigger.");
  for (int t = 0; t < 2; ++t) {
    w->Sample("kvkeep_compression_failures_total", {{"trigger", std::string(kTriggerNames[t])}},
              Load(compress_failures_[t]));
  }
  w->Family("kvkeep_evicted_tokens_total", "counter",
            "Tokens evicted by compressions, summed over (layer, KV head), by trigger.");
  for (int t = 0; t < 2; ++t) {
    w->Sample("kvkeep_evicted_tokens_total", {{"trigger", std::string(kTriggerNames[t])}},
              Load(compress_[t].tokens_evicted));
  }
  w->Family("kvkeep_compression_freed_pages_total", "counter",
            "Device pages freed by compressions, by trigger.");
  for (int t = 0; t < 2; ++t) {
    w->Sample("kvkeep_compression_freed_pages_total",
              {{"trigger", std::string(kTriggerNames[t])}}, Load(compress_[t].pages_freed));
  }
  w->Family("kvkeep_compression_freed_bytes_total", "counter",
            "Device bytes freed by compressions, by trigger.");
  for (int t = 0; t < 2; ++t) {
    w->Sample("kvkeep_compression_freed_bytes_total",
              {{"trigger", std::string(kTriggerNames[t])}}, Load(compress_[t].bytes_freed));
  }
  w->Family("kvkeep_compression_duration_seconds", "histogram",
            "Time the daemon spent scoring, selecting and compacting one sequence, by trigger.");
  for (int t = 0; t < 2; ++t) {
    compress_seconds_[t].Write(w, "kvkeep_compression_duration_seconds",
                               {{"trigger", std::string(kTriggerNames[t])}});
  }

  w->Family("kvkeep_restore_duration_seconds", "histogram",
            "Latency of explicit restores of spilled sequences that succeeded, by caller: worker "
            "(KvCache.Restore) or admin (Admin.RestoreSequence). Transparent restores inside "
            "Acquire are in kvkeep_grpc_server_handling_seconds{grpc_method=\"Acquire\"}.");
  for (int i = 0; i < 2; ++i) {
    restore_seconds_[i].Write(w, "kvkeep_restore_duration_seconds",
                              {{"caller", i == 0 ? "worker" : "admin"}});
  }
  w->Family("kvkeep_restore_failures_total", "counter",
            "Explicit restores that failed, by caller.");
  for (int i = 0; i < 2; ++i) {
    w->Sample("kvkeep_restore_failures_total", {{"caller", i == 0 ? "worker" : "admin"}},
              Load(restore_failures_[i]));
  }
}

// ---- Interceptor ----------------------------------------------------------------------------

grpc::experimental::Interceptor* MetricsInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new MetricsInterceptor(metrics_, info);
}

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
MetricsInterceptorCreators(Metrics* metrics) {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> out;
  out.push_back(std::make_unique<MetricsInterceptorFactory>(metrics));
  return out;
}

// ---- Rendering ------------------------------------------------------------------------------

namespace {

// The daemon's identity: build info and uptime.
void WriteBuildInfo(ExpositionWriter* w, const v1::DaemonStatus& s) {
  w->Family("kvkeep_build_info", "gauge", "Always 1; the daemon's version and memory backend.");
  w->Sample("kvkeep_build_info", {{"version", s.version()}, {"backend", s.backend()}}, 1);
  WriteGauge(w, "kvkeep_uptime_seconds", "Seconds since the daemon started.",
             s.uptime_seconds());
}

// The pool: capacity, arenas, pages, fragmentation, watermarks, and bytes stored per tier.
void WritePoolFamilies(ExpositionWriter* w, const v1::DaemonStatus& s, const PoolStats& pool) {
  WriteGauge(w, "kvkeep_pool_capacity_bytes", "Device (or host) memory the pool may hold.",
             s.pool_capacity_bytes());
  WriteGauge(w, "kvkeep_pool_arena_bytes", "Bytes of arenas created (reserved from the device).",
             s.pool_arena_bytes());
  WriteGauge(w, "kvkeep_pool_used_bytes", "Bytes of pages in use.", s.pool_used_bytes());
  WriteGauge(w, "kvkeep_pool_arenas", "Arenas in the pool.", s.arenas());
  WriteGauge(w, "kvkeep_pages_in_use", "Device pages in use, all tenants.", s.pages_in_use());
  WriteGauge(w, "kvkeep_pool_largest_free_run_pages",
             "Fragmentation: the most free pages in one arena (an allocation larger than this "
             "needs a new arena).",
             pool.largest_free_run_pages);
  WriteGauge(w, "kvkeep_pool_pinned_pages",
             "Pages referenced by ReadKV replies in flight (a stalled reader keeps its "
             "stream's message pinned; --max_read_streams_per_tenant bounds the streams).",
             pool.pinned_pages);
  WriteGauge(w, "kvkeep_pool_retired_pages",
             "Pages freed while pinned: still in use until the replies referencing them are "
             "sent.",
             pool.retired_pages);
  w->Family("kvkeep_pool_watermark_free_ratio", "gauge",
            "Pool watermarks as fractions of the capacity: below `low` free, cold sequences spill "
            "until `high` is free.");
  w->Sample("kvkeep_pool_watermark_free_ratio", {{"mark", "low"}}, s.watermarks().low_free());
  w->Sample("kvkeep_pool_watermark_free_ratio", {{"mark", "high"}}, s.watermarks().high_free());

  w->Family("kvkeep_stored_bytes", "gauge",
            "Bytes of KV cache held, by tier: device (pages in use) or spill (RocksDB on disk).");
  w->Sample("kvkeep_stored_bytes", {{"tier", "device"}}, s.pool_used_bytes());
  w->Sample("kvkeep_stored_bytes", {{"tier", "spill"}}, s.spilled_bytes());
}

// What the daemon holds and what moved: tenants, sessions, sequences, spills, restores, pressure.
void WriteActivityFamilies(ExpositionWriter* w, const v1::DaemonStatus& s) {
  WriteGauge(w, "kvkeep_tenants", "Tenants defined.", s.tenants());
  WriteGauge(w, "kvkeep_sessions", "Worker sessions attached.", s.sessions());
  WriteGauge(w, "kvkeep_sequences", "Sequences known to the daemon (device and spilled).",
             s.sequences());
  WriteGauge(w, "kvkeep_spilled_sequences", "Sequences in the spill tier.",
             s.spilled_sequences());
  WriteCounter(w, "kvkeep_spills_total",
               "Sequences spilled to disk since start (explicit and under pool pressure).",
               s.spills());
  WriteCounter(w, "kvkeep_restores_total", "Sequences restored from disk since start.",
               s.restores());
  WriteCounter(w, "kvkeep_spill_errors_total",
               "Disk or RocksDB errors met while spilling or restoring, since start.",
               s.spill_errors());
  w->Family("kvkeep_pressure_evictions_total", "counter",
            "What pool pressure freed since start, by reason: capacity = whole pages dropped as "
            "the cheapest by capacity cost (--pressure_policy=capacity, lossy), compress = pages "
            "freed by compressing sequences (--pressure_policy=compress, lossy), spill = pages of "
            "sequences spilled by pressure (lossless).");
  w->Sample("kvkeep_pressure_evictions_total", {{"reason", "capacity"}},
            s.pressure_evicted_pages());
  w->Sample("kvkeep_pressure_evictions_total", {{"reason", "compress"}},
            s.pressure_compressed_pages());
  WriteCounter(w, "kvkeep_pressure_spills_total",
               "Sequences spilled by pool pressure since start (included in kvkeep_spills_total).",
               s.pressure_spills());
  WriteCounter(w, "kvkeep_pressure_compressions_total",
               "Sequences compressed by pool pressure since start (--pressure_policy=compress).",
               s.pressure_compressions());
  WriteCounter(w, "kvkeep_page_cost_passes_total",
               "Sequences whose per-page capacity costs were (re)computed since start.",
               s.page_cost_passes());
}

// Shared prefixes (sharing groups): pages held and lookups.
void WriteSharedPrefixFamilies(ExpositionWriter* w, const v1::DaemonStatus& s) {
  w->Family("kvkeep_shared_prefix_pages", "gauge",
            "Pool pages of shared prefixes: referenced (held by sequences, charged to their "
            "tenants) or cached (held by none, charged to nobody, freed first under pressure).");
  w->Sample("kvkeep_shared_prefix_pages", {{"state", "referenced"}}, s.shared_pages_referenced());
  w->Sample("kvkeep_shared_prefix_pages", {{"state", "cached"}}, s.shared_pages_cached());
  WriteCounter(w, "kvkeep_prefix_lookups_total",
               "Prefix lookups (CreateSequence with a prefix, LookupPrefix) since start.",
               s.prefix_lookups());
  w->Family("kvkeep_prefix_lookup_pages_total", "counter",
            "Full prefix pages asked for by lookups since start, found (hit) or not (miss).");
  w->Sample("kvkeep_prefix_lookup_pages_total", {{"result", "hit"}}, s.prefix_pages_hit());
  w->Sample("kvkeep_prefix_lookup_pages_total", {{"result", "miss"}}, s.prefix_pages_missed());
}

// The per-tenant rows, bounded: the biggest `cap` tenants by bytes held, sorted by name, then the
// rest summed as "_other". `aggregated` is how many tenants "_other" sums.
struct TenantRows {
  std::vector<v1::TenantInfo> rows;
  size_t aggregated = 0;
};

TenantRows BoundedTenantRows(const v1::DaemonStatus& s, size_t cap) {
  std::vector<const v1::TenantInfo*> tenants;
  for (const v1::TenantInfo& t : s.tenant_usage()) tenants.push_back(&t);
  std::stable_sort(tenants.begin(), tenants.end(),
                   [](const v1::TenantInfo* a, const v1::TenantInfo* b) {
                     const uint64_t ua = a->used_bytes() + a->spilled_bytes();
                     const uint64_t ub = b->used_bytes() + b->spilled_bytes();
                     if (ua != ub) return ua > ub;
                     return a->name() < b->name();
                   });
  TenantRows out;
  std::vector<v1::TenantInfo>& rows = out.rows;
  for (size_t i = 0; i < tenants.size() && i < cap; ++i) rows.push_back(*tenants[i]);
  std::sort(rows.begin(), rows.end(),
            [](const v1::TenantInfo& a, const v1::TenantInfo& b) { return a.name() < b.name(); });
  if (tenants.size() > cap) {
    v1::TenantInfo other;
    other.set_name(kOtherTenantLabel);
    for (size_t i = cap; i < tenants.size(); ++i) {
      const v1::TenantInfo& t = *tenants[i];
      other.set_used_bytes(other.used_bytes() + t.used_bytes());
      other.set_used_pages(other.used_pages() + t.used_pages());
      other.set_spilled_bytes(other.spilled_bytes() + t.spilled_bytes());
      other.set_quota_bytes(other.quota_bytes() + t.quota_bytes());
      other.set_max_bytes(other.max_bytes() + t.max_bytes());
      other.set_spill_quota_bytes(other.spill_quota_bytes() + t.spill_quota_bytes());
      other.set_sessions(other.sessions() + t.sessions());
      other.set_sequences(other.sequences() + t.sequences());
      other.set_arenas(other.arenas() + t.arenas());
      other.set_fair_share_bytes(other.fair_share_bytes() + t.fair_share_bytes());
      other.set_pressure_evicted_pages(other.pressure_evicted_pages() +
                                       t.pressure_evicted_pages());
    }
    rows.push_back(std::move(other));
  }
  out.aggregated = tenants.size() > cap ? tenants.size() - cap : 0;
  return out;
}

// One series per row (tenant) for every per-tenant family.
void WriteTenantFamilies(ExpositionWriter* w, const std::vector<v1::TenantInfo>& rows) {
  auto per_tenant = [&](absl::string_view name, absl::string_view help, auto value) {
    w->Family(name, "gauge", help);
    for (const v1::TenantInfo& t : rows) w->Sample(name, {{"tenant", t.name()}}, value(t));
  };
  per_tenant("kvkeep_tenant_pages_in_use", "Device pages a tenant holds.",
             [](const v1::TenantInfo& t) { return static_cast<double>(t.used_pages()); });
  w->Family("kvkeep_tenant_stored_bytes", "gauge",
            "Bytes a tenant holds, by tier: device (charged page bytes) or spill (on disk).");
  for (const v1::TenantInfo& t : rows) {
    w->Sample("kvkeep_tenant_stored_bytes", {{"tenant", t.name()}, {"tier", "device"}},
              t.used_bytes());
    w->Sample("kvkeep_tenant_stored_bytes", {{"tenant", t.name()}, {"tier", "spill"}},
              t.spilled_bytes());
  }
  per_tenant("kvkeep_tenant_quota_bytes", "A tenant's guaranteed device bytes.",
             [](const v1::TenantInfo& t) { return static_cast<double>(t.quota_bytes()); });
  per_tenant("kvkeep_tenant_max_bytes",
             "A tenant's hard maximum of device bytes (0 = the pool capacity).",
             [](const v1::TenantInfo& t) { return static_cast<double>(t.max_bytes()); });
  per_tenant("kvkeep_tenant_spill_quota_bytes", "Bytes a tenant may keep in the spill tier.",
             [](const v1::TenantInfo& t) { return static_cast<double>(t.spill_quota_bytes()); });
  per_tenant("kvkeep_tenant_sessions", "Worker sessions a tenant has attached.",
             [](const v1::TenantInfo& t) { return static_cast<double>(t.sessions()); });
  per_tenant("kvkeep_tenant_sequences", "Sequences a tenant has (device and spilled).",
             [](const v1::TenantInfo& t) { return static_cast<double>(t.sequences()); });
  per_tenant("kvkeep_tenant_arenas",
             "Arenas a tenant owns (each exported to its workers: shm or CUDA IPC mappings).",
             [](const v1::TenantInfo& t) { return static_cast<double>(t.arenas()); });

  per_tenant("kvkeep_tenant_fair_share_bytes",
             "A tenant's fair share: guarantee + unreserved pool x weight / active weights.",
             [](const v1::TenantInfo& t) { return static_cast<double>(t.fair_share_bytes()); });
  w->Family("kvkeep_tenant_pressure_evicted_pages_total", "counter",
            "A tenant's pages dropped by capacity-aware pool pressure since start.");
  for (const v1::TenantInfo& t : rows) {
    w->Sample("kvkeep_tenant_pressure_evicted_pages_total", {{"tenant", t.name()}},
              t.pressure_evicted_pages());
  }
}

}  // namespace

std::string RenderMetrics(const v1::DaemonStatus& s, const PoolStats& pool,
                          const Metrics& metrics) {
  ExpositionWriter w;
  WriteBuildInfo(&w, s);
  WritePoolFamilies(&w, s, pool);
  WriteActivityFamilies(&w, s);
  WriteSharedPrefixFamilies(&w, s);
  const size_t cap = static_cast<size_t>(std::max(0, metrics.options().max_tenant_series));
  const TenantRows tenants = BoundedTenantRows(s, cap);
  WriteGauge(&w, "kvkeep_metrics_tenants_aggregated",
             "Tenants beyond the per-tenant series cap, summed under tenant=\"_other\".",
             static_cast<double>(tenants.aggregated));
  WriteTenantFamilies(&w, tenants.rows);
  metrics.Write(&w);
  return w.Take();
}

}  // namespace kvkeep
