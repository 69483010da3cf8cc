// `kvkeep-bench fleet --sequence` (fleet_seq_bench.h).
#include "bench/fleet_seq_bench.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "bench/bench_daemon.h"
#include "client/admin_client.h"
#include "client/client.h"
#include "common/status_macros.h"

namespace kvkeep::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kGroup[] = "bench";
constexpr char kSecret[] = "kvkeep-bench fleet sequence secret";
constexpr char kModel[] = "llama-fleet";

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

v1::ModelLayout Layout(bool smoke) {
  v1::ModelLayout layout;
  layout.set_name(kModel);
  layout.set_layers(smoke ? 2 : 32);
  layout.set_q_heads(smoke ? 4 : 32);
  layout.set_kv_heads(smoke ? 2 : 8);
  layout.set_head_dim(128);
  layout.set_dtype(v1::DTYPE_BF16);
  layout.set_tokens_per_page(16);
  layout.mutable_rope()->set_theta(500000);
  return layout;
}

// One node: a kvkeepd with the fleet tier, a tenant of the bench group, a worker.
struct Node {
  std::unique_ptr<Daemon> daemon;
  std::unique_ptr<Client> worker;
};

absl::StatusOr<Node> StartNode(const FleetSeqOptions& o, const std::string& name,
                               const std::string& password_file, uint64_t pool_mib) {
  Node node;
  ASSIGN_OR_RETURN(node.daemon,
                   Daemon::Start(FindDaemon(o.kvkeepd), pool_mib, 4,
                                 {"--fleet_redis=" + o.seeds, "--fleet_user=" + o.user,
                                  "--fleet_password_file=" + password_file,
                                  "--node_name=" + name, "--fleet_fetch_timeout_ms=60000",
                                  "--fleet_queue_mb=2048", "--low_free=0", "--high_free=0"}));
  const ChannelOptions channel{.target = node.daemon->target()};
  auto admin = AdminClient::Connect(channel, node.daemon->admin_token());
  RETURN_IF_ERROR(admin->SetGroupSecret(kGroup, kSecret).status());
  v1::CreateTenantRequest tenant;
  tenant.set_name("t-" + name);
  tenant.set_sharing_group(kGroup);
  ASSIGN_OR_RETURN(v1::CreateTenantReply created, admin->CreateTenant(tenant));
  ASSIGN_OR_RETURN(node.worker, Client::Attach(channel, created.token(), "w-" + name));
  RETURN_IF_ERROR(node.worker->RegisterModel(Layout(o.smoke)).status());
  return node;
}

// A new sequence of `tokens` tokens holding `keys`/`values` (per head: tokens x 128 bf16).
absl::StatusOr<std::string> WriteFresh(Client& c, const v1::ModelLayout& layout, uint32_t tokens,
                                       const std::string& keys, const std::string& values) {
  ASSIGN_OR_RETURN(std::string seq, c.CreateSequence(kModel));
  RETURN_IF_ERROR(c.Allocate(seq, tokens).status());
  for (uint32_t l = 0; l < layout.layers(); ++l) {
    for (uint32_t h = 0; h < layout.kv_heads(); ++h) {
      RETURN_IF_ERROR(c.WriteInPlace(seq, l, h, 0, tokens, keys.data(), values.data()));
    }
  }
  RETURN_IF_ERROR(c.Commit(seq, tokens).status());
  return seq;
}

}  // namespace

absl::StatusOr<FleetSeqSamples> MeasureFleetSequence(const FleetSeqOptions& o) {
  const std::string password_file =
      absl::StrCat("/tmp/kvkeep-bench-fleet-", getpid(), ".password");
  std::ofstream(password_file) << o.password << "\n";
  const v1::ModelLayout layout = Layout(o.smoke);
  const uint64_t head_bytes = uint64_t{o.tokens} * layout.head_dim() * 2;  // keys (or values)
  FleetSeqSamples samples;
  samples.bytes = 2 * head_bytes * layout.layers() * layout.kv_heads();
  // Two sequences' pages (rounded up to whole 64 MiB arenas): see the header comment.
  const uint64_t pool_mib = 2 * ((samples.bytes + (uint64_t{64} << 20) - 1) >> 26) * 64;
  absl::StatusOr<Node> a = StartNode(o, "bench-a", password_file, pool_mib);
  absl::StatusOr<Node> b = a.ok() ? StartNode(o, "bench-b", password_file, pool_mib) : a.status();
  std::remove(password_file.c_str());
  if (!b.ok()) return b.status();
  std::mt19937_64 rng(7);
  std::string keys(head_bytes, 0), values(head_bytes, 0);
  for (char& c : keys) c = static_cast<char>(rng());
  for (char& c : values) c = static_cast<char>(rng());
  // Rep 0 is the warm-up (fresh pool pages), not counted.
  for (int rep = 0; rep <= o.reps; ++rep) {
    std::vector<uint32_t> prompt(o.tokens);
    for (uint32_t i = 0; i < o.tokens; ++i) prompt[i] = 1000u * (rep + 1) + i;
    // A: write, commit, publish; wait until B sees the whole prefix in the cluster.
    ASSIGN_OR_RETURN(std::string on_a, WriteFresh(*a->worker, layout, o.tokens, keys, values));
    RETURN_IF_ERROR(a->worker->PublishPrefix(on_a, prompt).status());
    bool there = false;
    for (absl::Time end = absl::Now() + absl::Seconds(120); !there && absl::Now() < end;
         absl::SleepFor(absl::Milliseconds(200))) {
      ASSIGN_OR_RETURN(v1::LookupPrefixReply seen, b->worker->LookupPrefix(kModel, prompt));
      there = seen.fleet_tokens() == o.tokens;
    }
    if (!there) return absl::DeadlineExceededError("A's prefix never appeared in the fleet");
    // B: the same bytes written fresh (kept until the import is done: see the header).
    auto t0 = Clock::now();
    ASSIGN_OR_RETURN(std::string fresh, WriteFresh(*b->worker, layout, o.tokens, keys, values));
    const double fresh_write = SecondsSince(t0);
    // B: from the fleet.
    t0 = Clock::now();
    ASSIGN_OR_RETURN(v1::PageTable imported, b->worker->CreateSequenceWithPrefix(kModel, prompt));
    const double from_fleet = SecondsSince(t0);
    if (imported.fleet_tokens() != o.tokens || imported.shared_tokens() != o.tokens) {
      return absl::InternalError(absl::StrCat("imported ", imported.fleet_tokens(), " of ",
                                              o.tokens, " tokens from the fleet"));
    }
    const uint32_t last = layout.kv_heads() - 1;
    std::string got_k(head_bytes, 0), got_v(head_bytes, 0);
    RETURN_IF_ERROR(b->worker->ReadInPlace(imported.sequence_id(), layout.layers() - 1, last, 0,
                                           o.tokens, got_k.data(), got_v.data()));
    if (got_k != keys || got_v != values) return absl::DataLossError("fleet bytes differ");
    RETURN_IF_ERROR(b->worker->Drop(fresh).status());
    RETURN_IF_ERROR(b->worker->Drop(imported.sequence_id()).status());
    RETURN_IF_ERROR(a->worker->Drop(on_a).status());
    std::fprintf(stderr, "fleet --sequence: rep %d/%d%s: fleet %.3f s, fresh %.3f s\n", rep,
                 o.reps, rep == 0 ? " (warm-up, not counted)" : "", from_fleet, fresh_write);
    if (rep == 0) {
      samples.cold_from_fleet = from_fleet;
      samples.cold_fresh_write = fresh_write;
    } else {
      samples.from_fleet.push_back(from_fleet);
      samples.fresh_write.push_back(fresh_write);
    }
  }
  a->worker->Close();
  b->worker->Close();
  return samples;
}

}  // namespace kvkeep::bench
