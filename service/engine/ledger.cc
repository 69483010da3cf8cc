#include "service/engine/ledger.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/failure_reason.h"
#include "service/observability/log.h"
#include "service/pool/quota.h"

namespace kvkeep {
namespace {

// a - b, never below zero.
uint64_t Less(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

absl::Status NoAccount() { return absl::UnauthenticatedError("tenant no longer exists"); }

}  // namespace

Ledger::Ledger(uint64_t pool_capacity_bytes, uint64_t metadata_bytes_per_tenant)
    : capacity_bytes_(pool_capacity_bytes),
      metadata_bytes_per_tenant_(metadata_bytes_per_tenant) {}

void Ledger::OpenAccount(const std::string& tenant, const TenantLimits& limits) {
  absl::MutexLock lock(&mu_);
  accounts_[tenant].limits = limits;
}

void Ledger::SetLimits(const std::string& tenant, const TenantLimits& limits) {
  absl::MutexLock lock(&mu_);
  auto it = accounts_.find(tenant);
  if (it != accounts_.end()) it->second.limits = limits;
}

TenantCharges Ledger::CloseAccount(const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  auto it = accounts_.find(tenant);
  if (it == accounts_.end()) return {};
  const TenantCharges left = it->second.charges;
  used_bytes_ = Less(used_bytes_, left.used_bytes);
  spilled_bytes_ = Less(spilled_bytes_, left.spilled_bytes);
  accounts_.erase(it);
  if (left.used_bytes != 0 || left.spilled_bytes != 0) {
    log::Error("ledger.close_with_charges", {{"tenant", tenant},
                                             {"used_bytes", left.used_bytes},
                                             {"spilled_bytes", left.spilled_bytes}});
  }
  return left;
}

absl::Status Ledger::ChargePages(const std::string& tenant, uint64_t pages, uint64_t page_bytes) {
  const uint64_t bytes = pages * page_bytes;
  absl::MutexLock lock(&mu_);
  auto it = accounts_.find(tenant);
  if (it == accounts_.end()) return NoAccount();
  Account& account = it->second;
  uint64_t reserved_for_others = 0;
  for (const auto& [name, other] : accounts_) {
    if (name != tenant) {
      reserved_for_others += Less(other.limits.guarantee_bytes, other.charges.used_bytes);
    }
  }
  const TenantUsage usage{tenant, account.limits.guarantee_bytes, account.limits.max_bytes,
                          account.charges.used_bytes};
  absl::Status admitted =
      CheckAdmission(usage, bytes, capacity_bytes_, used_bytes_, reserved_for_others);
  if (!admitted.ok()) return admitted;
  account.charges.used_bytes += bytes;
  account.charges.used_pages += pages;
  used_bytes_ += bytes;
  return absl::OkStatus();
}

uint64_t Ledger::ReleaseLocked(Account& account, uint64_t pages, uint64_t bytes) {
  TenantCharges& c = account.charges;
  const uint64_t private_bytes = c.used_bytes - c.shared_charge_bytes;
  if (bytes > private_bytes || pages > c.used_pages) {
    log::Error("ledger.release_exceeds_charge",
               {{"bytes", bytes}, {"charged_bytes", private_bytes}, {"pages", pages},
                {"charged_pages", c.used_pages}});
  }
  const uint64_t taken = std::min(bytes, private_bytes);
  c.used_bytes -= taken;
  c.used_pages = Less(c.used_pages, pages);
  used_bytes_ = Less(used_bytes_, taken);
  return taken;
}

void Ledger::ReleasePages(const std::string& tenant, uint64_t pages, uint64_t page_bytes) {
  if (pages == 0) return;
  absl::MutexLock lock(&mu_);
  auto it = accounts_.find(tenant);
  if (it != accounts_.end()) ReleaseLocked(it->second, pages, pages * page_bytes);
}

void Ledger::EvictPages(const std::string& tenant, uint64_t pages, uint64_t page_bytes) {
  if (pages == 0) return;
  absl::MutexLock lock(&mu_);
  auto it = accounts_.find(tenant);
  if (it == accounts_.end()) return;
  ReleaseLocked(it->second, pages, pages * page_bytes);
  it->second.charges.pressure_evicted_pages += pages;
}

absl::Status Ledger::ChargeMetadata(const std::string& tenant, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = accounts_.find(tenant);
  if (it == accounts_.end()) return NoAccount();
  uint64_t& held = it->second.charges.metadata_bytes;
  const uint64_t limit = metadata_bytes_per_tenant_;
  if (limit != 0 && (bytes > limit || held > limit - bytes)) {
    return WithReason(
        absl::ResourceExhaustedError(absl::StrCat(
            "tenant ", tenant, " metadata limit: its sequences, statistics and models hold ", held,
            " bytes of daemon memory, this needs ", bytes, " more, the most a tenant may hold is ",
            limit, " (kvkeepd --max_metadata_bytes_per_tenant); drop sequences, use a smaller "
            "layout or send shorter statistics windows")),
        FailureReason::kTenantMax);
  }
  held += bytes;
  return absl::OkStatus();
}

void Ledger::ReleaseMetadata(const std::string& tenant, uint64_t bytes) {
  AdjustMetadata(tenant, bytes, 0);
}

void Ledger::AdjustMetadata(const std::string& tenant, uint64_t from, uint64_t to) {
  if (from == to) return;
  absl::MutexLock lock(&mu_);
  auto it = accounts_.find(tenant);
  if (it == accounts_.end()) return;
  uint64_t& held = it->second.charges.metadata_bytes;
  held = to > from ? held + (to - from) : Less(held, from - to);
}

absl::Status Ledger::AdmitSharedCharge(const std::string& tenant, uint64_t more_bytes) const {
  absl::MutexLock lock(&mu_);
  auto it = accounts_.find(tenant);
  if (it == accounts_.end()) return NoAccount();
  const TenantLimits& limits = it->second.limits;
  const uint64_t used = it->second.charges.used_bytes;
  if (more_bytes > 0 && limits.max_bytes != 0 && used + more_bytes > limits.max_bytes) {
    return WithReason(absl::ResourceExhaustedError(absl::StrCat(
                          "tenant ", tenant, " quota exceeded: used ", used, " of max ",
                          limits.max_bytes, " bytes, the shared prefix's charge needs ",
                          more_bytes, " more")),
                      FailureReason::kTenantMax);
  }
  return absl::OkStatus();
}

void Ledger::ApplyPrefixChangesLocked(const PrefixIndex::Changes& changes) {
  for (const auto& [tenant, delta] : changes.charge) {
    auto it = accounts_.find(tenant);
    if (it == accounts_.end()) continue;  // a deleted tenant's charge is gone with it
    TenantCharges& c = it->second.charges;
    if (delta < 0) {
      // Never below zero; the pool loses exactly what the tenant loses.
      const uint64_t taken = std::min<uint64_t>(uint64_t(-delta), c.shared_charge_bytes);
      c.shared_charge_bytes -= taken;
      c.used_bytes -= taken;
      used_bytes_ = Less(used_bytes_, taken);
    } else {
      c.shared_charge_bytes += uint64_t(delta);
      c.used_bytes += uint64_t(delta);
      used_bytes_ += uint64_t(delta);
    }
  }
  if (changes.cached_bytes < 0) {
    const uint64_t taken =
        std::min<uint64_t>(uint64_t(-changes.cached_bytes), cached_prefix_bytes_);
    cached_prefix_bytes_ -= taken;
    used_bytes_ = Less(used_bytes_, taken);
  } else {
    cached_prefix_bytes_ += uint64_t(changes.cached_bytes);
    used_bytes_ += uint64_t(changes.cached_bytes);
  }
}

void Ledger::ApplyPrefixChanges(const PrefixIndex::Changes& changes) {
  absl::MutexLock lock(&mu_);
  ApplyPrefixChangesLocked(changes);
}

void Ledger::AddCachedPrefix(uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  cached_prefix_bytes_ += bytes;
  used_bytes_ += bytes;
}

void Ledger::ReleaseCachedPrefix(uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  const uint64_t taken = std::min(bytes, cached_prefix_bytes_);
  cached_prefix_bytes_ -= taken;
  used_bytes_ = Less(used_bytes_, taken);
}

void Ledger::PublishPages(const std::string& tenant, uint64_t pages, uint64_t page_bytes,
                          uint64_t new_entry_bytes, const PrefixIndex::Changes& changes) {
  absl::MutexLock lock(&mu_);
  cached_prefix_bytes_ += new_entry_bytes;
  used_bytes_ += new_entry_bytes;
  auto it = accounts_.find(tenant);
  if (it != accounts_.end()) ReleaseLocked(it->second, pages, pages * page_bytes);
  ApplyPrefixChangesLocked(changes);
}

absl::Status Ledger::CheckSpillQuota(const std::string& tenant, uint64_t bytes,
                                     uint64_t on_disk_bytes) const {
  absl::MutexLock lock(&mu_);
  auto it = accounts_.find(tenant);
  if (it == accounts_.end()) return absl::NotFoundError("tenant no longer exists");
  const uint64_t quota = it->second.limits.spill_quota_bytes;
  if (bytes > quota || on_disk_bytes > quota - bytes) {
    return WithReason(absl::ResourceExhaustedError(absl::StrCat(
                          "tenant ", tenant, " spill quota exceeded: ", on_disk_bytes, " of ",
                          quota, " bytes on disk, sequence needs ", bytes, " more")),
                      FailureReason::kSpillQuota);
  }
  return absl::OkStatus();
}

void Ledger::MoveToSpill(const std::string& tenant, uint64_t pages, uint64_t page_bytes,
                         uint64_t spilled_bytes) {
  absl::MutexLock lock(&mu_);
  auto it = accounts_.find(tenant);
  if (it == accounts_.end()) return;
  ReleaseLocked(it->second, pages, pages * page_bytes);
  it->second.charges.spilled_bytes += spilled_bytes;
  spilled_bytes_ += spilled_bytes;
}

void Ledger::AddSpilled(const std::string& tenant, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = accounts_.find(tenant);
  if (it == accounts_.end()) return;
  it->second.charges.spilled_bytes += bytes;
  spilled_bytes_ += bytes;
}

void Ledger::RemoveSpilled(const std::string& tenant, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = accounts_.find(tenant);
  if (it == accounts_.end()) return;
  const uint64_t taken = std::min(bytes, it->second.charges.spilled_bytes);
  it->second.charges.spilled_bytes -= taken;
  spilled_bytes_ = Less(spilled_bytes_, taken);
}

TenantCharges Ledger::ChargesOf(const std::string& tenant) const {
  absl::MutexLock lock(&mu_);
  auto it = accounts_.find(tenant);
  return it == accounts_.end() ? TenantCharges{} : it->second.charges;
}

PoolCharges Ledger::Pool() const {
  absl::MutexLock lock(&mu_);
  return {capacity_bytes_, used_bytes_, cached_prefix_bytes_, spilled_bytes_};
}

uint64_t Ledger::FreeBytes() const {
  absl::MutexLock lock(&mu_);
  return Less(capacity_bytes_, used_bytes_);
}

absl::flat_hash_map<std::string, uint64_t> Ledger::FairSharesLocked(
    const std::string& requester) const {
  std::vector<ShareInput> inputs;
  std::vector<std::string> names;
  for (const auto& [name, account] : accounts_) {
    names.push_back(name);
    inputs.push_back({.guarantee_bytes = account.limits.guarantee_bytes,
                      .weight = account.limits.weight,
                      .active = account.charges.used_bytes > 0 || name == requester});
  }
  std::vector<uint64_t> shares = kvkeep::FairShares(inputs, capacity_bytes_);
  absl::flat_hash_map<std::string, uint64_t> out;
  for (size_t i = 0; i < names.size(); ++i) out[names[i]] = shares[i];
  return out;
}

absl::flat_hash_map<std::string, uint64_t> Ledger::FairShares(const std::string& requester) const {
  absl::MutexLock lock(&mu_);
  return FairSharesLocked(requester);
}

absl::flat_hash_map<std::string, TenantStanding> Ledger::Standings(
    const std::string& requester, uint64_t requester_extra) const {
  absl::MutexLock lock(&mu_);
  absl::flat_hash_map<std::string, uint64_t> shares = FairSharesLocked(requester);
  absl::flat_hash_map<std::string, TenantStanding> out;
  for (const auto& [name, account] : accounts_) {
    const uint64_t used = account.charges.used_bytes + (name == requester ? requester_extra : 0);
    out[name] = {used, account.limits.guarantee_bytes, shares[name]};
  }
  return out;
}

}  // namespace kvkeep
