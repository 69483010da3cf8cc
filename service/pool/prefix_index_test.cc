#include "service/pool/prefix_index.h"

#include <numeric>
#include <random>
#include <set>

#include "gtest/gtest.h"

namespace kvkeep {
namespace {

std::vector<uint32_t> Tokens(size_t n, uint32_t seed = 1) {
  std::vector<uint32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<uint32_t>(seed * 7919 + i * 31);
  return t;
}

v1::ModelLayout Layout(const std::string& name, uint32_t head_dim = 8) {
  v1::ModelLayout l;
  l.set_name(name);
  l.set_layers(2);
  l.set_q_heads(4);
  l.set_kv_heads(2);
  l.set_head_dim(head_dim);
  l.set_tokens_per_page(4);
  return l;
}

std::shared_ptr<PrefixEntry> Entry(const std::string& group, const std::string& key,
                                   uint32_t depth, uint64_t bytes, uint64_t first_page) {
  auto e = std::make_shared<PrefixEntry>();
  e->group = group;
  e->key = key;
  e->depth = depth;
  e->pages = {first_page, first_page + 1};
  e->bytes = bytes;
  return e;
}

TEST(PrefixChain, KeysOnlyFullPagesAndChainsThem) {
  const std::string id = LayoutIdentity(Layout("m"));
  std::vector<uint32_t> t = Tokens(11);
  std::vector<std::string> keys = PrefixChain("salt-a", id, t, 4);
  ASSERT_EQ(keys.size(), 2u);  // 11 tokens: two full pages, the partial third is not keyed
  EXPECT_EQ(keys[0].size(), 32u);
  EXPECT_NE(keys[0], keys[1]);
  // The same tokens give the same keys; a longer prompt extends the chain with the same start.
  EXPECT_EQ(PrefixChain("salt-a", id, t, 4), keys);
  std::vector<uint32_t> longer = Tokens(16);
  std::vector<std::string> keys16 = PrefixChain("salt-a", id, longer, 4);
  ASSERT_EQ(keys16.size(), 4u);
  EXPECT_EQ(keys16[0], keys[0]);
  EXPECT_EQ(keys16[1], keys[1]);
  EXPECT_TRUE(PrefixChain("salt-a", id, Tokens(3), 4).empty());
}

TEST(PrefixChain, SaltDiffersPerGroupSoKeysDiffer) {
  const std::string id = LayoutIdentity(Layout("m"));
  std::vector<uint32_t> t = Tokens(8);
  std::vector<std::string> a = PrefixChain("salt-of-group-a", id, t, 4);
  std::vector<std::string> b = PrefixChain("salt-of-group-b", id, t, 4);
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_NE(a[0], b[0]);
  EXPECT_NE(a[1], b[1]);
}

TEST(PrefixChain, LayoutIsPartOfTheKey) {
  std::vector<uint32_t> t = Tokens(4);
  EXPECT_NE(PrefixChain("s", LayoutIdentity(Layout("m")), t, 4),
            PrefixChain("s", LayoutIdentity(Layout("other-name")), t, 4));
  EXPECT_NE(PrefixChain("s", LayoutIdentity(Layout("m", 8)), t, 4),
            PrefixChain("s", LayoutIdentity(Layout("m", 16)), t, 4));
  EXPECT_EQ(LayoutIdentity(Layout("m")), LayoutIdentity(Layout("m")));
}

TEST(PrefixChain, AChangedTokenChangesItsPageAndEveryLaterKey) {
  const std::string id = LayoutIdentity(Layout("m"));
  std::vector<uint32_t> t = Tokens(16);
  std::vector<uint32_t> u = t;
  u[5] += 1;  // page 1
  std::vector<std::string> a = PrefixChain("s", id, t, 4);
  std::vector<std::string> b = PrefixChain("s", id, u, 4);
  EXPECT_EQ(a[0], b[0]);
  EXPECT_NE(a[1], b[1]);
  EXPECT_NE(a[2], b[2]);  // page 2's tokens are equal, but its chain is not
  EXPECT_NE(a[3], b[3]);
}

TEST(PrefixIndex, MatchStopsAtTheFirstMissingPageAndIsScopedToTheGroup) {
  const std::string id = LayoutIdentity(Layout("m"));
  std::vector<std::string> keys = PrefixChain("s", id, Tokens(16), 4);
  PrefixIndex index;
  index.Insert(Entry("g", keys[0], 0, 100, 10));
  index.Insert(Entry("g", keys[1], 1, 100, 20));
  index.Insert(Entry("g", keys[3], 3, 100, 40));  // page 2 missing: the chain breaks there
  EXPECT_EQ(index.Match("g", keys).size(), 2u);
  EXPECT_TRUE(index.Match("other", keys).empty());
  EXPECT_TRUE(index.Match("", keys).empty());
  // Inserting a key twice keeps the first entry.
  auto dup = Entry("g", keys[0], 0, 100, 90);
  EXPECT_NE(index.Insert(dup).get(), dup.get());
  EXPECT_EQ(index.stats().cached_entries, 3u);
}

TEST(FairShares, AddUpExactlyWithTheRemainderToTheFirst) {
  EXPECT_EQ(FairShares(10, 3), (std::vector<uint64_t>{4, 3, 3}));
  EXPECT_EQ(FairShares(9, 3), (std::vector<uint64_t>{3, 3, 3}));
  EXPECT_EQ(FairShares(7, 1), (std::vector<uint64_t>{7}));
  EXPECT_TRUE(FairShares(7, 0).empty());
  std::mt19937_64 rng(5);
  for (int i = 0; i < 1000; ++i) {
    const uint64_t bytes = rng() % 1000000;
    const size_t n = 1 + rng() % 17;
    std::vector<uint64_t> s = FairShares(bytes, n);
    EXPECT_EQ(std::accumulate(s.begin(), s.end(), uint64_t{0}), bytes);
  }
}

TEST(PrefixIndex, ChargesFollowTheDistinctTenantsAndAddUp) {
  PrefixIndex index;
  auto e = index.Insert(Entry("g", "k0", 0, 1000, 10));
  auto f = index.Insert(Entry("g", "k1", 1, 1001, 20));
  EXPECT_EQ(index.stats().cached_bytes, 2001u);
  PrefixIndex::Changes c;
  EXPECT_EQ(index.ChargeIfAttached({e, f}, "b"), 2001u);
  index.Ref(*e, "b", &c);
  index.Ref(*f, "b", &c);
  EXPECT_EQ(c.charge["b"], 2001);
  EXPECT_EQ(c.cached_bytes, -2001);
  EXPECT_EQ(index.ChargeOf("b"), 2001u);
  // "a" joins: 500/500 and 501 ("a", lowest name, takes the remainder) / 500.
  EXPECT_EQ(index.ChargeIfAttached({e, f}, "a"), 500u + 501u);
  PrefixIndex::Changes c2;
  index.Ref(*e, "a", &c2);
  index.Ref(*f, "a", &c2);
  EXPECT_EQ(index.ChargeOf("a"), 1001u);
  EXPECT_EQ(index.ChargeOf("b"), 1000u);
  EXPECT_EQ(c2.charge["a"], 1001);
  EXPECT_EQ(c2.charge["b"], -1001);
  EXPECT_EQ(c2.cached_bytes, 0);
  // A second sequence of "a" changes no charge; a third tenant "c" gets 333 / 333.
  PrefixIndex::Changes c3;
  index.Ref(*e, "a", &c3);
  EXPECT_EQ(index.ChargeOf("a"), 1001u);
  EXPECT_EQ(index.ChargeIfAttached({e, f}, "a"), 0u);
  index.Ref(*e, "c", &c3);
  index.Ref(*f, "c", &c3);
  EXPECT_EQ(index.ChargeOf("a") + index.ChargeOf("b") + index.ChargeOf("c"), 2001u);
  EXPECT_EQ(index.stats().referenced_bytes, 2001u);
  EXPECT_EQ(index.RefsOf("a"), 3u);
  // Release everything: charges go to zero, the entries become cached with a release time.
  PrefixIndex::Changes c4;
  const absl::Time now = absl::Now();
  index.Unref(*e, "a", now, &c4);
  index.Unref(*e, "a", now, &c4);
  index.Unref(*f, "a", now, &c4);
  index.Unref(*e, "b", now, &c4);
  index.Unref(*f, "b", now, &c4);
  EXPECT_EQ(index.ChargeOf("c"), 2001u);
  index.Unref(*e, "c", now, &c4);
  index.Unref(*f, "c", now, &c4);
  for (const char* t : {"a", "b", "c"}) {
    EXPECT_EQ(index.ChargeOf(t), 0u);
    EXPECT_EQ(index.RefsOf(t), 0u);
  }
  EXPECT_EQ(e->refs, 0u);
  EXPECT_EQ(f->refs, 0u);
  EXPECT_EQ(index.stats().referenced_bytes, 0u);
  EXPECT_EQ(index.stats().cached_bytes, 2001u);
  EXPECT_EQ(c4.cached_bytes, 2001);
  // An Unref by a tenant that holds nothing is ignored.
  PrefixIndex::Changes c5;
  index.Unref(*e, "nobody", now, &c5);
  EXPECT_EQ(e->refs, 0u);
  EXPECT_TRUE(c5.charge.empty());
}

TEST(PrefixIndex, RandomRefsAndUnrefsKeepChargesSummingToReferencedBytes) {
  PrefixIndex index;
  std::vector<std::shared_ptr<PrefixEntry>> entries;
  for (int i = 0; i < 8; ++i) {
    entries.push_back(index.Insert(Entry("g", "k" + std::to_string(i), i, 997 + 13 * i, 100 * i)));
  }
  const std::vector<std::string> tenants = {"t0", "t1", "t2", "t3", "t4"};
  std::vector<std::pair<int, int>> held;  // (entry, tenant)
  std::map<std::string, int64_t> applied;  // the charges as a caller following Changes sees them
  std::mt19937 rng(11);
  for (int step = 0; step < 2000; ++step) {
    PrefixIndex::Changes c;
    if (held.empty() || rng() % 2 == 0) {
      int e = rng() % entries.size(), t = rng() % tenants.size();
      index.Ref(*entries[e], tenants[t], &c);
      held.emplace_back(e, t);
    } else {
      size_t i = rng() % held.size();
      auto [e, t] = held[i];
      held.erase(held.begin() + i);
      index.Unref(*entries[e], tenants[t], absl::Now(), &c);
    }
    for (const auto& [t, d] : c.charge) applied[t] += d;
    uint64_t sum = 0;
    for (const auto& t : tenants) {
      sum += index.ChargeOf(t);
      ASSERT_EQ(static_cast<int64_t>(index.ChargeOf(t)), applied[t]);
    }
    ASSERT_EQ(sum, index.stats().referenced_bytes);
    uint64_t referenced = 0;
    for (const auto& e : entries) referenced += e->refs > 0 ? e->bytes : 0;
    ASSERT_EQ(referenced, index.stats().referenced_bytes);
  }
}

TEST(PrefixIndex, EvictionTakesOnlyUnreferencedEntriesOldestAndDeepestFirst) {
  PrefixIndex index;
  auto a0 = index.Insert(Entry("g", "a0", 0, 100, 10));
  auto a1 = index.Insert(Entry("g", "a1", 1, 100, 20));
  auto b0 = index.Insert(Entry("g", "b0", 0, 100, 30));
  PrefixIndex::Changes c;
  const absl::Time t0 = absl::Now();
  for (auto* e : {a0.get(), a1.get(), b0.get()}) index.Ref(*e, "t", &c);
  index.Unref(*a0, "t", t0, &c);
  index.Unref(*a1, "t", t0, &c);  // same release time as a0: the deeper one goes first
  std::vector<uint64_t> pages;
  EXPECT_EQ(index.EvictUnreferenced(50, &pages), 100u);
  EXPECT_EQ(pages, (std::vector<uint64_t>{20, 21}));
  EXPECT_EQ(index.Find("g", "a1"), nullptr);
  EXPECT_NE(index.Find("g", "a0"), nullptr);
  // b0 is referenced: never evicted, however much is asked for.
  pages.clear();
  EXPECT_EQ(index.EvictUnreferenced(1 << 20, &pages), 100u);
  EXPECT_EQ(pages, (std::vector<uint64_t>{10, 11}));
  EXPECT_NE(index.Find("g", "b0"), nullptr);
  EXPECT_EQ(index.stats().cached_entries, 0u);
  EXPECT_EQ(index.stats().referenced_entries, 1u);
}

TEST(PrefixIndex, EvictGroupTakesThatGroupsUnreferencedEntriesOnly) {
  PrefixIndex index;
  auto g0 = index.Insert(Entry("g", "a0", 0, 100, 10));
  auto g1 = index.Insert(Entry("g", "a1", 1, 100, 20));
  auto h0 = index.Insert(Entry("h", "a0", 0, 100, 30));
  PrefixIndex::Changes c;
  index.Ref(*g1, "t", &c);  // still held: stays
  std::vector<uint64_t> pages;
  EXPECT_EQ(index.EvictGroup("g", &pages), 100u);
  EXPECT_EQ(pages, (std::vector<uint64_t>{10, 11}));
  EXPECT_EQ(index.Find("g", "a0"), nullptr);
  EXPECT_NE(index.Find("g", "a1"), nullptr);
  EXPECT_NE(index.Find("h", "a0"), nullptr);  // another group's entry is untouched
  EXPECT_EQ(index.stats().cached_entries, 1u);
  EXPECT_EQ(index.stats().cached_bytes, 100u);
}

}  // namespace
}  // namespace kvkeep
