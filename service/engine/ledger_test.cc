// The ledger's figures add up after any sequence of charges, releases, evictions, shares, spills
// and refusals: a seeded random walk against a naive model of what each tenant holds, with the
// real PrefixIndex moving shared charges.
#include "service/engine/ledger.h"

#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/failure_reason.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "service/pool/prefix_index.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;

constexpr uint64_t kPageBytes[] = {64, 256};
constexpr uint32_t kHeads = 2;  // pages per prefix entry

TEST(Ledger, ChargeWithinGuaranteeAndRefusalsCarryReasons) {
  Ledger ledger(1000);
  ledger.OpenAccount("a", {.guarantee_bytes = 400, .max_bytes = 600});
  ledger.OpenAccount("b", {.guarantee_bytes = 500});
  ASSERT_OK(ledger.ChargePages("a", 4, 100));
  // a is at its guarantee; the pool beyond it is b's guarantee (500) + a's 400: 100 left.
  ASSERT_OK(ledger.ChargePages("a", 1, 100));
  absl::Status pool_short = ledger.ChargePages("a", 1, 100);
  EXPECT_THAT(pool_short, StatusIs(absl::StatusCode::kResourceExhausted, "pool exhausted"));
  EXPECT_EQ(ReasonOf(pool_short), FailureReason::kPoolShort);
  absl::Status max = ledger.ChargePages("a", 2, 100);
  EXPECT_THAT(max, StatusIs(absl::StatusCode::kResourceExhausted, "quota exceeded"));
  EXPECT_EQ(ReasonOf(max), FailureReason::kTenantMax);
  EXPECT_THAT(ledger.ChargePages("nobody", 1, 100),
              StatusIs(absl::StatusCode::kUnauthenticated));
  // b is always admitted within its guarantee.
  ASSERT_OK(ledger.ChargePages("b", 5, 100));
  EXPECT_EQ(ledger.ChargesOf("a").used_bytes, 500u);
  EXPECT_EQ(ledger.ChargesOf("a").used_pages, 5u);
  EXPECT_EQ(ledger.Pool().used_bytes, 1000u);
  EXPECT_EQ(ledger.FreeBytes(), 0u);
}

TEST(Ledger, SpillQuotaAndSharedChargeRefusals) {
  Ledger ledger(1000);
  ledger.OpenAccount("a", {.max_bytes = 300, .spill_quota_bytes = 500});
  ASSERT_OK(ledger.ChargePages("a", 2, 100));
  absl::Status spill = ledger.CheckSpillQuota("a", 200, 400);
  EXPECT_THAT(spill, StatusIs(absl::StatusCode::kResourceExhausted, "spill quota exceeded"));
  EXPECT_EQ(ReasonOf(spill), FailureReason::kSpillQuota);
  EXPECT_OK(ledger.CheckSpillQuota("a", 100, 400));
  absl::Status shared = ledger.AdmitSharedCharge("a", 101);
  EXPECT_THAT(shared, StatusIs(absl::StatusCode::kResourceExhausted, "quota exceeded"));
  EXPECT_EQ(ReasonOf(shared), FailureReason::kTenantMax);
  EXPECT_OK(ledger.AdmitSharedCharge("a", 100));
  ledger.MoveToSpill("a", 2, 100, 150);
  EXPECT_EQ(ledger.ChargesOf("a").used_bytes, 0u);
  EXPECT_EQ(ledger.ChargesOf("a").spilled_bytes, 150u);
  EXPECT_EQ(ledger.Pool().spilled_bytes, 150u);
  // Releasing more than is charged never goes below zero, and the pool follows the tenant.
  ledger.ReleasePages("a", 1, 100);
  EXPECT_EQ(ledger.ChargesOf("a").used_bytes, 0u);
  EXPECT_EQ(ledger.Pool().used_bytes, 0u);
  const TenantCharges left = ledger.CloseAccount("a");
  EXPECT_EQ(left.spilled_bytes, 150u);
  EXPECT_EQ(ledger.Pool().spilled_bytes, 0u);
}

// A naive model of what each tenant holds.
struct Allocation {
  uint64_t pages = 0;
  uint64_t page_bytes = 0;
};
struct Model {
  std::vector<Allocation> held;
  std::vector<std::shared_ptr<PrefixEntry>> shared;  // one entry per reference
  std::vector<uint64_t> spilled;                      // bytes of each spilled sequence
  uint64_t evicted_pages = 0;
};

class LedgerWalk {
 public:
  explicit LedgerWalk(uint32_t seed) : rng_(seed), ledger_(kCapacity) {
    for (int i = 0; i < 4; ++i) {
      names_.push_back(absl::StrCat("t", i));
      ledger_.OpenAccount(names_.back(), RandomLimits());
    }
    models_.resize(names_.size());
  }

  void Step() {
    switch (Uniform(10)) {
      case 0: case 1: Charge(); break;
      case 2: Release(); break;
      case 3: Evict(); break;
      case 4: Publish(); break;
      case 5: Attach(); break;
      case 6: Unref(); break;
      case 7: EvictCached(); break;
      case 8: Spill(); break;
      case 9: Unspill(); break;
    }
    if (Uniform(50) == 0) {
      const size_t t = Uniform(names_.size());
      ledger_.SetLimits(names_[t], RandomLimits());
    }
  }

  // Σ tenants + cached prefix = pool used; every figure as the model says; nothing negative.
  void CheckInvariants() {
    const PoolCharges pool = ledger_.Pool();
    uint64_t sum_used = 0, sum_spilled = 0;
    for (size_t t = 0; t < names_.size(); ++t) {
      const TenantCharges c = ledger_.ChargesOf(names_[t]);
      const Model& m = models_[t];
      uint64_t private_bytes = 0, pages = 0, spilled = 0;
      for (const Allocation& a : m.held) {
        private_bytes += a.pages * a.page_bytes;
        pages += a.pages;
      }
      for (uint64_t s : m.spilled) spilled += s;
      ASSERT_EQ(c.shared_charge_bytes, index_.ChargeOf(names_[t])) << names_[t];
      ASSERT_EQ(c.used_bytes, private_bytes + c.shared_charge_bytes) << names_[t];
      ASSERT_EQ(c.used_pages, pages) << names_[t];
      ASSERT_EQ(c.spilled_bytes, spilled) << names_[t];
      ASSERT_EQ(c.pressure_evicted_pages, m.evicted_pages) << names_[t];
      ASSERT_LT(c.used_bytes, uint64_t{1} << 60) << "wrapped below zero";
      sum_used += c.used_bytes;
      sum_spilled += c.spilled_bytes;
    }
    ASSERT_EQ(pool.cached_prefix_bytes, index_.stats().cached_bytes);
    ASSERT_EQ(pool.used_bytes, sum_used + pool.cached_prefix_bytes);
    ASSERT_EQ(pool.spilled_bytes, sum_spilled);
    ASSERT_EQ(ledger_.FreeBytes(), kCapacity - std::min(kCapacity, pool.used_bytes));
  }

  uint64_t refusals() const { return refusals_; }
  uint64_t shares() const { return shares_; }

 private:
  static constexpr uint64_t kCapacity = 64 * 256;

  size_t Uniform(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng_); }
  TenantLimits RandomLimits() {
    // Guarantees of the four tenants fit the pool together.
    const uint64_t guarantee = Uniform(5) * kCapacity / 20;
    const uint64_t max = Uniform(3) == 0 ? 0 : guarantee + Uniform(kCapacity / 2);
    return {.guarantee_bytes = guarantee, .max_bytes = max,
            .weight = static_cast<uint32_t>(1 + Uniform(3)),
            .spill_quota_bytes = Uniform(4) * kCapacity / 4};
  }

  // Everything the ledger reports, to compare before and after a refusal.
  std::vector<uint64_t> Snapshot() {
    std::vector<uint64_t> out;
    for (const std::string& name : names_) {
      const TenantCharges c = ledger_.ChargesOf(name);
      out.insert(out.end(), {c.used_bytes, c.used_pages, c.shared_charge_bytes, c.spilled_bytes,
                             c.pressure_evicted_pages});
    }
    const PoolCharges p = ledger_.Pool();
    out.insert(out.end(), {p.used_bytes, p.cached_prefix_bytes, p.spilled_bytes});
    return out;
  }

  void Charge() {
    const size_t t = Uniform(names_.size());
    const Allocation a{1 + Uniform(8), kPageBytes[Uniform(2)]};
    const std::vector<uint64_t> snapshot = Snapshot();
    absl::Status status = ledger_.ChargePages(names_[t], a.pages, a.page_bytes);
    if (status.ok()) {
      models_[t].held.push_back(a);
      return;
    }
    ++refusals_;
    ASSERT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
    const FailureReason reason = ReasonOf(status);
    ASSERT_TRUE(reason == FailureReason::kTenantMax || reason == FailureReason::kPoolShort);
    ASSERT_EQ(Snapshot(), snapshot) << "a refused charge changed the figures";
  }

  // A random held allocation of tenant t (index), or -1.
  int Held(size_t t) {
    if (models_[t].held.empty()) return -1;
    return static_cast<int>(Uniform(models_[t].held.size()));
  }

  void Release() {
    const size_t t = Uniform(names_.size());
    const int i = Held(t);
    if (i < 0) return;
    Allocation a = models_[t].held[i];
    models_[t].held.erase(models_[t].held.begin() + i);
    ledger_.ReleasePages(names_[t], a.pages, a.page_bytes);
  }

  void Evict() {
    const size_t t = Uniform(names_.size());
    const int i = Held(t);
    if (i < 0) return;
    Allocation& a = models_[t].held[i];
    const uint64_t pages = 1 + Uniform(a.pages);
    ledger_.EvictPages(names_[t], pages, a.page_bytes);
    a.pages -= pages;
    models_[t].evicted_pages += pages;
    if (a.pages == 0) models_[t].held.erase(models_[t].held.begin() + i);
  }

  // kHeads private pages of an allocation become a new shared entry the tenant references.
  void Publish() {
    const size_t t = Uniform(names_.size());
    const int i = Held(t);
    if (i < 0 || models_[t].held[i].pages < kHeads) return;
    Allocation& a = models_[t].held[i];
    auto entry = std::make_shared<PrefixEntry>();
    entry->group = "g";
    entry->key = absl::StrCat("key-", next_key_++);
    entry->pages.assign(kHeads, next_key_);
    entry->bytes = kHeads * a.page_bytes;
    entry = index_.Insert(entry);
    PrefixIndex::Changes changes;
    index_.Ref(*entry, names_[t], &changes);
    ledger_.PublishPages(names_[t], kHeads, a.page_bytes, entry->bytes, changes);
    models_[t].shared.push_back(entry);
    a.pages -= kHeads;
    if (a.pages == 0) models_[t].held.erase(models_[t].held.begin() + i);
    keys_.push_back(entry->key);
    ++shares_;
  }

  // Another reference on an existing entry (cached or held by others), if the maximum allows.
  void Attach() {
    if (keys_.empty()) return;
    const size_t t = Uniform(names_.size());
    std::shared_ptr<PrefixEntry> entry = index_.Find("g", keys_[Uniform(keys_.size())]);
    if (entry == nullptr) return;  // evicted
    const std::vector<uint64_t> snapshot = Snapshot();
    absl::Status admitted =
        ledger_.AdmitSharedCharge(names_[t], index_.ChargeIfAttached({entry}, names_[t]));
    if (!admitted.ok()) {
      ++refusals_;
      ASSERT_EQ(ReasonOf(admitted), FailureReason::kTenantMax);
      ASSERT_EQ(Snapshot(), snapshot);
      return;
    }
    PrefixIndex::Changes changes;
    index_.Ref(*entry, names_[t], &changes);
    ledger_.ApplyPrefixChanges(changes);
    models_[t].shared.push_back(entry);
    ++shares_;
  }

  void Unref() {
    const size_t t = Uniform(names_.size());
    auto& shared = models_[t].shared;
    if (shared.empty()) return;
    const size_t i = Uniform(shared.size());
    PrefixIndex::Changes changes;
    index_.Unref(*shared[i], names_[t], absl::Now(), &changes);
    ledger_.ApplyPrefixChanges(changes);
    shared.erase(shared.begin() + i);
  }

  void EvictCached() {
    std::vector<uint64_t> pages;
    ledger_.ReleaseCachedPrefix(index_.EvictUnreferenced(Uniform(4) * 256, &pages));
  }

  void Spill() {
    const size_t t = Uniform(names_.size());
    const int i = Held(t);
    if (i < 0) return;
    const Allocation a = models_[t].held[i];
    const uint64_t bytes = 1 + Uniform(a.pages * a.page_bytes);
    uint64_t on_disk = 0;
    for (uint64_t s : models_[t].spilled) on_disk += s;
    const std::vector<uint64_t> snapshot = Snapshot();
    absl::Status quota = ledger_.CheckSpillQuota(names_[t], bytes, on_disk);
    if (!quota.ok()) {
      ++refusals_;
      ASSERT_EQ(ReasonOf(quota), FailureReason::kSpillQuota);
      ASSERT_EQ(Snapshot(), snapshot);
      return;
    }
    ledger_.MoveToSpill(names_[t], a.pages, a.page_bytes, bytes);
    models_[t].held.erase(models_[t].held.begin() + i);
    models_[t].spilled.push_back(bytes);
  }

  // Restore (charged again, may be refused: stays spilled) or drop a spilled sequence.
  void Unspill() {
    const size_t t = Uniform(names_.size());
    auto& spilled = models_[t].spilled;
    if (spilled.empty()) return;
    const size_t i = Uniform(spilled.size());
    if (Uniform(2) == 0) {
      const Allocation a{1 + Uniform(4), kPageBytes[Uniform(2)]};
      const std::vector<uint64_t> snapshot = Snapshot();
      absl::Status charged = ledger_.ChargePages(names_[t], a.pages, a.page_bytes);
      if (!charged.ok()) {
        ++refusals_;
        ASSERT_EQ(Snapshot(), snapshot);
        return;
      }
      models_[t].held.push_back(a);
    }
    ledger_.RemoveSpilled(names_[t], spilled[i]);
    spilled.erase(spilled.begin() + i);
  }

  std::mt19937 rng_;
  Ledger ledger_;
  PrefixIndex index_;
  std::vector<std::string> names_;
  std::vector<Model> models_;
  std::vector<std::string> keys_;
  uint64_t next_key_ = 0;
  uint64_t refusals_ = 0, shares_ = 0;
};

TEST(Ledger, FiguresAddUpAfterAnyRandomSequence) {
  uint64_t refusals = 0, shares = 0;
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    LedgerWalk walk(seed);
    for (int step = 0; step < 3000; ++step) {
      walk.Step();
      ASSERT_NO_FATAL_FAILURE(walk.CheckInvariants()) << "seed " << seed << " step " << step;
    }
    refusals += walk.refusals();
    shares += walk.shares();
  }
  // The walk exercised what it claims to: refusals and shared charges happened.
  EXPECT_GT(refusals, 100u);
  EXPECT_GT(shares, 100u);
}

TEST(Ledger, FairSharesAndStandingsFollowCharges) {
  Ledger ledger(1000);
  ledger.OpenAccount("a", {.guarantee_bytes = 100, .weight = 1});
  ledger.OpenAccount("b", {.guarantee_bytes = 100, .weight = 3});
  ASSERT_OK(ledger.ChargePages("a", 1, 10));
  ASSERT_OK(ledger.ChargePages("b", 1, 10));
  auto shares = ledger.FairShares("");
  EXPECT_LE(shares["a"] + shares["b"], 1000u);
  EXPECT_GE(shares["a"] + shares["b"], 998u);  // at most a byte of rounding each
  EXPECT_LT(shares["a"], shares["b"]);
  auto standings = ledger.Standings("a", 50);
  EXPECT_EQ(standings["a"].used_bytes, 60u);
  EXPECT_EQ(standings["b"].used_bytes, 10u);
  EXPECT_EQ(standings["b"].guarantee_bytes, 100u);
  EXPECT_EQ(standings["a"].share_bytes, shares["a"]);
}

}  // namespace
}  // namespace kvkeep
