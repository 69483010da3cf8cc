// A sequence's device state: its page table, query statistics, tier and shared prefix pages.
//
// Who holds it (owner, leases, retain, last access) is the SessionRegistry's; what it is charged,
// the Ledger's. The engine keeps the sequences in its tenants' maps (under CacheEngine::mu_) and
// hands them to the Spiller and to PressureRelief as shared_ptrs.
//
// Thread-safe through `mu`, which protects every mutable field. Lock order: Sequence::mu first,
// before CacheEngine::mu_ and every lock after it. Code that must not wait on a busy sequence
// (pressure relief) uses TryLock with AdoptLock (adopt_lock.h).
#ifndef KVKEEP_SERVICE_ENGINE_SEQUENCE_H_
#define KVKEEP_SERVICE_ENGINE_SEQUENCE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "service/engine/model_layout.h"
#include "service/engine/sequence_stats.h"
#include "service/engine/sequence_table.h"
#include "service/pool/page_costs.h"
#include "service/pool/prefix_index.h"

namespace kvkeep {

struct Sequence {
  // `metadata_bytes`: what its tenant was charged for its heap before it was created
  // (metadata_charge.h's EmptySequenceBytes).
  Sequence(std::string id, std::string tenant, std::shared_ptr<const Model> model,
           uint64_t charged_metadata_bytes = 0)
      : id(std::move(id)), tenant(std::move(tenant)), model(std::move(model)),
        table(this->model->head_tables(), this->model->geometry().tokens_per_page),
        metadata_bytes(charged_metadata_bytes) {}
  // Constant after construction.
  const std::string id;
  const std::string tenant;
  const std::shared_ptr<const Model> model;

  absl::Mutex mu;
  SequenceTable table ABSL_GUARDED_BY(mu);
  SequenceStats stats ABSL_GUARDED_BY(mu);
  bool dropped ABSL_GUARDED_BY(mu) = false;
  bool spilled ABSL_GUARDED_BY(mu) = false;  // pages in the spill tier, table empty
  // A restore could not delete the disk copy: Spill and Drop delete it first.
  bool stale_spill_copy ABSL_GUARDED_BY(mu) = false;
  uint64_t spilled_bytes ABSL_GUARDED_BY(mu) = 0;
  // How many times tokens moved inside its pages (Compress, pressure relief): a ReadKV stream
  // that saw another count stops with ABORTED rather than send chunks of the moved tokens.
  uint64_t compactions ABSL_GUARDED_BY(mu) = 0;
  // Capacity cost of each page (pool pressure under kCapacity); refreshed on the background
  // thread, invalidated by Compress.
  PageCosts costs ABSL_GUARDED_BY(mu);
  // Shared prefix pages held: entry i is page i of every head (read-only). Each holds one
  // reference on its entry (the entries' counts are under CacheEngine::mu_).
  std::vector<std::shared_ptr<PrefixEntry>> shared ABSL_GUARDED_BY(mu);
  // Daemon heap the ledger charges its tenant for it (metadata_charge.h): set to
  // EmptySequenceBytes when created (charged before), brought up to date by RechargeMetadata,
  // released when dropped.
  uint64_t metadata_bytes ABSL_GUARDED_BY(mu) = 0;
};

// OK when the sequence's pages are on the device; NOT_FOUND when dropped, FAILED_PRECONDITION
// when spilled (device-only operations).
inline absl::Status OnDevice(const Sequence& seq) ABSL_SHARED_LOCKS_REQUIRED(seq.mu) {
  if (seq.dropped) {
    return absl::NotFoundError(absl::StrCat("no sequence \"", seq.id, "\" for this tenant"));
  }
  if (seq.spilled) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sequence ", seq.id, " is in the spill tier; Acquire or Restore it first"));
  }
  return absl::OkStatus();
}

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_SEQUENCE_H_
