// PressureRelief under --pressure_policy=compress: the unleased sequences are described by their
// page costs (pages outside sinks, window and shared prefixes), PlanPressureCompression picks how
// many pages each gives (smallest marginal loss per freed page first; shares and guarantees as
// for kCapacity), each planned sequence is compressed by its tenant's policy at the keep ratio the
// plan leaves it (Host::CompressForPressure), and what is still short is spilled.
#include <algorithm>

#include "service/engine/adopt_lock.h"
#include "service/engine/metadata_charge.h"
#include "service/engine/pressure_relief.h"
#include "service/observability/log.h"

namespace kvkeep {

bool PressureRelief::DescribeForCompression(Scored& s, CompressCandidate* out) {
  Sequence& seq = *s.seq;
  if (!seq.mu.TryLock()) return false;
  AdoptLock held(&seq.mu);
  // Compressing a sequence that references shared prefix pages would first copy them (more room,
  // not less): shared prefix pages stay untouched, such a sequence is left to the spill step.
  if (seq.dropped || seq.spilled || !seq.shared.empty() || !seq.costs.computed ||
      seq.costs.counts.size() != seq.table.heads() || sessions_->Leased(seq.tenant, seq.id)) {
    return false;
  }
  const uint32_t tpp = seq.table.tokens_per_page();
  const uint64_t first = (static_cast<uint64_t>(s.sinks) + tpp - 1) / tpp;
  std::vector<std::vector<double>> costs(seq.table.heads());
  std::vector<std::vector<bool>> droppable(seq.table.heads());
  s.counts.clear();
  for (uint32_t h = 0; h < seq.table.heads(); ++h) {
    const uint64_t count = seq.table.head(h).count;
    s.counts.push_back(static_cast<uint32_t>(count));
    const uint64_t pages = (count + tpp - 1) / tpp;
    const uint64_t window = static_cast<uint64_t>(s.window);
    const uint64_t end = count < window ? 0 : (count - window) / tpp;  // wholly before window
    for (uint64_t p = 0; p < pages; ++p) {
      costs[h].push_back(seq.costs.Cost(seq.table, h, static_cast<uint32_t>(p)));
      droppable[h].push_back(p >= first && p < end);
    }
  }
  out->tenant = seq.tenant;
  out->page_bytes = seq.model->geometry().page_bytes;
  out->recency = RecencyOf(seq);
  out->page_losses = NormalisedPageLosses(costs, droppable);
  return !out->page_losses.empty();
}

uint64_t PressureRelief::CompressPlanned(Scored& s, uint32_t pages,
                                         const std::string& requester) {
  Sequence& seq = *s.seq;
  if (!seq.mu.TryLock()) return 0;
  AdoptLock held(&seq.mu);
  bool unchanged = !seq.dropped && !seq.spilled && seq.shared.empty() &&
                   s.counts.size() == seq.table.heads();
  uint64_t tokens = 0;
  for (uint32_t h = 0; unchanged && h < seq.table.heads(); ++h) {
    unchanged = seq.table.head(h).count == s.counts[h];
    tokens += s.counts[h];
  }
  // A lease taken since, or tokens committed since: leave it alone.
  if (!unchanged || tokens == 0 || sessions_->Leased(seq.tenant, seq.id)) return 0;
  const uint64_t drop = std::min<uint64_t>(uint64_t{pages} * seq.table.tokens_per_page(), tokens);
  const double keep_ratio =
      std::max(static_cast<double>(tokens - drop), 1.0) / static_cast<double>(tokens);
  absl::StatusOr<Host::Compressed> done = host_->CompressForPressure(&seq, keep_ratio);
  if (!done.ok()) {
    log::Info("pressure.compress_skipped", {{"tenant", seq.tenant}, {"sequence", seq.id},
                                            {"error", done.status().ToString()}});
    return 0;
  }
  ShrinkAndRecharge(*ledger_, seq);  // its table is shorter now, without a call of its owner
  const uint64_t bytes = done->pages * seq.model->geometry().page_bytes;
  ++compressions_;
  compressed_pages_ += done->pages;
  compressed_tokens_ += done->tokens;
  log::Info("pressure.compress", {{"tenant", seq.tenant}, {"sequence", seq.id},
                                  {"planned_pages", pages}, {"pages", done->pages},
                                  {"tokens", done->tokens}, {"keep_ratio", keep_ratio},
                                  {"bytes_freed", bytes}, {"requester", requester}});
  return bytes;
}

uint64_t PressureRelief::RelieveByCompression(uint64_t want_bytes, const std::string& requester) {
  std::optional<CostedPass> pass = StartCostedPass(want_bytes, requester);
  if (!pass.has_value()) return 0;
  std::vector<Scored> seqs;
  std::vector<CompressCandidate> candidates;
  for (Scored& s : pass->seqs) {
    CompressCandidate candidate;
    if (!DescribeForCompression(s, &candidate)) continue;
    seqs.push_back(std::move(s));
    candidates.push_back(std::move(candidate));
  }
  const CompressPlan plan =
      PlanPressureCompression(candidates, &pass->standings, pass->target, requester);
  uint64_t freed = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (plan.pages[i] > 0) freed += CompressPlanned(seqs[i], plan.pages[i], requester);
  }
  // Not enough (shares forbid more, costs or statistics were missing, shared prefixes): spill.
  if (freed < pass->target) freed += SpillLeastRecent(pass->target - freed);
  return freed;
}

}  // namespace kvkeep
