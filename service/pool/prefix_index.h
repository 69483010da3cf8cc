// Shared prefixes of sharing groups: the hash chain that keys a prompt's full pages, the index of
// a daemon's shared prefix pages, their reference counts, and the fair charging of their bytes.
//
// A prefix page i (one page per (layer, KV head), tokens [i·tpp, (i+1)·tpp) of a prompt) is keyed
//   k_i = SHA-256("kvkeep-prefix-v1" ‖ salt ‖ k_{i-1} ‖ layout identity ‖ token ids of page i)
// with k_{-1} = 32 zero bytes, salt = the sharing group's secret, layout identity = SHA-256 of the
// model layout (name included). Only full pages are keyed. Equal keys mean: same group, same model
// layout, same tokens from position 0.
//
//   std::vector<std::string> keys = PrefixChain(salt, LayoutIdentity(layout), tokens, tpp);
//   PrefixIndex index;
//   auto matched = index.Match("group-a", keys);          // longest chain present
//   PrefixIndex::Changes changes;
//   for (auto& e : matched) index.Ref(*e, "team-a", &changes);  // charges move to team-a
//
// Charging: the bytes of an entry are split equally among the distinct tenants referencing it;
// the remainder of the division goes to the lowest-named of them, so the shares of one entry add
// up to its bytes exactly. Entries nobody references are "cached": charged to nobody, kept until
// EvictUnreferenced frees them (least recently released first).
//
// Not thread-safe: the CacheEngine's mu_ protects it.
#ifndef KVKEEP_SERVICE_POOL_PREFIX_INDEX_H_
#define KVKEEP_SERVICE_POOL_PREFIX_INDEX_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvkeep/v1/common.pb.h"

namespace kvkeep {

// SHA-256 (32 raw bytes) of the deterministic serialization of `layout`.
std::string LayoutIdentity(const v1::ModelLayout& layout);

// The keys (32 raw bytes each) of the floor(tokens.size() / tokens_per_page) full pages of
// `tokens`; a partial last page has none. `tokens_per_page` must be > 0.
std::vector<std::string> PrefixChain(absl::string_view salt, absl::string_view layout_identity,
                                     absl::Span<const uint32_t> tokens, uint32_t tokens_per_page);

// `bytes` split among `n` sharers: element 0 (the lowest-named) gets the remainder. Sums to
// `bytes`; empty when n == 0.
std::vector<uint64_t> FairShares(uint64_t bytes, size_t n);

// One shared prefix page: one pool page per (layer, KV head) in the group's arena.
struct PrefixEntry {
  std::string group;
  std::string key;              // 32 raw bytes
  uint32_t depth = 0;           // page index in the chain
  std::vector<uint64_t> pages;  // packed PageRefs, layer-major heads
  uint64_t bytes = 0;           // pages.size() × page_bytes
  // Sequences holding this entry, per tenant (ordered by name: the charging order).
  std::map<std::string, uint32_t> tenants;
  uint32_t refs = 0;  // Σ tenants' counts
  absl::Time last_release = absl::InfinitePast();
};

class PrefixIndex {
 public:
  // What a Ref/Unref changed in the charges: per tenant, the change of its shared charge, and the
  // change of the bytes charged to nobody (cached entries).
  struct Changes {
    std::map<std::string, int64_t> charge;
    int64_t cached_bytes = 0;
  };

  // The entry with `key` in `group`, or null.
  std::shared_ptr<PrefixEntry> Find(const std::string& group, const std::string& key) const;
  // The entries of the longest run keys[0..m) present in `group` (stops at the first missing).
  std::vector<std::shared_ptr<PrefixEntry>> Match(const std::string& group,
                                                  absl::Span<const std::string> keys) const;
  // Adds an unreferenced entry; returns the entry already under that key instead when there is
  // one (the caller then frees its own pages). A new entry counts as cached until referenced.
  std::shared_ptr<PrefixEntry> Insert(std::shared_ptr<PrefixEntry> entry);

  // One more sequence of `tenant` holds `entry` / one fewer does (`now`: its release time).
  void Ref(PrefixEntry& entry, const std::string& tenant, Changes* changes);
  void Unref(PrefixEntry& entry, const std::string& tenant, absl::Time now, Changes* changes);

  // The charge `tenant` would gain by holding each of `entries` once more (0 for entries it holds).
  uint64_t ChargeIfAttached(absl::Span<const std::shared_ptr<PrefixEntry>> entries,
                            const std::string& tenant) const;

  // Removes unreferenced entries, least recently released first (deeper ones first on a tie),
  // until `want_bytes` are gone or none is left; appends their pages. Returns the bytes removed.
  uint64_t EvictUnreferenced(uint64_t want_bytes, std::vector<uint64_t>* pages);
  // Removes every unreferenced entry of `group` (a group whose last member left); appends their
  // pages. Returns the bytes removed. Referenced entries stay.
  uint64_t EvictGroup(const std::string& group, std::vector<uint64_t>* pages);

  uint64_t ChargeOf(const std::string& tenant) const;
  uint64_t RefsOf(const std::string& tenant) const;  // entry references held by its sequences

  struct Stats {
    uint64_t referenced_entries = 0, cached_entries = 0;
    uint64_t referenced_pages = 0, cached_pages = 0;
    uint64_t referenced_bytes = 0, cached_bytes = 0;
  };
  Stats stats() const;

 private:
  static std::string MapKey(const std::string& group, const std::string& key) {
    return group + '\0' + key;
  }
  // The shares of `entry` among its current tenants, by tenant.
  static std::map<std::string, uint64_t> SharesOf(const PrefixEntry& entry);
  void Recharge(const std::map<std::string, uint64_t>& before, const PrefixEntry& entry,
                Changes* changes);

  absl::flat_hash_map<std::string, std::shared_ptr<PrefixEntry>> entries_;
  absl::flat_hash_map<std::string, uint64_t> charges_;
  absl::flat_hash_map<std::string, uint64_t> refs_;
  Stats stats_;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_POOL_PREFIX_INDEX_H_
