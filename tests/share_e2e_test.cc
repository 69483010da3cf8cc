// End-to-end: shared prefixes between tenants of one sharing group, against the real kvkeepd
// process (real Unix socket, real shared memory, real RocksDB).
#include <cstdio>
#include <atomic>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/call_context.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"

namespace kvkeep::testing {
namespace {

using absl::StatusCode;

// TestLayout(): 2 layers x 2 KV heads, head_dim 8, fp16, 4 tokens per page.
constexpr uint64_t kTokenBytes = 8 * 2;
constexpr uint32_t kTpp = 4;
constexpr uint32_t kHeads = 4;
constexpr uint64_t kPageBytes = 2 * kTpp * kTokenBytes;      // 128
constexpr uint64_t kPrefixPageBytes = kHeads * kPageBytes;  // one prefix page: 512

std::vector<uint32_t> Prompt(size_t n, uint32_t seed = 7) {
  std::vector<uint32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = seed * 1000 + static_cast<uint32_t>(i) * 17;
  return t;
}

std::string Keys(uint64_t seed, uint32_t layer, uint32_t head, uint32_t tokens) {
  return PatternBytes(seed + layer * 2 + head, tokens * kTokenBytes);
}
std::string Values(uint64_t seed, uint32_t layer, uint32_t head, uint32_t tokens) {
  return PatternBytes(seed + 100 + layer * 2 + head, tokens * kTokenBytes);
}

// Allocates, writes (zero-copy) and commits `tokens` tokens of every head.
void Fill(Client& c, const std::string& seq, uint32_t tokens, uint64_t seed) {
  ASSERT_OK(c.Allocate(seq, tokens));
  for (uint32_t layer = 0; layer < 2; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      std::string k = Keys(seed, layer, head, tokens), v = Values(seed, layer, head, tokens);
      ASSERT_OK(c.WriteInPlace(seq, layer, head, 0, tokens, k.data(), v.data()));
    }
  }
  ASSERT_OK(c.Commit(seq, tokens));
}

// The first `tokens` tokens of every head read back over ReadKV equal the pattern of `seed`.
void ExpectPrefixBytes(Client& c, const std::string& seq, uint32_t tokens, uint64_t seed) {
  for (uint32_t layer = 0; layer < 2; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      ASSERT_OK_AND_ASSIGN(HeadData back, c.ReadHead(seq, layer, head));
      ASSERT_GE(back.keys.size(), tokens * kTokenBytes);
      EXPECT_EQ(back.keys.substr(0, tokens * kTokenBytes), Keys(seed, layer, head, tokens));
      EXPECT_EQ(back.values.substr(0, tokens * kTokenBytes), Values(seed, layer, head, tokens));
    }
  }
}

// Protection flags ("r--s", "rw-s") of this process's mapping that contains `addr`.
std::string MappingPerms(const void* addr) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  while (std::getline(maps, line)) {
    std::vector<std::string> parts = absl::StrSplit(line, ' ');
    std::vector<std::string> range = absl::StrSplit(parts[0], '-');
    uint64_t lo = 0, hi = 0;
    if (!absl::SimpleHexAtoi(range[0], &lo) || !absl::SimpleHexAtoi(range[1], &hi)) continue;
    if (a >= lo && a < hi) return parts[1];
  }
  return "";
}

class ShareTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_OK(daemon_.Start()); }
  void TearDown() override {
    for (auto& c : clients_) c.reset();
    daemon_.Stop(SIGTERM);  // the daemon unlinks its shared-memory arenas
  }

  std::string Tenant(const std::string& name, const std::string& group, uint64_t max = 0) {
    v1::CreateTenantRequest r;
    r.set_name(name);
    r.set_sharing_group(group);
    r.set_max_bytes(max);
    r.set_spill_quota_bytes(16 << 20);
    auto reply = daemon_.Admin()->CreateTenant(r);
    EXPECT_OK(reply);
    return reply.ok() ? reply->token() : "";
  }

  Client* Attach(const std::string& token, const std::string& worker) {
    auto client = Client::Attach(daemon_.channel(), token, worker);
    EXPECT_OK(client);
    if (!client.ok()) return nullptr;
    EXPECT_OK((*client)->RegisterModel(TestLayout()));
    clients_.push_back(std::move(*client));
    return clients_.back().get();
  }

  v1::DaemonStatus Status() {
    auto s = daemon_.Admin()->GetStatus();
    EXPECT_OK(s);
    return s.ok() ? *s : v1::DaemonStatus();
  }

  v1::TenantInfo Info(const std::string& name) {
    const v1::DaemonStatus s = Status();
    for (const auto& t : s.tenant_usage()) {
      if (t.name() == name) return t;
    }
    ADD_FAILURE() << "no tenant " << name;
    return {};
  }

  // Σ shared charges == bytes of referenced shared pages, and each tenant's used_bytes includes
  // its charge (on top of whole private pages).
  void ExpectChargesAddUp() {
    v1::DaemonStatus s = Status();
    uint64_t sum = 0;
    for (const auto& t : s.tenant_usage()) {
      sum += t.shared_charge_bytes();
      EXPECT_GE(t.used_bytes(), t.shared_charge_bytes());
      EXPECT_EQ(t.used_bytes() - t.shared_charge_bytes(), t.used_pages() * kPageBytes) << t.name();
    }
    EXPECT_EQ(sum, s.shared_bytes_referenced());
    EXPECT_EQ(s.shared_bytes_referenced(), s.shared_pages_referenced() * kPageBytes);
    EXPECT_EQ(s.shared_bytes_cached(), s.shared_pages_cached() * kPageBytes);
  }

  template <typename Pred>
  bool WaitFor(Pred pred) {
    for (int i = 0; i < 200; ++i) {
      if (pred(Status())) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  DaemonProcess daemon_;
  std::vector<std::unique_ptr<Client>> clients_;
};

TEST_F(ShareTest, TwoTenantsOfAGroupShareTheSamePagesAndOutsidersFindNothing) {
  Client* a = Attach(Tenant("alpha", "team"), "a");
  Client* b = Attach(Tenant("beta", "team"), "b");
  Client* c = Attach(Tenant("gamma", ""), "c");
  Client* d = Attach(Tenant("delta", "other-team"), "d");
  ASSERT_TRUE(a && b && c && d);
  const std::vector<uint32_t> prompt = Prompt(10);  // two full pages and a partial one

  // A computes the prompt and publishes it: two full pages; the partial third stays private.
  ASSERT_OK_AND_ASSIGN(std::string sa, a->CreateSequence("test-model"));
  Fill(*a, sa, 10, 1);
  EXPECT_EQ(Info("alpha").used_bytes(), 3 * kPrefixPageBytes);
  ASSERT_OK_AND_ASSIGN(v1::PublishPrefixReply pub, a->PublishPrefix(sa, prompt));
  EXPECT_EQ(pub.published_pages(), 2u);
  EXPECT_EQ(pub.adopted_pages(), 0u);
  EXPECT_EQ(pub.shared_pages(), 2u);
  EXPECT_EQ(pub.table().shared_tokens(), 8u);
  ASSERT_EQ(pub.table().heads_size(), 4);
  for (const auto& h : pub.table().heads()) {
    EXPECT_EQ(h.shared_pages(), 2u);
    EXPECT_EQ(h.token_count(), 10u);
  }
  bool read_only_arena = false;
  for (const auto& arena : pub.table().arenas()) read_only_arena |= arena.read_only();
  EXPECT_TRUE(read_only_arena);
  // Alpha's usage is unchanged (its private copies were freed): 2 shared pages (charged whole to
  // it, the only sharer) + 1 private page per head.
  EXPECT_EQ(pub.tenant_shared_charge_bytes(), 2 * kPrefixPageBytes);
  EXPECT_EQ(pub.tenant_used_bytes(), 3 * kPrefixPageBytes);
  ExpectPrefixBytes(*a, sa, 10, 1);  // the re-pointed sequence reads the same bytes
  v1::DaemonStatus s = Status();
  EXPECT_EQ(s.shared_pages_referenced(), 2 * kHeads);
  EXPECT_EQ(s.shared_pages_cached(), 0u);
  EXPECT_EQ(s.sharing_groups(), 2u);
  ExpectChargesAddUp();

  // B (same group) asks for the same prompt: it gets A's very pages, committed, read-only.
  ASSERT_OK_AND_ASSIGN(v1::PageTable tb, b->CreateSequenceWithPrefix("test-model", prompt));
  EXPECT_EQ(tb.shared_tokens(), 8u);
  ASSERT_EQ(tb.heads_size(), 4);
  for (int h = 0; h < 4; ++h) {
    EXPECT_EQ(tb.heads(h).token_count(), 8u);
    EXPECT_EQ(tb.heads(h).shared_pages(), 2u);
    ASSERT_EQ(tb.heads(h).pages_size(), 2);
    EXPECT_EQ(tb.heads(h).pages(0), pub.table().heads(h).pages(0));  // the SAME page ids
    EXPECT_EQ(tb.heads(h).pages(1), pub.table().heads(h).pages(1));
  }
  EXPECT_EQ(tb.next_position(), 8u);
  const std::string sb = tb.sequence_id();
  // Read over ReadKV and in place through B's own read-only mapping: bit-exact.
  ExpectPrefixBytes(*b, sb, 8, 1);
  for (uint32_t layer = 0; layer < 2; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      const auto& ht = tb.heads(layer * 2 + head);
      for (int p = 0; p < 2; ++p) {
        ASSERT_OK_AND_ASSIGN(absl::Span<const uint8_t> page, b->MappedPage(ht.pages(p)));
        ASSERT_EQ(page.size(), kPageBytes);
        const std::string k = Keys(1, layer, head, 8), v = Values(1, layer, head, 8);
        const size_t half = kTpp * kTokenBytes;
        EXPECT_EQ(std::string(reinterpret_cast<const char*>(page.data()), half),
                  k.substr(p * half, half));
        EXPECT_EQ(std::string(reinterpret_cast<const char*>(page.data()) + half, half),
                  v.substr(p * half, half));
        EXPECT_EQ(MappingPerms(page.data()).substr(0, 3), "r--");  // mapped PROT_READ
      }
    }
  }
  // Charges: 2 prefix pages split between alpha and beta.
  EXPECT_EQ(Info("alpha").shared_charge_bytes(), kPrefixPageBytes);
  EXPECT_EQ(Info("beta").shared_charge_bytes(), kPrefixPageBytes);
  EXPECT_EQ(Info("beta").used_bytes(), kPrefixPageBytes);
  EXPECT_EQ(Status().shared_pages_referenced(), 2 * kHeads);  // nothing was copied
  ExpectChargesAddUp();

  // B cannot write its shared pages, by either path; it continues after them normally.
  std::string kb = PatternBytes(9, kTokenBytes), vb = PatternBytes(10, kTokenBytes);
  EXPECT_THAT(b->WriteInPlace(sb, 0, 0, 0, 1, kb.data(), vb.data()),
              StatusIs(StatusCode::kPermissionDenied, "shared prefix"));
  v1::KvChunk chunk;
  chunk.set_sequence_id(sb);
  chunk.set_token_offset(7);
  chunk.set_token_count(1);
  chunk.set_keys(kb);
  chunk.set_values(vb);
  EXPECT_THAT(b->WriteKV({chunk}), StatusIs(StatusCode::kPermissionDenied, "read-only"));
  ExpectPrefixBytes(*a, sa, 10, 1);  // untouched
  ASSERT_OK(b->Allocate(sb, 3));
  for (uint32_t layer = 0; layer < 2; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      std::string k = PatternBytes(50 + layer * 2 + head, 3 * kTokenBytes);
      ASSERT_OK(b->WriteInPlace(sb, layer, head, 8, 3, k.data(), k.data()));
    }
  }
  ASSERT_OK_AND_ASSIGN(v1::CommitReply committed, b->Commit(sb, 3));
  EXPECT_EQ(committed.token_count(), 11u);
  ASSERT_OK_AND_ASSIGN(HeadData back, b->ReadHead(sb, 1, 1));
  EXPECT_EQ(back.keys.substr(8 * kTokenBytes), PatternBytes(53, 3 * kTokenBytes));
  ASSERT_EQ(back.positions.size(), 11u);
  EXPECT_EQ(back.positions[10], 10);

  // Lookups: B finds both pages; a change in page 1 breaks the chain there, in page 0 at once.
  ASSERT_OK_AND_ASSIGN(v1::LookupPrefixReply found, b->LookupPrefix("test-model", prompt));
  EXPECT_EQ(found.matched_pages(), 2u);
  EXPECT_EQ(found.matched_tokens(), 8u);
  std::vector<uint32_t> changed = prompt;
  changed[5] += 1;
  EXPECT_EQ(b->LookupPrefix("test-model", changed)->matched_pages(), 1u);
  changed[0] += 1;
  EXPECT_EQ(b->LookupPrefix("test-model", changed)->matched_pages(), 0u);

  // Outsiders (no group, another group) find nothing and cannot map or read the group's pages.
  const uint64_t shared_page = tb.heads(0).pages(0);
  const uint32_t group_arena = static_cast<uint32_t>(shared_page >> 32);
  for (Client* outsider : {c, d}) {
    ASSERT_OK_AND_ASSIGN(v1::PageTable t, outsider->CreateSequenceWithPrefix("test-model", prompt));
    EXPECT_EQ(t.shared_tokens(), 0u);
    for (const auto& h : t.heads()) EXPECT_EQ(h.pages_size(), 0);
    EXPECT_EQ(outsider->LookupPrefix("test-model", prompt)->matched_pages(), 0u);
    EXPECT_THAT(outsider->GetArena(group_arena), StatusIs(StatusCode::kPermissionDenied));
    v1::ReadRequest raw;
    raw.add_pages(shared_page);
    EXPECT_THAT(outsider->ReadKV(raw), StatusIs(StatusCode::kPermissionDenied));
    EXPECT_THAT(outsider->PublishPrefix(t.sequence_id(), prompt),
                outsider == c ? StatusIs(StatusCode::kFailedPrecondition, "no sharing group")
                              : StatusIs(StatusCode::kFailedPrecondition, "not full"));
  }
  // A group member may read a shared page raw.
  v1::ReadRequest raw;
  raw.add_pages(shared_page);
  ASSERT_OK_AND_ASSIGN(std::vector<v1::KvChunk> chunks, b->ReadKV(raw));
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].keys(), Keys(1, 0, 0, 4));
  EXPECT_GE(Status().prefix_pages_hit(), 2u + 2 + 1);
  ExpectChargesAddUp();

  // A leaves the group? Refused while it holds shared pages.
  v1::SetQuotaRequest leave;
  leave.set_name("alpha");
  leave.set_sharing_group("");
  EXPECT_THAT(daemon_.Admin()->SetQuota(leave), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(Info("alpha").sharing_group(), "team");

  // Releasing: A drops its sequence — B now pays for both pages; B drops — nobody references
  // them, they stay cached (charged to nobody) and a new sequence of B hits them again.
  ASSERT_OK(a->Drop(sa));
  EXPECT_EQ(Info("alpha").shared_charge_bytes(), 0u);
  EXPECT_EQ(Info("alpha").used_bytes(), 0u);
  EXPECT_EQ(Info("beta").shared_charge_bytes(), 2 * kPrefixPageBytes);
  EXPECT_EQ(Status().shared_pages_referenced(), 2 * kHeads);
  ExpectChargesAddUp();
  ASSERT_OK(b->Drop(sb));
  s = Status();
  EXPECT_EQ(s.shared_pages_referenced(), 0u);  // refcounts back to zero
  EXPECT_EQ(s.shared_pages_cached(), 2 * kHeads);
  for (const auto& t : s.tenant_usage()) EXPECT_EQ(t.shared_charge_bytes(), 0u) << t.name();
  EXPECT_EQ(Info("beta").used_bytes(), 0u);
  ExpectChargesAddUp();
  ASSERT_OK_AND_ASSIGN(v1::PageTable again, b->CreateSequenceWithPrefix("test-model", prompt));
  EXPECT_EQ(again.shared_tokens(), 8u);
  EXPECT_EQ(again.heads(3).pages(1), pub.table().heads(3).pages(1));
  ExpectPrefixBytes(*b, again.sequence_id(), 8, 1);
  EXPECT_EQ(Info("beta").shared_charge_bytes(), 2 * kPrefixPageBytes);
  // Its session ends: the sequence goes, and so do its references.
  clients_[1]->Close();
  EXPECT_TRUE(WaitFor([](const v1::DaemonStatus& st) { return st.shared_pages_referenced() == 0; }));
  ASSERT_OK(daemon_.Admin()->SetQuota(leave));  // nothing referenced: A may leave now
  EXPECT_EQ(Info("alpha").sharing_group(), "");
  ExpectChargesAddUp();
}

TEST_F(ShareTest, ChargesSplitFairlyAmongThreeTenantsAndAddUpExactly) {
  Client* a = Attach(Tenant("t-a", "g"), "a");
  Client* b = Attach(Tenant("t-b", "g"), "b");
  Client* c = Attach(Tenant("t-c", "g"), "c");
  ASSERT_TRUE(a && b && c);
  const std::vector<uint32_t> prompt = Prompt(12);
  ASSERT_OK_AND_ASSIGN(std::string sa, a->CreateSequence("test-model"));
  Fill(*a, sa, 12, 3);
  ASSERT_OK(a->PublishPrefix(sa, prompt));
  // A second sequence of the same tenant: no change in charges (distinct tenants count).
  ASSERT_OK_AND_ASSIGN(v1::PageTable a2, a->CreateSequenceWithPrefix("test-model", prompt));
  EXPECT_EQ(Info("t-a").shared_charge_bytes(), 3 * kPrefixPageBytes);
  ASSERT_OK_AND_ASSIGN(v1::PageTable tb, b->CreateSequenceWithPrefix("test-model", prompt));
  ASSERT_OK_AND_ASSIGN(v1::PageTable tc, c->CreateSequenceWithPrefix("test-model", prompt));
  // Each 512-byte prefix page among 3 tenants: 170 each, the remainder 2 to "t-a" (lowest
  // name): t-a 3 × 172 = 516, t-b and t-c 3 × 170 = 510; 1536 in all.
  EXPECT_EQ(Info("t-a").shared_charge_bytes(), 516u);
  EXPECT_EQ(Info("t-b").shared_charge_bytes(), 510u);
  EXPECT_EQ(Info("t-c").shared_charge_bytes(), 510u);
  ExpectChargesAddUp();
  // B publishes a longer prompt on its sequence: the first 3 pages are already shared, the 4th
  // is new (B's own) — charged to B only.
  std::vector<uint32_t> longer = Prompt(16);
  ASSERT_OK(b->Allocate(tb.sequence_id(), 4));
  ASSERT_OK(b->Commit(tb.sequence_id(), 4));
  ASSERT_OK_AND_ASSIGN(v1::PublishPrefixReply pb, b->PublishPrefix(tb.sequence_id(), longer));
  EXPECT_EQ(pb.published_pages(), 1u);
  EXPECT_EQ(pb.shared_pages(), 4u);
  EXPECT_EQ(Info("t-b").shared_charge_bytes(), 510u + kPrefixPageBytes);
  ExpectChargesAddUp();
  // C publishes the same longer prompt: page 3 is adopted (no copy), not published again.
  ASSERT_OK(c->Allocate(tc.sequence_id(), 4));
  ASSERT_OK(c->Commit(tc.sequence_id(), 4));
  const uint64_t referenced = Status().shared_pages_referenced();
  ASSERT_OK_AND_ASSIGN(v1::PublishPrefixReply pc, c->PublishPrefix(tc.sequence_id(), longer));
  EXPECT_EQ(pc.published_pages(), 0u);
  EXPECT_EQ(pc.adopted_pages(), 1u);
  EXPECT_EQ(Status().shared_pages_referenced(), referenced);
  EXPECT_EQ(pc.table().heads(2).pages(3), pb.table().heads(2).pages(3));
  // Page 3 (512 bytes) between B and C: 256 each.
  EXPECT_EQ(Info("t-b").shared_charge_bytes(), 510u + 256);
  EXPECT_EQ(Info("t-c").shared_charge_bytes(), 510u + 256);
  EXPECT_EQ(Info("t-a").shared_charge_bytes(), 516u);
  ExpectChargesAddUp();
  // Re-publishing with different tokens for a page the sequence already shares is refused.
  std::vector<uint32_t> wrong = longer;
  wrong[1] += 1;
  EXPECT_THAT(c->PublishPrefix(tc.sequence_id(), wrong),
              StatusIs(StatusCode::kInvalidArgument, "differ"));
  // Drops bring every charge back to zero.
  ASSERT_OK(a->Drop(sa));
  ASSERT_OK(a->Drop(a2.sequence_id()));
  ASSERT_OK(b->Drop(tb.sequence_id()));
  ExpectChargesAddUp();
  ASSERT_OK(c->Drop(tc.sequence_id()));
  v1::DaemonStatus s = Status();
  EXPECT_EQ(s.shared_pages_referenced(), 0u);
  EXPECT_EQ(s.shared_pages_cached(), 4 * kHeads);
  for (const auto& t : s.tenant_usage()) {
    EXPECT_EQ(t.shared_charge_bytes(), 0u);
    EXPECT_EQ(t.used_bytes(), 0u);
  }
}

TEST_F(ShareTest, BadInputsGetTheRightCodesAndChangeNothing) {
  Client* a = Attach(Tenant("alpha", "team"), "a");
  Client* b = Attach(Tenant("beta", "team"), "b");
  ASSERT_TRUE(a && b);
  ASSERT_OK_AND_ASSIGN(std::string sa, a->CreateSequence("test-model"));
  Fill(*a, sa, 6, 1);  // one full page, one half page
  const v1::TenantInfo before = Info("alpha");
  EXPECT_THAT(a->PublishPrefix("seq-000000000000000000000000", Prompt(4)),
              StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(a->PublishPrefix(sa, Prompt(3)), StatusIs(StatusCode::kInvalidArgument, "full"));
  EXPECT_THAT(a->PublishPrefix(sa, {}), StatusIs(StatusCode::kInvalidArgument));
  // 8 tokens = 2 pages, but page 1 holds only 2 committed tokens.
  EXPECT_THAT(a->PublishPrefix(sa, Prompt(8)), StatusIs(StatusCode::kFailedPrecondition, "not full"));
  // Another tenant's sequence id answers as one that does not exist.
  EXPECT_THAT(b->PublishPrefix(sa, Prompt(4)), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(b->LookupPrefix("no-such-model", Prompt(4)), StatusIs(StatusCode::kNotFound));
  // A session that is not live.
  v1::PublishPrefixRequest r;
  r.set_session_id("00000000000000000000000000000000");
  r.set_sequence_id(sa);
  for (uint32_t t : Prompt(4)) r.add_token_ids(t);
  auto ctx = MakeCallContext(a->token());
  v1::PublishPrefixReply reply;
  EXPECT_EQ(a->stub().PublishPrefix(ctx.get(), r, &reply).error_code(), grpc::NOT_FOUND);
  // Nothing changed.
  v1::DaemonStatus s = Status();
  EXPECT_EQ(s.shared_pages_referenced() + s.shared_pages_cached(), 0u);
  EXPECT_EQ(Info("alpha").used_bytes(), before.used_bytes());
  ASSERT_OK_AND_ASSIGN(v1::PageTable t, a->GetSequence(sa, false));
  EXPECT_EQ(t.shared_tokens(), 0u);
  ExpectPrefixBytes(*a, sa, 6, 1);
  // A compressed (re-positioned) prefix cannot be shared.
  ASSERT_OK_AND_ASSIGN(std::string sc, a->CreateSequence("test-model"));
  ASSERT_OK(a->Allocate(sc, 4));
  ASSERT_OK(a->Commit(sc, 4, {0, 1, 2, 5}));
  EXPECT_THAT(a->PublishPrefix(sc, Prompt(4)), StatusIs(StatusCode::kFailedPrecondition, "position"));

  // Sharing group names are checked like tenant names; an unchanged tenant stays unchanged.
  v1::CreateTenantRequest bad;
  bad.set_name("gamma");
  bad.set_sharing_group("Bad_Group");
  EXPECT_THAT(daemon_.Admin()->CreateTenant(bad), StatusIs(StatusCode::kInvalidArgument, "sharing group"));
  v1::SetQuotaRequest q;
  q.set_name("beta");
  q.set_sharing_group("-x");
  EXPECT_THAT(daemon_.Admin()->SetQuota(q), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_EQ(Info("beta").sharing_group(), "team");
  EXPECT_EQ(Status().tenants(), 2u);
}

TEST_F(ShareTest, SpillAndCompressOfASharerKeepTheSharedPagesWhole) {
  Client* a = Attach(Tenant("alpha", "team"), "a");
  Client* b = Attach(Tenant("beta", "team"), "b");
  ASSERT_TRUE(a && b);
  const std::vector<uint32_t> prompt = Prompt(8);
  ASSERT_OK_AND_ASSIGN(std::string sa, a->CreateSequence("test-model"));
  Fill(*a, sa, 8, 5);
  ASSERT_OK_AND_ASSIGN(v1::PublishPrefixReply pub, a->PublishPrefix(sa, prompt));
  ASSERT_OK_AND_ASSIGN(v1::PageTable tb, b->CreateSequenceWithPrefix("test-model", prompt));
  const std::string sb = tb.sequence_id();
  ASSERT_EQ(tb.shared_tokens(), 8u);

  // B spills its sequence: the full bytes go to disk, its references go; A's pages stay.
  v1::SpillRequest spill;
  spill.set_session_id(b->session_id());
  spill.set_sequence_id(sb);
  auto ctx = MakeCallContext(b->token());
  v1::SpillReply spilled;
  ASSERT_TRUE(b->stub().Spill(ctx.get(), spill, &spilled).ok());
  EXPECT_EQ(spilled.bytes(), 2 * kPrefixPageBytes);
  EXPECT_EQ(spilled.pages_freed(), 0u);  // no private page: the shared ones are not B's to free
  EXPECT_EQ(Info("beta").shared_charge_bytes(), 0u);
  EXPECT_EQ(Info("alpha").shared_charge_bytes(), 2 * kPrefixPageBytes);
  ExpectChargesAddUp();
  // Restore (Acquire): private pages with the same bytes.
  ASSERT_OK_AND_ASSIGN(v1::PageTable restored, b->Acquire(sb));
  EXPECT_EQ(restored.shared_tokens(), 0u);
  EXPECT_NE(restored.heads(0).pages(0), pub.table().heads(0).pages(0));
  ExpectPrefixBytes(*b, sb, 8, 5);
  EXPECT_EQ(Info("beta").used_bytes(), 2 * kPrefixPageBytes);
  ExpectChargesAddUp();

  // A compresses its sequence: copy-on-write — A gets private copies, the group's pages (that
  // B re-attaches below) keep every byte.
  ASSERT_OK_AND_ASSIGN(v1::PageTable tb2, b->CreateSequenceWithPrefix("test-model", prompt));
  v1::Policy keep_half;
  keep_half.set_scorer("streaming");
  keep_half.set_sinks(1);
  keep_half.set_window(1);
  keep_half.set_keep_ratio(0.5);
  ASSERT_OK_AND_ASSIGN(v1::CompressReply compressed, a->Compress(sa, keep_half));
  EXPECT_EQ(compressed.table().shared_tokens(), 0u);
  EXPECT_LT(compressed.table().heads(0).token_count(), 8u);
  EXPECT_EQ(Info("alpha").shared_charge_bytes(), 0u);
  EXPECT_EQ(Info("beta").shared_charge_bytes(), 2 * kPrefixPageBytes);
  ExpectPrefixBytes(*b, tb2.sequence_id(), 8, 5);
  EXPECT_EQ(tb2.heads(1).pages(0), pub.table().heads(1).pages(0));
  ExpectChargesAddUp();
}

TEST_F(ShareTest, GroupsSurviveRestartSharedPagesDoNot) {
  const std::string ta = Tenant("alpha", "team");
  const std::string tb = Tenant("beta", "team");
  const std::string tg = Tenant("gamma", "");
  v1::SetQuotaRequest q;
  q.set_name("gamma");
  q.set_sharing_group("team");
  ASSERT_OK(daemon_.Admin()->SetQuota(q));
  const std::vector<uint32_t> prompt = Prompt(8);
  {
    Client* a = Attach(ta, "a");
    ASSERT_NE(a, nullptr);
    ASSERT_OK_AND_ASSIGN(std::string sa, a->CreateSequence("test-model"));
    Fill(*a, sa, 8, 2);
    ASSERT_OK(a->PublishPrefix(sa, prompt));
    EXPECT_EQ(Status().shared_pages_referenced(), 2 * kHeads);
  }
  clients_.clear();
  daemon_.Stop(SIGTERM);
  ASSERT_OK(daemon_.Start());
  auto tenants = daemon_.Admin()->ListTenants();
  ASSERT_OK(tenants);
  ASSERT_EQ(tenants->tenants_size(), 3);
  for (const auto& t : tenants->tenants()) EXPECT_EQ(t.sharing_group(), "team") << t.name();
  // Shared pages lived in device (host) memory: gone with the old process.
  v1::DaemonStatus s = Status();
  EXPECT_EQ(s.shared_pages_referenced() + s.shared_pages_cached(), 0u);
  Client* a = Attach(ta, "a");
  Client* g = Attach(tg, "g");
  ASSERT_TRUE(a && g);
  EXPECT_EQ(g->LookupPrefix("test-model", prompt)->matched_pages(), 0u);
  // Publishing again works, and gamma (joined by SetQuota before the restart) shares it.
  ASSERT_OK_AND_ASSIGN(std::string sa, a->CreateSequence("test-model"));
  Fill(*a, sa, 8, 2);
  ASSERT_OK(a->PublishPrefix(sa, prompt));
  ASSERT_OK_AND_ASSIGN(v1::PageTable tgt, g->CreateSequenceWithPrefix("test-model", prompt));
  EXPECT_EQ(tgt.shared_tokens(), 8u);
  ExpectPrefixBytes(*g, tgt.sequence_id(), 8, 2);
  ExpectChargesAddUp();
}

TEST_F(ShareTest, CachedPrefixPagesAreFreedFirstUnderPressureReferencedOnesNever) {
  // 2 MiB of pool in 1 MiB arenas (8192 pages of 128 bytes each).
  daemon_.Stop(SIGTERM);
  ASSERT_OK(daemon_.Start({"--pool_mib=2", "--arena_mib=1"}));
  Client* a = Attach(Tenant("alpha", "team"), "a");
  Client* b = Attach(Tenant("beta", "team"), "b");
  Client* c = Attach(Tenant("gamma", ""), "c");
  ASSERT_TRUE(a && b && c);
  const std::vector<uint32_t> prompt = Prompt(8);
  ASSERT_OK_AND_ASSIGN(std::string sa, a->CreateSequence("test-model"));
  Fill(*a, sa, 8, 4);
  ASSERT_OK(a->PublishPrefix(sa, prompt));
  ASSERT_OK_AND_ASSIGN(v1::PageTable tb, b->CreateSequenceWithPrefix("test-model", prompt));
  ASSERT_OK(a->Drop(sa));
  // Referenced by beta: a request that needs both arenas cannot have the group's.
  ASSERT_OK_AND_ASSIGN(std::string sc, c->CreateSequence("test-model"));
  EXPECT_THAT(c->Allocate(sc, 8200), StatusIs(StatusCode::kResourceExhausted));
  EXPECT_EQ(Status().shared_pages_referenced(), 2 * kHeads);
  ExpectPrefixBytes(*b, tb.sequence_id(), 8, 4);
  // Unreferenced (cached): freed to make room, and the prefix is gone from the index.
  ASSERT_OK(b->Drop(tb.sequence_id()));
  EXPECT_EQ(Status().shared_pages_cached(), 2 * kHeads);
  ASSERT_OK(c->Allocate(sc, 8200));
  v1::DaemonStatus s = Status();
  EXPECT_EQ(s.shared_pages_cached(), 0u);
  EXPECT_EQ(s.shared_bytes_cached(), 0u);
  EXPECT_EQ(b->LookupPrefix("test-model", prompt)->matched_pages(), 0u);
  ExpectChargesAddUp();
}

TEST_F(ShareTest, ConcurrentPublishersAndReadersKeepCountsAndChargesExact) {
  const std::vector<std::string> names = {"t0", "t1", "t2"};
  std::vector<std::string> tokens;
  for (const auto& n : names) tokens.push_back(Tenant(n, "team"));
  const std::vector<uint32_t> prompt = Prompt(16);
  std::vector<std::thread> threads;
  std::atomic<int> shared_seen{0};
  for (int w = 0; w < 6; ++w) {
    threads.emplace_back([&, w] {
      auto client = Client::Attach(daemon_.channel(), tokens[w % 3], absl::StrCat("w", w));
      ASSERT_OK(client);
      ASSERT_OK((*client)->RegisterModel(TestLayout()));
      Client& cl = **client;
      for (int round = 0; round < 8; ++round) {
        ASSERT_OK_AND_ASSIGN(v1::PageTable t, cl.CreateSequenceWithPrefix("test-model", prompt));
        const std::string seq = t.sequence_id();
        if (t.shared_tokens() < 16) {
          // Compute the rest (same bytes for everybody: the K/V of the same tokens), publish.
          const uint32_t have = t.shared_tokens();
          ASSERT_OK(cl.Allocate(seq, 16 - have));
          for (uint32_t layer = 0; layer < 2; ++layer) {
            for (uint32_t head = 0; head < 2; ++head) {
              std::string k = Keys(6, layer, head, 16), v = Values(6, layer, head, 16);
              ASSERT_OK(cl.WriteInPlace(seq, layer, head, have, 16 - have,
                                        k.data() + have * kTokenBytes,
                                        v.data() + have * kTokenBytes));
            }
          }
          ASSERT_OK(cl.Commit(seq, 16 - have));
          ASSERT_OK(cl.PublishPrefix(seq, prompt));
        } else {
          ++shared_seen;
        }
        ExpectPrefixBytes(cl, seq, 16, 6);
        if (round % 2 == 0) {
          ASSERT_OK(cl.Drop(seq));  // the rest go when the session ends
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_GT(shared_seen.load(), 0);
  EXPECT_TRUE(WaitFor([](const v1::DaemonStatus& s) {
    return s.shared_pages_referenced() == 0 && s.sessions() == 0;
  }));
  v1::DaemonStatus s = Status();
  EXPECT_EQ(s.shared_pages_cached(), 4 * kHeads);  // one chain of 4 pages, however many publishers
  for (const auto& t : s.tenant_usage()) {
    EXPECT_EQ(t.shared_charge_bytes(), 0u);
    EXPECT_EQ(t.used_bytes(), 0u);
  }
  EXPECT_EQ(s.pages_in_use(), 4 * kHeads);
}

TEST_F(ShareTest, DeletingASharerMovesItsChargeToTheOthersAndKeepsThePages) {
  Client* a = Attach(Tenant("alpha", "team"), "a");
  Client* b = Attach(Tenant("beta", "team"), "b");
  ASSERT_TRUE(a && b);
  const std::vector<uint32_t> prompt = Prompt(8);
  ASSERT_OK_AND_ASSIGN(std::string sa, a->CreateSequence("test-model"));
  Fill(*a, sa, 8, 8);
  ASSERT_OK(a->PublishPrefix(sa, prompt));
  ASSERT_OK_AND_ASSIGN(v1::PageTable tb, b->CreateSequenceWithPrefix("test-model", prompt, true));
  EXPECT_EQ(Info("beta").shared_charge_bytes(), kPrefixPageBytes);
  ASSERT_OK_AND_ASSIGN(v1::DeleteTenantReply deleted, daemon_.Admin()->DeleteTenant("alpha", true));
  EXPECT_EQ(deleted.sequences_dropped(), 1u);
  EXPECT_EQ(Info("beta").shared_charge_bytes(), 2 * kPrefixPageBytes);
  EXPECT_EQ(Status().shared_pages_referenced(), 2 * kHeads);
  ExpectPrefixBytes(*b, tb.sequence_id(), 8, 8);
  ExpectChargesAddUp();
  // A retained sequence keeps its references after its session ends; dropping it releases them.
  clients_[1]->Close();
  EXPECT_EQ(Status().shared_pages_referenced(), 2 * kHeads);
  v1::SequenceRef ref;
  ref.set_tenant("beta");
  ref.set_sequence_id(tb.sequence_id());
  ASSERT_OK(daemon_.Admin()->DropSequence(ref));
  EXPECT_EQ(Status().shared_pages_referenced(), 0u);
  EXPECT_EQ(Info("beta").used_bytes(), 0u);
  ExpectChargesAddUp();
}

}  // namespace
}  // namespace kvkeep::testing
