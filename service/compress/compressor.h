// Compression of one sequence in place (design.md §5): score every (layer, KV head, token) with the
// policy's scorer, allocate the budget and select the kept tokens (service/eviction/), then compact
// each head's kept tokens into its first slots, in order, through the Backend, and shrink the
// table. Emptied pages are handed back to the caller, which frees them in the pool.
//
//   CompressScratch scratch;                       // reuse across calls; one per thread
//   ASSIGN_OR_RETURN(ResolvedPolicy p, ResolvePolicy(request.policy(), tenant_default));
//   absl::MutexLock lock(&seq->mu);                // nothing else touches table and stats
//   ASSIGN_OR_RETURN(CompressOutcome out,
//                    CompressSequence(*seq->model, seq->table, seq->stats, p.policy, p.budget,
//                                     backend, pool, scratch));
//   pool.Free(out.freed_pages);                    // and un-charge the tenant
//
// Not thread-safe per sequence (the caller holds the sequence's lock); distinct sequences may be
// compressed concurrently with distinct scratches.
#ifndef KVKEEP_SERVICE_COMPRESS_COMPRESSOR_H_
#define KVKEEP_SERVICE_COMPRESS_COMPRESSOR_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "gpu/backend.h"
#include "gpu/device_scoring.h"
#include "kvkeep/v1/kvcache.pb.h"
#include "service/eviction/layer_inputs.h"
#include "service/eviction/policy.h"
#include "service/eviction/scorers.h"
#include "service/eviction/selection.h"
#include "service/engine/model_layout.h"
#include "service/pool/page_pool.h"
#include "service/engine/sequence_stats.h"
#include "service/engine/sequence_table.h"

namespace kvkeep {

class CompressionPass;  // compressor.cc: the steps of one CompressSequence call

struct CompressOutcome {
  // false: no head had to lose a token (the budget covers the sequence); nothing was touched.
  bool changed = false;
  // Tokens each head table keeps (= its count now), index layer * kv_heads + kv_head.
  std::vector<uint32_t> kept_per_head;
  // Pages that left the table (emptied by compaction). The caller frees them in the pool and
  // un-charges their owner; CompressSequence does not touch the pool's state.
  std::vector<uint64_t> freed_pages;
  uint64_t tokens_before = 0;  // summed over head tables
  uint64_t tokens_after = 0;
  // Over the tokens that were candidates (not sinks nor window): the lowest score kept and the
  // highest score evicted; has_* false when there was none.
  bool has_kept_score = false;
  float kept_score_min = 0;
  bool has_evicted_score = false;
  float evicted_score_max = 0;
  double seconds = 0;  // wall time of the call
};

// Memory reused across CompressSequence calls: float32 keys/values of one layer, the scores of
// every layer (4 bytes per cached token), raw page staging and the scorers' workspace. Buffers grow
// to the largest sequence seen and never shrink; bytes() tells how much is held. Not thread-safe:
// one per calling thread.
class CompressScratch {
 public:
  // threads: workers the scorers may use (see eviction::ScoringWorkspace); 0 = min(2, hardware).
  explicit CompressScratch(int threads = 0) : workspace_(threads) {}
  size_t bytes() const;

 private:
  friend class CompressionPass;

  eviction::ScoringWorkspace workspace_;
  eviction::LayerInputs inputs_;
  std::vector<std::vector<float>> keys_, values_;  // [kv_head][count * head_dim]
  std::vector<const float*> key_ptrs_, value_ptrs_;
  std::vector<uint16_t> staging_;             // one page's keys or values, 16-bit dtypes
  std::vector<eviction::HeadScores> scores_;  // [layer]
  DeviceLayerRequest device_request_;         // scoring on the device (Backend::layer_scorer)
  std::vector<CopyOp> copy_ops_;              // one head's compaction on a device backend
};

// Compresses the sequence whose pages `table` lists, to `budget` under `policy`.
//   OK                   the outcome; when changed, every head holds exactly its selected tokens,
//                        bit-exact and in their original order, in its first slots; positions
//                        and the stored attention mass follow; emptied pages are in freed_pages
//                        (reserved room past the committed tokens stays in the table);
//   INVALID_ARGUMENT     bad policy or budget (exactly one of keep_ratio in (0, 1], tokens > 0);
//   FAILED_PRECONDITION  the scorer needs a statistic that is missing or stale (CheckStatsFor);
//   INTERNAL             a page that is not in the pool, a backend read/copy failure, or a scorer
//                        failure. Nothing changed, except after a failed Backend::Copy, when the
//                        table is unchanged but the bytes of the sequence are undefined (the
//                        message says so): drop the sequence.
// `model` describes the pages; `pool` only locates their arenas (ArenaOf); `backend` moves bytes.
// When backend.layer_scorer() is non-null, every layer is scored on the device that holds the
// pages (service/device_scoring_request.h) instead of being read back and scored on the CPU;
// allocation, selection and compaction are the same either way, except that a device backend
// (device_ordinal() >= 0) compacts each head with one Backend::CopyBatch instead of a Copy per run.
absl::StatusOr<CompressOutcome> CompressSequence(const Model& model, SequenceTable& table,
                                                 SequenceStats& stats,
                                                 const eviction::Policy& policy,
                                                 const eviction::Budget& budget, Backend& backend,
                                                 const PagePool& pool, CompressScratch& scratch);

// The reply's summary: names of the scorer and allocation, token and page counts, bytes freed
// (pages * geometry.page_bytes), the score bounds (0 when absent) and the time.
void ToProto(const CompressOutcome& outcome, const eviction::Policy& policy,
             const PageGeometry& geometry, v1::EvictionSummary* out);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_COMPRESS_COMPRESSOR_H_
