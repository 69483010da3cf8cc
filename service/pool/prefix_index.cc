#include "service/pool/prefix_index.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cstdlib>

#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace kvkeep {
namespace {

constexpr char kChainDomain[] = "kvkeep-prefix-v1";

}  // namespace

std::string LayoutIdentity(const v1::ModelLayout& layout) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    layout.SerializeToCodedStream(&coded);
  }
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest);
  return std::string(reinterpret_cast<const char*>(digest), sizeof(digest));
}

std::vector<std::string> PrefixChain(absl::string_view salt, absl::string_view layout_identity,
                                     absl::Span<const uint32_t> tokens,
                                     uint32_t tokens_per_page) {
  std::vector<std::string> keys;
  if (tokens_per_page == 0) return keys;
  const size_t pages = tokens.size() / tokens_per_page;
  keys.reserve(pages);
  std::string prev(SHA256_DIGEST_LENGTH, '\0');
  std::vector<unsigned char> le(4 * size_t{tokens_per_page});
  for (size_t i = 0; i < pages; ++i) {
    for (uint32_t j = 0; j < tokens_per_page; ++j) {
      const uint32_t t = tokens[i * tokens_per_page + j];
      le[4 * j] = static_cast<unsigned char>(t);
      le[4 * j + 1] = static_cast<unsigned char>(t >> 8);
      le[4 * j + 2] = static_cast<unsigned char>(t >> 16);
      le[4 * j + 3] = static_cast<unsigned char>(t >> 24);
    }
    // Lengths of the variable parts go in too, so no two inputs concatenate alike.
    const unsigned char salt_len[4] = {
        static_cast<unsigned char>(salt.size()), static_cast<unsigned char>(salt.size() >> 8),
        static_cast<unsigned char>(salt.size() >> 16), static_cast<unsigned char>(salt.size() >> 24)};
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    if (ctx == nullptr || EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) != 1 ||
        EVP_DigestUpdate(ctx, kChainDomain, sizeof(kChainDomain) - 1) != 1 ||
        EVP_DigestUpdate(ctx, salt_len, sizeof(salt_len)) != 1 ||
        EVP_DigestUpdate(ctx, salt.data(), salt.size()) != 1 ||
        EVP_DigestUpdate(ctx, prev.data(), prev.size()) != 1 ||
        EVP_DigestUpdate(ctx, layout_identity.data(), layout_identity.size()) != 1 ||
        EVP_DigestUpdate(ctx, le.data(), le.size()) != 1 ||
        EVP_DigestFinal_ex(ctx, digest, &digest_len) != 1) {
      std::abort();  // OpenSSL cannot hash: nothing safe to do
    }
    EVP_MD_CTX_free(ctx);
    prev.assign(reinterpret_cast<const char*>(digest), digest_len);
    keys.push_back(prev);
  }
  return keys;
}

std::vector<uint64_t> FairShares(uint64_t bytes, size_t n) {
  std::vector<uint64_t> shares(n, n == 0 ? 0 : bytes / n);
  if (n > 0) shares[0] += bytes % n;
  return shares;
}

std::shared_ptr<PrefixEntry> PrefixIndex::Find(const std::string& group,
                                               const std::string& key) const {
  auto it = entries_.find(MapKey(group, key));
  return it == entries_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<PrefixEntry>> PrefixIndex::Match(
    const std::string& group, absl::Span<const std::string> keys) const {
  std::vector<std::shared_ptr<PrefixEntry>> out;
  if (group.empty()) return out;
  for (const std::string& key : keys) {
    std::shared_ptr<PrefixEntry> e = Find(group, key);
    if (e == nullptr) break;
    out.push_back(std::move(e));
  }
  return out;
}

std::shared_ptr<PrefixEntry> PrefixIndex::Insert(std::shared_ptr<PrefixEntry> entry) {
  auto [it, inserted] = entries_.try_emplace(MapKey(entry->group, entry->key), entry);
  if (!inserted) return it->second;
  entry->refs = 0;
  entry->tenants.clear();
  ++stats_.cached_entries;
  stats_.cached_pages += entry->pages.size();
  stats_.cached_bytes += entry->bytes;
  return entry;
}

std::map<std::string, uint64_t> PrefixIndex::SharesOf(const PrefixEntry& entry) {
  std::map<std::string, uint64_t> out;
  std::vector<uint64_t> shares = FairShares(entry.bytes, entry.tenants.size());
  size_t i = 0;
  for (const auto& [tenant, count] : entry.tenants) out[tenant] = shares[i++];
  return out;
}

void PrefixIndex::Recharge(const std::map<std::string, uint64_t>& before, const PrefixEntry& entry,
                           Changes* changes) {
  std::map<std::string, uint64_t> after = SharesOf(entry);
  for (const auto& [tenant, share] : before) {
    charges_[tenant] -= share;
    changes->charge[tenant] -= static_cast<int64_t>(share);
  }
  for (const auto& [tenant, share] : after) {
    charges_[tenant] += share;
    changes->charge[tenant] += static_cast<int64_t>(share);
  }
  for (const auto& [tenant, share] : before) {
    auto it = charges_.find(tenant);
    if (it != charges_.end() && it->second == 0 && !after.contains(tenant)) charges_.erase(it);
  }
}

void PrefixIndex::Ref(PrefixEntry& entry, const std::string& tenant, Changes* changes) {
  const std::map<std::string, uint64_t> before = SharesOf(entry);
  if (entry.refs == 0) {
    --stats_.cached_entries;
    stats_.cached_pages -= entry.pages.size();
    stats_.cached_bytes -= entry.bytes;
    ++stats_.referenced_entries;
    stats_.referenced_pages += entry.pages.size();
    stats_.referenced_bytes += entry.bytes;
    changes->cached_bytes -= static_cast<int64_t>(entry.bytes);
  }
  ++entry.refs;
  ++refs_[tenant];
  if (entry.tenants[tenant]++ == 0) Recharge(before, entry, changes);
}

void PrefixIndex::Unref(PrefixEntry& entry, const std::string& tenant, absl::Time now,
                        Changes* changes) {
  auto it = entry.tenants.find(tenant);
  if (it == entry.tenants.end()) return;  // not held by this tenant: nothing to undo
  const std::map<std::string, uint64_t> before = SharesOf(entry);
  --entry.refs;
  if (--refs_[tenant] == 0) refs_.erase(tenant);
  if (--it->second == 0) {
    entry.tenants.erase(it);
    Recharge(before, entry, changes);
  }
  if (entry.refs == 0) {
    entry.last_release = now;
    --stats_.referenced_entries;
    stats_.referenced_pages -= entry.pages.size();
    stats_.referenced_bytes -= entry.bytes;
    ++stats_.cached_entries;
    stats_.cached_pages += entry.pages.size();
    stats_.cached_bytes += entry.bytes;
    changes->cached_bytes += static_cast<int64_t>(entry.bytes);
  }
}

uint64_t PrefixIndex::ChargeIfAttached(absl::Span<const std::shared_ptr<PrefixEntry>> entries,
                                       const std::string& tenant) const {
  uint64_t total = 0;
  for (const auto& e : entries) {
    if (e->tenants.contains(tenant)) continue;
    // Its share among the tenants plus itself.
    size_t rank = 0;
    for (const auto& [name, count] : e->tenants) {
      if (name < tenant) ++rank;
    }
    std::vector<uint64_t> shares = FairShares(e->bytes, e->tenants.size() + 1);
    total += shares[rank];
  }
  return total;
}

uint64_t PrefixIndex::EvictUnreferenced(uint64_t want_bytes, std::vector<uint64_t>* pages) {
  if (want_bytes == 0 || stats_.cached_entries == 0) return 0;
  std::vector<std::pair<std::string, PrefixEntry*>> cached;
  for (const auto& [k, e] : entries_) {
    if (e->refs == 0) cached.emplace_back(k, e.get());
  }
  std::sort(cached.begin(), cached.end(), [](const auto& a, const auto& b) {
    if (a.second->last_release != b.second->last_release) {
      return a.second->last_release < b.second->last_release;
    }
    return a.second->depth > b.second->depth;  // leaves of a chain before their parents
  });
  uint64_t freed = 0;
  for (const auto& [k, e] : cached) {
    if (freed >= want_bytes) break;
    freed += e->bytes;
    pages->insert(pages->end(), e->pages.begin(), e->pages.end());
    --stats_.cached_entries;
    stats_.cached_pages -= e->pages.size();
    stats_.cached_bytes -= e->bytes;
    entries_.erase(k);
  }
  return freed;
}

uint64_t PrefixIndex::EvictGroup(const std::string& group, std::vector<uint64_t>* pages) {
  uint64_t freed = 0;
  for (auto it = entries_.begin(); it != entries_.end();) {
    const PrefixEntry& e = *it->second;
    if (e.group != group || e.refs != 0) {
      ++it;
      continue;
    }
    freed += e.bytes;
    pages->insert(pages->end(), e.pages.begin(), e.pages.end());
    --stats_.cached_entries;
    stats_.cached_pages -= e.pages.size();
    stats_.cached_bytes -= e.bytes;
    entries_.erase(it++);
  }
  return freed;
}

uint64_t PrefixIndex::ChargeOf(const std::string& tenant) const {
  auto it = charges_.find(tenant);
  return it == charges_.end() ? 0 : it->second;
}

uint64_t PrefixIndex::RefsOf(const std::string& tenant) const {
  auto it = refs_.find(tenant);
  return it == refs_.end() ? 0 : it->second;
}

PrefixIndex::Stats PrefixIndex::stats() const { return stats_; }

}  // namespace kvkeep
