// Writes the seed corpora of the fuzz targets: valid (and a few invalid) requests in each target's
// input layout (see the targets' headers and fuzz_input.h), so fuzzing starts from deep states.
//
//   fuzz_make_seeds tests/fuzz/corpus    # writes corpus/<target>/<name>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kvkeep/v1/admin.pb.h"
#include "kvkeep/v1/kvcache.pb.h"
#include "tests/fuzz/fuzz_input.h"

namespace kvkeep::fuzz {
namespace {

std::string root;

void Write(const std::string& target, const std::string& name, const std::string& bytes) {
  const std::string dir = root + "/" + target;
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
}

std::string Rec(const google::protobuf::Message& m) {
  std::string out;
  AppendRecord(m.SerializeAsString(), &out);
  return out;
}

v1::ModelLayout Layout(uint32_t head_dim) {
  v1::ModelLayout l;
  l.set_name("llama-tiny");
  l.set_layers(2);
  l.set_q_heads(4);
  l.set_kv_heads(2);
  l.set_head_dim(head_dim);
  l.set_dtype(v1::DTYPE_BF16);
  l.set_tokens_per_page(16);
  l.mutable_rope()->set_theta(500000);
  return l;
}

void ModelSeeds() {
  v1::ModelChunk layout;
  *layout.mutable_layout() = Layout(4);
  Write("fuzz_model_layout", "layout", Rec(layout));
  v1::ModelChunk gram;
  gram.mutable_wo_gram()->set_layer(1);
  gram.mutable_wo_gram()->set_q_head(3);
  for (int i = 0; i < 16; ++i) gram.mutable_wo_gram()->add_values(i % 5 == 0 ? 1.0f : 0.125f);
  Write("fuzz_model_layout", "layout-gram", Rec(layout) + Rec(gram));
  v1::ModelChunk rope = layout;
  rope.mutable_layout()->mutable_rope()->set_rotary_dim(2);
  rope.mutable_layout()->mutable_rope()->add_inv_freq(0.5f);
  rope.mutable_layout()->mutable_rope()->set_interleaved(true);
  Write("fuzz_model_layout", "rope-inv-freq", Rec(rope) + Rec(gram) + Rec(gram));
  v1::ModelChunk bad = layout;
  bad.mutable_layout()->set_kv_heads(3);
  Write("fuzz_model_layout", "bad-gqa", Rec(bad));
}

void PolicySeeds() {
  auto pair = [](const v1::Policy& request, const v1::Policy& def) {
    return Rec(request) + def.SerializeAsString();
  };
  v1::Policy snap, none, h2o, capkv, laprox, both;
  snap.set_scorer("snapkv");
  snap.set_keep_ratio(0.5);
  snap.set_window(8);
  snap.set_pool_kernel(5);
  h2o.set_scorer("h2o");
  h2o.set_max_tokens(64);
  h2o.set_sinks(2);
  capkv.set_scorer("capkv-greedy");
  capkv.set_allocation("ada");
  capkv.set_ada_alpha(0.3);
  capkv.set_seed(7);
  laprox.set_scorer("laprox");
  laprox.set_allocation("pyramid");
  laprox.set_keep_ratio(0.25);
  both.set_keep_ratio(0.5);
  both.set_max_tokens(3);
  Write("fuzz_policy", "request-only", pair(snap, none));
  Write("fuzz_policy", "default-only", pair(none, h2o));
  Write("fuzz_policy", "merge", pair(capkv, laprox));
  Write("fuzz_policy", "no-budget", pair(capkv, none));
  Write("fuzz_policy", "both-budgets", pair(both, h2o));
}

// fuzz_layer_stats: model 2 layers, 4 q heads, 2 KV heads, head_dim 4, 4 tokens per page.
std::string StatsCommand(uint8_t op, uint8_t arg, const v1::LayerStats& s) {
  std::string out{static_cast<char>(op), static_cast<char>(arg)};
  return out + Rec(s);
}

void StatsSeeds() {
  const std::string header{12, 1, 5};  // 12 tokens, head 1 compacted to 8
  v1::LayerStats window;
  window.set_layer(0);
  window.set_window(2);
  for (int i = 0; i < 4 * 2 * 4; ++i) window.add_window_queries(0.25f * (i % 7) - 0.5f);
  v1::LayerStats moments;
  moments.set_layer(1);
  moments.set_query_count(3);
  for (int i = 0; i < 16; ++i) {
    moments.add_query_sum(0.5 * i - 3);
    moments.add_query_sq_sum(0.25 * i);
  }
  v1::LayerStats mass;
  mass.set_layer(1);
  for (int i = 0; i < 4 * 12; ++i) mass.add_attention_mass(1.0f / (1 + i % 12));
  v1::LayerStats mass0;
  mass0.set_layer(0);
  for (int i = 0; i < 12 + 12 + 8 + 8; ++i) mass0.add_attention_mass(0.1f * (i % 9));
  Write("fuzz_layer_stats", "window", header + StatsCommand(0, 0, window));
  Write("fuzz_layer_stats", "all",
        header + StatsCommand(0, 0, mass) + StatsCommand(0, 0, mass0) +
            StatsCommand(0, 0, window) + StatsCommand(0, 0, moments) +
            StatsCommand(1, 4, moments));
  v1::LayerStats empty;
  Write("fuzz_layer_stats", "commit-compact",
        header + StatsCommand(2, 3, empty) + StatsCommand(1, 2, window) +
            std::string{3, 2} + std::string{1, 0, 0x5a} + StatsCommand(0, 0, moments));
}

// fuzz_engine_requests: [op][flags][sequence pick][session pick][record].
enum Op : uint8_t {
  kCreateSequence, kAllocate, kCommit, kWrite, kReadSequence, kReadPages, kPutStats, kCompress,
  kGetSequence, kAcquire, kRelease, kDrop, kSpill, kRestore, kAttach, kEndSession, kSetPolicy,
  kSetQuota, kRegisterModel, kGetArena, kAdminSpill, kAdminRestore, kAdminDrop, kCreateTenant,
  kList,
};

std::string Cmd(Op op, uint8_t flags, uint8_t seq, const google::protobuf::Message& m,
                uint8_t session = 0) {
  std::string out{static_cast<char>(op), static_cast<char>(flags), static_cast<char>(seq),
                  static_cast<char>(session)};
  return out + Rec(m);
}

void EngineSeeds() {
  v1::CreateSequenceRequest create;
  v1::AllocateRequest alloc;
  alloc.set_tokens(24);
  v1::CommitRequest commit;
  commit.set_tokens(16);
  v1::KvChunk write;
  write.set_token_count(16);
  write.set_layer(1);
  write.set_kv_head(1);
  v1::ReadRequest read;
  read.set_max_chunk_bytes(200);
  v1::StatsChunk stats;
  stats.mutable_stats()->set_layer(0);
  stats.mutable_stats()->set_window(2);
  for (int i = 0; i < 2 * 2 * 8; ++i) stats.mutable_stats()->add_window_queries(0.1f * i);
  v1::StatsChunk stats1 = stats;
  stats1.mutable_stats()->set_layer(1);
  v1::CompressRequest compress;
  compress.mutable_policy()->set_scorer("snapkv");
  compress.mutable_policy()->set_keep_ratio(0.5);
  compress.mutable_policy()->set_window(2);
  compress.mutable_policy()->set_sinks(1);
  v1::CompressRequest knorm;
  knorm.mutable_policy()->set_scorer("knorm");
  knorm.mutable_policy()->set_max_tokens(5);
  knorm.mutable_policy()->set_allocation("ada");
  v1::GetSequenceRequest get;
  get.set_with_positions(true);
  v1::AcquireRequest acquire;
  v1::ReleaseRequest release;
  v1::DropRequest drop;
  v1::SpillRequest spill;
  v1::RestoreRequest restore;

  const std::string fill = Cmd(kCreateSequence, 0, 0, create) + Cmd(kAllocate, 0, 0, alloc) +
                           Cmd(kWrite, 0, 0, write) + Cmd(kCommit, 0, 0, commit);
  Write("fuzz_engine_requests", "lifecycle",
        fill + Cmd(kReadSequence, 0, 0, read) + Cmd(kReadPages, 0, 0, read) +
            Cmd(kPutStats, 0, 0, stats) + Cmd(kPutStats, 0, 0, stats1) +
            Cmd(kCompress, 0, 0, compress) + Cmd(kGetSequence, 0, 0, get) +
            Cmd(kAcquire, 0, 0, acquire) + Cmd(kRelease, 0, 0, release) + Cmd(kDrop, 0, 0, drop));
  // Tenant tb aims every call at ta's sequence.
  Write("fuzz_engine_requests", "cross-tenant",
        fill + Cmd(kGetSequence, 1, 0, get) + Cmd(kReadSequence, 1, 0, read) +
            Cmd(kReadPages, 1, 0, read) + Cmd(kWrite, 1, 0, write) + Cmd(kCommit, 1, 0, commit) +
            Cmd(kAllocate, 1, 0, alloc) + Cmd(kPutStats, 1, 0, stats) +
            Cmd(kCompress, 1, 0, compress) + Cmd(kAcquire, 1, 0, acquire) +
            Cmd(kRelease, 1, 0, release) + Cmd(kDrop, 1, 0, drop) + Cmd(kGetArena, 1, 0, drop) +
            Cmd(kAdminDrop, 1, 0, drop));
  // Decode-time eviction: the tenant default caps heads at 4 tokens.
  v1::SetPolicyRequest policy;
  policy.mutable_policy()->set_scorer("knorm");
  policy.mutable_policy()->set_max_tokens(4);
  policy.mutable_policy()->set_sinks(1);
  policy.mutable_policy()->set_window(1);
  v1::CommitRequest commit4;
  commit4.set_tokens(4);
  Write("fuzz_engine_requests", "decode-eviction",
        Cmd(kSetPolicy, 0, 0, policy) + Cmd(kCreateSequence, 0, 1, create) +
            Cmd(kAllocate, 0, 0, alloc) + Cmd(kCommit, 0, 0, commit4) +
            Cmd(kCommit, 0, 0, commit4) + Cmd(kCommit, 0, 0, commit4) +
            Cmd(kCompress, 0, 0, knorm) + Cmd(kReadSequence, 0, 0, read));
  // Sessions: a second worker, supersede, end; quotas; another tenant; spill without a tier.
  v1::AttachRequest attach;
  attach.set_worker_name("w1");
  v1::SetQuotaRequest quota;
  quota.set_max_bytes(2048);
  v1::CreateTenantRequest tenant;
  tenant.set_name("tc");
  tenant.set_quota_bytes(64 << 10);
  v1::ModelChunk model;
  *model.mutable_layout() = Layout(4);
  model.mutable_layout()->set_tokens_per_page(4);
  model.mutable_layout()->set_dtype(v1::DTYPE_FP32);
  create.set_retain(true);
  Write("fuzz_engine_requests", "sessions-quota",
        Cmd(kAttach, 0, 0, attach, 1) + Cmd(kCreateSequence, 0, 0, create, 1) +
            Cmd(kSetQuota, 0, 0, quota) + Cmd(kAllocate, 0, 0, alloc, 1) +
            Cmd(kCreateTenant, 0, 0, tenant) + Cmd(kAllocate, 0, 0, alloc, 1) +
            Cmd(kEndSession, 0, 0, attach, 1) + Cmd(kSpill, 0, 0, spill) +
            Cmd(kRestore, 0, 0, restore) + Cmd(kAdminSpill, 0, 0, drop) +
            Cmd(kRegisterModel, 1, 0, model) + Cmd(kList, 0, 0, drop) +
            Cmd(kAcquire, 0, 0, acquire, 0) + Cmd(kEndSession, 0, 0, attach, 0));
}

// fuzz_arena_channel: [u8 mode][datagram records]; 32 'A'/'B' bytes stand for the real tickets.
void ArenaChannelSeeds() {
  auto attach = [](char who) {
    v1::ArenaChannelRequest r;
    r.set_attach(std::string(32, who));
    return Rec(r);
  };
  auto arena = [](uint32_t id) {
    v1::ArenaChannelRequest r;
    r.set_arena_id(id);
    return Rec(r);
  };
  Write("fuzz_arena_channel", "alpha-own-group-foreign",
        std::string(1, '\0') + attach('A') + arena(1) + arena(10) + arena(20) + arena(99) +
            attach('A'));
  Write("fuzz_arena_channel", "beta-asks-alpha", std::string(1, '\0') + attach('B') + arena(20) +
                                                     arena(1) + arena(10));
  Write("fuzz_arena_channel", "no-attach", std::string(1, '\0') + arena(1));
  v1::ArenaChannelReply ok;
  ok.mutable_arena()->set_arena_id(1);
  ok.mutable_arena()->set_kind(v1::HOST_MEMFD);
  Write("fuzz_arena_channel", "reply-with-fd", std::string(1, '\3') + Rec(ok) + attach('A'));
}

// Bulk channel input is the raw byte stream of a peer: 4-byte little-endian lengths, messages and
// the raw bytes the writes announce.
std::string Frame(const google::protobuf::Message& m, size_t raw_bytes = 0) {
  const std::string bytes = m.SerializeAsString();
  std::string out;
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((bytes.size() >> (8 * i)) & 0xff));
  return out + bytes + std::string(raw_bytes, 'k');
}

void BulkFrameSeeds() {
  v1::BulkRequest attach;
  attach.set_attach(std::string(32, 'T'));
  v1::BulkRequest write;
  for (uint32_t i = 0; i < 2; ++i) {
    v1::BulkChunk* c = write.mutable_write()->add_chunks();
    c->mutable_header()->set_sequence_id("seq-1");
    c->mutable_header()->set_layer(i);
    c->mutable_header()->set_token_count(2);
    c->set_key_bytes(32);
    c->set_value_bytes(32);
  }
  v1::BulkRequest end;
  end.set_end_writes(true);
  v1::BulkRequest read;
  read.mutable_read()->set_sequence_id("seq-1");
  read.mutable_read()->set_max_chunk_bytes(4096);
  Write("fuzz_bulk_frame", "attach-write-end-read",
        Frame(attach) + Frame(write, 128) + Frame(end) + Frame(read));
  Write("fuzz_bulk_frame", "write-before-attach", Frame(write, 128));
  Write("fuzz_bulk_frame", "truncated-write", Frame(attach) + Frame(write, 50));
}

}  // namespace
}  // namespace kvkeep::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_make_seeds <corpus dir>\n");
    return 2;
  }
  kvkeep::fuzz::root = argv[1];
  kvkeep::fuzz::ModelSeeds();
  kvkeep::fuzz::PolicySeeds();
  kvkeep::fuzz::StatsSeeds();
  kvkeep::fuzz::EngineSeeds();
  kvkeep::fuzz::ArenaChannelSeeds();
  kvkeep::fuzz::BulkFrameSeeds();
  return 0;
}
