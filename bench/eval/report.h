// Rendering of a RunReport: an aligned table for people, one JSON object for scripts.
//
//   std::cout << FormatTable(report);
//   std::cout << FormatJson(report) << "\n";
//
// JSON schema (fields beyond the required ones are additions; -1/absent measures are null):
//   {"data": DIR, "profile": NAME, "layers": L, "q_heads": H, "kv_heads": Hk, "head_dim": d,
//    "prefix": P, "future": F, "profile_sparsity": top-5 % mass, "sink_mass": m,
//    "layer_sparsity": [..], "needles": n,
//    "results": [{"policy", "allocation", "keep_ratio", "rel_error", "retained_mass",
//                 "needle_recall", "oracle_recall", "rel_error_wo", "needle_argmax",
//                 "kept_fraction", "gap_closed"}, ...]}
#ifndef KVKEEP_BENCH_EVAL_REPORT_H_
#define KVKEEP_BENCH_EVAL_REPORT_H_

#include <string>

#include "bench/eval/runner.h"

namespace kvkeep::eval {

std::string FormatTable(const RunReport& report);
std::string FormatJson(const RunReport& report);

}  // namespace kvkeep::eval

#endif  // KVKEEP_BENCH_EVAL_REPORT_H_
