// CacheEngine: pool pressure (design.md §6–7, docs/architecture.md "Pool allocation") — fair
// shares, capacity-aware page eviction, least-recently-used spilling, and the watermark thread.
#include <algorithm>
#include <memory>

#include "absl/synchronization/notification.h"
#include "service/engine/cache_engine.h"
#include "service/eviction/policy.h"

namespace kvkeep {
namespace {

// True on the engine's background thread: relief runs inline there instead of being queued.
thread_local bool on_background_thread = false;

// How long an allocation waits for the background thread to relieve pressure (capacity policy).
constexpr absl::Duration kReliefWait = absl::Seconds(10);

uint64_t Recency(absl::Time t) {
  const int64_t ns = absl::ToUnixNanos(t);
  return ns < 0 ? 0 : static_cast<uint64_t>(ns);
}

}  // namespace

absl::flat_hash_map<std::string, uint64_t> CacheEngine::FairSharesLocked(
    const std::string& requester) const {
  std::vector<ShareInput> inputs;
  std::vector<std::string> names;
  for (const auto& [name, t] : tenants_) {
    names.push_back(name);
    inputs.push_back({.guarantee_bytes = t.record.quota_bytes(),
                      .weight = t.record.weight(),
                      .active = t.used_bytes > 0 || name == requester});
  }
  std::vector<uint64_t> shares = FairShares(inputs, pool_.options().capacity_bytes);
  absl::flat_hash_map<std::string, uint64_t> out;
  for (size_t i = 0; i < names.size(); ++i) out[names[i]] = shares[i];
  return out;
}

uint64_t CacheEngine::PressureTarget(uint64_t want_bytes) {
  const uint64_t capacity = pool_.options().capacity_bytes;
  const uint64_t high_free =
      static_cast<uint64_t>(watermarks_.high_free() * static_cast<double>(capacity));
  const uint64_t free_now = capacity - std::min(capacity, used_bytes_);
  // Enough for the allocation that asked (its shortfall), and back to the high watermark.
  return std::max(want_bytes > free_now ? want_bytes - free_now : 0,
                  high_free > free_now ? high_free - free_now : 0);
}

void CacheEngine::MaybeRelievePressureLater() {
  const bool capacity = options_.pressure_policy == PressurePolicy::kCapacity;
  if (spill_ == nullptr && !capacity) return;
  {
    absl::MutexLock lock(&mu_);
    const double cap = static_cast<double>(pool_.options().capacity_bytes);
    const double free_now = cap - static_cast<double>(used_bytes_);
    // Under kCapacity the background thread starts scoring page costs already below the high
    // watermark, so that costs are ready when pressure comes.
    const double mark = capacity ? watermarks_.high_free() : watermarks_.low_free();
    if (free_now >= mark * cap) return;
  }
  if (relief_scheduled_.exchange(true)) return;
  background_->Schedule([this] {
    on_background_thread = true;
    relief_scheduled_ = false;
    if (options_.pressure_policy == PressurePolicy::kCapacity) RefreshPageCosts();
    bool below_low;
    {
      absl::MutexLock lock(&mu_);
      const double cap = static_cast<double>(pool_.options().capacity_bytes);
      below_low = cap - static_cast<double>(used_bytes_) < watermarks_.low_free() * cap;
    }
    if (below_low) RelievePressure(0);
  });
}

uint64_t CacheEngine::RelievePressure(uint64_t want_bytes, const std::string& requester) {
  // Unreferenced cached shared prefix pages go first, under either policy: nobody holds them. An
  // allocation that failed asks for at least its own size even when the byte count says the pool
  // has room: its room may be held by arenas of other owners (a group's cached pages among them).
  uint64_t released = 0;
  {
    uint64_t target;
    {
      absl::MutexLock lock(&mu_);
      target = std::max(PressureTarget(want_bytes), want_bytes);
    }
    if (target == 0) return 0;
    released = ReleaseCachedPrefixes(target);
  }
  return released + RelieveSequences(want_bytes, requester);
}

uint64_t CacheEngine::RelieveSequences(uint64_t want_bytes, const std::string& requester) {
  if (options_.pressure_policy == PressurePolicy::kLru) {
    uint64_t target;
    {
      absl::MutexLock lock(&mu_);
      target = PressureTarget(want_bytes);
    }
    return target == 0 ? 0 : SpillLeastRecent(target);
  }
  if (on_background_thread) return RelieveByCapacity(want_bytes, requester);
  // Scoring never runs on a request thread: the background thread does it, this one waits.
  auto done = std::make_shared<absl::Notification>();
  auto freed = std::make_shared<std::atomic<uint64_t>>(0);
  background_->Schedule([this, done, freed, want_bytes, requester] {
    on_background_thread = true;
    freed->store(RelieveByCapacity(want_bytes, requester));
    done->Notify();
  });
  if (!done->WaitForNotificationWithTimeout(kReliefWait)) return 0;
  return freed->load();
}

uint64_t CacheEngine::SpillLeastRecent(uint64_t target) {
  if (spill_ == nullptr || target == 0) return 0;
  // Candidates: unleased device sequences; tenants above their fair share first, then above
  // their guarantee, then the others; least recently used first within each class.
  struct Candidate {
    std::shared_ptr<Sequence> seq;
    int order;
    absl::Time last_access;
  };
  std::vector<Candidate> candidates;
  {
    absl::MutexLock lock(&mu_);
    absl::flat_hash_map<std::string, uint64_t> shares = FairSharesLocked("");
    for (auto& [name, t] : tenants_) {
      const int order = t.used_bytes > shares[name]            ? 0
                        : t.used_bytes > t.record.quota_bytes() ? 1
                                                                : 2;
      for (auto& [id, seq] : t.sequences) {
        if (seq->leases.empty()) candidates.push_back({seq, order, seq->last_access});
      }
    }
  }
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    if (a.order != b.order) return a.order < b.order;
    return a.last_access < b.last_access;
  });
  uint64_t freed = 0;
  for (Candidate& c : candidates) {
    if (freed >= target) break;
    // Never wait on a busy sequence: its holder may be the allocation that asked for room.
    if (!c.seq->mu.TryLock()) continue;
    if (!c.seq->dropped && !c.seq->spilled) {
      const uint64_t before = c.seq->table.page_count() * c.seq->model->geometry().page_bytes;
      if (SpillHeld(c.seq.get(), "", /*ignore_leases=*/false).ok()) {
        freed += before;
        ++pressure_spills_;
      }
    }
    c.seq->mu.Unlock();
  }
  return freed;
}

void CacheEngine::RefreshPageCosts() {
  std::vector<std::shared_ptr<Sequence>> all;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [name, t] : tenants_) {
      for (auto& [id, seq] : t.sequences) {
        if (seq->leases.empty()) all.push_back(seq);
      }
    }
  }
  thread_local PageCostScratch scratch;
  for (const auto& seq : all) {
    if (!seq->mu.TryLock()) continue;
    if (!seq->dropped && !seq->spilled && !seq->costs.FreshFor(seq->table)) {
      absl::StatusOr<PageCosts> costs =
          ComputePageCosts(*seq->model, seq->table, seq->stats, *backend_, pool_, scratch);
      if (costs.ok()) {
        seq->costs = std::move(*costs);
        ++page_cost_passes_;
      }
    }
    seq->mu.Unlock();
  }
}

uint64_t CacheEngine::RelieveByCapacity(uint64_t want_bytes, const std::string& requester) {
  {
    absl::MutexLock lock(&mu_);
    if (PressureTarget(want_bytes) == 0) return 0;
  }
  RefreshPageCosts();
  struct Seq {
    std::shared_ptr<Sequence> seq;
    std::vector<uint32_t> counts;  // head counts the candidates were taken from
    int sinks = 0, window = 0;
  };
  std::vector<Seq> seqs;
  absl::flat_hash_map<std::string, TenantStanding> standings;
  uint64_t target = 0;
  {
    absl::MutexLock lock(&mu_);
    target = PressureTarget(want_bytes);
    if (target == 0) return 0;
    absl::flat_hash_map<std::string, uint64_t> shares = FairSharesLocked(requester);
    const eviction::Policy defaults;
    for (auto& [name, t] : tenants_) {
      // The asking tenant stands as it will after its allocation: at or above its share it may
      // still displace its own pages, never other tenants' within their shares.
      const uint64_t used = name == requester ? t.used_bytes + want_bytes : t.used_bytes;
      standings[name] = {used, t.record.quota_bytes(), shares[name]};
      const v1::Policy& p = t.record.policy();
      for (auto& [id, seq] : t.sequences) {
        if (!seq->leases.empty()) continue;
        seqs.push_back({seq, {}, p.has_sinks() ? static_cast<int>(p.sinks()) : defaults.sinks,
                        p.has_window() ? static_cast<int>(p.window()) : defaults.window});
      }
    }
  }
  // Candidates: every full page of an unleased device sequence that holds neither a sink nor a
  // token of the observation window.
  std::vector<VictimCandidate> candidates;
  for (size_t i = 0; i < seqs.size(); ++i) {
    Sequence& seq = *seqs[i].seq;
    if (!seq.mu.TryLock()) continue;
    if (!seq.dropped && !seq.spilled && seq.costs.computed &&
        seq.costs.counts.size() == seq.table.heads()) {
      const uint32_t tpp = seq.table.tokens_per_page();
      const uint64_t page_bytes = seq.model->geometry().page_bytes;
      uint64_t recency;
      {
        absl::MutexLock lock(&mu_);
        recency = Recency(seq.last_access);
      }
      for (uint32_t h = 0; h < seq.table.heads(); ++h) {
        const uint64_t count = seq.table.head(h).count;
        seqs[i].counts.push_back(static_cast<uint32_t>(count));
        // Shared prefix pages (the sequence's first seq.shared.size() pages of every head) are
        // referenced and never freed here; the sinks' pages neither.
        const uint64_t first =
            std::max<uint64_t>((static_cast<uint64_t>(seqs[i].sinks) + tpp - 1) / tpp,
                               seq.shared.size());
        const uint64_t protected_tail = static_cast<uint64_t>(seqs[i].window);
        if (count < protected_tail) continue;
        const uint64_t end = (count - protected_tail) / tpp;  // pages wholly before the window
        for (uint64_t p = first; p < end; ++p) {
          candidates.push_back({seq.costs.Cost(seq.table, h, static_cast<uint32_t>(p)),
                                seq.tenant, page_bytes, recency, i, h,
                                static_cast<uint32_t>(p)});
        }
      }
    }
    seq.mu.Unlock();
  }
  std::vector<size_t> chosen = ChooseVictims(candidates, &standings, target, requester);
  // Apply per sequence, highest page index first in each head so that lower indices stay valid.
  absl::flat_hash_map<size_t, std::vector<size_t>> by_seq;
  for (size_t c : chosen) by_seq[candidates[c].sequence].push_back(c);
  uint64_t freed = 0;
  for (auto& [index, mine] : by_seq) {
    Seq& s = seqs[index];
    Sequence& seq = *s.seq;
    if (!seq.mu.TryLock()) continue;
    bool unchanged = !seq.dropped && !seq.spilled && seq.costs.computed;
    for (uint32_t h = 0; unchanged && h < seq.table.heads(); ++h) {
      unchanged = h < s.counts.size() && seq.table.head(h).count == s.counts[h];
    }
    {
      absl::MutexLock lock(&mu_);
      unchanged = unchanged && seq.leases.empty();  // a lease taken since: leave it alone
    }
    if (!unchanged) {
      seq.mu.Unlock();
      continue;
    }
    std::sort(mine.begin(), mine.end(), [&](size_t a, size_t b) {
      return std::tie(candidates[a].head, candidates[a].page) >
             std::tie(candidates[b].head, candidates[b].page);
    });
    const uint32_t tpp = seq.table.tokens_per_page();
    const uint32_t kv_heads = seq.model->kv_heads();
    std::vector<uint64_t> pages;
    std::vector<int32_t> kept;
    for (size_t c : mine) {
      const uint32_t h = candidates[c].head, p = candidates[c].page;
      const uint32_t old_count = seq.table.head(h).count;
      if (!seq.table.RemoveFullPage(h, p, &pages).ok()) continue;
      kept.clear();
      for (uint32_t j = 0; j < old_count; ++j) {
        if (j / tpp != p) kept.push_back(static_cast<int32_t>(j));
      }
      CompactStats(*seq.model, h / kv_heads, h % kv_heads, old_count, kept, &seq.stats);
      seq.costs.RemovePage(h, p, tpp);
    }
    const uint64_t page_bytes = seq.model->geometry().page_bytes;
    const uint64_t bytes = pages.size() * page_bytes;
    pool_.Free(pages);
    {
      absl::MutexLock lock(&mu_);
      auto t = tenants_.find(seq.tenant);
      if (t != tenants_.end()) {
        t->second.used_bytes -= bytes;
        t->second.used_pages -= pages.size();
        t->second.pressure_evicted_pages += pages.size();
      }
      used_bytes_ -= bytes;
    }
    seq.mu.Unlock();
    freed += bytes;
    pressure_evicted_pages_ += pages.size();
    pressure_evicted_tokens_ += pages.size() * tpp;
  }
  // Not enough (nothing cheap enough may go, or costs were missing): spill.
  if (freed < target) freed += SpillLeastRecent(target - freed);
  return freed;
}

}  // namespace kvkeep
