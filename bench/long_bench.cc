#include "bench/long_bench.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_daemon.h"
#include "client/admin_client.h"
#include "client/client.h"
#include "client/stream_call.h"
#include "common/status_macros.h"
#include "common/table_chunks.h"

namespace kvkeep::bench {
namespace {

constexpr char kUsage[] = R"(kvkeep-bench long - long sequences end to end (Llama-3.1-8B shape)

Usage: kvkeep-bench long [flags]

Starts its own kvkeepd (separate process, --backend=cpu, default --max_message_mib=4) and, for each
length, one sequence of the Llama-3.1-8B KV shape (32 layers, 8 KV heads, head_dim 128, bf16,
16 tokens per page: 128 KiB of K+V per token) through: AllocatePages(n) (chunked reply), a
CommitTokens of n tokens, GetSequence with positions (chunked when over the limit), Compress
(knorm, keep_ratio 0.5; chunked reply), Spill and Restore (chunked reply), then Drop. The pages are
not written (their bytes are whatever the pool holds): the control path and the spill tier are
what is measured, not K/V transfer. A length whose K+V does not fit --pool_mib is skipped.

Per step and length: seconds, microseconds per token, and the slope of log(seconds) over
log(tokens) fitted over the lengths run (1.0 = the cost per token is flat). During Spill and
Restore the daemon's RssAnon (/proc/<pid>/status, sampled every 5 ms) is watched: the peak growth
over its value before the step is reported (stderr; JSON spill_anon_mib, restore_anon_mib) - the
host memory a spill or restore takes besides the pool (--kvkeepd of another build compares them).

Flags:
  --tokens N[,N...]   lengths (default 1024,2048,...,131072)
  --pool_mib N        daemon pool (default 4096; 128k tokens need 16384 + headroom)
  --no_spill          skip Spill and Restore
  --kvkeepd PATH      daemon binary (default: next to this binary)
  --json              JSON on stdout
  --help
)";

struct Options {
  std::vector<uint32_t> tokens = {1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072};
  uint64_t pool_mib = 4096;
  bool spill = true;
  bool json = false;
  std::string kvkeepd;
};

constexpr uint64_t kTokenBytes = 2ull * 32 * 8 * 128 * 2;  // K+V of one token, all heads
const char* const kSteps[] = {"allocate", "commit", "table", "compress", "spill", "restore"};

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int ParseFlags(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string value;
    const size_t eq = a.find('=');
    if (eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
    } else if ((a == "--tokens" || a == "--pool_mib" || a == "--kvkeepd") && i + 1 < argc) {
      value = argv[++i];
    }
    bool ok = true;
    if (a == "--help") {
      std::fputs(kUsage, stdout);
      return -1;
    } else if (a == "--tokens") {
      o->tokens.clear();
      for (absl::string_view t : absl::StrSplit(value, ',')) {
        uint32_t n = 0;
        ok = ok && absl::SimpleAtoi(t, &n) && n > 0;
        o->tokens.push_back(n);
      }
    } else if (a == "--pool_mib") {
      ok = absl::SimpleAtoi(value, &o->pool_mib) && o->pool_mib > 0;
    } else if (a == "--kvkeepd") {
      o->kvkeepd = value;
    } else if (a == "--no_spill") {
      o->spill = false;
    } else if (a == "--json") {
      o->json = true;
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr, "kvkeep-bench long: bad flag %s\n%s", argv[i], kUsage);
      return 2;
    }
  }
  return 0;
}

// The daemon's anonymous resident memory in MiB (RssAnon), or -1 when it cannot be read.
double RssAnonMib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("RssAnon:", 0) == 0) return std::atof(line.c_str() + 8) / 1024.0;  // kB
  }
  return -1;
}

// Peak growth of the daemon's RssAnon while it is alive (sampled every 5 ms on its own thread).
class AnonPeak {
 public:
  explicit AnonPeak(pid_t pid) : pid_(pid), before_(RssAnonMib(pid)), peak_(before_) {
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        peak_ = std::max(peak_, RssAnonMib(pid_));
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }
  // MiB above the value at construction (0 when it never grew).
  double Stop() {
    stop_.store(true);
    thread_.join();
    peak_ = std::max(peak_, RssAnonMib(pid_));
    return std::max(0.0, peak_ - before_);
  }

 private:
  const pid_t pid_;
  const double before_;
  double peak_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// One length through every step; seconds per step (and "spill_anon"/"restore_anon": MiB).
absl::StatusOr<std::map<std::string, double>> MeasureLength(Client& c, const std::string& token,
                                                            uint32_t n, bool spill, pid_t daemon) {
  std::map<std::string, double> t;
  ASSIGN_OR_RETURN(std::string seq, c.CreateSequence("llama-long", /*retain=*/true));
  auto t0 = Clock::now();
  RETURN_IF_ERROR(c.Allocate(seq, n).status());
  t["allocate"] = Since(t0);
  t0 = Clock::now();
  RETURN_IF_ERROR(c.Commit(seq, n).status());
  t["commit"] = Since(t0);
  t0 = Clock::now();
  RETURN_IF_ERROR(c.GetSequence(seq, /*with_positions=*/true).status());
  t["table"] = Since(t0);
  v1::Policy policy;
  policy.set_scorer("knorm");
  policy.set_keep_ratio(0.5);
  t0 = Clock::now();
  ASSIGN_OR_RETURN(v1::CompressReply compressed, c.Compress(seq, policy));
  t["compress"] = Since(t0);
  if (spill) {
    v1::SpillRequest s;
    s.set_session_id(c.session_id());
    s.set_sequence_id(seq);
    t0 = Clock::now();
    auto ctx = MakeCallContext(token);
    v1::SpillReply spilled;
    AnonPeak spill_memory(daemon);
    grpc::Status st = c.stub().Spill(ctx.get(), s, &spilled);
    t["spill_anon"] = spill_memory.Stop();
    if (!st.ok()) return absl::InternalError("Spill: " + st.error_message());
    t["spill"] = Since(t0);
    v1::RestoreRequest r;
    r.set_session_id(c.session_id());
    r.set_sequence_id(seq);
    t0 = Clock::now();
    AnonPeak restore_memory(daemon);
    auto chunks = StreamCall(token, c.stub(), &v1::KvCache::Stub::RestoreStream, r);
    t["restore_anon"] = restore_memory.Stop();
    if (!chunks.ok()) return chunks.status();
    ASSIGN_OR_RETURN(v1::PageTable restored, MergePageTable(std::move(chunks).value()));
    t["restore"] = Since(t0);
    if (restored.heads_size() != 256 || restored.heads(255).token_count() !=
                                            compressed.table().heads(255).token_count()) {
      return absl::InternalError("restored table differs from the compressed one");
    }
  }
  RETURN_IF_ERROR(c.Drop(seq).status());
  return t;
}

// Least-squares slope of log(y) over log(x).
double LogLogSlope(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() < 2) return NAN;
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double lx = std::log(x[i]), ly = std::log(std::max(y[i], 1e-9));
    sx += lx;
    sy += ly;
    sxx += lx * lx;
    sxy += lx * ly;
  }
  const double k = static_cast<double>(x.size());
  return (k * sxy - sx * sy) / (k * sxx - sx * sx);
}

int Run(const Options& o) {
  auto daemon = Daemon::Start(FindDaemon(o.kvkeepd), o.pool_mib, 4);
  if (!daemon.ok()) {
    std::fprintf(stderr, "kvkeep-bench long: %s\n", daemon.status().ToString().c_str());
    return 1;
  }
  const ChannelOptions channel{.target = (*daemon)->target()};
  auto admin = AdminClient::Connect(channel, (*daemon)->admin_token());
  v1::CreateTenantRequest tenant;
  tenant.set_name("long");
  tenant.set_spill_quota_bytes(1ull << 40);
  auto created = admin->CreateTenant(tenant);
  if (!created.ok()) {
    std::fprintf(stderr, "CreateTenant: %s\n", created.status().ToString().c_str());
    return 1;
  }
  auto client = Client::Attach(channel, created->token(), "long-bench");
  v1::ModelLayout layout;
  layout.set_name("llama-long");
  layout.set_layers(32);
  layout.set_q_heads(32);
  layout.set_kv_heads(8);
  layout.set_head_dim(128);
  layout.set_dtype(v1::DTYPE_BF16);
  layout.set_tokens_per_page(16);
  layout.mutable_rope()->set_theta(500000);
  if (!client.ok() || !(*client)->RegisterModel(layout).ok()) {
    std::fprintf(stderr, "kvkeep-bench long: attach or RegisterModel failed\n");
    return 1;
  }
  std::vector<double> lengths;
  std::map<std::string, std::vector<double>> seconds, memory;  // memory: MiB of RssAnon growth
  int exit_code = 0;
  for (uint32_t n : o.tokens) {
    // K+V of n tokens plus page rounding and headroom for the compaction's copies.
    if (n * kTokenBytes + (64ull << 20) > (o.pool_mib << 20)) {
      std::fprintf(stderr, "[long] %u tokens: skipped (%llu MiB of K+V > --pool_mib %llu)\n", n,
                   static_cast<unsigned long long>(n * kTokenBytes >> 20),
                   static_cast<unsigned long long>(o.pool_mib));
      continue;
    }
    auto t = MeasureLength(**client, created->token(), n, o.spill, (*daemon)->pid());
    if (!t.ok()) {
      std::fprintf(stderr, "[long] %u tokens: %s\n", n, t.status().ToString().c_str());
      exit_code = 1;
      break;
    }
    lengths.push_back(n);
    std::fprintf(stderr, "[long] %u tokens:", n);
    for (const char* step : kSteps) {
      if (!t->count(step)) continue;
      seconds[step].push_back((*t)[step]);
      std::fprintf(stderr, " %s %.3f s", step, (*t)[step]);
    }
    for (const char* m : {"spill_anon", "restore_anon"}) {
      if (!t->count(m)) continue;
      memory[m].push_back((*t)[m]);
      std::fprintf(stderr, " %s +%.0f MiB", m, (*t)[m]);
    }
    std::fprintf(stderr, "\n");
  }
  client->reset();
  (*daemon)->Stop();
  if (o.json) {
    std::printf("{\"bench\":\"long\",\"shape\":\"llama3-8b\",\"max_message_mib\":4,\"rows\":[");
    for (size_t i = 0; i < lengths.size(); ++i) {
      std::printf("%s{\"tokens\":%.0f", i ? "," : "", lengths[i]);
      for (const auto& [step, s] : seconds) std::printf(",\"%s_s\":%.6f", step.c_str(), s[i]);
      for (const auto& [what, m] : memory) std::printf(",\"%s_mib\":%.1f", what.c_str(), m[i]);
      std::printf("}");
    }
    std::printf("],\"slopes\":{");
    bool first = true;
    for (const auto& [step, s] : seconds) {
      std::printf("%s\"%s\":%.3f", first ? "" : ",", step.c_str(), LogLogSlope(lengths, s));
      first = false;
    }
    std::printf("}}\n");
    return exit_code;
  }
  std::printf("kvkeep-bench long: Llama-3.1-8B KV shape, 16 tokens/page, 4 MiB message limit\n");
  std::printf("%9s", "tokens");
  for (const char* step : kSteps) {
    if (seconds.count(step)) std::printf(" %18s", (std::string(step) + " s (us/tok)").c_str());
  }
  std::printf("\n");
  for (size_t i = 0; i < lengths.size(); ++i) {
    std::printf("%9.0f", lengths[i]);
    for (const char* step : kSteps) {
      if (!seconds.count(step)) continue;
      const double s = seconds[step][i];
      std::printf(" %9.3f (%6.2f)", s, 1e6 * s / lengths[i]);
    }
    std::printf("\n");
  }
  std::printf("%9s", "slope");
  for (const char* step : kSteps) {
    if (seconds.count(step)) std::printf(" %18.2f", LogLogSlope(lengths, seconds[step]));
  }
  std::printf("\n(slope: log(seconds) over log(tokens), least squares; "
              "1.0 = flat cost per token)\n");
  return exit_code;
}

}  // namespace

int RunLongBench(int argc, char** argv) {
  Options o;
  const int parsed = ParseFlags(argc, argv, &o);
  if (parsed == -1) return 0;
  if (parsed != 0) return parsed;
  InstallBenchSignalHandlers();
  return Run(o);
}

}  // namespace kvkeep::bench
