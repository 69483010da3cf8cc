#include "bench/eval/pool_scenario.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/eval/measures.h"
#include "bench/eval/synth.h"
#include "common/status_macros.h"
#include "service/eviction/policy.h"
#include "service/eviction/scorers.h"
#include "service/eviction/selection.h"

namespace kvkeep::eval {
namespace {

// Profiles and lengths of the sequences, cycled: different attention sharpness and sizes.
constexpr const char* kProfiles[] = {"mixed", "heavy", "local", "needles",
                                     "sinks", "lowrank", "gqa", "mixed"};
constexpr int64_t kPrefixes[] = {512, 2048, 1024, 3072, 768, 1536, 640, 2560};

// The daemon's per-token capacity cost (service/page_costs.h TokenCapacityCost): −log(1 − s).
double TokenCost(double s) { return -std::log1p(-std::clamp(s, 0.0, 1.0 - 1e-9)); }

struct Seq {
  std::string profile;
  int64_t prefix = 0;
  std::vector<LayerReference> refs;
  std::vector<NeedleTarget> targets;
  std::vector<std::vector<std::vector<double>>> cost;  // [layer][kv_head][token]
  std::vector<eviction::HeadScores> scores;            // capkv, per layer
  double top5 = 0;
};

// One evictable unit: a page, or a token (first == last).
struct Unit {
  double cost;
  int seq, layer, head;
  int64_t first, count;
};

KeptSets AllKept(const Seq& s) {
  KeptSets kept(s.refs.size());
  for (size_t l = 0; l < s.refs.size(); ++l) {
    kept[l].resize(s.refs[l].kv_heads);
    for (auto& k : kept[l]) {
      k.resize(s.prefix);
      std::iota(k.begin(), k.end(), 0);
    }
  }
  return kept;
}

// Units of `s` that may leave: pages (tpp > 1) wholly outside sinks and window, or such tokens.
void Units(const Seq& s, int index, int tpp, const PrefixStatsOptions& p, std::vector<Unit>* out) {
  for (size_t l = 0; l < s.cost.size(); ++l) {
    for (size_t g = 0; g < s.cost[l].size(); ++g) {
      const std::vector<double>& c = s.cost[l][g];
      const int64_t first = (p.sinks + tpp - 1) / tpp, end = (s.prefix - p.window) / tpp;
      for (int64_t u = first; u < end; ++u) {
        double sum = 0;
        for (int64_t j = u * tpp; j < (u + 1) * tpp; ++j) sum += c[j];
        out->push_back({sum, index, static_cast<int>(l), static_cast<int>(g), u * tpp, tpp});
      }
    }
  }
}

// Drops the cheapest units until `drop` tokens left (or none remain); marks them in `gone`. A
// sequence never loses more than max_drop[seq] tokens (empty: no bound).
void DropCheapest(std::vector<Unit> units, int64_t drop,
                  std::vector<std::vector<std::vector<std::vector<bool>>>>* gone,
                  std::vector<int64_t> max_drop = {}) {
  std::stable_sort(units.begin(), units.end(),
                   [](const Unit& a, const Unit& b) { return a.cost < b.cost; });
  int64_t dropped = 0;
  for (const Unit& u : units) {
    if (dropped >= drop) break;
    if (!max_drop.empty()) {
      if (max_drop[u.seq] < u.count) continue;
      max_drop[u.seq] -= u.count;
    }
    auto& mask = (*gone)[u.seq][u.layer][u.head];
    for (int64_t j = u.first; j < u.first + u.count; ++j) mask[j] = true;
    dropped += u.count;
  }
}

}  // namespace

absl::StatusOr<PoolScenarioReport> RunPoolScenario(const PoolScenarioOptions& o,
                                                   std::ostream* progress) {
  if (o.sequences < 1) return absl::InvalidArgumentError("--sequences must be >= 1");
  if (!(o.budget > 0 && o.budget < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("--budget ", o.budget, " is not in (0, 1)"));
  }
  if (o.seeds.empty()) return absl::InvalidArgumentError("no seed given");
  if (o.tokens_per_page < 1) return absl::InvalidArgumentError("--tokens-per-page must be >= 1");
  const std::vector<std::string>& methods = PoolMethods();
  const size_t M = methods.size();
  PoolScenarioReport report;
  report.options = o;
  const int tpp = o.tokens_per_page;
  const uint64_t page_bytes = uint64_t{2} * tpp * o.head_dim * 2;  // fp16 keys and values
  eviction::Policy capkv;
  capkv.scorer = eviction::ScorerKind::kCapKv;
  capkv.sinks = o.prefix.sinks;
  capkv.window = o.prefix.window;
  eviction::ScoringWorkspace workspace;
  // [method][seed] pool-wide figures.
  std::vector<std::vector<double>> mean_err(M), worst(M), kept_frac(M), restore_mib(M);

  for (uint64_t seed : o.seeds) {
    std::vector<Seq> seqs(o.sequences);
    int64_t total = 0;
    for (int i = 0; i < o.sequences; ++i) {
      Seq& s = seqs[i];
      SynthOptions so;
      so.profile = kProfiles[i % 8];
      so.prefix = kPrefixes[i % 8];
      so.seed = seed * 1000 + static_cast<uint64_t>(i);
      so.layers = o.layers;
      so.q_heads = o.q_heads;
      so.kv_heads = o.kv_heads;
      so.head_dim = o.head_dim;
      so.future = o.future;
      so.with_wo = false;
      ASSIGN_OR_RETURN(SynthDataset ds, GenerateSynth(so));
      s.profile = so.profile;
      s.prefix = so.prefix;
      for (int l = 0; l < o.layers; ++l) {
        ASSIGN_OR_RETURN(eviction::LayerInputs in, BuildLayerInputs(ds.meta, ds.layers[l], l,
                                                                    o.prefix));
        ASSIGN_OR_RETURN(eviction::HeadScores sc, eviction::ScoreLayer(capkv, in, workspace));
        std::vector<std::vector<double>> c(sc.per_head.size());
        for (size_t g = 0; g < c.size(); ++g) {
          for (float x : sc.per_head[g]) c[g].push_back(TokenCost(x));
        }
        s.cost.push_back(std::move(c));
        s.scores.push_back(std::move(sc));
        s.refs.push_back(BuildReference(ds.meta, ds.layers[l]));
      }
      s.targets = FindNeedleTargets(ds.meta.needles, s.refs);
      s.top5 = MeasureSparsity(s.refs).top5_mass;
      total += int64_t{o.layers} * o.kv_heads * s.prefix;
    }
    const int64_t drop = total - static_cast<int64_t>(o.budget * static_cast<double>(total));
    std::vector<PoolSequenceRow> rows(o.sequences);
    for (int i = 0; i < o.sequences; ++i) {
      rows[i] = {seed, i, seqs[i].profile, seqs[i].prefix, seqs[i].top5,
                 std::vector<double>(M, 0.0), std::vector<double>(M, 0.0)};
    }
    auto fresh_mask = [&] {
      std::vector<std::vector<std::vector<std::vector<bool>>>> gone(o.sequences);
      for (int i = 0; i < o.sequences; ++i) {
        gone[i].assign(o.layers, std::vector<std::vector<bool>>(
                                     o.kv_heads, std::vector<bool>(seqs[i].prefix, false)));
      }
      return gone;
    };
    auto measure_masks = [&](size_t m, const auto& gone) -> absl::Status {
      for (int i = 0; i < o.sequences; ++i) {
        KeptSets kept(o.layers);
        int64_t n = 0;
        for (int l = 0; l < o.layers; ++l) {
          kept[l].resize(o.kv_heads);
          for (int g = 0; g < o.kv_heads; ++g) {
            for (int64_t j = 0; j < seqs[i].prefix; ++j) {
              if (!gone[i][l][g][j]) kept[l][g].push_back(static_cast<int32_t>(j));
            }
            n += static_cast<int64_t>(kept[l][g].size());
          }
        }
        ASSIGN_OR_RETURN(Metrics met, Measure(seqs[i].refs, kept, seqs[i].targets));
        rows[i].rel_error[m] = met.rel_error;
        rows[i].kept_fraction[m] =
            static_cast<double>(n) / (double{1} * o.layers * o.kv_heads * seqs[i].prefix);
      }
      return absl::OkStatus();
    };
    // capacity (pages) and capacity-token: one global order over every sequence.
    for (int unit : {tpp, 1}) {
      std::vector<Unit> units;
      for (int i = 0; i < o.sequences; ++i) Units(seqs[i], i, unit, o.prefix, &units);
      auto gone = fresh_mask();
      DropCheapest(std::move(units), drop, &gone);
      RETURN_IF_ERROR(measure_masks(unit == tpp ? 0 : 1, gone));
    }
    // capacity-rel: token costs over their head's mean token cost (1 = an average token of its
    // own head), then the global order.
    {
      std::vector<Unit> units;
      for (int i = 0; i < o.sequences; ++i) {
        Seq normalised = seqs[i];
        for (auto& layer : normalised.cost) {
          for (auto& head : layer) {
            const double mean_cost = std::accumulate(head.begin(), head.end(), 0.0) /
                                     static_cast<double>(std::max<size_t>(head.size(), 1));
            for (double& c : head) c /= std::max(mean_cost, 1e-30);
          }
        }
        Units(normalised, i, tpp, o.prefix, &units);
      }
      auto gone = fresh_mask();
      DropCheapest(std::move(units), drop, &gone);
      RETURN_IF_ERROR(measure_masks(6, gone));
    }
    // capacity-floor: the global order, but every sequence keeps at least budget / 2 of its tokens.
    {
      std::vector<Unit> units;
      std::vector<int64_t> max_drop;
      for (int i = 0; i < o.sequences; ++i) {
        Units(seqs[i], i, tpp, o.prefix, &units);
        const int64_t n = int64_t{o.layers} * o.kv_heads * seqs[i].prefix;
        max_drop.push_back(n - static_cast<int64_t>(o.budget / 2 * static_cast<double>(n)));
      }
      auto gone = fresh_mask();
      DropCheapest(std::move(units), drop, &gone, max_drop);
      RETURN_IF_ERROR(measure_masks(7, gone));
    }
    // uniform-page: each sequence its own share of the drop, its cheapest pages.
    {
      auto gone = fresh_mask();
      for (int i = 0; i < o.sequences; ++i) {
        std::vector<Unit> units;
        Units(seqs[i], i, tpp, o.prefix, &units);
        const int64_t n = int64_t{o.layers} * o.kv_heads * seqs[i].prefix;
        DropCheapest(std::move(units), n - static_cast<int64_t>(o.budget * n), &gone);
      }
      RETURN_IF_ERROR(measure_masks(2, gone));
    }
    // uniform: each sequence's capkv selection at keep_ratio = budget.
    for (int i = 0; i < o.sequences; ++i) {
      ASSIGN_OR_RETURN(eviction::Selection sel,
                       eviction::SelectTokens(capkv, eviction::Budget{.keep_ratio = o.budget},
                                              seqs[i].scores, o.q_heads / o.kv_heads));
      ASSIGN_OR_RETURN(Metrics met, Measure(seqs[i].refs, sel.kept, seqs[i].targets));
      int64_t n = 0;
      for (const auto& layer : sel.kept) {
        for (const auto& k : layer) n += static_cast<int64_t>(k.size());
      }
      rows[i].rel_error[3] = met.rel_error;
      rows[i].kept_fraction[3] =
          static_cast<double>(n) / (double{1} * o.layers * o.kv_heads * seqs[i].prefix);
    }
    // lru: whole sequences leave, least recently used first (a random order per seed).
    {
      std::vector<int> order(o.sequences);
      std::iota(order.begin(), order.end(), 0);
      std::mt19937_64 rng(seed);
      std::shuffle(order.begin(), order.end(), rng);
      int64_t on_device = total, budget_tokens = total - drop;
      uint64_t restored = 0;
      std::vector<bool> spilled(o.sequences, false);
      for (int i : order) {
        if (on_device <= budget_tokens) break;
        spilled[i] = true;
        on_device -= int64_t{o.layers} * o.kv_heads * seqs[i].prefix;
        restored += uint64_t{static_cast<uint64_t>(o.layers * o.kv_heads)} *
                    ((seqs[i].prefix + tpp - 1) / tpp) * page_bytes;
      }
      for (int i = 0; i < o.sequences; ++i) {
        ASSIGN_OR_RETURN(Metrics met, Measure(seqs[i].refs, AllKept(seqs[i]), seqs[i].targets));
        rows[i].rel_error[4] = spilled[i] ? 1.0 : met.rel_error;
        rows[i].kept_fraction[4] = spilled[i] ? 0.0 : 1.0;
        rows[i].rel_error[5] = met.rel_error;
        rows[i].kept_fraction[5] = 1.0;
      }
      for (size_t m = 0; m < M; ++m) restore_mib[m].push_back(m == 5 ? restored / 1048576.0 : 0);
    }
    for (size_t m = 0; m < M; ++m) {
      double sum = 0, w = 0, kept = 0;
      for (int i = 0; i < o.sequences; ++i) {
        sum += rows[i].rel_error[m];
        w = std::max(w, rows[i].rel_error[m]);
        kept += rows[i].kept_fraction[m] * o.layers * o.kv_heads * seqs[i].prefix;
      }
      mean_err[m].push_back(sum / o.sequences);
      worst[m].push_back(w);
      kept_frac[m].push_back(kept / static_cast<double>(total));
    }
    for (PoolSequenceRow& r : rows) report.rows.push_back(std::move(r));
    if (progress) {
      *progress << absl::StrFormat("[kvkeep-eval pool] seed %d: %d sequences, %d tokens, "
                                   "budget %d\n",
                                   seed, o.sequences, total, total - drop);
    }
  }
  auto mean = [](const std::vector<double>& v) {
    return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  };
  for (size_t m = 0; m < M; ++m) {
    PoolMethodSummary s;
    s.method = methods[m];
    s.rel_error_mean = mean(mean_err[m]);
    s.rel_error_min = *std::min_element(mean_err[m].begin(), mean_err[m].end());
    s.rel_error_max = *std::max_element(mean_err[m].begin(), mean_err[m].end());
    s.worst_sequence = mean(worst[m]);
    s.restore_mib = mean(restore_mib[m]);
    s.kept_fraction = mean(kept_frac[m]);
    report.summary.push_back(s);
  }
  return report;
}

std::string FormatPoolTable(const PoolScenarioReport& r) {
  const PoolScenarioOptions& o = r.options;
  std::string out = absl::StrFormat(
      "%d sequences, pool budget %.0f %% of their cached tokens, %d seeds, %d layers x %d KV "
      "heads, head_dim %d, %d tokens per page\n\n",
      o.sequences, 100 * o.budget, o.seeds.size(), o.layers, o.kv_heads, o.head_dim,
      o.tokens_per_page);
  absl::StrAppend(&out, "| method | rel_err (mean over sequences) | min..max over seeds | "
                        "worst sequence | kept | restored MiB |\n|---|---|---|---|---|---|\n");
  for (const PoolMethodSummary& s : r.summary) {
    absl::StrAppend(&out, absl::StrFormat("| %s | %.4f | %.4f..%.4f | %.4f | %.3f | %s |\n",
                                          s.method, s.rel_error_mean, s.rel_error_min,
                                          s.rel_error_max, s.worst_sequence, s.kept_fraction,
                                          s.restore_mib > 0 ? absl::StrFormat("%.1f",
                                                                              s.restore_mib)
                                                            : "-"));
  }
  // Per sequence, mean over seeds.
  absl::StrAppend(&out, "\nPer sequence (mean over seeds; rel_err, kept fraction in brackets):\n\n"
                        "| # | profile | prefix | top-5% mass |");
  for (const std::string& m : PoolMethods()) absl::StrAppend(&out, " ", m, " |");
  absl::StrAppend(&out, "\n|---|---|---|---|");
  for (size_t m = 0; m < PoolMethods().size(); ++m) absl::StrAppend(&out, "---|");
  absl::StrAppend(&out, "\n");
  for (int i = 0; i < o.sequences; ++i) {
    double top5 = 0, n = 0;
    std::vector<double> err(PoolMethods().size(), 0), kept(PoolMethods().size(), 0);
    std::string profile;
    int64_t prefix = 0;
    for (const PoolSequenceRow& row : r.rows) {
      if (row.index != i) continue;
      profile = row.profile;
      prefix = row.prefix;
      top5 += row.top5_mass;
      for (size_t m = 0; m < err.size(); ++m) {
        err[m] += row.rel_error[m];
        kept[m] += row.kept_fraction[m];
      }
      ++n;
    }
    absl::StrAppend(&out, absl::StrFormat("| %d | %s | %d | %.2f |", i, profile, prefix, top5 / n));
    for (size_t m = 0; m < err.size(); ++m) {
      absl::StrAppend(&out, absl::StrFormat(" %.4f (%.2f) |", err[m] / n, kept[m] / n));
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
}

}  // namespace kvkeep::eval
