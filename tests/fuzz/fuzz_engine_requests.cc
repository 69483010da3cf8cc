// The CacheEngine's request surface (service/cache_engine.h) driven by sequences of parsed requests
// from two tenants, each with two registered models and a live session.
//
// Input: commands [u8 op][u8 flags][u8 sequence pick][u8 session pick][u16 length][proto bytes].
//   flags bit 0: the caller is tenant "tb" (else "ta");
//   flags bit 1: keep the request's own session_id / worker name / tenant name (else the caller's
//                session picked by index, so calls get past the session check);
//   flags bit 2: keep the request's own sequence_id / pages / arena (else a sequence created
//                earlier in this input, of either tenant, picked by index);
//   flags bit 3: no session_id where it is optional.
// The engine is created once per process (CPU backend, small pool, MetadataStore on tmpfs) and
// reset before every input (and every kResetEvery commands), so an input replays the same way.
//
// Invariants after every command: no sanitizer report; an error status has a message; the pool,
// pages and tenants' accounting agree (pages_in_use * page_bytes == pool_used_bytes ==
// Σ tenants' used_bytes); no call of one tenant on another's sequence, pages or arenas succeeds,
// and GetSequence / ReadKV of another tenant's sequence is NOT_FOUND; page tables are consistent;
// after a reset the pool is empty (nothing leaked).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gpu/backend.h"
#include "gpu/cpu/cpu_backend.h"
#include "kvkeep/v1/admin.pb.h"
#include "kvkeep/v1/kvcache.pb.h"
#include "service/engine/cache_engine.h"
#include "service/engine/model_layout.h"
#include "service/storage/metadata_store.h"
#include "tests/fuzz/fuzz_input.h"

namespace kvkeep::fuzz {
namespace {

constexpr uint64_t kPageBytes = 128;  // every model registered here has 128-byte pages
constexpr int kResetEvery = 64;
constexpr int kMaxCommands = 256;
constexpr int kMaxChunksPerRead = 4096;
const char* const kTenants[2] = {"ta", "tb"};
const char* const kTokens[2] = {"fuzz-token-tenant-a-0123456789", "fuzz-token-tenant-b-0123456789"};

class NullSink : public SessionSink {
 public:
  void ArenaAdded(const ArenaInfo&) override {}
  void End(const absl::Status&) override {}
};

struct Known {
  std::string id;
  int owner;
};

enum Op : uint8_t {
  kCreateSequence, kAllocate, kCommit, kWrite, kReadSequence, kReadPages, kPutStats, kCompress,
  kGetSequence, kAcquire, kRelease, kDrop, kSpill, kRestore, kAttach, kEndSession, kSetPolicy,
  kSetQuota, kRegisterModel, kGetArena, kAdminSpill, kAdminRestore, kAdminDrop, kCreateTenant,
  kList, kAdminGetSequence, kAdminCompress, kValidatePolicy, kOpCount
};

class World {
 public:
  World() {
    dir_ = absl::StrCat(std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp",
                        "/kvkeep-fuzz-engine-", getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    store_ = Must(MetadataStore::Open(dir_ + "/db"));
    backend_ = Must(CreateBackend(
        {.kind = BackendKind::kCpu, .shm_prefix = absl::StrCat("kvkeep-fuzz-", getpid())}));
    EngineOptions options;
    options.pool = {.capacity_bytes = 512 << 10, .arena_bytes = 16 << 10};
    options.max_message_bytes = 128 << 10;
    options.max_sequences_per_tenant = 512;
    options.max_sessions_per_tenant = 64;
    engine_ = Must(CacheEngine::Create(backend_.get(), store_.get(), options));
    Rebuild();
  }

  void Run(FuzzInput& in) {
    Reset();
    int n = 0;
    while (!in.empty() && n < kMaxCommands) {
      if (++n % kResetEvery == 0) Reset();
      const uint8_t op = in.U8(), flags = in.U8(), seq_pick = in.U8(), session_pick = in.U8();
      const std::string payload = in.Record();
      Execute(static_cast<Op>(op % kOpCount), flags, seq_pick, session_pick, payload);
    }
  }

 private:
  template <typename T>
  static T Must(absl::StatusOr<T> v) {
    if (!v.ok()) Fail(__FILE__, __LINE__, v.status().ToString());
    return std::move(*v);
  }

  // Deletes every tenant and creates the two of the harness again (after an input changed
  // persisted state: models, quotas, policies, tenants).
  void Rebuild() {
    const v1::ListTenantsReply tenants = engine_->ListTenants();
    for (const v1::TenantInfo& t : tenants.tenants()) {
      absl::Status deleted = engine_->DeleteTenant(t.name(), /*force=*/true).status();
      FUZZ_CHECK(deleted.ok(), deleted.ToString());
    }
    v1::DaemonStatus s = engine_->Status();
    FUZZ_CHECK(s.pool_used_bytes() == 0 && s.pages_in_use() == 0,
               "pages left after every tenant was deleted: " + s.ShortDebugString());
    FUZZ_CHECK(s.sessions() == 0 && s.sequences() == 0, s.ShortDebugString());
    for (int t = 0; t < 2; ++t) {
      v1::CreateTenantRequest r;
      r.set_name(kTenants[t]);
      r.set_token(kTokens[t]);
      Must(engine_->CreateTenant(r));
      for (const char* name : {"m", "g"}) {
        v1::ModelLayout l;
        l.set_name(name);
        l.set_layers(2);
        const bool gqa = name[0] == 'g';
        l.set_q_heads(gqa ? 4 : 2);
        l.set_kv_heads(2);
        l.set_head_dim(gqa ? 4 : 8);
        l.set_dtype(gqa ? v1::DTYPE_FP32 : v1::DTYPE_FP16);
        l.set_tokens_per_page(4);
        l.mutable_rope()->set_theta(10000);
        Model m = Must(Model::FromLayout(l));
        FUZZ_CHECK(m.geometry().page_bytes == kPageBytes, "harness model page size");
        Must(engine_->RegisterModel(kTenants[t], std::move(m)));
      }
    }
    dirty_ = false;
  }

  // Ends every session and drops every sequence; the pool must then be empty.
  void Reset() {
    for (int t = 0; t < 2; ++t) {
      for (const std::string& id : sessions_[t]) engine_->EndSession(id);
      sessions_[t].clear();
    }
    if (dirty_) {
      Rebuild();
    } else {
      const v1::ListSequencesReply all = engine_->ListSequences("");
      for (const v1::SequenceInfo& info : all.sequences()) {
        v1::SequenceRef ref;
        ref.set_tenant(info.tenant());
        ref.set_sequence_id(info.sequence_id());
        ref.set_force(true);
        absl::Status dropped = engine_->AdminDrop(ref).status();
        FUZZ_CHECK(dropped.ok(), dropped.ToString());
      }
      v1::DaemonStatus s = engine_->Status();
      FUZZ_CHECK(s.pool_used_bytes() == 0 && s.pages_in_use() == 0 && s.sequences() == 0,
                 "pages leaked: every sequence was dropped but " + s.ShortDebugString());
      for (const v1::TenantInfo& t : s.tenant_usage()) {
        FUZZ_CHECK(t.used_bytes() == 0 && t.used_pages() == 0,
                   "tenant still charged after dropping everything: " + t.ShortDebugString());
      }
    }
    known_.clear();
    for (int t = 0; t < 2; ++t) {
      auto attached = Must(engine_->Attach(kTenants[t], "w0", &sink_));
      sessions_[t].push_back(attached.session_id);
    }
  }

  const std::string& Session(int caller, uint8_t pick) const {
    static const std::string kNone;
    const auto& list = sessions_[caller];
    return list.empty() ? kNone : list[pick % list.size()];
  }

  void Execute(Op op, uint8_t flags, uint8_t seq_pick, uint8_t session_pick,
               const std::string& payload) {
    const int caller = flags & 1;
    const std::string& tenant = kTenants[caller];
    const bool raw_session = flags & 2, raw_sequence = flags & 4, no_session = flags & 8;
    // The sequence the request names, when the harness picked it (a copy: known_ may grow).
    std::optional<Known> picked;
    if (!raw_sequence && !known_.empty()) picked = known_[seq_pick % known_.size()];
    const Known* target = picked.has_value() ? &*picked : nullptr;
    auto fix = [&](auto* request, bool session_optional) {
      if (!raw_session) {
        request->set_session_id(session_optional && no_session ? ""
                                                               : Session(caller, session_pick));
      }
      if (target != nullptr) request->set_sequence_id(target->id);
    };
    // The sequence a request named, whoever picked it.
    std::string named;
    absl::Status status;

    switch (op) {
      case kCreateSequence: {
        v1::CreateSequenceRequest r;
        if (!r.ParseFromString(payload)) return;
        if (!raw_session) r.set_session_id(Session(caller, session_pick));
        if (!raw_sequence) r.set_model(seq_pick % 2 ? "g" : "m");
        auto table = engine_->CreateSequence(tenant, r);
        status = table.status();
        if (table.ok()) {
          known_.push_back({table->sequence_id(), caller});
          CheckTable(*table);
        }
        break;
      }
      case kAllocate: {
        v1::AllocateRequest r;
        if (!r.ParseFromString(payload)) return;
        fix(&r, true);
        if (!raw_sequence) r.set_tokens(r.tokens() % 512);  // stay inside the small pool mostly
        named = r.sequence_id();
        status = engine_->AllocatePages(tenant, r).status();
        break;
      }
      case kCommit: {
        v1::CommitRequest r;
        if (!r.ParseFromString(payload)) return;
        fix(&r, true);
        named = r.sequence_id();
        auto reply = engine_->CommitTokens(tenant, r);
        status = reply.status();
        if (reply.ok() && reply->has_compressed()) CheckTable(reply->compressed().table());
        break;
      }
      case kWrite: {
        v1::KvChunk r;
        if (!r.ParseFromString(payload)) return;
        fix(&r, true);
        if (!raw_sequence) {
          // Right-sized keys and values so the write reaches the pages (token_bytes is 16 for
          // both harness models).
          const uint32_t count = r.token_count() % 64;
          r.set_token_count(count);
          r.set_token_offset(r.token_offset() % 128);
          r.set_layer(r.layer() % 3);
          r.set_kv_head(r.kv_head() % 3);
          std::string bytes = r.keys();
          bytes.resize(size_t{count} * 16, static_cast<char>(caller ? 0xbb : 0xaa));
          r.set_keys(bytes);
          r.set_values(bytes);
        }
        named = r.sequence_id();
        status = engine_->WriteChunk(tenant, r);
        break;
      }
      case kReadSequence:
      case kReadPages: {
        v1::ReadRequest r;
        if (!r.ParseFromString(payload)) return;
        if (op == kReadPages) {
          if (!raw_sequence) {
            r.clear_sequence_id();
            r.clear_pages();
            if (target != nullptr) {
              auto table = engine_->GetSequence(kTenants[target->owner], target->id, false);
              if (table.ok()) {
                for (const auto& h : table->heads()) {
                  for (uint64_t p : h.pages()) r.add_pages(p);
                }
              }
            }
          }
          if (r.pages_size() == 0) return;
        } else {
          if (target != nullptr) r.set_sequence_id(target->id);
          named = r.sequence_id();
        }
        status = Drain(tenant, r, target);
        if (op == kReadPages && target != nullptr && target->owner != caller) {
          FUZZ_CHECK(!status.ok(), "tenant " + tenant + " read pages of another tenant's sequence");
        }
        break;
      }
      case kPutStats: {
        v1::StatsChunk r;
        if (!r.ParseFromString(payload)) return;
        if (target != nullptr) r.set_sequence_id(target->id);
        named = r.sequence_id();
        status = engine_->PutStats(tenant, r);
        break;
      }
      case kCompress: {
        v1::CompressRequest r;
        if (!r.ParseFromString(payload)) return;
        fix(&r, true);
        named = r.sequence_id();
        auto reply = engine_->Compress(tenant, r);
        status = reply.status();
        if (reply.ok()) CheckTable(reply->table());
        break;
      }
      case kGetSequence: {
        v1::GetSequenceRequest r;
        if (!r.ParseFromString(payload)) return;
        if (target != nullptr) r.set_sequence_id(target->id);
        named = r.sequence_id();
        auto table = engine_->GetSequence(tenant, r.sequence_id(), r.with_positions());
        status = table.status();
        if (table.ok()) CheckTable(*table);
        break;
      }
      case kAcquire: {
        v1::AcquireRequest r;
        if (!r.ParseFromString(payload)) return;
        fix(&r, false);
        named = r.sequence_id();
        auto table = engine_->Acquire(tenant, r);
        status = table.status();
        if (table.ok()) CheckTable(*table);
        break;
      }
      case kRelease: {
        v1::ReleaseRequest r;
        if (!r.ParseFromString(payload)) return;
        fix(&r, false);
        named = r.sequence_id();
        status = engine_->Release(tenant, r).status();
        break;
      }
      case kDrop: {
        v1::DropRequest r;
        if (!r.ParseFromString(payload)) return;
        fix(&r, true);
        named = r.sequence_id();
        status = engine_->Drop(tenant, r).status();
        break;
      }
      case kSpill: {
        v1::SpillRequest r;
        if (!r.ParseFromString(payload)) return;
        fix(&r, true);
        named = r.sequence_id();
        status = engine_->Spill(tenant, r).status();
        break;
      }
      case kRestore: {
        v1::RestoreRequest r;
        if (!r.ParseFromString(payload)) return;
        fix(&r, true);
        named = r.sequence_id();
        auto table = engine_->Restore(tenant, r);
        status = table.status();
        if (table.ok()) CheckTable(*table);
        break;
      }
      case kAttach: {
        v1::AttachRequest r;
        if (!r.ParseFromString(payload)) return;
        const std::string worker =
            raw_session ? r.worker_name() : absl::StrCat("w", session_pick % 4);
        auto attached = engine_->Attach(tenant, worker, &sink_);
        status = attached.status();
        if (attached.ok()) {
          auto& list = sessions_[caller];
          std::erase(list, attached->superseded_session_id);
          list.push_back(attached->session_id);
        }
        break;
      }
      case kEndSession: {
        if (raw_session) {
          engine_->EndSession(payload);
        } else if (!sessions_[caller].empty()) {
          auto& list = sessions_[caller];
          const size_t i = session_pick % list.size();
          engine_->EndSession(list[i]);
          list.erase(list.begin() + static_cast<long>(i));
        }
        break;
      }
      case kSetPolicy: {
        v1::SetPolicyRequest r;
        if (!r.ParseFromString(payload)) return;
        if (!raw_session) r.set_tenant(tenant);
        status = engine_->SetPolicy(r).status();
        dirty_ |= status.ok();
        break;
      }
      case kSetQuota: {
        v1::SetQuotaRequest r;
        if (!r.ParseFromString(payload)) return;
        if (!raw_session) r.set_name(tenant);
        status = engine_->SetQuota(r).status();
        dirty_ |= status.ok();
        break;
      }
      case kRegisterModel: {
        v1::ModelChunk r;
        if (!r.ParseFromString(payload) || !r.has_layout()) return;
        auto model = Model::FromLayout(r.layout());
        status = model.status();
        // Only 128-byte pages, so that pages_in_use * page_bytes == pool_used_bytes stays a check.
        if (!model.ok() || model->geometry().page_bytes != kPageBytes) break;
        status = engine_->RegisterModel(tenant, std::move(*model)).status();
        dirty_ = true;
        break;
      }
      case kGetArena: {
        uint32_t arena = 0;
        FuzzInput bytes(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
        arena = bytes.U16() | (uint32_t{bytes.U16()} << 16);
        int owner = -1;
        if (!raw_sequence && target != nullptr) {
          auto table = engine_->GetSequence(kTenants[target->owner], target->id, false);
          if (!table.ok()) return;
          for (const auto& h : table->heads()) {
            if (h.pages_size() == 0) continue;
            arena = static_cast<uint32_t>(h.pages(0) >> 32);
            owner = target->owner;  // an arena that holds the target's pages
          }
        }
        status = engine_->GetArena(tenant, arena).status();
        if (owner >= 0 && owner != caller) {
          FUZZ_CHECK(!status.ok() && status.code() != absl::StatusCode::kNotFound,
                     "GetArena of another tenant's arena: " + status.ToString());
        }
        break;
      }
      case kAdminSpill:
      case kAdminRestore:
      case kAdminDrop: {
        v1::SequenceRef r;
        if (!r.ParseFromString(payload)) return;
        if (!raw_session) r.set_tenant(tenant);
        if (target != nullptr) r.set_sequence_id(target->id);
        if (r.tenant() == tenant) named = r.sequence_id();
        if (op == kAdminSpill) status = engine_->AdminSpill(r).status();
        if (op == kAdminRestore) status = engine_->AdminRestore(r).status();
        if (op == kAdminDrop) status = engine_->AdminDrop(r).status();
        break;
      }
      case kAdminGetSequence: {
        v1::SequenceRef r;
        if (!r.ParseFromString(payload)) return;
        if (!raw_session) r.set_tenant(tenant);
        if (target != nullptr) r.set_sequence_id(target->id);
        if (r.tenant() == tenant) named = r.sequence_id();
        status = engine_->AdminGetSequence(r).status();
        break;
      }
      case kAdminCompress: {
        v1::CompressSequenceRequest r;
        if (!r.ParseFromString(payload)) return;
        if (!raw_session) r.set_tenant(tenant);
        if (target != nullptr) r.set_sequence_id(target->id);
        if (r.tenant() == tenant) named = r.sequence_id();
        auto reply = engine_->AdminCompress(r);
        status = reply.status();
        if (reply.ok()) CheckTable(reply->table());
        break;
      }
      case kValidatePolicy: {
        v1::SetPolicyRequest r;
        if (!r.ParseFromString(payload)) return;
        if (!raw_session) r.set_tenant(tenant);
        auto before = engine_->GetPolicy(r.tenant());
        status = engine_->ValidatePolicy(r).status();
        auto after = engine_->GetPolicy(r.tenant());
        // Validation applies nothing.
        FUZZ_CHECK(before.ok() == after.ok() &&
                       (!before.ok() || before->SerializeAsString() == after->SerializeAsString()),
                   "ValidatePolicy changed the stored policy");
        // It accepts exactly what SetPolicy's checks accept.
        FUZZ_CHECK(status.ok() || status.code() == absl::StatusCode::kInvalidArgument ||
                       status.code() == absl::StatusCode::kNotFound,
                   "ValidatePolicy: " + status.ToString());
        break;
      }
      case kCreateTenant: {
        v1::CreateTenantRequest r;
        if (!r.ParseFromString(payload)) return;
        status = engine_->CreateTenant(r).status();
        dirty_ |= status.ok();
        break;
      }
      case kList: {
        engine_->ListSequences(raw_session ? payload : tenant);
        engine_->ListTenants();
        break;
      }
      case kOpCount:
        return;
    }
    if (trace_) {
      std::fprintf(stderr, "op %d tenant %s seq %s: %s\n", static_cast<int>(op), tenant.c_str(),
                   named.c_str(), status.ToString().c_str());
    }
    FUZZ_CHECK_STATUS_MESSAGE(status);
    if (!named.empty()) CheckNotCrossTenant(caller, named, status, op);
    CheckAccounting();
    if (target != nullptr) CheckIsolation(*target);
  }

  absl::Status Drain(const std::string& tenant, const v1::ReadRequest& r, const Known* target) {
    auto cursor = engine_->OpenRead(tenant, r);
    if (!cursor.ok()) return cursor.status();
    v1::KvChunk chunk;
    for (int i = 0; i < kMaxChunksPerRead; ++i) {
      absl::StatusOr<bool> more = (*cursor)->Next(&chunk);
      FUZZ_CHECK_STATUS_MESSAGE(more.status());
      if (!more.ok()) return more.status();
      if (!*more) break;
      FUZZ_CHECK(chunk.token_count() > 0, "empty chunk");
      FUZZ_CHECK(chunk.keys().size() == chunk.values().size() &&
                     chunk.keys().size() % chunk.token_count() == 0,
                 "chunk sizes: " + std::to_string(chunk.keys().size()));
      if (r.pages_size() == 0) {
        FUZZ_CHECK(chunk.sequence_id() == r.sequence_id(), "chunk of another sequence");
        FUZZ_CHECK(static_cast<uint32_t>(chunk.positions_size()) == chunk.token_count(),
                   "chunk positions");
      }
      // Bytes a tenant wrote are tagged 0xaa (ta) / 0xbb (tb): the other tenant's never show.
      const char foreign = tenant == kTenants[0] ? static_cast<char>(0xbb) : static_cast<char>(0xaa);
      if (target != nullptr && chunk.keys().find(std::string(16, foreign)) != std::string::npos) {
        Fail(__FILE__, __LINE__, "tenant " + tenant + " read bytes written by the other tenant");
      }
    }
    return absl::OkStatus();
  }

  // A call of `caller` naming a sequence another harness tenant created must not succeed.
  void CheckNotCrossTenant(int caller, const std::string& id, const absl::Status& status, Op op) {
    for (const Known& k : known_) {
      if (k.id == id && k.owner != caller) {
        FUZZ_CHECK(!status.ok(), absl::StrCat("op ", op, " of tenant ", kTenants[caller],
                                              " succeeded on sequence ", id, " of tenant ",
                                              kTenants[k.owner]));
      }
    }
  }

  void CheckAccounting() {
    const v1::DaemonStatus s = engine_->Status();
    FUZZ_CHECK(s.pages_in_use() * kPageBytes == s.pool_used_bytes(),
               "pages_in_use * page_bytes != pool_used_bytes: " + s.ShortDebugString());
    uint64_t used = 0, pages = 0;
    for (const v1::TenantInfo& t : s.tenant_usage()) {
      used += t.used_bytes();
      pages += t.used_pages();
    }
    FUZZ_CHECK(used == s.pool_used_bytes(),
               "tenants' used_bytes != pool_used_bytes: " + s.ShortDebugString());
    FUZZ_CHECK(pages == s.pages_in_use(), "tenants' used_pages != pages_in_use: " +
                                              s.ShortDebugString());
    FUZZ_CHECK(s.pool_used_bytes() <= s.pool_capacity_bytes(), "pool over capacity");
  }

  void CheckIsolation(const Known& k) {
    const std::string& other = kTenants[1 - k.owner];
    auto theirs = engine_->GetSequence(other, k.id, true);
    FUZZ_CHECK(theirs.status().code() == absl::StatusCode::kNotFound,
               "GetSequence of another tenant's sequence: " + theirs.status().ToString());
    v1::ReadRequest r;
    r.set_sequence_id(k.id);
    auto cursor = engine_->OpenRead(other, r);
    FUZZ_CHECK(cursor.status().code() == absl::StatusCode::kNotFound,
               "ReadKV of another tenant's sequence: " + cursor.status().ToString());
    auto mine = engine_->GetSequence(kTenants[k.owner], k.id, true);
    if (mine.ok()) CheckTable(*mine);
  }

  static void CheckTable(const v1::PageTable& t) {
    for (const v1::HeadTable& h : t.heads()) {
      FUZZ_CHECK(h.token_count() <= h.capacity(), "head holds more tokens than its room");
      if (h.pages_size() > 0) {
        FUZZ_CHECK(h.capacity() % h.pages_size() == 0, "capacity is not whole pages");
      } else {
        FUZZ_CHECK(h.capacity() == 0, "capacity without pages");
      }
      if (h.positions_size() > 0) {
        FUZZ_CHECK(static_cast<uint32_t>(h.positions_size()) == h.token_count(), "positions");
        for (int i = 0; i < h.positions_size(); ++i) {
          FUZZ_CHECK(h.positions(i) >= 0 &&
                         static_cast<uint64_t>(h.positions(i)) < t.next_position(),
                     "position past next_position");
          FUZZ_CHECK(i == 0 || h.positions(i) > h.positions(i - 1), "positions not ascending");
        }
      }
    }
  }

  std::string dir_;
  std::unique_ptr<MetadataStore> store_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<CacheEngine> engine_;
  NullSink sink_;
  std::vector<std::string> sessions_[2];
  std::vector<Known> known_;
  bool dirty_ = false;
  // KVKEEP_FUZZ_TRACE=1: print every command and its status (to read a reproducer).
  const bool trace_ = std::getenv("KVKEEP_FUZZ_TRACE") != nullptr;

 public:
  const std::string& dir() const { return dir_; }
};

World* TheWorld() {
  static World* world = [] {
    World* w = new World();  // lives for the process; its directory goes at exit
    static std::string dir = w->dir();
    // The engine is never destroyed (libFuzzer may exit from any input); its arenas and
    // metadata go here.
    std::atexit([] {
      RemoveStaleArenas(absl::StrCat("kvkeep-fuzz-", getpid()));
      std::filesystem::remove_all(dir);
    });
    return w;
  }();
  return world;
}

}  // namespace
}  // namespace kvkeep::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  kvkeep::fuzz::SilenceProtobufLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvkeep::fuzz::FuzzInput in(data, size);
  kvkeep::fuzz::TheWorld()->Run(in);
  return 0;
}
