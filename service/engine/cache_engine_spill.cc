// CacheEngine: the spill tier (design.md §6) — explicit Spill/Restore (service/engine/spiller.h
// does the moving), the restorable sequences found at start, sequence listings, watermarks.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/failure_reason.h"
#include "common/status_macros.h"
#include "service/observability/log.h"
#include "service/engine/cache_engine.h"
#include "service/engine/metadata_charge.h"

namespace kvkeep {
namespace {

// A sequence found in the spill tier at start. Like a constructor it sets the fields without the
// sequence's mu: nobody else can see it yet, and the caller holds CacheEngine::mu_ (taking the
// sequence's mu under it would invert the lock order).
std::shared_ptr<Sequence> NewSpilledSequence(const SpillSummary& s,
                                             std::shared_ptr<const Model> model)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {
  const uint64_t heap = EmptySequenceBytes(*model);
  auto seq = std::make_shared<Sequence>(s.sequence_id, s.tenant, std::move(model), heap);
  seq->spilled = true;
  seq->spilled_bytes = s.bytes;
  return seq;
}

}  // namespace

absl::Status CacheEngine::LoadSpilled() {
  if (spill_ == nullptr) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<SpillSummary> spilled, spill_->List());
  std::vector<SpillSummary> orphans;
  {
    absl::MutexLock lock(&mu_);
    for (const SpillSummary& s : spilled) {
      auto t = tenants_.find(s.tenant);
      auto model = t == tenants_.end() ? nullptr : t->second.models[s.model];
      if (model == nullptr) {
        if (t != tenants_.end()) t->second.models.erase(s.model);
        orphans.push_back(s);  // its tenant or model was deleted
        continue;
      }
      auto seq = NewSpilledSequence(s, model);
      sessions_.AddRestorable(s.tenant, seq->id, s.created);
      ledger_.AddSpilled(s.tenant, s.bytes);
      // Found on disk: charged without admission (the tenant holds it already).
      ledger_.AdjustMetadata(s.tenant, 0, EmptySequenceBytes(*model));
      t->second.sequences[seq->id] = seq;
    }
  }
  for (const SpillSummary& s : orphans) {
    absl::Status deleted = spill_->Delete(s.tenant, s.sequence_id);
    log::Info("spill.orphan_deleted", {{"tenant", s.tenant}, {"sequence", s.sequence_id},
                                       {"status", deleted}});
  }
  log::Info("spill.loaded", {{"restorable", spilled.size() - orphans.size()},
                             {"orphans", orphans.size()}});
  return absl::OkStatus();
}

absl::StatusOr<v1::SpillReply> CacheEngine::SpillHeld(Sequence* seq,
                                                      const std::string& caller_session,
                                                      bool ignore_leases) {
  // Spiller::Spill re-charges the sequence's metadata (its table's vectors are freed).
  ASSIGN_OR_RETURN(Spiller::Spilled spilled, spiller_.Spill(seq, caller_session, ignore_leases));
  v1::SpillReply reply;
  reply.set_bytes(spilled.bytes);
  reply.set_pages_freed(static_cast<uint32_t>(spilled.pages_freed));
  return reply;
}

absl::Status CacheEngine::RestoreHeld(Sequence* seq) {
  // What it held before it was spilled comes back: charged again without a new admission.
  absl::Status restored = spiller_.Restore(seq);
  RechargeMetadata(ledger_, *seq);
  return restored;
}

absl::StatusOr<v1::SpillReply> CacheEngine::Spill(const std::string& tenant,
                                                  const v1::SpillRequest& r) {
  RETURN_IF_ERROR(CheckSessionIfGiven(tenant, r.session_id()));
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, r.sequence_id()));
  absl::MutexLock seq_lock(&seq->mu);
  return SpillHeld(seq.get(), r.session_id(), /*ignore_leases=*/false);
}

absl::StatusOr<v1::PageTable> CacheEngine::Restore(const std::string& tenant,
                                                   const v1::RestoreRequest& r) {
  RETURN_IF_ERROR(CheckSessionIfGiven(tenant, r.session_id()));
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, r.sequence_id()));
  absl::MutexLock seq_lock(&seq->mu);
  RETURN_IF_ERROR(RestoreHeld(seq.get()));
  v1::PageTable table;
  TableToProto(*seq, r.with_positions(), &table);
  return table;
}

v1::SequenceInfo CacheEngine::InfoOf(Sequence& seq) const {
  v1::SequenceInfo info;
  absl::ReaderMutexLock seq_lock(&seq.mu);
  info.set_tenant(seq.tenant);
  info.set_sequence_id(seq.id);
  info.set_model(seq.model->name());
  info.set_tier(seq.spilled ? v1::TIER_SPILLED : v1::TIER_DEVICE);
  info.set_tokens(seq.table.max_count());
  info.set_pages(seq.table.page_count());
  info.set_bytes(seq.spilled ? seq.spilled_bytes
                             : seq.table.page_count() * seq.model->geometry().page_bytes);
  const SessionRegistry::Holders holders = sessions_.HoldersOf(seq.tenant, seq.id);
  info.set_leases(holders.leases);
  info.set_retain(holders.retain);
  info.set_has_owner(holders.has_owner);
  info.set_last_access_unix(absl::ToUnixSeconds(holders.last_access));
  return info;
}

v1::ListSequencesReply CacheEngine::ListSequences(const std::string& tenant) const {
  std::vector<std::shared_ptr<Sequence>> all;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, t] : tenants_) {
      if (!tenant.empty() && name != tenant) continue;
      for (const auto& [id, seq] : t.sequences) all.push_back(seq);
    }
  }
  v1::ListSequencesReply reply;
  for (const auto& seq : all) *reply.add_sequences() = InfoOf(*seq);
  std::sort(reply.mutable_sequences()->begin(), reply.mutable_sequences()->end(),
            [](const v1::SequenceInfo& a, const v1::SequenceInfo& b) {
              return std::tie(a.tenant(), a.sequence_id()) < std::tie(b.tenant(), b.sequence_id());
            });
  return reply;
}

absl::StatusOr<v1::Watermarks> CacheEngine::SetWatermarks(const v1::Watermarks& w) {
  if (!(w.low_free() >= 0 && w.low_free() <= w.high_free() && w.high_free() <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("watermarks need 0 <= low_free (",
                                                   w.low_free(), ") <= high_free (", w.high_free(),
                                                   ") <= 1"));
  }
  {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(store_->Put(kWatermarksKeyName, w.SerializeAsString()));
    watermarks_ = w;
  }
  relief_.MaybeRelieveLater();
  return w;
}

absl::StatusOr<v1::SpillReply> CacheEngine::AdminSpill(const v1::SequenceRef& ref) {
  ASSIGN_OR_RETURN(auto seq, FindSequence(ref.tenant(), ref.sequence_id()));
  absl::MutexLock seq_lock(&seq->mu);
  return SpillHeld(seq.get(), "", /*ignore_leases=*/false);
}

absl::StatusOr<v1::SequenceInfo> CacheEngine::AdminRestore(const v1::SequenceRef& ref) {
  ASSIGN_OR_RETURN(auto seq, FindSequence(ref.tenant(), ref.sequence_id()));
  {
    absl::MutexLock seq_lock(&seq->mu);
    RETURN_IF_ERROR(RestoreHeld(seq.get()));
  }
  return InfoOf(*seq);
}

absl::StatusOr<v1::DropReply> CacheEngine::AdminDrop(const v1::SequenceRef& ref) {
  ASSIGN_OR_RETURN(auto seq, FindSequence(ref.tenant(), ref.sequence_id()));
  absl::MutexLock seq_lock(&seq->mu);
  return DropHeld(seq.get(), "", ref.force());
}

}  // namespace kvkeep
