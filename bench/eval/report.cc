#include "bench/eval/report.h"

#include <cmath>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace kvkeep::eval {
namespace {

// A measure cell; -1 (not applicable) and NaN print as "-" unless `signed_ok` (only NaN does).
std::string Cell(double x, int width, int precision = 4, bool signed_ok = false) {
  if ((x < 0 && !signed_ok) || std::isnan(x)) return absl::StrFormat("%*s", width, "-");
  return absl::StrFormat("%*.*f", width, precision, x);
}

nlohmann::json OrNull(double x) {
  if (x < 0 || std::isnan(x)) return nullptr;
  return x;
}

}  // namespace

std::string FormatTable(const RunReport& r) {
  std::string out;
  const DatasetMeta& m = r.meta;
  absl::StrAppend(&out, "# data: ", r.data, m.profile.empty() ? "" : "  (profile ", m.profile,
                  m.profile.empty() ? "" : ")", "\n");
  absl::StrAppendFormat(&out,
                        "# %d layers, %d q heads / %d kv heads, head_dim %d, prefix %d, "
                        "%d future queries, W_O %s\n",
                        m.layers, m.q_heads, m.kv_heads, m.head_dim, m.prefix, r.future,
                        r.has_wo ? "yes" : "no");
  std::vector<std::string> per_layer;
  for (double x : r.sparsity.layer_top5_mass) per_layer.push_back(absl::StrFormat("%.3f", x));
  absl::StrAppendFormat(&out,
                        "# sparsity (future attention mass on the top 5%% of tokens): %.3f  "
                        "[per layer: %s]  sink mass %.3f\n",
                        r.sparsity.top5_mass, absl::StrJoin(per_layer, " "), r.sparsity.sink_mass);
  if (r.sparsity.top5_mass < 0.3) {
    absl::StrAppend(&out, "# WARNING: attention is nearly uniform on this trace; every selection "
                          "is close to random here and the table judges no method.\n");
  }
  absl::StrAppendFormat(&out, "# needles targeted by future queries: %d\n", r.targeted_needles);
  const std::string header = absl::StrFormat(
      "%-13s %-8s %6s %9s %14s %9s %8s %7s %7s %8s %7s %7s %7s", "policy", "alloc", "keep",
      "rel_err", "rel_err_decode", "rel_err_wo", "mass", "needle", "answer", "oracle_rc", "kept",
      "gap", "gap_dec");
  double last_ratio = -1;
  for (const ResultRow& row : r.rows) {
    if (row.keep_ratio != last_ratio) {
      absl::StrAppend(&out, "\n", header, "\n", std::string(header.size(), '-'), "\n");
      last_ratio = row.keep_ratio;
    }
    const Metrics& x = row.metrics;
    absl::StrAppendFormat(&out, "%-13s %-8s %6.3f %s %s %s %s %s %s %s %s %s %s\n", row.policy,
                          row.allocation, row.keep_ratio, Cell(x.rel_error, 9),
                          Cell(x.rel_error_decode, 14), Cell(x.rel_error_wo, 10),
                          Cell(x.retained_mass, 8), Cell(x.needle_recall, 7, 3),
                          Cell(x.needle_argmax, 7, 3), Cell(x.oracle_recall, 9, 3),
                          Cell(x.kept_fraction, 7, 3),
                          Cell(row.gap_closed, 7, 2, /*signed_ok=*/true),
                          Cell(row.gap_closed_decode, 7, 2, /*signed_ok=*/true));
  }
  absl::StrAppend(&out,
                  "\nrel_err: ‖o_S − o‖/‖o‖ (mean over future queries, heads, layers); rel_err_wo: "
                  "same after W_O; rel_err_decode: the same at decode time, each future query also attending "
                  "the generated positions before it exactly; mass: retained attention mass; needle: targeted needles kept; "
                  "answer: needle queries whose retrieved token (argmax_j cos(o, v_j)) is "
                  "unchanged; oracle_rc: overlap with the top-k by future attention; kept: budget "
                  "used; gap: share of the snapkv→oracle rel_err gap closed (same allocation); gap_dec: the "
                  "same for rel_err_decode.\n");
  return out;
}

std::string FormatJson(const RunReport& r) {
  nlohmann::json j;
  j["data"] = r.data;
  j["profile"] = r.meta.profile;
  j["layers"] = r.meta.layers;
  j["q_heads"] = r.meta.q_heads;
  j["kv_heads"] = r.meta.kv_heads;
  j["head_dim"] = r.meta.head_dim;
  j["prefix"] = r.meta.prefix;
  j["future"] = r.future;
  j["profile_sparsity"] = r.sparsity.top5_mass;
  j["sink_mass"] = r.sparsity.sink_mass;
  j["layer_sparsity"] = r.sparsity.layer_top5_mass;
  j["needles"] = r.targeted_needles;
  nlohmann::json results = nlohmann::json::array();
  for (const ResultRow& row : r.rows) {
    const Metrics& x = row.metrics;
    results.push_back({{"policy", row.policy},
                       {"allocation", row.allocation},
                       {"keep_ratio", row.keep_ratio},
                       {"rel_error", x.rel_error},
                       {"rel_error_decode", x.rel_error_decode},
                       {"retained_mass", x.retained_mass},
                       {"needle_recall", OrNull(x.needle_recall)},
                       {"oracle_recall", x.oracle_recall},
                       {"rel_error_wo", OrNull(x.rel_error_wo)},
                       {"needle_argmax", OrNull(x.needle_argmax)},
                       {"kept_fraction", x.kept_fraction},
                       {"gap_closed", std::isnan(row.gap_closed) ? nlohmann::json(nullptr)
                                                                  : nlohmann::json(row.gap_closed)},
                       {"gap_closed_decode", std::isnan(row.gap_closed_decode)
                                                 ? nlohmann::json(nullptr)
                                                 : nlohmann::json(row.gap_closed_decode)}});
  }
  j["results"] = results;
  return j.dump();
}

}  // namespace kvkeep::eval
