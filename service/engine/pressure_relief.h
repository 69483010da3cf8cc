// Pressure relief: frees pool room when an allocation does not fit or free bytes fall below the
// low watermark (design.md §6–7, docs/architecture.md "Pool allocation").
//
// Order: unreferenced cached shared prefix pages first (nobody holds them), then the sequences,
// by --pressure_policy: kLru spills whole least-recently-used sequences (tenants above their fair
// share first, then above their guarantee); kCapacity drops the globally cheapest whole pages by
// capacity cost (never sinks, the observation window, or shared prefix pages; never a tenant's
// pages within its share for another tenant), then spills; kCompress compresses the sequences
// whose marginal loss per freed page is smallest (compress_pressure.h: the plan over sequences and
// tenants, shares and guarantees as for kCapacity; sequences holding shared prefix pages are not
// compressed), each with its tenant's policy at the keep ratio the plan leaves it
// (pressure_relief_compress.cc), then spills. Leased sequences are never touched,
// and relief never waits on a busy sequence (TryLock; its holder may be the allocation asking).
// A sequence it shrinks is re-charged its metadata at once, under its mu (metadata_charge.h:
// ShrinkAndRecharge after a drop or compression, Spiller::Spill after a spill), not at its
// owner's next call.
//
// Which thread runs it is explicit: RelieveForAllocation runs on a request thread and hands
// capacity scoring to the engine's background thread (waiting for it); the background thread's
// own work (MaybeRelieveLater) runs inline there.
//
//   PressureRelief relief(policy, backend, &pool, &ledger, &sessions, &spiller, &host, executor);
//   if (relief.RelieveForAllocation(bytes, tenant) > 0) { /* retry the allocation */ }
//
// It speaks kvkeep's own types. The sequences, their tenants' protected sinks and windows, the
// watermarks and the prefix cache come from the engine through PressureRelief::Host.
//
// Thread-safe: no lock of its own (counters are atomics); it takes Sequence::mu (TryLock only)
// before the engine's locks, through the Host, the Ledger and the SessionRegistry.
#ifndef KVKEEP_SERVICE_ENGINE_PRESSURE_RELIEF_H_
#define KVKEEP_SERVICE_ENGINE_PRESSURE_RELIEF_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "gpu/backend.h"
#include "service/engine/compress_pressure.h"
#include "service/engine/ledger.h"
#include "service/engine/sequence.h"
#include "service/engine/session_registry.h"
#include "service/engine/spiller.h"
#include "service/executor.h"
#include "service/pool/page_pool.h"
#include "service/pool/pool_shares.h"

namespace kvkeep {

// Free fractions of the pool: relief starts below low_free and frees up to high_free.
struct FreeWatermarks {
  double low_free = 0.05;
  double high_free = 0.10;
};

class PressureRelief {
 public:
  class Host {
   public:
    virtual ~Host() = default;
    // An unleased sequence and what its tenant's policy protects.
    struct Candidate {
      std::shared_ptr<Sequence> seq;
      int sinks = 0;   // leading tokens never dropped
      int window = 0;  // trailing tokens never dropped
    };
    virtual std::vector<Candidate> UnleasedSequences() = 0;
    // Frees unreferenced cached shared prefix pages; returns the bytes freed.
    virtual uint64_t ReleaseCachedPrefixes(uint64_t want_bytes) = 0;
    virtual FreeWatermarks Watermarks() const = 0;
    // What one compression under pressure freed.
    struct Compressed {
      uint64_t pages = 0;   // freed in the pool and un-charged
      uint64_t tokens = 0;  // that left the head tables (summed over them)
    };
    // Compresses `seq` (unleased, no shared prefix pages) with its tenant's default policy at
    // `keep_ratio` in (0, 1]; frees and un-charges the emptied pages as evicted by pressure.
    // Errors as CompressSequence (a statistic the scorer needs missing: FAILED_PRECONDITION).
    virtual absl::StatusOr<Compressed> CompressForPressure(Sequence* seq, double keep_ratio)
        ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu) = 0;
  };

  // Every pointer must outlive the relief; `background` is the engine's background thread.
  PressureRelief(PressurePolicy policy, Backend* backend, PagePool* pool, Ledger* ledger,
                 SessionRegistry* sessions, Spiller* spiller, Host* host, Executor* background);

  // On a request thread, for an allocation of `want_bytes` by `requester` that did not fit:
  // frees until it fits and the high watermark is free, or nothing more can go. Returns the
  // bytes freed (0: retrying is pointless).
  uint64_t RelieveForAllocation(uint64_t want_bytes, const std::string& requester);
  // Schedules background relief (and, under kCapacity, page cost scoring) when free bytes are
  // below the mark. Cheap; never blocks.
  void MaybeRelieveLater();

  struct Stats {
    uint64_t evicted_pages = 0, evicted_tokens = 0, spills = 0, page_cost_passes = 0;
    uint64_t compressions = 0, compressed_pages = 0, compressed_tokens = 0;
  };
  Stats stats() const;

 private:
  enum class Thread { kRequest, kBackground };
  uint64_t Relieve(uint64_t want_bytes, const std::string& requester, Thread thread);
  uint64_t RelieveSequences(uint64_t want_bytes, const std::string& requester, Thread thread);
  // Bytes still needed beyond free bytes: the allocation's shortfall and the high watermark.
  uint64_t Target(uint64_t want_bytes) const;
  uint64_t SpillLeastRecent(uint64_t target);
  // Computes the page costs of unleased device sequences whose costs are missing or stale.
  void RefreshPageCosts();
  uint64_t RelieveByCapacity(uint64_t want_bytes, const std::string& requester);
  // kCompress (pressure_relief_compress.cc): plans, compresses, then spills what is still short.
  uint64_t RelieveByCompression(uint64_t want_bytes, const std::string& requester);

  struct Scored {
    std::shared_ptr<Sequence> seq;
    std::vector<uint32_t> counts;  // head counts the candidates were taken from
    int sinks = 0, window = 0;
  };
  // What both costed policies (kCapacity, kCompress) start from: the bytes still to free after
  // the page costs were refreshed, every tenant's standing (the requester's as it will be after
  // its allocation) and the unleased sequences.
  struct CostedPass {
    uint64_t target = 0;
    absl::flat_hash_map<std::string, TenantStanding> standings;
    std::vector<Scored> seqs;
  };
  // nullopt when nothing needs to be freed (before or after refreshing the page costs).
  std::optional<CostedPass> StartCostedPass(uint64_t want_bytes, const std::string& requester);
  // A sequence's last access as the victim and compression plans order it.
  uint64_t RecencyOf(const Sequence& seq) const;
  // Every droppable full page of the scored sequences (fills Scored::counts).
  std::vector<VictimCandidate> CollectVictims(std::vector<Scored>& seqs);
  // Drops the chosen pages `mine` of `s` when it is unchanged since scoring; returns bytes freed.
  uint64_t DropPages(Scored& s, std::vector<size_t>& mine,
                     const std::vector<VictimCandidate>& candidates,
                     const std::string& requester);
  // kCompress: the page losses of `s` (fills Scored::counts); false when it cannot be
  // compressed now (busy, gone, costs missing, shared prefix pages, leased).
  bool DescribeForCompression(Scored& s, CompressCandidate* out);
  // Compresses `s` by `pages` pages when it is unchanged since described; returns bytes freed.
  uint64_t CompressPlanned(Scored& s, uint32_t pages, const std::string& requester);

  // Constant after construction.
  const PressurePolicy policy_;
  Backend* const backend_;
  PagePool* const pool_;
  Ledger* const ledger_;
  SessionRegistry* const sessions_;
  Spiller* const spiller_;
  Host* const host_;
  Executor* const background_;

  std::atomic<bool> scheduled_{false};
  std::atomic<uint64_t> evicted_pages_{0}, evicted_tokens_{0}, spills_{0}, page_cost_passes_{0};
  std::atomic<uint64_t> compressions_{0}, compressed_pages_{0}, compressed_tokens_{0};
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_PRESSURE_RELIEF_H_
