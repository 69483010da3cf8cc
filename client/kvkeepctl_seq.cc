#include "client/kvkeepctl_seq.h"

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/kvkeepctl_format.h"
#include "client/kvkeepctl_policy.h"

namespace kvkeep::ctl {
namespace {

std::string TierName(v1::Tier tier) {
  return tier == v1::TIER_SPILLED ? "spilled" : tier == v1::TIER_DEVICE ? "device" : "?";
}

}  // namespace

int RunSeq(Ctx& c, const std::string& sub) {
  if (sub == "list") {
    auto r = c.admin.ListSequences(c.has("tenant") ? c.flag("tenant") : "");
    return Output(c, r, [](const v1::ListSequencesReply& r) {
      std::vector<std::vector<std::string>> rows = {
          {"TENANT", "SEQUENCE", "MODEL", "TIER", "TOKENS", "PAGES", "BYTES", "LEASES", "RETAIN"}};
      for (const auto& q : r.sequences()) {
        rows.push_back({q.tenant(), q.sequence_id(), q.model(), TierName(q.tier()),
                        absl::StrCat(q.tokens()), absl::StrCat(q.pages()), HumanBytes(q.bytes()),
                        absl::StrCat(q.leases()), q.retain() ? "yes" : "no"});
      }
      PrintTable(rows);
    });
  }
  v1::SequenceRef ref;
  ref.set_tenant(c.pos(2));
  ref.set_sequence_id(c.pos(3));
  ref.set_force(c.has("force"));
  const std::string& id = ref.sequence_id();
  if (sub == "show") {
    return Output(c, c.admin.GetSequence(ref), [](const v1::SequenceDetail& d) {
      const v1::SequenceInfo& i = d.info();
      std::printf("sequence %s of tenant %s, model %s (%u layers x %u KV heads, %u tokens/page, "
                  "%s/page)\n",
                  i.sequence_id().c_str(), i.tenant().c_str(), i.model().c_str(), d.layers(),
                  d.kv_heads(), d.tokens_per_page(), HumanBytes(d.page_bytes()).c_str());
      std::printf("tier: %s  tokens: %u  pages: %llu  bytes: %s  next position: %llu\n",
                  TierName(i.tier()).c_str(), i.tokens(),
                  static_cast<unsigned long long>(i.pages()), HumanBytes(i.bytes()).c_str(),
                  static_cast<unsigned long long>(d.next_position()));
      std::printf("owner: %s  leases: %u%s%s  retain: %s\n",
                  d.owner_worker().empty() ? "none (session ended)" : d.owner_worker().c_str(),
                  i.leases(), d.lease_workers().empty() ? "" : " by ",
                  absl::StrJoin(d.lease_workers(), ", ").c_str(), i.retain() ? "yes" : "no");
      std::printf("arenas: %s  statistics: %u of %u layers (%s)\n",
                  d.arena_ids().empty() ? "-" : absl::StrJoin(d.arena_ids(), ", ").c_str(),
                  d.stats_layers(), d.layers(), HumanBytes(d.stats_bytes()).c_str());
      std::printf("tenant policy:\n");
      PrintPolicy(d.policy());
      if (d.heads().empty()) return;
      std::printf("\n");
      std::vector<std::vector<std::string>> rows = {
          {"LAYER", "KV-HEAD", "TOKENS", "CAPACITY", "PAGES"}};
      for (const auto& h : d.heads()) {
        rows.push_back({absl::StrCat(h.layer()), absl::StrCat(h.kv_head()),
                        absl::StrCat(h.token_count()), absl::StrCat(h.capacity()),
                        absl::StrCat(h.pages())});
      }
      PrintTable(rows);
    });
  }
  if (sub == "compress") {
    v1::CompressSequenceRequest request;
    request.set_tenant(ref.tenant());
    request.set_sequence_id(id);
    std::string error;
    if (!PolicyFromFlags(c.args, request.mutable_policy(), &error)) return Fail(error);
    return Output(c, c.admin.CompressSequence(request), [&](const v1::CompressReply& r) {
      const v1::EvictionSummary& s = r.summary();
      std::printf("compressed %s with %s/%s: %llu -> %llu tokens (over all heads), %u pages (%s) "
                  "freed in %.3f s\n",
                  id.c_str(), s.scorer().c_str(), s.allocation().c_str(),
                  static_cast<unsigned long long>(s.tokens_before()),
                  static_cast<unsigned long long>(s.tokens_after()), s.pages_freed(),
                  HumanBytes(s.bytes_freed()).c_str(), s.seconds());
    });
  }
  if (sub == "spill") {
    return Output(c, c.admin.SpillSequence(ref), [&](const v1::SpillReply& r) {
      std::printf("spilled %s: %s written durably, %u device pages freed\n", id.c_str(),
                  HumanBytes(r.bytes()).c_str(), r.pages_freed());
    });
  }
  if (sub == "restore") {
    return Output(c, c.admin.RestoreSequence(ref), [&](const v1::SequenceInfo& r) {
      std::printf("restored %s: %llu pages, %u tokens\n", id.c_str(),
                  static_cast<unsigned long long>(r.pages()), r.tokens());
    });
  }
  return Output(c, c.admin.DropSequence(ref), [&](const v1::DropReply& r) {
    std::printf("dropped %s: %u pages, %s freed\n", id.c_str(), r.pages_freed(),
                HumanBytes(r.bytes_freed()).c_str());
  });
}

}  // namespace kvkeep::ctl
