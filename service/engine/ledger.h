// The ledger: the one place that charges and un-charges tenants and the pool.
//
// What it guarantees, at every moment its lock is free:
//   pool used bytes = Σ over tenants of used_bytes + bytes of cached (unreferenced) prefix pages
//   tenant used_bytes = private device page bytes + its shared prefix charge
// and no figure is ever negative. A refused charge (admission) changes nothing. Every other part
// of the engine asks the ledger for these figures and tells it what happened (pages allocated,
// freed, spilled, evicted; prefix charges moved); nothing else writes them.
//
// Admission (a tenant may always grow to its guarantee; beyond it only into pool bytes nobody is
// guaranteed; never past its hard maximum: service/pool/quota.h) happens inside ChargePages, under
// the same lock as the charge, so two concurrent allocations cannot both pass one check.
// Refusals carry a FailureReason: kTenantMax (the tenant's own maximum; pressure relief cannot
// help), kPoolShort (the pool after the others' guarantees; relief may help), kSpillQuota.
//
//   Ledger ledger(capacity_bytes);
//   ledger.OpenAccount("team-a", {.guarantee_bytes = 1 << 20});
//   RETURN_IF_ERROR(ledger.ChargePages("team-a", pages, page_bytes));   // before allocating
//   ...
//   ledger.ReleasePages("team-a", pages, page_bytes);                    // after freeing
//
// The ledger speaks kvkeep's own types (no v1:: protos): limits and figures are plain structs.
//
// Thread-safe: its own mutex protects every figure. It calls nothing outside itself while holding
// it, so it is last in the engine's lock order:
//   Sequence::mu -> CacheEngine::mu_ -> SessionRegistry::mu_ -> Ledger::mu_ -> PagePool::mu_
#ifndef KVKEEP_SERVICE_ENGINE_LEDGER_H_
#define KVKEEP_SERVICE_ENGINE_LEDGER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "service/pool/pool_shares.h"
#include "service/pool/prefix_index.h"

namespace kvkeep {

// What an operator set for a tenant.
struct TenantLimits {
  uint64_t guarantee_bytes = 0;    // quota: always admitted up to here
  uint64_t max_bytes = 0;          // hard maximum; 0 = the pool capacity
  uint32_t weight = 1;             // its weight in the fair shares of the pool
  uint64_t spill_quota_bytes = 0;  // bytes it may hold in the spill tier
};

// What a tenant is charged.
struct TenantCharges {
  uint64_t used_bytes = 0;              // private device page bytes + shared_charge_bytes
  uint64_t used_pages = 0;              // private device pages
  uint64_t shared_charge_bytes = 0;     // its fair part of the shared prefix pages it holds
  uint64_t spilled_bytes = 0;           // bytes of its sequences in the spill tier
  uint64_t pressure_evicted_pages = 0;  // pages pressure relief dropped (capacity policy)
  // Daemon heap its sequences, statistics and model layouts hold (not pool bytes):
  // metadata_charge.h says what is counted.
  uint64_t metadata_bytes = 0;
};

// What the pool is charged.
struct PoolCharges {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;            // Σ tenants' used_bytes + cached_prefix_bytes
  uint64_t cached_prefix_bytes = 0;   // shared prefix pages no sequence references
  uint64_t spilled_bytes = 0;         // Σ tenants' spilled_bytes
};

class Ledger {
 public:
  // `metadata_bytes_per_tenant`: the most daemon heap (metadata_bytes) one tenant may hold;
  // 0 = unbounded (tests of the page figures only).
  explicit Ledger(uint64_t pool_capacity_bytes, uint64_t metadata_bytes_per_tenant = 0);
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // ---- Accounts ----
  // Opens (or, for an existing one, re-limits) the tenant's account.
  void OpenAccount(const std::string& tenant, const TenantLimits& limits);
  void SetLimits(const std::string& tenant, const TenantLimits& limits);
  // Closes the account. Whatever it was still charged leaves the pool with it (returned; a
  // tenant deleted after all its pages were freed returns zeros).
  TenantCharges CloseAccount(const std::string& tenant);

  // ---- Device pages ----
  // Admission, then the charge of `pages` private pages of `page_bytes`. RESOURCE_EXHAUSTED with
  // kTenantMax or kPoolShort (messages of service/pool/quota.h), UNAUTHENTICATED for a tenant
  // without an account; nothing changes then.
  absl::Status ChargePages(const std::string& tenant, uint64_t pages, uint64_t page_bytes);
  // Un-charges freed private pages (never below zero; an unknown tenant changes nothing).
  void ReleasePages(const std::string& tenant, uint64_t pages, uint64_t page_bytes);
  // As ReleasePages, and counts them as dropped by pressure relief.
  void EvictPages(const std::string& tenant, uint64_t pages, uint64_t page_bytes);

  // ---- Shared prefix pages ----
  // OK when the tenant's hard maximum allows `more_bytes` of shared charge; RESOURCE_EXHAUSTED
  // with kTenantMax otherwise. Charges nothing (the prefix index's Changes do that).
  absl::Status AdmitSharedCharge(const std::string& tenant, uint64_t more_bytes) const;
  // Applies what a PrefixIndex Ref/Unref moved: tenants' shared charges, cached bytes.
  void ApplyPrefixChanges(const PrefixIndex::Changes& changes);
  // A new prefix entry (cached until referenced) / cached entries freed.
  void AddCachedPrefix(uint64_t bytes);
  void ReleaseCachedPrefix(uint64_t bytes);
  // Private pages that became shared prefix pages (published): un-charged as private, and the
  // same call applies the prefix charges, so the figures never disagree in between.
  void PublishPages(const std::string& tenant, uint64_t pages, uint64_t page_bytes,
                    uint64_t new_entry_bytes, const PrefixIndex::Changes& changes);

  // ---- Spill tier ----
  // OK when `bytes` more fit the tenant's spill quota given `on_disk_bytes` it holds there;
  // RESOURCE_EXHAUSTED with kSpillQuota otherwise.
  absl::Status CheckSpillQuota(const std::string& tenant, uint64_t bytes,
                               uint64_t on_disk_bytes) const;
  // A sequence went to the spill tier: its `pages` private pages are un-charged, `spilled_bytes`
  // charged to the spill tier.
  void MoveToSpill(const std::string& tenant, uint64_t pages, uint64_t page_bytes,
                   uint64_t spilled_bytes);
  // Spilled bytes found at start / gone (restored or dropped).
  void AddSpilled(const std::string& tenant, uint64_t bytes);
  void RemoveSpilled(const std::string& tenant, uint64_t bytes);

  // ---- Daemon heap (sequence metadata, statistics, model layouts) ----
  // Admission and charge of `bytes` more heap: RESOURCE_EXHAUSTED (kTenantMax) naming the
  // tenant's own figures when it would pass the per-tenant bound; UNAUTHENTICATED without an
  // account. Nothing changes on refusal.
  absl::Status ChargeMetadata(const std::string& tenant, uint64_t bytes);
  // Un-charges heap that was freed (never below zero; an unknown tenant changes nothing).
  void ReleaseMetadata(const std::string& tenant, uint64_t bytes);
  // The heap charged for one holder moved from `from` to `to` bytes (after the change happened:
  // never refused; admission is ChargeMetadata's, before it).
  void AdjustMetadata(const std::string& tenant, uint64_t from, uint64_t to);
  uint64_t metadata_bytes_per_tenant() const { return metadata_bytes_per_tenant_; }

  // ---- Figures ----
  TenantCharges ChargesOf(const std::string& tenant) const;
  PoolCharges Pool() const;
  // Bytes the pool still has uncharged (capacity - used, never negative).
  uint64_t FreeBytes() const;
  // Every tenant's fair share of the pool (service/pool/pool_shares.h); `requester` counts as
  // active. Tenants are active while charged.
  absl::flat_hash_map<std::string, uint64_t> FairShares(const std::string& requester) const;
  // Every tenant's standing for pressure relief; the requester's used bytes include
  // `requester_extra` (what its allocation will add).
  absl::flat_hash_map<std::string, TenantStanding> Standings(const std::string& requester,
                                                             uint64_t requester_extra) const;

 private:
  struct Account {
    TenantLimits limits;
    TenantCharges charges;
  };
  // Un-charges up to `bytes` / `pages` of private pages; returns the bytes taken off.
  uint64_t ReleaseLocked(Account& account, uint64_t pages, uint64_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyPrefixChangesLocked(const PrefixIndex::Changes& changes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::flat_hash_map<std::string, uint64_t> FairSharesLocked(const std::string& requester) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  const uint64_t capacity_bytes_;
  const uint64_t metadata_bytes_per_tenant_;

  mutable absl::Mutex mu_;
  // Protected by mu_.
  absl::flat_hash_map<std::string, Account> accounts_ ABSL_GUARDED_BY(mu_);
  uint64_t used_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t cached_prefix_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t spilled_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_LEDGER_H_
