// The oracle policies (not available online), the "what is possible" rows of every quality table:
//   oracle      keeps the tokens the held-out future queries actually attend to most (the
//               specified oracle; optimal for retained mass and oracle recall);
//   oracle-out  keeps the tokens whose eviction alone would move the future outputs most:
//               Σ_q a_j(q)·‖v_j − o(q)‖ / ((1 − a_j(q))·‖o(q)‖), exact for one eviction at a
//               time. Attention mass is not output error: a token whose value is close to the
//               output can go whatever its mass, so a value-aware online scorer can beat `oracle`
//               on rel_error. oracle-out ignores how evictions interact, so it is a reference,
//               not a lower bound either.
//
// With the same budget shape as the allocation it stands against:
//   "uniform"  every (layer, KV head) keeps its own top round(ratio · P);
//   "ada"      every layer keeps its top kv_heads · round(ratio · P) over all its heads;
//   "pyramid"  PyramidKV layer budgets (beta 20, linear from 2b − b/20 down to b/20), per head top-k;
//   "global"   one top-k over all (layer, KV head, token), ratio · layers · kv_heads · P in total;
//   "sequence" one token set for every layer and head: the top round(ratio · P) tokens by the
//              future scores summed over (layer, head), each head's divided by its sum.
// Future attention of different heads is directly comparable: each query's attention sums to 1.
//
//   ASSIGN_OR_RETURN(KeptSets kept, OracleSelection(refs, "uniform", 0.05, OracleKind::kMass));
#ifndef KVKEEP_BENCH_EVAL_ORACLE_H_
#define KVKEEP_BENCH_EVAL_ORACLE_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "bench/eval/measures.h"

namespace kvkeep::eval {

// Per-(layer, KV head) token budget of `ratio` (at least 1, at most P).
int64_t HeadBudget(int64_t prefix, double keep_ratio);

enum class OracleKind { kMass, kOutput };

// INVALID_ARGUMENT for an unknown allocation or a ratio outside (0, 1].
absl::StatusOr<KeptSets> OracleSelection(const std::vector<LayerReference>& refs,
                                         absl::string_view allocation, double keep_ratio,
                                         OracleKind kind = OracleKind::kMass);

}  // namespace kvkeep::eval

#endif  // KVKEEP_BENCH_EVAL_ORACLE_H_
