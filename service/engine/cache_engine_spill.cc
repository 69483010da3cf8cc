// CacheEngine: the spill tier (design.md §6) — explicit Spill/Restore, transparent restore,
// and the restorable sequences found at start (pool pressure: cache_engine_pressure.cc).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "service/engine/cache_engine.h"

namespace kvkeep {

absl::Status CacheEngine::OnDevice(const Sequence& seq) {
  if (seq.dropped) {
    return absl::NotFoundError(absl::StrCat("no sequence \"", seq.id, "\" for this tenant"));
  }
  if (seq.spilled) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sequence ", seq.id, " is in the spill tier; Acquire or Restore it first"));
  }
  return absl::OkStatus();
}

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
      auto seq = std::make_shared<Sequence>(s.sequence_id, s.tenant, model);
      // Not published yet: no other thread can see it, so its mu is not taken (that would order
      // mu_ before Sequence::mu).
      seq->spilled = true;
      seq->spilled_bytes = s.bytes;
      seq->retain = true;  // nobody owns it after a restart; it waits to be acquired or dropped
      seq->last_access = s.created;
      t->second.spilled_bytes += s.bytes;
      t->second.sequences[seq->id] = seq;
    }
  }
  for (const SpillSummary& s : orphans) spill_->Delete(s.tenant, s.sequence_id).IgnoreError();
  return absl::OkStatus();
}

absl::StatusOr<v1::SpillReply> CacheEngine::SpillHeld(Sequence* seq,
                                                      const std::string& caller_session,
                                                      bool ignore_leases) {
  RETURN_IF_ERROR(OnDevice(*seq));
  if (spill_ == nullptr) {
    return absl::FailedPreconditionError("this daemon runs without a spill tier");
  }
  const PageGeometry& g = seq->model->geometry();
  // Only pages that hold committed tokens are written; reserved room is given back.
  uint64_t bytes = 0;
  for (uint32_t h = 0; h < seq->table.heads(); ++h) {
    bytes += (uint64_t{seq->table.head(h).count} + g.tokens_per_page - 1) / g.tokens_per_page *
             g.page_bytes;
  }
  {
    absl::MutexLock lock(&mu_);
    if (!ignore_leases) {
      for (const std::string& holder : seq->leases) {
        if (holder != caller_session) {
          return absl::FailedPreconditionError(absl::StrCat(
              "sequence ", seq->id, " is leased by session ", holder,
              "; a leased sequence is never spilled under its reader"));
        }
      }
    }
    auto t = tenants_.find(seq->tenant);
    if (t == tenants_.end()) return absl::NotFoundError("tenant no longer exists");
    const uint64_t quota = t->second.record.spill_quota_bytes();
    const uint64_t used = spill_->BytesOf(seq->tenant);
    if (bytes > quota || used > quota - bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "tenant ", seq->tenant, " spill quota exceeded: ", used, " of ", quota,
          " bytes on disk, sequence needs ", bytes, " more"));
    }
  }
  if (seq->stale_spill_copy) {
    absl::Status deleted = spill_->Delete(seq->tenant, seq->id);
    if (!deleted.ok() && !absl::IsNotFound(deleted)) {
      ++spill_errors_;
      return deleted;
    }
    seq->stale_spill_copy = false;
  }
  SpillRecord record;
  record.tenant = seq->tenant;
  record.sequence_id = seq->id;
  record.model = seq->model->name();
  record.next_position = seq->table.next_position();
  record.heads.resize(seq->table.heads());
  for (uint32_t h = 0; h < seq->table.heads(); ++h) {
    const auto& head = seq->table.head(h);
    SpilledHead& out = record.heads[h];
    out.count = head.count;
    out.positions = head.positions;
    const uint64_t used_pages = (uint64_t{head.count} + g.tokens_per_page - 1) / g.tokens_per_page;
    for (uint64_t p = 0; p < used_pages; ++p) {
      ASSIGN_OR_RETURN(PagePool::Location loc, LocatePage(seq->tenant, head.pages[p]));
      std::string& page = out.pages.emplace_back(g.page_bytes, '\0');
      RETURN_IF_ERROR(backend_->Read(*loc.arena, loc.offset, page.data(), page.size()));
    }
  }
  absl::Status put = spill_->Put(record);  // durable when OK
  if (!put.ok()) {
    ++spill_errors_;
    return put;
  }
  // Acknowledged: only now do the device pages go.
  // Private pages are freed; shared prefix pages only lose this sequence's reference.
  const uint64_t pages = ReleaseTableHeld(seq);
  seq->spilled = true;
  seq->spilled_bytes = bytes;
  {
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(seq->tenant);
    if (t != tenants_.end()) {
      t->second.used_bytes -= pages * g.page_bytes;
      t->second.used_pages -= pages;
      t->second.spilled_bytes += bytes;
    }
    used_bytes_ -= pages * g.page_bytes;
  }
  ++spills_;
  v1::SpillReply reply;
  reply.set_bytes(bytes);
  reply.set_pages_freed(static_cast<uint32_t>(pages));
  return reply;
}

absl::Status CacheEngine::RestoreHeld(Sequence* seq) {
  if (seq->dropped) return absl::NotFoundError(absl::StrCat("no sequence \"", seq->id, "\""));
  if (!seq->spilled) {
    return absl::FailedPreconditionError(absl::StrCat("sequence ", seq->id, " is not spilled"));
  }
  absl::StatusOr<SpillRecord> record = spill_->Get(seq->tenant, seq->id);
  if (!record.ok()) {
    ++spill_errors_;
    return record.status();  // DATA_LOSS on a checksum mismatch: never wrong bytes
  }
  const PageGeometry& g = seq->model->geometry();
  if (record->heads.size() != seq->table.heads()) {
    return absl::DataLossError(absl::StrCat("spilled sequence ", seq->id, " has ",
                                            record->heads.size(), " heads, its model ",
                                            seq->table.heads()));
  }
  uint64_t count = 0;
  for (const SpilledHead& head : record->heads) {
    for (const std::string& page : head.pages) {
      if (page.size() != g.page_bytes) {
        return absl::DataLossError(absl::StrCat("spilled sequence ", seq->id,
                                                " holds a page of ", page.size(),
                                                " bytes; its model's pages have ", g.page_bytes));
      }
    }
    count += head.pages.size();
  }
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> new_arenas;
  RETURN_IF_ERROR(AllocateCharged(seq->tenant, g, count, &pages, &new_arenas));
  size_t next = 0;
  absl::Status status;
  for (uint32_t h = 0; h < record->heads.size() && status.ok(); ++h) {
    SpilledHead& head = record->heads[h];
    std::vector<uint64_t> mine(pages.begin() + next, pages.begin() + next + head.pages.size());
    next += head.pages.size();
    for (size_t p = 0; p < mine.size() && status.ok(); ++p) {
      Arena* arena = pool_.ArenaOf(mine[p]);
      status = backend_->Write(*arena, uint64_t{PageRef::Unpack(mine[p]).index} * g.page_bytes,
                               head.pages[p].data(), head.pages[p].size());
    }
    if (status.ok()) {
      status = seq->table.RestoreHead(h, std::move(mine), head.count, std::move(head.positions));
    }
  }
  if (!status.ok()) {
    // Undo: the sequence stays spilled, its pages go back.
    seq->table.Release();
    pool_.Free(pages);
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(seq->tenant);
    if (t != tenants_.end()) {
      t->second.used_bytes -= count * g.page_bytes;
      t->second.used_pages -= count;
    }
    used_bytes_ -= count * g.page_bytes;
    return status;
  }
  seq->table.set_next_position(record->next_position);
  // The device copy is complete. A failed delete leaves a stale copy on disk: it is remembered, and
  // a later Spill or Drop deletes it first (after a restart it would be listed as restorable).
  absl::Status deleted = spill_->Delete(seq->tenant, seq->id);
  if (!deleted.ok()) {
    ++spill_errors_;
    seq->stale_spill_copy = true;
  }
  {
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(seq->tenant);
    if (t != tenants_.end()) t->second.spilled_bytes -= seq->spilled_bytes;
    seq->last_access = absl::Now();
  }
  seq->spilled = false;
  seq->spilled_bytes = 0;
  ++restores_;
  return absl::OkStatus();
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
  absl::MutexLock lock(&mu_);
  info.set_leases(static_cast<uint32_t>(seq.leases.size()));
  info.set_retain(seq.retain);
  info.set_has_owner(!seq.owner_session.empty());
  info.set_last_access_unix(absl::ToUnixSeconds(seq.last_access));
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
  MaybeRelievePressureLater();
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
