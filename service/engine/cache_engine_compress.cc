// CacheEngine: query statistics and compression (score, select, compact; design.md §5).
#include "service/engine/cache_engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "service/engine/cache_engine_internal.h"
#include "service/engine/metadata_charge.h"
#include "service/compress/compressor.h"
#include "service/compress/policy_convert.h"

namespace kvkeep {


absl::Status CacheEngine::PutStats(const std::string& tenant, const v1::StatsChunk& chunk) {
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, chunk.sequence_id()));
  absl::MutexLock seq_lock(&seq->mu);
  RETURN_IF_ERROR(OnDevice(*seq));
  RETURN_IF_ERROR(ValidateLayerStats(*seq->model, seq->table, seq->stats, chunk.stats()));
  const uint64_t growth = MaxStatsGrowthBytes(*seq->model, seq->stats, chunk.stats());
  RETURN_IF_ERROR(ledger_.ChargeMetadata(tenant, growth));
  seq->metadata_bytes += growth;
  absl::Status applied = ApplyLayerStats(*seq->model, seq->table, chunk.stats(), &seq->stats);
  RechargeMetadata(ledger_, *seq);
  return applied;
}

absl::StatusOr<v1::CompressReply> CacheEngine::Compress(const std::string& tenant,
                                                        const v1::CompressRequest& request) {
  RETURN_IF_ERROR(CheckSessionIfGiven(tenant, request.session_id()));
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, request.sequence_id()));
  absl::MutexLock seq_lock(&seq->mu);
  RETURN_IF_ERROR(OnDevice(*seq));
  return CompressHeld(seq.get(), request.policy());
}

absl::StatusOr<v1::CompressReply> CacheEngine::CompressHeld(Sequence* seq,
                                                            const v1::Policy& policy) {
  v1::Policy tenant_default;
  {
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(seq->tenant);
    if (t != tenants_.end()) tenant_default = t->second.record.policy();
  }
  ASSIGN_OR_RETURN(ResolvedPolicy resolved, ResolvePolicy(policy, tenant_default));
  // Compaction moves bytes inside the sequence's pages: no ReadKV reply may reference them.
  RETURN_IF_ERROR(AwaitNoReplyPins(pool_, *seq, kCompressWaitForReplies));
  // Copy-on-write: shared prefix pages are never compacted; the sequence first gets private
  // copies of them (charged to its tenant) and drops its references.
  RETURN_IF_ERROR(UnshareHeld(seq));
  // Scoring memory is reused per thread (executor threads: Compress, and the CommitTokens of
  // tenants whose policy can trigger decode-time eviction).
  thread_local CompressScratch scratch;
  ASSIGN_OR_RETURN(CompressOutcome outcome,
                   CompressSequence(*seq->model, seq->table, seq->stats, resolved.policy,
                                    resolved.budget, *backend_, pool_, scratch));
  const PageGeometry& geometry = seq->model->geometry();
  if (outcome.changed) {  // tokens moved: the page costs are void, open reads stop
    seq->costs = PageCosts{};
    ++seq->compactions;
  }
  if (!outcome.freed_pages.empty()) {
    const uint64_t pages = outcome.freed_pages.size();
    pool_.Free(outcome.freed_pages);
    ledger_.ReleasePages(seq->tenant, pages, geometry.page_bytes);
  }
  RechargeMetadata(ledger_, *seq);
  v1::CompressReply reply;
  TableToProto(*seq, /*with_positions=*/true, reply.mutable_table());
  ToProto(outcome, resolved.policy, geometry, reply.mutable_summary());
  return reply;
}

}  // namespace kvkeep
