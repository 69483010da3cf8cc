#include "service/engine/pressure_relief.h"

#include <algorithm>
#include <tuple>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "service/engine/adopt_lock.h"
#include "service/engine/metadata_charge.h"
#include "service/observability/log.h"
#include "service/pool/page_costs.h"

namespace kvkeep {
namespace {

// How long an allocation waits for the background thread to relieve pressure (capacity policy).
constexpr absl::Duration kReliefWait = absl::Seconds(10);

}  // namespace

PressureRelief::PressureRelief(PressurePolicy policy, Backend* backend, PagePool* pool,
                               Ledger* ledger, SessionRegistry* sessions, Spiller* spiller,
                               Host* host, Executor* background)
    : policy_(policy), backend_(backend), pool_(pool), ledger_(ledger), sessions_(sessions),
      spiller_(spiller), host_(host), background_(background) {}

PressureRelief::Stats PressureRelief::stats() const {
  return {evicted_pages_.load(),     evicted_tokens_.load(),    spills_.load(),
          page_cost_passes_.load(),  compressions_.load(),      compressed_pages_.load(),
          compressed_tokens_.load()};
}

uint64_t PressureRelief::Target(uint64_t want_bytes) const {
  const uint64_t capacity = pool_->options().capacity_bytes;
  const uint64_t high_free =
      static_cast<uint64_t>(host_->Watermarks().high_free * static_cast<double>(capacity));
  const uint64_t free_now = ledger_->FreeBytes();
  return std::max(want_bytes > free_now ? want_bytes - free_now : 0,
                  high_free > free_now ? high_free - free_now : 0);
}

void PressureRelief::MaybeRelieveLater() {
  // Both costed policies (kCapacity, kCompress) plan from page costs.
  const bool capacity =
      policy_ == PressurePolicy::kCapacity || policy_ == PressurePolicy::kCompress;
  if (!spiller_->enabled() && !capacity) return;
  const double cap = static_cast<double>(pool_->options().capacity_bytes);
  const FreeWatermarks marks = host_->Watermarks();
  // Under kCapacity and kCompress the background thread starts scoring page costs already below
  // the high watermark, so that costs are ready when pressure comes.
  const double mark = capacity ? marks.high_free : marks.low_free;
  if (static_cast<double>(ledger_->FreeBytes()) >= mark * cap) return;
  if (scheduled_.exchange(true)) return;
  background_->Schedule([this, capacity, cap] {
    scheduled_ = false;
    if (capacity) RefreshPageCosts();
    const bool below_low =
        static_cast<double>(ledger_->FreeBytes()) < host_->Watermarks().low_free * cap;
    if (below_low) Relieve(0, "", Thread::kBackground);
  });
}

uint64_t PressureRelief::RelieveForAllocation(uint64_t want_bytes, const std::string& requester) {
  return Relieve(want_bytes, requester, Thread::kRequest);
}

uint64_t PressureRelief::Relieve(uint64_t want_bytes, const std::string& requester,
                                 Thread thread) {
  // Unreferenced cached shared prefix pages go first, under either policy: nobody holds them. An
  // allocation that failed asks for at least its own size even when the byte count says the pool
  // has room: its room may be held by arenas of other owners (a group's cached pages among them).
  const uint64_t target = std::max(Target(want_bytes), want_bytes);
  if (target == 0) return 0;
  const uint64_t released = host_->ReleaseCachedPrefixes(target);
  if (released > 0) {
    log::Info("pressure.release_cached_prefixes", {{"bytes_freed", released},
                                                   {"requester", requester},
                                                   {"why", want_bytes > 0 ? "allocation"
                                                                          : "low_watermark"}});
  }
  return released + RelieveSequences(want_bytes, requester, thread);
}

uint64_t PressureRelief::RelieveSequences(uint64_t want_bytes, const std::string& requester,
                                          Thread thread) {
  if (policy_ == PressurePolicy::kLru) {
    const uint64_t target = Target(want_bytes);
    return target == 0 ? 0 : SpillLeastRecent(target);
  }
  const bool compress = policy_ == PressurePolicy::kCompress;
  if (thread == Thread::kBackground) {
    return compress ? RelieveByCompression(want_bytes, requester)
                    : RelieveByCapacity(want_bytes, requester);
  }
  // Scoring never runs on a request thread: the background thread does it, this one waits.
  auto done = std::make_shared<absl::Notification>();
  auto freed = std::make_shared<std::atomic<uint64_t>>(0);
  background_->Schedule([this, done, freed, want_bytes, requester, compress] {
    freed->store(compress ? RelieveByCompression(want_bytes, requester)
                          : RelieveByCapacity(want_bytes, requester));
    done->Notify();
  });
  if (!done->WaitForNotificationWithTimeout(kReliefWait)) return 0;
  return freed->load();
}

uint64_t PressureRelief::SpillLeastRecent(uint64_t target) {
  if (!spiller_->enabled() || target == 0) return 0;
  // Candidates: unleased device sequences; tenants above their fair share first, then above
  // their guarantee, then the others; least recently used first within each class.
  struct Candidate {
    std::shared_ptr<Sequence> seq;
    int order;
    absl::Time last_access;
  };
  absl::flat_hash_map<std::string, TenantStanding> standings = ledger_->Standings("", 0);
  std::vector<Candidate> candidates;
  for (Host::Candidate& c : host_->UnleasedSequences()) {
    const TenantStanding& s = standings[c.seq->tenant];
    const int order = s.used_bytes > s.share_bytes       ? 0
                      : s.used_bytes > s.guarantee_bytes ? 1
                                                         : 2;
    const absl::Time last = sessions_->LastAccess(c.seq->tenant, c.seq->id);
    candidates.push_back({std::move(c.seq), order, last});
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
    AdoptLock held(&c.seq->mu);
    if (c.seq->dropped || c.seq->spilled) continue;
    const uint64_t before = c.seq->table.page_count() * c.seq->model->geometry().page_bytes;
    if (spiller_->Spill(c.seq.get(), "", /*ignore_leases=*/false).ok()) {
      freed += before;
      ++spills_;
      log::Info("pressure.spill", {{"tenant", c.seq->tenant}, {"sequence", c.seq->id},
                                   {"bytes_freed", before}, {"target_bytes", target}});
    }
  }
  return freed;
}

void PressureRelief::RefreshPageCosts() {
  thread_local PageCostScratch scratch;  // scoring memory, reused per thread
  for (const Host::Candidate& c : host_->UnleasedSequences()) {
    Sequence& seq = *c.seq;
    if (!seq.mu.TryLock()) continue;
    AdoptLock held(&seq.mu);
    if (seq.dropped || seq.spilled || seq.costs.FreshFor(seq.table)) continue;
    absl::StatusOr<PageCosts> costs =
        ComputePageCosts(*seq.model, seq.table, seq.stats, *backend_, *pool_, scratch);
    if (costs.ok()) {
      seq.costs = std::move(*costs);
      ++page_cost_passes_;
    }
  }
}

std::vector<VictimCandidate> PressureRelief::CollectVictims(std::vector<Scored>& seqs) {
  // Every full page of an unleased device sequence that holds neither a sink nor a token of the
  // observation window.
  std::vector<VictimCandidate> candidates;
  for (size_t i = 0; i < seqs.size(); ++i) {
    Sequence& seq = *seqs[i].seq;
    if (!seq.mu.TryLock()) continue;
    AdoptLock held(&seq.mu);
    if (seq.dropped || seq.spilled || !seq.costs.computed ||
        seq.costs.counts.size() != seq.table.heads()) {
      continue;
    }
    const uint32_t tpp = seq.table.tokens_per_page();
    const uint64_t page_bytes = seq.model->geometry().page_bytes;
    const uint64_t recency = RecencyOf(seq);
    for (uint32_t h = 0; h < seq.table.heads(); ++h) {
      const uint64_t count = seq.table.head(h).count;
      seqs[i].counts.push_back(static_cast<uint32_t>(count));
      // Shared prefix pages (the sequence's first seq.shared.size() pages of every head) are
      // referenced and never freed here; the sinks' pages neither.
      const uint64_t first = std::max<uint64_t>(
          (static_cast<uint64_t>(seqs[i].sinks) + tpp - 1) / tpp, seq.shared.size());
      const uint64_t protected_tail = static_cast<uint64_t>(seqs[i].window);
      if (count < protected_tail) continue;
      const uint64_t end = (count - protected_tail) / tpp;  // pages wholly before the window
      for (uint64_t p = first; p < end; ++p) {
        candidates.push_back({seq.costs.Cost(seq.table, h, static_cast<uint32_t>(p)), seq.tenant,
                              page_bytes, recency, i, h, static_cast<uint32_t>(p)});
      }
    }
  }
  return candidates;
}

uint64_t PressureRelief::DropPages(Scored& s, std::vector<size_t>& mine,
                                   const std::vector<VictimCandidate>& candidates,
                                   const std::string& requester) {
  Sequence& seq = *s.seq;
  if (!seq.mu.TryLock()) return 0;
  AdoptLock held(&seq.mu);
  bool unchanged = !seq.dropped && !seq.spilled && seq.costs.computed;
  for (uint32_t h = 0; unchanged && h < seq.table.heads(); ++h) {
    unchanged = h < s.counts.size() && seq.table.head(h).count == s.counts[h];
  }
  // A lease taken since: leave it alone.
  if (!unchanged || sessions_->Leased(seq.tenant, seq.id)) return 0;
  // Highest page index first in each head, so that lower indices stay valid.
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
  pool_->Free(pages);
  ledger_->EvictPages(seq.tenant, pages.size(), page_bytes);
  ShrinkAndRecharge(*ledger_, seq);  // its table is shorter now, without a call of its owner
  evicted_pages_ += pages.size();
  evicted_tokens_ += pages.size() * tpp;
  log::Info("pressure.evict_pages", {{"tenant", seq.tenant}, {"sequence", seq.id},
                                     {"pages", pages.size()}, {"bytes_freed", bytes},
                                     {"requester", requester}});
  return bytes;
}

uint64_t PressureRelief::RecencyOf(const Sequence& seq) const {
  const int64_t ns = absl::ToUnixNanos(sessions_->LastAccess(seq.tenant, seq.id));
  return ns < 0 ? 0 : static_cast<uint64_t>(ns);
}

std::optional<PressureRelief::CostedPass> PressureRelief::StartCostedPass(
    uint64_t want_bytes, const std::string& requester) {
  if (Target(want_bytes) == 0) return std::nullopt;
  RefreshPageCosts();
  CostedPass pass;
  pass.target = Target(want_bytes);
  if (pass.target == 0) return std::nullopt;
  // The asking tenant stands as it will after its allocation: at or above its share it may
  // still displace its own pages, never other tenants' within their shares.
  pass.standings = ledger_->Standings(requester, want_bytes);
  for (Host::Candidate& c : host_->UnleasedSequences()) {
    pass.seqs.push_back({std::move(c.seq), {}, c.sinks, c.window});
  }
  return pass;
}

uint64_t PressureRelief::RelieveByCapacity(uint64_t want_bytes, const std::string& requester) {
  std::optional<CostedPass> pass = StartCostedPass(want_bytes, requester);
  if (!pass.has_value()) return 0;
  const std::vector<VictimCandidate> candidates = CollectVictims(pass->seqs);
  std::vector<size_t> chosen =
      ChooseVictims(candidates, &pass->standings, pass->target, requester);
  absl::flat_hash_map<size_t, std::vector<size_t>> by_seq;
  for (size_t c : chosen) by_seq[candidates[c].sequence].push_back(c);
  uint64_t freed = 0;
  for (auto& [index, mine] : by_seq) {
    freed += DropPages(pass->seqs[index], mine, candidates, requester);
  }
  // Not enough (nothing cheap enough may go, or costs were missing): spill.
  if (freed < pass->target) freed += SpillLeastRecent(pass->target - freed);
  return freed;
}

}  // namespace kvkeep
