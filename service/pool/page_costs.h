// Per-page capacity costs of a sequence (docs/architecture.md, "Pool allocation"): what the
// sequence loses, in log-det units, if one whole page of one head table leaves it under pool
// pressure. Comparable across sequences and tenants, so the pool frees the cheapest pages first.
//
// cost(head h, page p) = Σ over the page's committed tokens j of −log(1 − s_j), where
//  * s_j is the capkv score of algorithms.md (ridge leverage of √w_j v_j under the query anchor,
//    mean over the GQA group) when the sequence has query moments for every layer, and
//  * otherwise s_j = v_jᵀ (I + Σ_k v_k v_kᵀ)⁻¹ v_j: the same leverage with every w_j = 1 (no anchor).
//    Since capkv's w_j <= 1 this is an upper estimate: a sequence that never sent statistics is
//    evicted after scored sequences with the same values.
// −log(1 − s_j) is the log-det drop of removing token j alone; summed over a page it is what the
// page carries. Cost: one capkv scoring pass, O(n · d²) per head table (reads keys and values).
//
//   PageCostScratch scratch;   // per thread
//   ASSIGN_OR_RETURN(PageCosts costs,
//                    ComputePageCosts(*seq->model, seq->table, seq->stats, backend, pool, scratch));
//   double c = costs.Cost(head, page);
//
// Not thread-safe: the caller holds the sequence's lock while computing and reading.
#ifndef KVKEEP_SERVICE_POOL_PAGE_COSTS_H_
#define KVKEEP_SERVICE_POOL_PAGE_COSTS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "gpu/backend.h"
#include "service/eviction/layer_inputs.h"
#include "service/eviction/scorers.h"
#include "service/engine/model_layout.h"
#include "service/pool/page_pool.h"
#include "service/engine/sequence_stats.h"
#include "service/engine/sequence_table.h"

namespace kvkeep {

struct PageCosts {
  bool computed = false;           // false: never computed, or invalidated (Compress)
  bool from_query_moments = false;  // capkv with the anchor; false: the w_j = 1 estimate
  // [head][page]: costs of the pages as they were when computed (the last may be partial).
  std::vector<std::vector<double>> per_head;
  // Committed tokens of each head when computed. A head that grew since keeps its old pages'
  // costs (the tokens are the same); its new pages are estimated (Cost).
  std::vector<uint32_t> counts;

  // True when computed and no head's count differs from the table's (nothing to refresh).
  bool FreshFor(const SequenceTable& table) const;
  // The cost of page `page` of head `head` of `table`: the computed one when the page existed
  // then and was full; otherwise the mean computed cost per token of the head times the page's
  // tokens (0 when the head had none). Requires computed.
  double Cost(const SequenceTable& table, uint32_t head, uint32_t page) const;
  // Keeps the bookkeeping in step with SequenceTable::RemoveFullPage(head, page).
  void RemovePage(uint32_t head, uint32_t page, uint32_t tokens_per_page);
};

// Memory reused across ComputePageCosts calls (one per thread).
class PageCostScratch {
 public:
  PageCostScratch() : workspace_(1) {}

 private:
  friend absl::StatusOr<PageCosts> ComputePageCosts(const Model&, const SequenceTable&,
                                                    const SequenceStats&, Backend&,
                                                    const PagePool&, PageCostScratch&);
  eviction::ScoringWorkspace workspace_;
  eviction::LayerInputs inputs_;
  eviction::HeadScores scores_;
  std::vector<std::vector<float>> keys_, values_;
  std::vector<const float*> key_ptrs_, value_ptrs_;
  std::vector<uint16_t> staging_;
  std::vector<double> gram_, lev_;
};

// Computes the costs of every page of `table` (see above). INTERNAL when a page is not in the pool
// or a read fails; nothing changes.
absl::StatusOr<PageCosts> ComputePageCosts(const Model& model, const SequenceTable& table,
                                           const SequenceStats& stats, Backend& backend,
                                           const PagePool& pool, PageCostScratch& scratch);

// The unweighted estimate for one head table: s_j = v_jᵀ (I + Σ_k v_k v_kᵀ)⁻¹ v_j of the `n`
// float32 rows of `values` ([n][d]); writes n leverages into *out. Exposed for tests.
void UnweightedLeverage(const float* values, int n, int d, std::vector<double>* gram,
                        std::vector<double>* out);

// −log(1 − s), s clamped to [0, 1 − 1e-9].
double TokenCapacityCost(double s);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_POOL_PAGE_COSTS_H_
