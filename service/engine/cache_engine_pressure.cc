// CacheEngine as PressureRelief::Host (service/engine/pressure_relief.h does the relieving):
// the unleased sequences with what their tenants' policies protect, the watermarks, and the
// compression of one sequence under --pressure_policy=compress.
#include <algorithm>

#include "common/status_macros.h"
#include "service/compress/compressor.h"
#include "service/compress/policy_convert.h"
#include "service/engine/cache_engine.h"
#include "service/eviction/policy.h"

namespace kvkeep {

std::vector<PressureRelief::Host::Candidate> CacheEngine::UnleasedSequences() {
  std::vector<PressureRelief::Host::Candidate> out;
  const eviction::Policy defaults;
  absl::MutexLock lock(&mu_);
  for (auto& [name, t] : tenants_) {
    const v1::Policy& p = t.record.policy();
    const int sinks = p.has_sinks() ? static_cast<int>(p.sinks()) : defaults.sinks;
    const int window = p.has_window() ? static_cast<int>(p.window()) : defaults.window;
    for (auto& [id, seq] : t.sequences) {
      if (!sessions_.Leased(name, id)) out.push_back({seq, sinks, window});
    }
  }
  return out;
}

absl::StatusOr<PressureRelief::Host::Compressed> CacheEngine::CompressForPressure(
    Sequence* seq, double keep_ratio) {
  if (!seq->shared.empty()) {
    return absl::FailedPreconditionError("sequence holds shared prefix pages");
  }
  v1::Policy tenant_default;
  {
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(seq->tenant);
    if (t == tenants_.end()) return absl::NotFoundError("tenant is gone");
    tenant_default = t->second.record.policy();
  }
  // The tenant's scorer, allocation, sinks and window; the budget is the plan's.
  v1::Policy budget;
  budget.set_keep_ratio(std::clamp(keep_ratio, 1e-9, 1.0));
  tenant_default.clear_keep_ratio();
  tenant_default.clear_max_tokens();
  ASSIGN_OR_RETURN(ResolvedPolicy resolved, ResolvePolicy(budget, tenant_default));
  // Compaction moves bytes inside the sequence's pages: never while a ReadKV reply references
  // them (busy: the relief moves on, as for a busy lock).
  RETURN_IF_ERROR(AwaitNoReplyPins(pool_, *seq, absl::ZeroDuration()));
  thread_local CompressScratch scratch;  // the background thread's scoring memory
  ASSIGN_OR_RETURN(CompressOutcome outcome,
                   CompressSequence(*seq->model, seq->table, seq->stats, resolved.policy,
                                    resolved.budget, *backend_, pool_, scratch));
  if (outcome.changed) {  // tokens moved: the page costs are void, open reads stop
    seq->costs = PageCosts{};
    ++seq->compactions;
  }
  Compressed done;
  done.tokens = outcome.tokens_before - outcome.tokens_after;
  done.pages = outcome.freed_pages.size();
  if (done.pages > 0) {
    pool_.Free(outcome.freed_pages);
    ledger_.EvictPages(seq->tenant, done.pages, seq->model->geometry().page_bytes);
  }
  return done;
}

FreeWatermarks CacheEngine::Watermarks() const {
  absl::MutexLock lock(&mu_);
  return {watermarks_.low_free(), watermarks_.high_free()};
}

}  // namespace kvkeep
