#include "bench/eval/pool_scenario.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/eval/measures.h"
#include "bench/eval/synth.h"
#include "common/status_macros.h"
#include "service/engine/compress_pressure.h"
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

// [sequence][layer][kv_head][token]: true once the token left the device.
using GoneMask = std::vector<std::vector<std::vector<std::vector<bool>>>>;

absl::Status ValidatePoolOptions(const PoolScenarioOptions& o) {
  if (o.sequences < 1) return absl::InvalidArgumentError("--sequences must be >= 1");
  if (!(o.budget > 0 && o.budget < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("--budget ", o.budget, " is not in (0, 1)"));
  }
  if (o.seeds.empty()) return absl::InvalidArgumentError("no seed given");
  if (o.tokens_per_page < 1) return absl::InvalidArgumentError("--tokens-per-page must be >= 1");
  return absl::OkStatus();
}

// Sequence i of the pool for `seed`: a synthetic dataset of its profile and length, its capkv
// scores and token costs, references and needle targets.
absl::StatusOr<Seq> BuildSequence(const PoolScenarioOptions& o, uint64_t seed, int i,
                                  const eviction::Policy& capkv,
                                  eviction::ScoringWorkspace& workspace) {
  Seq s;
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
  return s;
}

// One seed's pool: its sequences, the tokens to drop, and every method's per-sequence figures.
// The methods' indices are those of PoolMethods().
class SeedRun {
 public:
  SeedRun(const PoolScenarioOptions& o, uint64_t seed, std::vector<Seq> seqs, size_t methods)
      : o_(o), seed_(seed), tpp_(o.tokens_per_page), seqs_(std::move(seqs)) {
    for (const Seq& s : seqs_) total_ += TokensOf(s);
    drop_ = total_ - static_cast<int64_t>(o.budget * static_cast<double>(total_));
    rows_.resize(o.sequences);
    for (int i = 0; i < o.sequences; ++i) {
      rows_[i] = {seed, i, seqs_[i].profile, seqs_[i].prefix, seqs_[i].top5,
                  std::vector<double>(methods, 0.0), std::vector<double>(methods, 0.0)};
    }
  }

  int64_t total() const { return total_; }
  int64_t drop() const { return drop_; }
  const std::vector<Seq>& seqs() const { return seqs_; }
  std::vector<PoolSequenceRow>& rows() { return rows_; }

  // capacity (pages, unit = tpp) and capacity-token (unit = 1): one global order over every
  // sequence.
  absl::Status Capacity(int unit, size_t method) {
    std::vector<Unit> units;
    for (int i = 0; i < o_.sequences; ++i) Units(seqs_[i], i, unit, o_.prefix, &units);
    GoneMask gone = FreshMask();
    DropCheapest(std::move(units), drop_, &gone);
    return MeasureMasks(method, gone);
  }

  // capacity-rel: token costs over their head's mean token cost (1 = an average token of its
  // own head), then the global order.
  absl::Status CapacityRelative(size_t method) {
    std::vector<Unit> units;
    for (int i = 0; i < o_.sequences; ++i) {
      Seq normalised = seqs_[i];
      for (auto& layer : normalised.cost) {
        for (auto& head : layer) {
          const double mean_cost = std::accumulate(head.begin(), head.end(), 0.0) /
                                   static_cast<double>(std::max<size_t>(head.size(), 1));
          for (double& c : head) c /= std::max(mean_cost, 1e-30);
        }
      }
      Units(normalised, i, tpp_, o_.prefix, &units);
    }
    GoneMask gone = FreshMask();
    DropCheapest(std::move(units), drop_, &gone);
    return MeasureMasks(method, gone);
  }

  // capacity-floor: the global order, but every sequence keeps at least budget / 2 of its tokens.
  absl::Status CapacityWithFloor(size_t method) {
    std::vector<Unit> units;
    std::vector<int64_t> max_drop;
    for (int i = 0; i < o_.sequences; ++i) {
      Units(seqs_[i], i, tpp_, o_.prefix, &units);
      const int64_t n = TokensOf(seqs_[i]);
      max_drop.push_back(n - static_cast<int64_t>(o_.budget / 2 * static_cast<double>(n)));
    }
    GoneMask gone = FreshMask();
    DropCheapest(std::move(units), drop_, &gone, max_drop);
    return MeasureMasks(method, gone);
  }

  // uniform-page: each sequence its own share of the drop, its cheapest pages.
  absl::Status UniformPages(size_t method) {
    GoneMask gone = FreshMask();
    for (int i = 0; i < o_.sequences; ++i) {
      std::vector<Unit> units;
      Units(seqs_[i], i, tpp_, o_.prefix, &units);
      const int64_t n = TokensOf(seqs_[i]);
      DropCheapest(std::move(units), n - static_cast<int64_t>(o_.budget * n), &gone);
    }
    return MeasureMasks(method, gone);
  }

  // uniform: each sequence's capkv selection at keep_ratio = budget.
  absl::Status UniformSelection(const eviction::Policy& capkv, size_t method) {
    for (int i = 0; i < o_.sequences; ++i) {
      RETURN_IF_ERROR(SelectAndMeasure(capkv, i, o_.budget, method));
    }
    return absl::OkStatus();
  }

  // compress: the pressure plan (compress_pressure.h) over every sequence's page costs, one
  // tenant, then each sequence's capkv selection at what the plan leaves it.
  absl::Status PressureCompress(const eviction::Policy& capkv, double loss_power, size_t method) {
    std::vector<CompressCandidate> candidates;
    for (int i = 0; i < o_.sequences; ++i) {
      const Seq& s = seqs_[i];
      std::vector<std::vector<double>> costs;
      std::vector<std::vector<bool>> droppable;
      const int64_t pages = (s.prefix + tpp_ - 1) / tpp_;
      const int64_t first = (o_.prefix.sinks + tpp_ - 1) / tpp_;
      const int64_t end = (s.prefix - o_.prefix.window) / tpp_;
      for (const auto& layer : s.cost) {
        for (const std::vector<double>& c : layer) {
          costs.emplace_back(pages, 0.0);
          droppable.emplace_back(pages, false);
          for (int64_t j = 0; j < s.prefix; ++j) costs.back()[j / tpp_] += c[j];
          for (int64_t p = first; p < end; ++p) droppable.back()[p] = true;
        }
      }
      candidates.push_back({"pool", static_cast<uint64_t>(tpp_), static_cast<uint64_t>(i),
                            NormalisedPageLosses(costs, droppable)});
    }
    absl::flat_hash_map<std::string, TenantStanding> tenants;
    tenants["pool"] = {static_cast<uint64_t>(total_), 0, 0};
    const CompressPlan plan = PlanPressureCompression(
        candidates, &tenants, static_cast<uint64_t>(drop_), "", {.loss_power = loss_power});
    for (int i = 0; i < o_.sequences; ++i) {
      const double n = static_cast<double>(TokensOf(seqs_[i]));
      const double keep = n - static_cast<double>(plan.pages[i]) * tpp_;
      RETURN_IF_ERROR(SelectAndMeasure(capkv, i, std::clamp(keep / n, 1.0 / n, 1.0), method));
    }
    return absl::OkStatus();
  }

  // lru: whole sequences leave, least recently used first (a random order per seed). As
  // `lost` (lru-lost) a spilled sequence counts as lost; as `restore` (lru-restore) every
  // sequence is whole again after a restore. Returns the MiB restored.
  absl::StatusOr<double> LruAndRestore(uint64_t page_bytes, size_t lost, size_t restore) {
    std::vector<int> order(o_.sequences);
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(seed_);
    std::shuffle(order.begin(), order.end(), rng);
    int64_t on_device = total_, budget_tokens = total_ - drop_;
    uint64_t restored = 0;
    std::vector<bool> spilled(o_.sequences, false);
    for (int i : order) {
      if (on_device <= budget_tokens) break;
      spilled[i] = true;
      on_device -= TokensOf(seqs_[i]);
      restored += uint64_t{static_cast<uint64_t>(o_.layers * o_.kv_heads)} *
                  ((seqs_[i].prefix + tpp_ - 1) / tpp_) * page_bytes;
    }
    for (int i = 0; i < o_.sequences; ++i) {
      ASSIGN_OR_RETURN(Metrics met, Measure(seqs_[i].refs, AllKept(seqs_[i]), seqs_[i].targets));
      rows_[i].rel_error[lost] = spilled[i] ? 1.0 : met.rel_error;
      rows_[i].kept_fraction[lost] = spilled[i] ? 0.0 : 1.0;
      rows_[i].rel_error[restore] = met.rel_error;
      rows_[i].kept_fraction[restore] = 1.0;
    }
    return restored / 1048576.0;
  }

 private:
  int64_t TokensOf(const Seq& s) const { return int64_t{o_.layers} * o_.kv_heads * s.prefix; }

  // Sequence i compressed by its capkv selection at `keep_ratio`, measured as `method`.
  absl::Status SelectAndMeasure(const eviction::Policy& capkv, int i, double keep_ratio,
                                size_t method) {
    ASSIGN_OR_RETURN(eviction::Selection sel,
                     eviction::SelectTokens(capkv, eviction::Budget{.keep_ratio = keep_ratio},
                                            seqs_[i].scores, o_.q_heads / o_.kv_heads));
    ASSIGN_OR_RETURN(Metrics met, Measure(seqs_[i].refs, sel.kept, seqs_[i].targets));
    int64_t n = 0;
    for (const auto& layer : sel.kept) {
      for (const auto& k : layer) n += static_cast<int64_t>(k.size());
    }
    rows_[i].rel_error[method] = met.rel_error;
    rows_[i].kept_fraction[method] =
        static_cast<double>(n) / (double{1} * o_.layers * o_.kv_heads * seqs_[i].prefix);
    return absl::OkStatus();
  }

  GoneMask FreshMask() const {
    GoneMask gone(o_.sequences);
    for (int i = 0; i < o_.sequences; ++i) {
      gone[i].assign(o_.layers, std::vector<std::vector<bool>>(
                                    o_.kv_heads, std::vector<bool>(seqs_[i].prefix, false)));
    }
    return gone;
  }

  // Every sequence's error and kept fraction with the tokens of `gone` evicted, as `method`.
  absl::Status MeasureMasks(size_t method, const GoneMask& gone) {
    for (int i = 0; i < o_.sequences; ++i) {
      KeptSets kept(o_.layers);
      int64_t n = 0;
      for (int l = 0; l < o_.layers; ++l) {
        kept[l].resize(o_.kv_heads);
        for (int g = 0; g < o_.kv_heads; ++g) {
          for (int64_t j = 0; j < seqs_[i].prefix; ++j) {
            if (!gone[i][l][g][j]) kept[l][g].push_back(static_cast<int32_t>(j));
          }
          n += static_cast<int64_t>(kept[l][g].size());
        }
      }
      ASSIGN_OR_RETURN(Metrics met, Measure(seqs_[i].refs, kept, seqs_[i].targets));
      rows_[i].rel_error[method] = met.rel_error;
      rows_[i].kept_fraction[method] =
          static_cast<double>(n) / (double{1} * o_.layers * o_.kv_heads * seqs_[i].prefix);
    }
    return absl::OkStatus();
  }

  const PoolScenarioOptions& o_;
  const uint64_t seed_;
  const int tpp_;
  const std::vector<Seq> seqs_;
  int64_t total_ = 0;  // cached tokens of every sequence
  int64_t drop_ = 0;   // tokens the pool budget leaves no room for
  std::vector<PoolSequenceRow> rows_;
};

// Pool-wide figures of every method, one entry per seed: [method][seed].
struct SeedFigures {
  explicit SeedFigures(size_t methods)
      : mean_err(methods), worst(methods), kept_frac(methods), restore_mib(methods) {}
  std::vector<std::vector<double>> mean_err, worst, kept_frac, restore_mib;

  void Add(const PoolScenarioOptions& o, SeedRun& run) {
    for (size_t m = 0; m < mean_err.size(); ++m) {
      double sum = 0, w = 0, kept = 0;
      for (int i = 0; i < o.sequences; ++i) {
        sum += run.rows()[i].rel_error[m];
        w = std::max(w, run.rows()[i].rel_error[m]);
        kept += run.rows()[i].kept_fraction[m] * o.layers * o.kv_heads * run.seqs()[i].prefix;
      }
      mean_err[m].push_back(sum / o.sequences);
      worst[m].push_back(w);
      kept_frac[m].push_back(kept / static_cast<double>(run.total()));
    }
  }
};

}  // namespace

absl::StatusOr<PoolScenarioReport> RunPoolScenario(const PoolScenarioOptions& o,
                                                   std::ostream* progress) {
  RETURN_IF_ERROR(ValidatePoolOptions(o));
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
  SeedFigures figures(M);

  for (uint64_t seed : o.seeds) {
    std::vector<Seq> seqs(o.sequences);
    for (int i = 0; i < o.sequences; ++i) {
      ASSIGN_OR_RETURN(seqs[i], BuildSequence(o, seed, i, capkv, workspace));
    }
    SeedRun run(o, seed, std::move(seqs), M);
    // Method indices as in PoolMethods().
    RETURN_IF_ERROR(run.Capacity(tpp, 0));
    RETURN_IF_ERROR(run.Capacity(1, 1));
    RETURN_IF_ERROR(run.CapacityRelative(6));
    RETURN_IF_ERROR(run.CapacityWithFloor(7));
    RETURN_IF_ERROR(run.UniformPages(2));
    RETURN_IF_ERROR(run.UniformSelection(capkv, 3));
    RETURN_IF_ERROR(run.PressureCompress(capkv, o.compress_loss_power, 8));
    RETURN_IF_ERROR(run.PressureCompress(capkv, 1.0, 9));
    ASSIGN_OR_RETURN(const double restored_mib, run.LruAndRestore(page_bytes, 4, 5));
    for (size_t m = 0; m < M; ++m) figures.restore_mib[m].push_back(m == 5 ? restored_mib : 0);
    figures.Add(o, run);
    for (PoolSequenceRow& r : run.rows()) report.rows.push_back(std::move(r));
    if (progress) {
      *progress << absl::StrFormat("[kvkeep-eval pool] seed %d: %d sequences, %d tokens, "
                                   "budget %d\n",
                                   seed, o.sequences, run.total(), run.total() - run.drop());
    }
  }
  auto mean = [](const std::vector<double>& v) {
    return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  };
  for (size_t m = 0; m < M; ++m) {
    PoolMethodSummary s;
    s.method = methods[m];
    s.rel_error_mean = mean(figures.mean_err[m]);
    s.rel_error_min = *std::min_element(figures.mean_err[m].begin(), figures.mean_err[m].end());
    s.rel_error_max = *std::max_element(figures.mean_err[m].begin(), figures.mean_err[m].end());
    s.worst_sequence = mean(figures.worst[m]);
    s.restore_mib = mean(figures.restore_mib[m]);
    s.kept_fraction = mean(figures.kept_frac[m]);
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
