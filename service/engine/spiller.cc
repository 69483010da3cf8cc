#include "service/engine/spiller.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/failure_reason.h"
#include "common/status_macros.h"
#include "service/engine/metadata_charge.h"
#include "service/engine/restore_sink.h"
#include "service/observability/log.h"

namespace kvkeep {

Spiller::Spiller(SpillStore* store, Backend* backend, PagePool* pool, Ledger* ledger,
                 SessionRegistry* sessions, Host* host)
    : store_(store), backend_(backend), pool_(pool), ledger_(ledger), sessions_(sessions),
      host_(host) {}

uint64_t Spiller::SpillBytes(const Sequence& seq) {
  const PageGeometry& g = seq.model->geometry();
  uint64_t bytes = 0;
  for (uint32_t h = 0; h < seq.table.heads(); ++h) {
    bytes += (uint64_t{seq.table.head(h).count} + g.tokens_per_page - 1) / g.tokens_per_page *
             g.page_bytes;
  }
  return bytes;
}

absl::Status Spiller::CheckSpillable(Sequence* seq, const std::string& caller_session,
                                     bool ignore_leases, uint64_t bytes) {
  if (!ignore_leases) {
    const std::string holder = sessions_->OtherLeaseHolder(seq->tenant, seq->id, caller_session);
    if (!holder.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sequence ", seq->id, " is leased by session ", holder,
          "; a leased sequence is never spilled under its reader"));
    }
  }
  absl::Status quota = ledger_->CheckSpillQuota(seq->tenant, bytes, store_->BytesOf(seq->tenant));
  if (!quota.ok()) {
    log::Warn("spill.refused", {{"tenant", seq->tenant}, {"sequence", seq->id},
                                {"reason", FailureReasonName(ReasonOf(quota))}, {"bytes", bytes}});
    return quota;
  }
  if (seq->stale_spill_copy) {
    absl::Status deleted = store_->Delete(seq->tenant, seq->id);
    if (!deleted.ok() && !absl::IsNotFound(deleted)) {
      ++errors_;
      log::Warn("spill.failed", {{"tenant", seq->tenant}, {"sequence", seq->id},
                                 {"step", "delete_stale_copy"}, {"status", deleted}});
      return deleted;
    }
    seq->stale_spill_copy = false;
  }
  return absl::OkStatus();
}

namespace {

// A spill's page source: each committed page read from its device page as the store asks for it,
// so a spill never holds more than one write batch of the sequence in host memory.
class DevicePageSource : public SpillPageSource {
 public:
  // `head_pages[h]`: the packed page refs of head h (the table's, unchanged during the Write).
  DevicePageSource(const std::string& tenant, std::vector<const std::vector<uint64_t>*> head_pages,
                   Spiller::Host* host, Backend* backend)
      : tenant_(tenant), head_pages_(std::move(head_pages)), host_(host), backend_(backend) {}
  absl::Status ReadPage(uint32_t head, uint32_t page, char* dst, size_t size) override {
    absl::StatusOr<PagePool::Location> loc = host_->LocatePage(tenant_, (*head_pages_[head])[page]);
    if (!loc.ok()) return loc.status();
    return backend_->Read(*loc->arena, loc->offset, dst, size);
  }

 private:
  const std::string& tenant_;
  const std::vector<const std::vector<uint64_t>*> head_pages_;
  Spiller::Host* const host_;
  Backend* const backend_;
};

}  // namespace

SpillWrite Spiller::DescribeSpill(const Sequence& seq) {
  const PageGeometry& g = seq.model->geometry();
  SpillWrite spill;
  spill.tenant = seq.tenant;
  spill.sequence_id = seq.id;
  spill.model = seq.model->name();
  spill.next_position = seq.table.next_position();
  spill.counts.reserve(seq.table.heads());
  spill.positions.reserve(seq.table.heads());
  spill.page_sizes.resize(seq.table.heads());
  for (uint32_t h = 0; h < seq.table.heads(); ++h) {
    const auto& head = seq.table.head(h);
    spill.counts.push_back(head.count);
    spill.positions.emplace_back(head.positions);  // not copied: the table outlives the Write
    const uint64_t used_pages = (uint64_t{head.count} + g.tokens_per_page - 1) / g.tokens_per_page;
    spill.page_sizes[h].assign(used_pages, static_cast<uint32_t>(g.page_bytes));
  }
  return spill;
}

absl::StatusOr<Spiller::Spilled> Spiller::Spill(Sequence* seq, const std::string& caller_session,
                                                bool ignore_leases) {
  RETURN_IF_ERROR(OnDevice(*seq));
  if (store_ == nullptr) {
    return absl::FailedPreconditionError("this daemon runs without a spill tier");
  }
  // Only pages that hold committed tokens are written; reserved room is given back.
  const uint64_t bytes = SpillBytes(*seq);
  RETURN_IF_ERROR(CheckSpillable(seq, caller_session, ignore_leases, bytes));
  // The pages are read from the device batch by batch as the store writes them.
  std::vector<const std::vector<uint64_t>*> head_pages;
  for (uint32_t h = 0; h < seq->table.heads(); ++h) head_pages.push_back(&seq->table.head(h).pages);
  DevicePageSource source(seq->tenant, std::move(head_pages), host_, backend_);
  absl::Status put = store_->Write(DescribeSpill(*seq), &source);  // durable when OK
  if (!put.ok()) {
    ++errors_;
    log::Warn("spill.failed", {{"tenant", seq->tenant}, {"sequence", seq->id},
                               {"step", "write"}, {"status", put}});
    return put;
  }
  // Acknowledged: only now do the device pages go. Private pages are freed; shared prefix pages
  // only lose this sequence's reference.
  const PageGeometry& g = seq->model->geometry();
  const uint64_t pages = host_->ReleaseTable(seq);
  seq->spilled = true;
  seq->spilled_bytes = bytes;
  ledger_->MoveToSpill(seq->tenant, pages, g.page_bytes, bytes);
  RechargeMetadata(*ledger_, *seq);  // the table's vectors were freed
  ++spills_;
  log::Info("spill.done", {{"tenant", seq->tenant}, {"sequence", seq->id}, {"bytes", bytes},
                           {"pages_freed", pages}});
  return Spilled{bytes, pages};
}

absl::Status Spiller::Restore(Sequence* seq) {
  if (seq->dropped) return absl::NotFoundError(absl::StrCat("no sequence \"", seq->id, "\""));
  if (!seq->spilled) {
    return absl::FailedPreconditionError(absl::StrCat("sequence ", seq->id, " is not spilled"));
  }
  const PageGeometry& g = seq->model->geometry();
  if (seq->spilled_bytes % g.page_bytes != 0) {
    ++errors_;
    log::Error("restore.failed", {{"tenant", seq->tenant}, {"sequence", seq->id},
                                  {"step", "check"}, {"error", "spilled bytes not whole pages"}});
    return absl::DataLossError(absl::StrCat("spilled sequence ", seq->id, " holds ",
                                            seq->spilled_bytes, " bytes, not a whole number of ",
                                            g.page_bytes, "-byte pages of its model"));
  }
  // The pages come first (admission, pressure relief), then the disk copy is streamed straight
  // into them: no host copy of the sequence. The table sees them only once every page is in.
  const uint64_t count = seq->spilled_bytes / g.page_bytes;
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> new_arenas;
  absl::Status charged = host_->AllocateCharged(seq->tenant, g, count, &pages, &new_arenas);
  if (!charged.ok()) {
    log::Warn("restore.refused", {{"tenant", seq->tenant}, {"sequence", seq->id},
                                  {"reason", FailureReasonName(ReasonOf(charged))}});
    return charged;
  }
  RestoreSink sink(g, seq->table.heads(), pages, pool_, backend_, seq->id);
  absl::Status status = store_->ReadInto(seq->tenant, seq->id, &sink);
  const char* step = "read";
  if (status.ok()) {
    step = "install";
    status = sink.Install(&seq->table);
  }
  if (!status.ok()) {
    // Undo: the sequence stays spilled, its pages go back, the charge is what it was.
    seq->table.Release();
    pool_->Free(pages);
    ledger_->ReleasePages(seq->tenant, count, g.page_bytes);
    ++errors_;
    log::Error("restore.failed", {{"tenant", seq->tenant}, {"sequence", seq->id},
                                  {"step", step}, {"status", status}});
    return status;  // DATA_LOSS on a checksum mismatch: never wrong bytes
  }
  // The device copy is complete. A failed delete leaves a stale copy on disk: it is remembered,
  // and a later Spill or Drop deletes it first (after a restart it would be listed as
  // restorable).
  absl::Status deleted = store_->Delete(seq->tenant, seq->id);
  if (!deleted.ok()) {
    ++errors_;
    seq->stale_spill_copy = true;
    log::Warn("restore.stale_copy", {{"tenant", seq->tenant}, {"sequence", seq->id},
                                     {"status", deleted}});
  }
  ledger_->RemoveSpilled(seq->tenant, seq->spilled_bytes);
  sessions_->Touch(seq->tenant, seq->id, absl::Now());
  seq->spilled = false;
  seq->spilled_bytes = 0;
  ++restores_;
  log::Info("restore.done", {{"tenant", seq->tenant}, {"sequence", seq->id}, {"pages", count}});
  return absl::OkStatus();
}

absl::Status Spiller::DeleteCopyForDrop(Sequence* seq) {
  if (!seq->spilled && !seq->stale_spill_copy) return absl::OkStatus();
  absl::Status deleted = store_->Delete(seq->tenant, seq->id);
  if (!deleted.ok() && !absl::IsNotFound(deleted)) {
    ++errors_;
    log::Warn("drop.spill_delete_failed", {{"tenant", seq->tenant}, {"sequence", seq->id},
                                           {"status", deleted}});
    return deleted;  // still listed and restorable; the caller may retry
  }
  if (seq->spilled) ledger_->RemoveSpilled(seq->tenant, seq->spilled_bytes);
  return absl::OkStatus();
}

}  // namespace kvkeep
