// The multi-sequence pool scenario behind `kvkeep-eval pool` (docs/quality.md, "Capacity across
// sequences"): several synthetic sequences of different lengths and attention sharpness share one
// pool budget (a fraction of all their cached tokens), and each way of fitting them is measured on
// every sequence's held-out future queries (relative output error, measures.h):
//   capacity        the daemon's --pressure_policy=capacity: whole pages (tokens_per_page tokens
//                   of one (layer, KV head)) leave, globally cheapest first by capacity cost
//                   Σ_j −log(1 − s_j) (capkv s_j, service/page_costs.h); sinks, observation window
//                   and the partial last page stay;
//   capacity-token  the same costs per token instead of per page (what a global token budget
//                   could do; not a daemon policy — shows what page granularity costs);
//   uniform-page    every sequence keeps the same fraction, its own cheapest pages out;
//   uniform         every sequence keeps the same fraction by its own capkv selection, token by
//                   token (a per-sequence Compress at keep_ratio = budget);
//   lru-lost        the daemon's --pressure_policy=lru: whole least-recently-used sequences
//                   (recency: a random order per seed) leave the device until the rest fits; a
//                   spilled sequence queried without being restored has nothing (rel_err 1);
//   lru-restore     the same, each spilled sequence restored before its query: no error, but the
//                   bytes read back (fp16 pages) are reported, and restoring needs room the full
//                   pool does not have — another sequence must go out for each one that comes in.
//   compress        the daemon's --pressure_policy=compress: the pool-wide plan of
//                   service/engine/compress_pressure.h (pages to free per sequence, smallest
//                   marginal loss Δ(L⁴) per freed page, L = the sequence's fraction of capacity
//                   cost lost), then each sequence compressed by its own capkv token selection to
//                   what the plan leaves it;
//   compress-linear the same plan with loss power 1 (Σ L instead of Σ L⁴): shows why p > 1.
//
//   PoolScenarioOptions o;  o.sequences = 8;  o.budget = 0.4;  o.seeds = {1, 2, 3};
//   ASSIGN_OR_RETURN(PoolScenarioReport r, RunPoolScenario(o, &std::cerr));
//   std::cout << FormatPoolTable(r);
#ifndef KVKEEP_BENCH_EVAL_POOL_SCENARIO_H_
#define KVKEEP_BENCH_EVAL_POOL_SCENARIO_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/eval/prefix_stats.h"

namespace kvkeep::eval {

struct PoolScenarioOptions {
  int sequences = 8;                 // Default: 8 (profiles and lengths cycle, see pool_scenario.cc)
  double budget = 0.4;               // Default: 0.4 of all cached tokens fit the pool
  std::vector<uint64_t> seeds = {1, 2, 3};  // Default: 3 seeds
  int layers = 2;                    // Default: 2 per sequence
  int q_heads = 8;                   // Default: 8
  int kv_heads = 2;                  // Default: 2
  int head_dim = 64;                 // Default: 64
  int64_t future = 64;               // Default: 64 held-out queries per sequence
  int tokens_per_page = 16;          // Default: 16
  double compress_loss_power = 4.0;  // Default: 4 (the daemon's; compress-linear uses 1)
  PrefixStatsOptions prefix;         // Default: window 32, sinks 4
};

inline const std::vector<std::string>& PoolMethods() {
  static const std::vector<std::string> m = {"capacity", "capacity-token", "uniform-page",
                                             "uniform",  "lru-lost",       "lru-restore",
                                             "capacity-rel", "capacity-floor",
                                             "compress",     "compress-linear"};
  return m;
}

struct PoolSequenceRow {
  uint64_t seed = 0;
  int index = 0;
  std::string profile;
  int64_t prefix = 0;
  double top5_mass = 0;                // sparsity of its future attention
  std::vector<double> rel_error;       // per method (PoolMethods order)
  std::vector<double> kept_fraction;   // per method: kept tokens / cached tokens
};

struct PoolMethodSummary {
  std::string method;
  double rel_error_mean = 0;  // mean over seeds of the mean over sequences
  double rel_error_min = 0, rel_error_max = 0;  // over seeds
  double worst_sequence = 0;  // mean over seeds of the worst sequence's error
  double restore_mib = 0;     // mean over seeds (lru-restore only)
  double kept_fraction = 0;   // pool-wide, mean over seeds
};

struct PoolScenarioReport {
  PoolScenarioOptions options;
  std::vector<PoolSequenceRow> rows;        // seed-major
  std::vector<PoolMethodSummary> summary;   // PoolMethods order
};

// INVALID_ARGUMENT for sequences < 1, budget outside (0, 1), no seed, or sizes the synthetic
// generator refuses. Progress lines go to `progress` when not null.
absl::StatusOr<PoolScenarioReport> RunPoolScenario(const PoolScenarioOptions& options,
                                                   std::ostream* progress);

// Markdown tables: per method (pool-wide), then per sequence (mean over seeds).
std::string FormatPoolTable(const PoolScenarioReport& report);

}  // namespace kvkeep::eval

#endif  // KVKEEP_BENCH_EVAL_POOL_SCENARIO_H_
