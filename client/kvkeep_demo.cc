// kvkeep-demo: a short tour of kvkeepd for the README's quick start. Two tenants, one worker
// each; pages written zero-copy and over gRPC, read back bit-exact, isolation and quota shown,
// everything released. Exits non-zero if any check fails.
#include <cstdio>
#include <cstring>
#include <fstream>
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

int Run(int argc, char** argv) {
  std::string socket = "./kvkeep-data/kvkeepd.sock";
  std::string token_file = "./kvkeep-data/admin.token";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--socket" && i + 1 < argc) {
      socket = argv[++i];
    } else if (a == "--admin-token-file" && i + 1 < argc) {
      token_file = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: kvkeep-demo [--socket PATH] [--admin-token-file FILE]\n"
                   "Runs a short tour against a running kvkeepd (see README).\n");
      return 2;
    }
  }
  std::ifstream in(token_file);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string admin_token(absl::StripAsciiWhitespace(ss.str()));
  if (admin_token.empty()) {
    std::fprintf(stderr, "kvkeep-demo: cannot read the admin token from %s\n", token_file.c_str());
    return 2;
  }
  ChannelOptions channel{.target = "unix:" + socket};
  auto admin = AdminClient::Connect(channel, admin_token);

  std::printf("1. Tenants (admin API)\n");
  for (const char* name : {"demo-a", "demo-b"}) {
    admin->DeleteTenant(name, /*force=*/true).IgnoreError();  // from an earlier run
  }
  v1::CreateTenantRequest ra;
  ra.set_name("demo-a");
  ra.set_quota_bytes(8 << 20);
  ra.set_max_bytes(64 << 20);
  ra.set_spill_quota_bytes(64 << 20);
  ra.set_sharing_group("demo");
  auto ta = admin->CreateTenant(ra);
  v1::CreateTenantRequest rb;
  rb.set_name("demo-b");
  rb.set_max_bytes(1 << 20);  // deliberately small: shows the quota
  rb.set_sharing_group("demo");
  auto tb = admin->CreateTenant(rb);
  if (!ta.ok() || !tb.ok()) {
    std::fprintf(stderr, "kvkeep-demo: cannot create tenants: %s\n",
                 (!ta.ok() ? ta.status() : tb.status()).ToString().c_str());
    return 1;
  }
  Check(true,
        "created demo-a (8 MiB guaranteed, 64 MiB max) and demo-b (1 MiB max), sharing group demo");

  std::printf("2. Workers attach and register a model\n");
  auto wa = Client::Attach(channel, ta->token(), "demo-worker-a");
  auto wb = Client::Attach(channel, tb->token(), "demo-worker-b");
  if (!wa.ok() || !wb.ok()) {
    std::fprintf(stderr, "kvkeep-demo: attach failed: %s\n",
                 (!wa.ok() ? wa.status() : wb.status()).ToString().c_str());
    return 1;
  }
  Client& a = **wa;
  Client& b = **wb;
  Check(!a.session_id().empty(), "worker a session " + a.session_id().substr(0, 8) + "...");
  v1::ModelLayout layout;
  layout.set_name("tiny-llama");
  layout.set_layers(4);
  layout.set_q_heads(8);
  layout.set_kv_heads(2);
  layout.set_head_dim(64);
  layout.set_dtype(v1::DTYPE_FP16);
  layout.set_tokens_per_page(16);
  layout.mutable_rope()->set_theta(500000);
  auto reg = a.RegisterModel(layout);
  Check(reg.ok(), absl::StrCat("model tiny-llama: 4 layers x 2 KV heads, head_dim 64, fp16, ",
                               reg.ok() ? reg->geometry().page_bytes() : 0, "-byte pages"));
  Check(b.RegisterModel(layout).ok(), "demo-b registers the same model for itself");

  const uint32_t tokens = 100;
  const uint64_t token_bytes = 64 * 2;
  std::printf("3. Write %u tokens into every (layer, KV head) by both paths\n", tokens);
  auto zero_copy = a.CreateSequence("tiny-llama");
  auto bytes_path = a.CreateSequence("tiny-llama");
  if (!zero_copy.ok() || !bytes_path.ok()) {
    std::fprintf(stderr, "kvkeep-demo: CreateSequence failed: %s\n",
                 (!zero_copy.ok() ? zero_copy.status() : bytes_path.status()).ToString().c_str());
    return 1;
  }
  auto alloc1 = a.Allocate(*zero_copy, tokens);
  auto alloc2 = a.Allocate(*bytes_path, tokens);
  Check(alloc1.ok() && alloc2.ok(),
        absl::StrCat("allocated pages: ", alloc1.ok() ? alloc1->heads_size() : 0, " heads x ",
                     alloc1.ok() && alloc1->heads_size() ? alloc1->heads(0).pages_size() : 0,
                     " pages each, per sequence"));
  bool written = true;
  for (uint32_t layer = 0; layer < 4; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      uint32_t seed = layer * 2 + head;
      std::string k = RandomBytes(tokens * token_bytes, seed);
      std::string v = RandomBytes(tokens * token_bytes, seed + 1000);
      written &= a.WriteInPlace(*zero_copy, layer, head, 0, tokens, k.data(), v.data()).ok();
      written &= a.WriteHead(*bytes_path, layer, head, 0, tokens, k.data(), v.data()).ok();
    }
  }
  Check(written, "zero-copy: memcpy into the mapped shared memory; bytes path: WriteKV stream");
  Check(a.Commit(*zero_copy, tokens).ok() && a.Commit(*bytes_path, tokens).ok(),
        "CommitTokens: tokens are now readable");

  std::printf("4. Read back over ReadKV and compare\n");
  bool exact = true;
  for (const std::string& seq : {*zero_copy, *bytes_path}) {
    for (uint32_t layer = 0; layer < 4; ++layer) {
      for (uint32_t head = 0; head < 2; ++head) {
        uint32_t seed = layer * 2 + head;
        auto back = a.ReadHead(seq, layer, head);
        exact &= back.ok() && back->keys == RandomBytes(tokens * token_bytes, seed) &&
                 back->values == RandomBytes(tokens * token_bytes, seed + 1000) &&
                 back->positions.size() == tokens && back->positions.back() == tokens - 1;
      }
    }
  }
  Check(exact, "both sequences read back bit-exact, with positions 0..99");

  std::printf("5. Isolation and quota\n");
  auto foreign = b.GetSequence(*zero_copy, false);
  Check(foreign.status().code() == absl::StatusCode::kNotFound,
        "demo-b asking for demo-a's sequence: " + foreign.status().ToString());
  v1::ReadRequest steal;
  steal.add_pages(alloc1->heads(0).pages(0));
  auto stolen = b.ReadKV(steal);
  Check(stolen.status().code() == absl::StatusCode::kPermissionDenied,
        "demo-b reading demo-a's page: " + stolen.status().ToString());
  auto small = b.CreateSequence("tiny-llama");
  auto over = small.ok() ? b.Allocate(*small, 4096) : small.status();
  Check(over.status().code() == absl::StatusCode::kResourceExhausted,
        "demo-b allocating 4096 tokens: " + over.status().ToString());

  std::printf("6. Compress: SnapKV with Ada-KV allocation keeps 25 %% of the zero-copy sequence\n");
  {
    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    std::vector<v1::LayerStats> stats(4);
    for (uint32_t layer = 0; layer < 4; ++layer) {
      stats[layer].set_layer(layer);
      stats[layer].set_window(32);
      for (int i = 0; i < 8 * 32 * 64; ++i) stats[layer].add_window_queries(normal(rng));
    }
    Check(a.PutStats(*zero_copy, stats).ok(), "PutStats: window queries of the last 32 positions");
    v1::Policy policy;
    policy.set_scorer("snapkv");
    policy.set_allocation("ada");
    policy.set_keep_ratio(0.25);
    auto compressed = a.Compress(*zero_copy, policy);
    Check(compressed.ok(),
          compressed.ok()
              ? absl::StrCat("kept ", compressed->summary().tokens_after(), " of ",
                             compressed->summary().tokens_before(), " (layer, head, token)s, freed ",
                             compressed->summary().pages_freed(), " pages in ",
                             absl::StrFormat("%.2f", 1e3 * compressed->summary().seconds()), " ms")
              : compressed.status().ToString());
    auto head = a.ReadHead(*zero_copy, 0, 0);
    bool ascending = head.ok() && !head->positions.empty();
    for (size_t i = 1; head.ok() && i < head->positions.size(); ++i) {
      ascending &= head->positions[i - 1] < head->positions[i];
    }
    Check(ascending, absl::StrCat("layer 0 head 0 now holds ", head.ok() ? head->positions.size() : 0,
                                  " tokens, original positions kept in order"));
  }

  std::printf("7. Spill to RocksDB and restore\n");
  {
    v1::SpillRequest spill;
    spill.set_session_id(a.session_id());
    spill.set_sequence_id(*bytes_path);
    auto ctx = MakeCallContext(ta->token());
    v1::SpillReply spilled;
    grpc::Status st = a.stub().Spill(ctx.get(), spill, &spilled);
    Check(st.ok(), st.ok() ? absl::StrCat("spilled ", spilled.bytes(), " bytes durably, ",
                                          spilled.pages_freed(), " device pages freed")
                           : st.error_message());
    Check(a.Acquire(*bytes_path).ok(), "Acquire restored it transparently (checksums verified)");
    bool same = true;
    for (uint32_t layer = 0; layer < 4; ++layer) {
      for (uint32_t head = 0; head < 2; ++head) {
        auto back = a.ReadHead(*bytes_path, layer, head);
        same &= back.ok() && back->keys == RandomBytes(tokens * token_bytes, layer * 2 + head);
      }
    }
    Check(same, "restored sequence is bit-exact");
  }

  std::printf("8. Shared prefix: demo-a publishes its prompt's pages, demo-b reuses them\n");
  std::string shared_id;
  {
    std::vector<uint32_t> prompt(96);  // token ids of the first 6 full pages (16 tokens each)
    for (uint32_t i = 0; i < prompt.size(); ++i) prompt[i] = 1000 + i;
    auto published = a.PublishPrefix(*bytes_path, prompt);
    Check(published.ok() && published->shared_pages() == 6,
          published.ok() ? absl::StrCat("demo-a published ", published->shared_pages(),
                                        " pages per head (96 tokens) into the group")
                         : published.status().ToString());
    auto reused = b.CreateSequenceWithPrefix("tiny-llama", prompt);
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
      shared_id = reused->sequence_id();
      for (uint32_t layer = 0; layer < 4; ++layer) {
        for (uint32_t head = 0; head < 2; ++head) {
          auto back = b.ReadHead(shared_id, layer, head);
          exact &= back.ok() &&
                   back->keys == RandomBytes(tokens * token_bytes, layer * 2 + head)
                                     .substr(0, size_t{96} * token_bytes);
        }
      }
    }
    Check(exact, "demo-b reads demo-a's prefix bit-exact (mapped read-only)");
    auto tenants = admin->ListTenants();
    auto now = admin->GetStatus();
    uint64_t charged = 0;
    if (tenants.ok()) {
      for (const auto& t : tenants->tenants()) charged += t.shared_charge_bytes();
    }
    Check(tenants.ok() && now.ok() && charged == now->shared_bytes_referenced() && charged > 0,
          absl::StrCat("each sharer is charged half: ", charged, " bytes charged in all = ",
                       now.ok() ? now->shared_bytes_referenced() : 0, " shared bytes"));
  }

  auto status = admin->GetStatus();
  std::printf("9. Release\n");
  if (status.ok()) {
    std::printf("  pool before: %llu pages in use, %llu bytes\n",
                static_cast<unsigned long long>(status->pages_in_use()),
                static_cast<unsigned long long>(status->pool_used_bytes()));
  }
  if (!shared_id.empty()) Check(b.Drop(shared_id).ok(), "demo-b dropped its shared-prefix sequence");
  auto d1 = a.Drop(*zero_copy);
  auto d2 = a.Drop(*bytes_path);
  Check(d1.ok() && d2.ok(), absl::StrCat("dropped both sequences, ",
                                         d1.ok() ? d1->pages_freed() : 0, " + ",
                                         d2.ok() ? d2->pages_freed() : 0, " pages freed"));
  b.Close();
  a.Close();
  status = admin->GetStatus();
  Check(status.ok() && status->shared_pages_referenced() == 0 &&
            status->pages_in_use() == status->shared_pages_cached(),
        status.ok() ? absl::StrCat("pool after: ", status->pages_in_use(),
                                   " pages in use, all of them unreferenced shared prefix pages "
                                   "(cached for later lookups, charged to nobody, freed first "
                                   "under pressure)")
                    : status.status().ToString());
  admin->DeleteTenant("demo-a", true).IgnoreError();
  admin->DeleteTenant("demo-b", true).IgnoreError();

  std::printf("\n%s\n", failures == 0 ? "demo passed: kvkeepd works" : "demo FAILED");
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace kvkeep

int main(int argc, char** argv) { return kvkeep::Run(argc, argv); }
