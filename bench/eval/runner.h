// The quality sweep behind `kvkeep-eval run` and `kvkeep-eval scores`: for every layer, the prefix
// statistics a worker would send are built, every requested scorer runs once, and the reference
// attention of the future queries is kept; then every (policy, allocation, keep ratio) selects
// tokens through the real eviction library (SelectTokens) and is measured.
//
//   RunOptions opts{.data = "/tmp/mixed", .policies = {"snapkv", "oracle"},
//                   .allocations = {"uniform"}, .keep_ratios = {0.05}};
//   ASSIGN_OR_RETURN(RunReport report, RunEval(opts, &std::cerr));
#ifndef KVKEEP_BENCH_EVAL_RUNNER_H_
#define KVKEEP_BENCH_EVAL_RUNNER_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/eval/dataset.h"
#include "bench/eval/measures.h"
#include "bench/eval/npy.h"
#include "bench/eval/prefix_stats.h"

namespace kvkeep::eval {

// "oracle" and "oracle-out" (oracle.h) are accepted wherever a policy name is.
inline constexpr char kOraclePolicy[] = "oracle";
inline constexpr char kOutputOraclePolicy[] = "oracle-out";

struct RunOptions {
  std::string data;                       // dataset folder (dataset.h)
  std::vector<std::string> policies;      // scorer names (eviction::ParseScorer), "oracle",
                                          // "oracle-out"
  std::vector<std::string> allocations;   // "uniform", "ada", "pyramid", "global"
  std::vector<double> keep_ratios;        // each in (0, 1]
  PrefixStatsOptions prefix;              // Default: window 32, sinks 4
};

struct ResultRow {
  std::string policy;
  std::string allocation;
  double keep_ratio = 0;
  Metrics metrics;
  // Share of the snapkv → oracle gap of rel_error this row closes, with the snapkv and oracle rows
  // of the same allocation and ratio (uniform's when this allocation has none); NaN when either
  // is missing or snapkv is within 5 % of the oracle. Above 1: better than the (mass) oracle.
  double gap_closed = 0;
  // The same share under the decode-time measure (Metrics::rel_error_decode), against the snapkv
  // and oracle rows under that measure.
  double gap_closed_decode = 0;
};

struct RunReport {
  std::string data;
  DatasetMeta meta;
  int64_t future = 0;   // held-out queries per layer
  bool has_wo = false;  // every layer had W_O
  Sparsity sparsity;
  int targeted_needles = 0;
  std::vector<ResultRow> rows;  // ratio-major, then policy, then allocation, in request order
};

// kInvalidArgument for unknown policy/allocation names or ratios outside (0, 1]; the dataset's
// own errors (kNotFound for missing files, kInvalidArgument for bad ones); scorer errors are
// returned with the policy and layer in the message. Progress lines go to `progress` if not null.
absl::StatusOr<RunReport> RunEval(const RunOptions& options, std::ostream* progress);

// Per-token scores of one layer's prefix under `policy` (a scorer name): float32
// [kv_heads, prefix]. "oracle" gives the future attention mass, "oracle-out" the output change
// of evicting each token alone (oracle.h).
absl::StatusOr<NpyArray> ScorePrefix(const std::string& data, int layer, const std::string& policy,
                                     const PrefixStatsOptions& prefix);

}  // namespace kvkeep::eval

#endif  // KVKEEP_BENCH_EVAL_RUNNER_H_
