#include "bench/eval/runner.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/eval/oracle.h"
#include "common/status_macros.h"
#include "service/eviction/policy.h"
#include "service/eviction/scorers.h"
#include "service/eviction/selection.h"

namespace kvkeep::eval {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

eviction::Policy MakePolicy(eviction::ScorerKind scorer, eviction::Allocation allocation,
                            const PrefixStatsOptions& prefix) {
  eviction::Policy p;
  p.scorer = scorer;
  p.allocation = allocation;
  p.sinks = prefix.sinks;
  p.window = prefix.window;
  return p;
}

bool IsOracle(const std::string& policy) {
  return policy == kOraclePolicy || policy == kOutputOraclePolicy;
}

absl::Status CheckOptions(const RunOptions& o) {
  if (o.policies.empty()) return absl::InvalidArgumentError("no policy given");
  if (o.allocations.empty()) return absl::InvalidArgumentError("no allocation given");
  if (o.keep_ratios.empty()) return absl::InvalidArgumentError("no keep ratio given");
  for (const std::string& p : o.policies) {
    if (IsOracle(p)) continue;
    if (auto s = eviction::ParseScorer(p); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--policy: ", s.status().message(),
                                                     " (or \"oracle\", \"oracle-out\")"));
    }
  }
  for (const std::string& a : o.allocations) {
    if (auto s = eviction::ParseAllocation(a); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--allocation: ", s.status().message()));
    }
  }
  for (double r : o.keep_ratios) {
    if (!(r > 0 && r <= 1)) {
      return absl::InvalidArgumentError(absl::StrCat("--keep: ratio ", r, " is not in (0, 1]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RunReport> RunEval(const RunOptions& options, std::ostream* progress) {
  RETURN_IF_ERROR(CheckOptions(options));
  const auto start = Clock::now();
  RunReport report;
  report.data = options.data;
  ASSIGN_OR_RETURN(report.meta, ReadMeta(options.data));
  const DatasetMeta& meta = report.meta;
  const int G = meta.q_heads / meta.kv_heads;

  // Scorers to run (each once, whatever the allocations and ratios).
  std::vector<std::pair<std::string, eviction::ScorerKind>> scorers;
  for (const std::string& p : options.policies) {
    if (IsOracle(p)) continue;
    bool seen = false;
    for (const auto& s : scorers) seen = seen || s.first == p;
    if (!seen) scorers.emplace_back(p, *eviction::ParseScorer(p));
  }
  std::map<std::string, std::vector<eviction::HeadScores>> scores;
  std::vector<LayerReference> refs;
  report.has_wo = true;
  eviction::ScoringWorkspace workspace;

  for (int l = 0; l < meta.layers; ++l) {
    ASSIGN_OR_RETURN(LayerData layer, ReadLayer(options.data, meta, l));
    report.future = layer.total - meta.prefix;
    report.has_wo = report.has_wo && layer.wo_hidden > 0;
    ASSIGN_OR_RETURN(eviction::LayerInputs in, BuildLayerInputs(meta, layer, l, options.prefix));
    for (const auto& [name, kind] : scorers) {
      if (eviction::IsSketchScorer(kind) &&
          in.sketch_post_rope != eviction::SketchScorerWantsPostRope(kind)) {
        SetQuerySketch(meta, layer, options.prefix, eviction::SketchScorerWantsPostRope(kind), &in);
      }
      const eviction::Policy policy =
          MakePolicy(kind, eviction::Allocation::kUniform, options.prefix);
      auto s = eviction::ScoreLayer(policy, in, workspace);
      if (!s.ok()) {
        return absl::Status(s.status().code(), absl::StrCat("scoring layer ", l, " with ", name,
                                                            ": ", s.status().message()));
      }
      scores[name].push_back(std::move(*s));
    }
    refs.push_back(BuildReference(meta, layer));
    if (progress) {
      *progress << absl::StrFormat("[kvkeep-eval] layer %d/%d scored (%zu scorers) %.1fs\n", l + 1,
                                   meta.layers, scorers.size(), Seconds(start));
    }
  }
  report.sparsity = MeasureSparsity(refs);
  const std::vector<NeedleTarget> targets = FindNeedleTargets(meta.needles, refs);
  report.targeted_needles = static_cast<int>(targets.size());

  const size_t combos =
      options.keep_ratios.size() * options.policies.size() * options.allocations.size();
  size_t done = 0;
  for (double ratio : options.keep_ratios) {
    for (const std::string& name : options.policies) {
      for (const std::string& alloc : options.allocations) {
        KeptSets kept;
        if (IsOracle(name)) {
          ASSIGN_OR_RETURN(kept, OracleSelection(refs, alloc, ratio,
                                                 name == kOraclePolicy ? OracleKind::kMass
                                                                       : OracleKind::kOutput));
        } else {
          const eviction::Policy policy =
              MakePolicy(*eviction::ParseScorer(name), *eviction::ParseAllocation(alloc),
                         options.prefix);
          auto sel = eviction::SelectTokens(policy, eviction::Budget{.keep_ratio = ratio},
                                            scores[name], G);
          if (!sel.ok()) {
            return absl::Status(sel.status().code(),
                                absl::StrCat("selecting with ", name, "/", alloc, " at ", ratio,
                                             ": ", sel.status().message()));
          }
          kept = std::move(sel->kept);
        }
        ASSIGN_OR_RETURN(Metrics m, Measure(refs, kept, targets));
        report.rows.push_back({name, alloc, ratio, m, 0.0, 0.0});
        ++done;
        if (progress && (done % 10 == 0 || done == combos)) {
          *progress << absl::StrFormat("[kvkeep-eval] %zu/%zu combinations measured %.1fs\n", done,
                                       combos, Seconds(start));
        }
      }
    }
  }

  // Gap closed between snapkv and the oracle, per (allocation, ratio).
  auto find = [&](const std::string& policy, const std::string& alloc,
                  double ratio) -> const ResultRow* {
    for (const ResultRow& r : report.rows) {
      if (r.policy == policy && r.allocation == alloc && r.keep_ratio == ratio) return &r;
    }
    return nullptr;
  };
  for (ResultRow& row : report.rows) {
    const ResultRow* snap = find("snapkv", row.allocation, row.keep_ratio);
    const ResultRow* best = find(kOraclePolicy, row.allocation, row.keep_ratio);
    if (!snap) snap = find("snapkv", "uniform", row.keep_ratio);
    if (!best) best = find(kOraclePolicy, "uniform", row.keep_ratio);
    row.gap_closed = std::numeric_limits<double>::quiet_NaN();
    row.gap_closed_decode = std::numeric_limits<double>::quiet_NaN();
    if (snap && best) {
      // Within 5 % of the oracle there is no gap worth a ratio: the share would be noise.
      auto share = [](double snap_err, double best_err, double err) {
        const double gap = snap_err - best_err;
        return gap > 0.05 * best_err ? (snap_err - err) / gap
                                     : std::numeric_limits<double>::quiet_NaN();
      };
      row.gap_closed =
          share(snap->metrics.rel_error, best->metrics.rel_error, row.metrics.rel_error);
      row.gap_closed_decode = share(snap->metrics.rel_error_decode,
                                    best->metrics.rel_error_decode, row.metrics.rel_error_decode);
    }
  }
  return report;
}

absl::StatusOr<NpyArray> ScorePrefix(const std::string& data, int layer_index,
                                     const std::string& policy_name,
                                     const PrefixStatsOptions& prefix) {
  ASSIGN_OR_RETURN(DatasetMeta meta, ReadMeta(data));
  if (layer_index < 0 || layer_index >= meta.layers) {
    return absl::InvalidArgumentError(absl::StrCat("--layer ", layer_index, " is out of range: ",
                                                   data, " has ", meta.layers, " layers"));
  }
  NpyArray out;
  out.shape = {meta.kv_heads, meta.prefix};
  out.data.reserve(static_cast<size_t>(meta.kv_heads) * meta.prefix);
  if (IsOracle(policy_name)) {
    ASSIGN_OR_RETURN(LayerData layer, ReadLayer(data, meta, layer_index));
    const LayerReference ref = BuildReference(meta, layer);
    const std::vector<double>& score =
        policy_name == kOraclePolicy ? ref.future_mass : ref.future_output;
    for (double x : score) out.data.push_back(static_cast<float>(x));
    return out;
  }
  auto kind = eviction::ParseScorer(policy_name);
  if (!kind.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--policy: ", kind.status().message(),
                                                   " (or \"oracle\", \"oracle-out\")"));
  }
  ASSIGN_OR_RETURN(LayerData layer, ReadLayer(data, meta, layer_index));
  ASSIGN_OR_RETURN(eviction::LayerInputs in, BuildLayerInputs(meta, layer, layer_index, prefix));
  if (eviction::SketchScorerWantsPostRope(*kind)) {
    SetQuerySketch(meta, layer, prefix, /*post_rope=*/true, &in);
  }
  eviction::ScoringWorkspace workspace;
  ASSIGN_OR_RETURN(eviction::HeadScores scores,
                   eviction::ScoreLayer(MakePolicy(*kind, eviction::Allocation::kUniform, prefix),
                                        in, workspace));
  for (const auto& head : scores.per_head) out.data.insert(out.data.end(), head.begin(), head.end());
  return out;
}

}  // namespace kvkeep::eval
