// The spiller: moves a sequence between the device pool and the spill tier.
//
// Spill streams the pages that hold committed tokens from the device into the store in bounded
// batches (SpillStore::Write: durable before anything is freed; no host copy of the sequence),
// then frees the device pages and moves the charge from the pool to the spill tier (Ledger::
// MoveToSpill); the table's vectors are freed and the sequence's metadata charge follows at once
// (RechargeMetadata), whoever asked for the spill (its owner, the operator, pressure relief).
// Restore allocates through the engine's admission (pressure relief included),
// streams the disk copy straight into those pages (RestoreSink: each value's pages are verified
// by the store - DATA_LOSS, never wrong bytes - and written into their pages as the value
// arrives; no host copy of the sequence), installs the table only once every page is in, and
// deletes the disk copy; a failed delete is remembered on the sequence (stale_spill_copy) and
// retried by the next Spill or Drop. A failed call leaves the sequence as it was.
//
//   Spiller spiller(spill_store, backend, &pool, &ledger, &sessions, &host);
//   ASSIGN_OR_RETURN(Spiller::Spilled spilled, spiller.Spill(seq, caller_session, false));
//
// It speaks kvkeep's own types. What it needs of the engine (a page's location in the tenant's
// or its group's arenas, releasing a table with its shared prefix references, the charged
// allocation with pressure relief) comes through Spiller::Host, which CacheEngine implements.
//
// Thread-safe: every call requires the sequence's mu; the spiller holds no lock of its own (its
// counters are atomics). The store may be null: the daemon runs without a spill tier, and Spill
// and Restore answer FAILED_PRECONDITION.
#ifndef KVKEEP_SERVICE_ENGINE_SPILLER_H_
#define KVKEEP_SERVICE_ENGINE_SPILLER_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gpu/backend.h"
#include "service/engine/ledger.h"
#include "service/engine/sequence.h"
#include "service/engine/session_registry.h"
#include "service/pool/page_pool.h"
#include "service/storage/spill_store.h"

namespace kvkeep {

class Spiller {
 public:
  // What the spiller asks of the engine.
  class Host {
   public:
    virtual ~Host() = default;
    // Where `page` of `tenant` is: its own arenas or its sharing group's (PagePool::Locate).
    virtual absl::StatusOr<PagePool::Location> LocatePage(const std::string& tenant,
                                                          uint64_t page) const = 0;
    // Empties the table: frees its private pages and drops its shared prefix references.
    // Returns the private pages freed (not yet un-charged).
    virtual uint64_t ReleaseTable(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu) = 0;
    // Admission, charge and allocation of `count` pages for `tenant`, with pressure relief
    // (CacheEngine::AllocateCharged).
    virtual absl::Status AllocateCharged(const std::string& tenant, const PageGeometry& geometry,
                                         uint64_t count, std::vector<uint64_t>* pages,
                                         std::vector<ArenaInfo>* new_arenas) = 0;
  };

  // `store` may be null; the others must outlive the spiller.
  Spiller(SpillStore* store, Backend* backend, PagePool* pool, Ledger* ledger,
          SessionRegistry* sessions, Host* host);

  bool enabled() const { return store_ != nullptr; }
  SpillStore* store() const { return store_; }

  struct Spilled {
    uint64_t bytes = 0;        // bytes written (pages holding committed tokens)
    uint64_t pages_freed = 0;  // private device pages freed
  };
  // Moves `seq` to the spill tier. NOT_FOUND (dropped), FAILED_PRECONDITION (already spilled,
  // no spill tier, or leased by a session other than `caller_session` unless `ignore_leases`),
  // RESOURCE_EXHAUSTED with kSpillQuota, the store's errors (UNAVAILABLE, kDiskFull ...).
  absl::StatusOr<Spilled> Spill(Sequence* seq, const std::string& caller_session,
                                bool ignore_leases) ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu);
  // Brings `seq` back. NOT_FOUND (dropped), FAILED_PRECONDITION (not spilled), admission's
  // RESOURCE_EXHAUSTED, DATA_LOSS (the disk copy does not match the model or its checksums).
  absl::Status Restore(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu);
  // Deletes the disk copy of a spilled (or stale-copy) sequence before it is dropped, and takes
  // its spilled bytes off the ledger. OK when there was none.
  absl::Status DeleteCopyForDrop(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu);

  uint64_t spills() const { return spills_.load(); }
  uint64_t restores() const { return restores_.load(); }
  uint64_t errors() const { return errors_.load(); }
  // A failure of the spill tier outside the spiller's calls (counted in spill_errors).
  void CountError() { ++errors_; }

 private:
  // Bytes a spill of `seq` writes: the pages holding committed tokens.
  static uint64_t SpillBytes(const Sequence& seq) ABSL_SHARED_LOCKS_REQUIRED(seq.mu);
  absl::Status CheckSpillable(Sequence* seq, const std::string& caller_session,
                              bool ignore_leases, uint64_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu);
  // What a spill of `seq` stores besides its page bytes: the pages holding committed tokens,
  // positions referenced from the table (valid while seq.mu is held).
  static SpillWrite DescribeSpill(const Sequence& seq) ABSL_SHARED_LOCKS_REQUIRED(seq.mu);

  // Constant after construction.
  SpillStore* const store_;  // may be null
  Backend* const backend_;
  PagePool* const pool_;
  Ledger* const ledger_;
  SessionRegistry* const sessions_;
  Host* const host_;

  std::atomic<uint64_t> spills_{0}, restores_{0}, errors_{0};
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_SPILLER_H_
