// kvkeep-demo: a short tour of kvkeepd for the README's quick start. Two tenants, one worker
// each; pages written zero-copy and over gRPC, read back bit-exact, isolation and quota shown,
// everything released. Exits non-zero if any check fails.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/admin_client.h"
#include "client/client.h"
#include "gpu/math/dtype.h"

namespace kvkeep {
namespace {

int failures = 0;

void Check(bool ok, const std::string& what) {
  std::printf("  [%s] %s\n", ok ? " ok " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

// `n` bytes of fp16 keys/values drawn from a normal distribution (real activations are finite:
// the daemon rejects NaN/Inf when it scores them).
std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::string out(n, '\0');
  for (size_t i = 0; i + 1 < n; i += 2) {
    const uint16_t bits = gpu_math::FloatToHalfBits(normal(rng));
    std::memcpy(&out[i], &bits, 2);
  }
  return out;
}

constexpr char kUsage[] =
    "usage: kvkeep-demo [--socket PATH] [--admin-token-file FILE]\n"
    "\n"
    "A short tour of a running kvkeepd (see README): two tenants, one worker each; pages\n"
    "written zero-copy and over gRPC, read back bit-exact, isolation and quota, compression,\n"
    "spill and restore, a shared prefix, and everything released. Exits 0 when every check\n"
    "passes, 1 when one fails, 2 on a usage error.\n"
    "\n"
    "flags:\n"
    "  --socket PATH            kvkeepd's Unix socket (default: ./kvkeep-data/kvkeepd.sock)\n"
    "  --admin-token-file FILE  file holding the admin token (default: ./kvkeep-data/admin.token)\n"
    "  --help, -h               print this help and exit\n";

struct DemoFlags {
  std::string socket = "./kvkeep-data/kvkeepd.sock";
  std::string token_file = "./kvkeep-data/admin.token";
};

// Parses the command line into `flags`: -1 to go on, else the exit code (0 after --help, 2 after
// a usage error, with the reason on stderr).
int ParseFlags(int argc, char** argv, DemoFlags* flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    std::string* value = a == "--socket"             ? &flags->socket
                         : a == "--admin-token-file" ? &flags->token_file
                                                     : nullptr;
    if (value == nullptr) {
      std::fprintf(stderr, "kvkeep-demo: unknown flag '%s'\n%s", a.c_str(), kUsage);
      return 2;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "kvkeep-demo: %s needs a value\n%s", a.c_str(), kUsage);
      return 2;
    }
    *value = argv[++i];
  }
  return -1;
}

constexpr uint32_t kTokens = 100;
constexpr uint64_t kTokenBytes = 64 * 2;  // head_dim 64, fp16

std::string DemoKeys(uint32_t layer, uint32_t head) {
  return RandomBytes(kTokens * kTokenBytes, layer * 2 + head);
}
std::string DemoValues(uint32_t layer, uint32_t head) {
  return RandomBytes(kTokens * kTokenBytes, layer * 2 + head + 1000);
}

// What the steps of the tour share.
struct Demo {
  ChannelOptions channel;
  std::unique_ptr<AdminClient> admin;
  v1::CreateTenantReply tenant_a, tenant_b;
  std::unique_ptr<Client> a, b;  // workers of demo-a and demo-b
  std::string zero_copy, bytes_path;  // demo-a's sequences
  uint64_t first_page = 0;            // a page of zero_copy
  std::string shared_id;              // demo-b's sequence on the shared prefix
};

bool CreateTenants(Demo& d) {
  std::printf("1. Tenants (admin API)\n");
  for (const char* name : {"demo-a", "demo-b"}) {
    d.admin->DeleteTenant(name, /*force=*/true).IgnoreError();  // from an earlier run
  }
  v1::CreateTenantRequest ra;
  ra.set_name("demo-a");
  ra.set_quota_bytes(8 << 20);
  ra.set_max_bytes(64 << 20);
  ra.set_spill_quota_bytes(64 << 20);
  ra.set_sharing_group("demo");
  auto ta = d.admin->CreateTenant(ra);
  v1::CreateTenantRequest rb;
  rb.set_name("demo-b");
  rb.set_max_bytes(1 << 20);  // deliberately small: shows the quota
  rb.set_sharing_group("demo");
  auto tb = d.admin->CreateTenant(rb);
  if (!ta.ok() || !tb.ok()) {
    std::fprintf(stderr, "kvkeep-demo: cannot create tenants: %s\n",
                 (!ta.ok() ? ta.status() : tb.status()).ToString().c_str());
    return false;
  }
  d.tenant_a = *std::move(ta);
  d.tenant_b = *std::move(tb);
  Check(true,
        "created demo-a (8 MiB guaranteed, 64 MiB max) and demo-b (1 MiB max), sharing group demo");
  return true;
}

bool AttachAndRegister(Demo& d) {
  std::printf("2. Workers attach and register a model\n");
  auto wa = Client::Attach(d.channel, d.tenant_a.token(), "demo-worker-a");
  auto wb = Client::Attach(d.channel, d.tenant_b.token(), "demo-worker-b");
  if (!wa.ok() || !wb.ok()) {
    std::fprintf(stderr, "kvkeep-demo: attach failed: %s\n",
                 (!wa.ok() ? wa.status() : wb.status()).ToString().c_str());
    return false;
  }
  d.a = *std::move(wa);
  d.b = *std::move(wb);
  Check(!d.a->session_id().empty(), "worker a session " + d.a->session_id().substr(0, 8) + "...");
  v1::ModelLayout layout;
  layout.set_name("tiny-llama");
  layout.set_layers(4);
  layout.set_q_heads(8);
  layout.set_kv_heads(2);
  layout.set_head_dim(64);
  layout.set_dtype(v1::DTYPE_FP16);
  layout.set_tokens_per_page(16);
  layout.mutable_rope()->set_theta(500000);
  auto reg = d.a->RegisterModel(layout);
  Check(reg.ok(), absl::StrCat("model tiny-llama: 4 layers x 2 KV heads, head_dim 64, fp16, ",
                               reg.ok() ? reg->geometry().page_bytes() : 0, "-byte pages"));
  Check(d.b->RegisterModel(layout).ok(), "demo-b registers the same model for itself");
  return true;
}

bool WriteBothPaths(Demo& d) {
  Client& a = *d.a;
  std::printf("3. Write %u tokens into every (layer, KV head) by both paths\n", kTokens);
  auto zero_copy = a.CreateSequence("tiny-llama");
  auto bytes_path = a.CreateSequence("tiny-llama");
  if (!zero_copy.ok() || !bytes_path.ok()) {
    std::fprintf(stderr, "kvkeep-demo: CreateSequence failed: %s\n",
                 (!zero_copy.ok() ? zero_copy.status() : bytes_path.status()).ToString().c_str());
    return false;
  }
  d.zero_copy = *zero_copy;
  d.bytes_path = *bytes_path;
  auto alloc1 = a.Allocate(d.zero_copy, kTokens);
  auto alloc2 = a.Allocate(d.bytes_path, kTokens);
  Check(alloc1.ok() && alloc2.ok(),
        absl::StrCat("allocated pages: ", alloc1.ok() ? alloc1->heads_size() : 0, " heads x ",
                     alloc1.ok() && alloc1->heads_size() ? alloc1->heads(0).pages_size() : 0,
                     " pages each, per sequence"));
  if (alloc1.ok() && alloc1->heads_size() > 0 && alloc1->heads(0).pages_size() > 0) {
    d.first_page = alloc1->heads(0).pages(0);  // step 5 tries to read it as demo-b
  }
  bool written = true;
  for (uint32_t layer = 0; layer < 4; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      const std::string k = DemoKeys(layer, head);
      const std::string v = DemoValues(layer, head);
      written &= a.WriteInPlace(d.zero_copy, layer, head, 0, kTokens, k.data(), v.data()).ok();
      written &= a.WriteHead(d.bytes_path, layer, head, 0, kTokens, k.data(), v.data()).ok();
    }
  }
  Check(written, "zero-copy: memcpy into the mapped shared memory; bytes path: WriteKV stream");
  Check(a.Commit(d.zero_copy, kTokens).ok() && a.Commit(d.bytes_path, kTokens).ok(),
        "CommitTokens: tokens are now readable");
  return true;
}

void ReadBackAndCompare(Demo& d) {
  std::printf("4. Read back over ReadKV and compare\n");
  bool exact = true;
  for (const std::string& seq : {d.zero_copy, d.bytes_path}) {
    for (uint32_t layer = 0; layer < 4; ++layer) {
      for (uint32_t head = 0; head < 2; ++head) {
        auto back = d.a->ReadHead(seq, layer, head);
        exact &= back.ok() && back->keys == DemoKeys(layer, head) &&
                 back->values == DemoValues(layer, head) && back->positions.size() == kTokens &&
                 back->positions.back() == kTokens - 1;
      }
    }
  }
  Check(exact, "both sequences read back bit-exact, with positions 0..99");
}

void ShowIsolationAndQuota(Demo& d) {
  std::printf("5. Isolation and quota\n");
  Client& b = *d.b;
  auto foreign = b.GetSequence(d.zero_copy, false);
  Check(foreign.status().code() == absl::StatusCode::kNotFound,
        "demo-b asking for demo-a's sequence: " + foreign.status().ToString());
  v1::ReadRequest steal;
  steal.add_pages(d.first_page);
  auto stolen = b.ReadKV(steal);
  Check(stolen.status().code() == absl::StatusCode::kPermissionDenied,
        "demo-b reading demo-a's page: " + stolen.status().ToString());
  auto small = b.CreateSequence("tiny-llama");
  auto over = small.ok() ? b.Allocate(*small, 4096) : small.status();
  Check(over.status().code() == absl::StatusCode::kResourceExhausted,
        "demo-b allocating 4096 tokens: " + over.status().ToString());
}

void Compress(Demo& d) {
  std::printf("6. Compress: SnapKV with Ada-KV allocation keeps 25 %% of the zero-copy sequence\n");
  Client& a = *d.a;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<v1::LayerStats> stats(4);
  for (uint32_t layer = 0; layer < 4; ++layer) {
    stats[layer].set_layer(layer);
    stats[layer].set_window(32);
    for (int i = 0; i < 8 * 32 * 64; ++i) stats[layer].add_window_queries(normal(rng));
  }
  Check(a.PutStats(d.zero_copy, stats).ok(), "PutStats: window queries of the last 32 positions");
  v1::Policy policy;
  policy.set_scorer("snapkv");
  policy.set_allocation("ada");
  policy.set_keep_ratio(0.25);
  auto compressed = a.Compress(d.zero_copy, policy);
  Check(compressed.ok(),
        compressed.ok()
            ? absl::StrCat("kept ", compressed->summary().tokens_after(), " of ",
                           compressed->summary().tokens_before(), " (layer, head, token)s, freed ",
                           compressed->summary().pages_freed(), " pages in ",
                           absl::StrFormat("%.2f", 1e3 * compressed->summary().seconds()), " ms")
            : compressed.status().ToString());
  auto head = a.ReadHead(d.zero_copy, 0, 0);
  bool ascending = head.ok() && !head->positions.empty();
  for (size_t i = 1; head.ok() && i < head->positions.size(); ++i) {
    ascending &= head->positions[i - 1] < head->positions[i];
  }
  Check(ascending, absl::StrCat("layer 0 head 0 now holds ", head.ok() ? head->positions.size() : 0,
                                " tokens, original positions kept in order"));
}

void SpillAndRestore(Demo& d) {
  std::printf("7. Spill to RocksDB and restore\n");
  Client& a = *d.a;
  v1::SpillRequest spill;
  spill.set_session_id(a.session_id());
  spill.set_sequence_id(d.bytes_path);
  auto ctx = MakeCallContext(d.tenant_a.token());
  v1::SpillReply spilled;
  grpc::Status st = a.stub().Spill(ctx.get(), spill, &spilled);
  Check(st.ok(), st.ok() ? absl::StrCat("spilled ", spilled.bytes(), " bytes durably, ",
                                        spilled.pages_freed(), " device pages freed")
                         : st.error_message());
  Check(a.Acquire(d.bytes_path).ok(), "Acquire restored it transparently (checksums verified)");
  bool same = true;
  for (uint32_t layer = 0; layer < 4; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      auto back = a.ReadHead(d.bytes_path, layer, head);
      same &= back.ok() && back->keys == DemoKeys(layer, head);
    }
  }
  Check(same, "restored sequence is bit-exact");
}

void SharePrefix(Demo& d) {
  std::printf("8. Shared prefix: demo-a publishes its prompt's pages, demo-b reuses them\n");
  std::vector<uint32_t> prompt(96);  // token ids of the first 6 full pages (16 tokens each)
  for (uint32_t i = 0; i < prompt.size(); ++i) prompt[i] = 1000 + i;
  auto published = d.a->PublishPrefix(d.bytes_path, prompt);
  Check(published.ok() && published->shared_pages() == 6,
        published.ok() ? absl::StrCat("demo-a published ", published->shared_pages(),
                                      " pages per head (96 tokens) into the group")
                       : published.status().ToString());
  auto reused = d.b->CreateSequenceWithPrefix("tiny-llama", prompt);
  Check(reused.ok() && reused->shared_tokens() == 96,
        reused.ok() ? absl::StrCat("demo-b's new sequence starts with ", reused->shared_tokens(),
                                   " shared tokens")
                    : reused.status().ToString());
  bool same_pages = published.ok() && reused.ok() &&
                    reused->heads_size() == published->table().heads_size();
  for (int h = 0; same_pages && h < reused->heads_size(); ++h) {
    for (int i = 0; same_pages && i < 6; ++i) {
      same_pages = reused->heads(h).pages(i) == published->table().heads(h).pages(i);
    }
  }
  Check(same_pages, "both tables list the very same pages: nothing was copied for demo-b");
  bool exact = reused.ok();
  if (reused.ok()) {
    d.shared_id = reused->sequence_id();
    for (uint32_t layer = 0; layer < 4; ++layer) {
      for (uint32_t head = 0; head < 2; ++head) {
        auto back = d.b->ReadHead(d.shared_id, layer, head);
        exact &= back.ok() &&
                 back->keys == DemoKeys(layer, head).substr(0, size_t{96} * kTokenBytes);
      }
    }
  }
  Check(exact, "demo-b reads demo-a's prefix bit-exact (mapped read-only)");
  auto tenants = d.admin->ListTenants();
  auto now = d.admin->GetStatus();
  uint64_t charged = 0;
  if (tenants.ok()) {
    for (const auto& t : tenants->tenants()) charged += t.shared_charge_bytes();
  }
  Check(tenants.ok() && now.ok() && charged == now->shared_bytes_referenced() && charged > 0,
        absl::StrCat("each sharer is charged half: ", charged, " bytes charged in all = ",
                     now.ok() ? now->shared_bytes_referenced() : 0, " shared bytes"));
}

void Release(Demo& d) {
  auto status = d.admin->GetStatus();
  std::printf("9. Release\n");
  if (status.ok()) {
    std::printf("  pool before: %llu pages in use, %llu bytes\n",
                static_cast<unsigned long long>(status->pages_in_use()),
                static_cast<unsigned long long>(status->pool_used_bytes()));
  }
  if (!d.shared_id.empty()) {
    Check(d.b->Drop(d.shared_id).ok(), "demo-b dropped its shared-prefix sequence");
  }
  auto d1 = d.a->Drop(d.zero_copy);
  auto d2 = d.a->Drop(d.bytes_path);
  Check(d1.ok() && d2.ok(), absl::StrCat("dropped both sequences, ",
                                         d1.ok() ? d1->pages_freed() : 0, " + ",
                                         d2.ok() ? d2->pages_freed() : 0, " pages freed"));
  d.b->Close();
  d.a->Close();
  status = d.admin->GetStatus();
  Check(status.ok() && status->shared_pages_referenced() == 0 &&
            status->pages_in_use() == status->shared_pages_cached(),
        status.ok() ? absl::StrCat("pool after: ", status->pages_in_use(),
                                   " pages in use, all of them unreferenced shared prefix pages "
                                   "(cached for later lookups, charged to nobody, freed first "
                                   "under pressure)")
                    : status.status().ToString());
  d.admin->DeleteTenant("demo-a", true).IgnoreError();
  d.admin->DeleteTenant("demo-b", true).IgnoreError();
}

int Run(int argc, char** argv) {
  DemoFlags flags;
  if (const int code = ParseFlags(argc, argv, &flags); code >= 0) return code;
  std::ifstream in(flags.token_file);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string admin_token(absl::StripAsciiWhitespace(ss.str()));
  if (admin_token.empty()) {
    std::fprintf(stderr, "kvkeep-demo: cannot read the admin token from %s\n",
                 flags.token_file.c_str());
    return 2;
  }
  Demo d;
  d.channel = ChannelOptions{.target = "unix:" + flags.socket};
  d.admin = AdminClient::Connect(d.channel, admin_token);
  if (!CreateTenants(d) || !AttachAndRegister(d) || !WriteBothPaths(d)) return 1;
  ReadBackAndCompare(d);
  ShowIsolationAndQuota(d);
  Compress(d);
  SpillAndRestore(d);
  SharePrefix(d);
  Release(d);
  std::printf("\n%s\n", failures == 0 ? "demo passed: kvkeepd works" : "demo FAILED");
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace kvkeep

int main(int argc, char** argv) { return kvkeep::Run(argc, argv); }
