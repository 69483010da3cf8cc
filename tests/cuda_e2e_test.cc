// CUDA end to end (label gpu): the real kvkeepd with --backend=cuda, a worker (this process) that
// maps the daemon's device arenas, writes keys and values in place from host and from device
// memory, and reads them back bit-exact over ReadKV and in place. Run for both arena exports:
// --cuda_arena_kind=vmm (cuMemCreate allocations whose POSIX fds come over the arena channel) and
// ipc (cudaIpc handles). SKIPs with a message when the CUDA backend is not built, no device is
// present, or (vmm) the device or driver cannot export cuMemCreate allocations as fds.
#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/arena_channel_client.h"
#include "client/call_context.h"
#include "common/status_matchers.h"
#include "gpu/backend.h"
#include "gpu/gpu_uuid.h"
#include "gtest/gtest.h"
#include "kvkeep/v1/kvcache.grpc.pb.h"
#include "tests/daemon_process.h"

#if defined(KVKEEP_TEST_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "gpu/cuda/cuda_driver_api.h"
#endif

namespace kvkeep::testing {
namespace {

using absl::StatusCode;

constexpr uint64_t kTokenBytes = 8 * 2;  // TestLayout: head_dim 8, fp16

bool CudaDevicePresent() {
  BackendOptions options;
  options.kind = BackendKind::kCuda;
  return CreateBackend(options).ok();
}

bool CudaVmmArenasAvailable() {
  BackendOptions options;
  options.kind = BackendKind::kCuda;
  options.cuda_arena_kind = CudaArenaKind::kVmm;
  return CreateBackend(options).ok();
}

// The daemon's --cuda_arena_kind and the export kind workers must then receive.
struct ArenaKindCase {
  const char* flag;
  v1::ArenaKind kind;
};

// Test listings say "vmm" / "ipc", not the struct's bytes (a pointer that changes every build).
void PrintTo(const ArenaKindCase& c, std::ostream* os) { *os << c.flag; }

std::string CaseName(const ::testing::TestParamInfo<ArenaKindCase>& info) {
  return info.param.kind == v1::CUDA_VMM_FD ? "Vmm" : "Ipc";
}

// A raw Session of `token`, kept open so its arena channel stays attached.
struct RawSession {
  std::unique_ptr<v1::KvCache::Stub> stub;
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::ClientReader<v1::SessionEvent>> reader;
  std::unique_ptr<ArenaChannelClient> channel;
};

// Runs `args` as uid/gid `uid` (setgid + setuid in a forked child, before it touches CUDA),
// capturing stdout and stderr.
ProcessExit RunAs(uid_t uid, const std::vector<std::string>& args) {
  int out[2];
  ProcessExit result;
  if (pipe(out) != 0) return result;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(out[1], 2);
    close(out[0]);
    if (setgroups(0, nullptr) != 0 || setgid(uid) != 0 || setuid(uid) != 0) _exit(126);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  char buf[512];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof(buf))) > 0) result.out.append(buf, static_cast<size_t>(n));
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  result.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

class CudaEndToEndTest : public ::testing::TestWithParam<ArenaKindCase> {
 protected:
  void SetUp() override {
    if (!CudaDevicePresent()) {
      GTEST_SKIP() << "needs the CUDA backend and a CUDA device (built with CUDA: "
                   << (CudaBackendCompiled() ? "yes" : "no") << ")";
    }
    if (GetParam().kind == v1::CUDA_VMM_FD && !CudaVmmArenasAvailable()) {
      GTEST_SKIP() << "this device or driver cannot export cuMemCreate arenas as POSIX fds";
    }
    ASSERT_OK(daemon_.Start({"--backend=cuda",
                             absl::StrCat("--cuda_arena_kind=", GetParam().flag)}));
    ASSERT_OK_AND_ASSIGN(token_, daemon_.CreateTenant("gpu-tenant"));
  }

  std::unique_ptr<Client> Attach(const std::string& worker, const std::string& token = "") {
    auto client = Client::Attach(daemon_.channel(), token.empty() ? token_ : token, worker);
    EXPECT_OK(client);
    if (!client.ok()) return nullptr;
    EXPECT_OK((*client)->RegisterModel(TestLayout()));
    return std::move(*client);
  }

  // A session of `token` with its own arena channel, to fetch arena fds as a worker does.
  std::unique_ptr<RawSession> OpenRawSession(const std::string& token) {
    auto s = std::make_unique<RawSession>();
    s->stub = v1::KvCache::NewStub(MakeChannel(daemon_.channel()));
    s->context = MakeCallContext(token);
    v1::AttachRequest request;
    request.set_worker_name("raw-worker");
    s->reader = s->stub->Session(s->context.get(), request);
    v1::SessionEvent event;
    if (!s->reader->Read(&event) || !event.has_started()) return nullptr;
    auto channel = ArenaChannelClient::Connect(daemon_.dir() + "/kvkeepd.sock.arenas",
                                               event.started().attach_ticket());
    EXPECT_OK(channel);
    if (!channel.ok()) return nullptr;
    s->channel = *std::move(channel);
    return s;
  }

  // Maps an export as a worker would: by fd over the arena channel (CUDA_VMM_FD) or by handle.
  absl::StatusOr<std::shared_ptr<const ArenaMapping>> MapAsWorker(RawSession& session,
                                                                   const v1::ArenaExport& e) {
    if (e.kind() != v1::CUDA_VMM_FD) return ArenaMapping::Map(e);
    ASSIGN_OR_RETURN(ReceivedArena got, session.channel->Fetch(e.arena_id()));
    return ArenaMapping::MapFd(got.arena, std::move(got.fd));
  }

  DaemonProcess daemon_;
  std::string token_;
};

TEST_P(CudaEndToEndTest, DaemonReportsTheDevice) {
  ASSERT_OK_AND_ASSIGN(v1::DaemonStatus status, daemon_.Admin()->GetStatus());
  EXPECT_EQ(status.backend(), "cuda");
  EXPECT_NE(status.backend_device().find("GPU-"), std::string::npos) << status.backend_device();
}

TEST_P(CudaEndToEndTest, WorkerWritesInPlaceAndReadsBackBitExact) {
  auto c = Attach("worker-0");
  ASSERT_NE(c, nullptr);
  ASSERT_OK_AND_ASSIGN(std::string seq, c->CreateSequence("test-model"));
  constexpr uint32_t kTokens = 37;  // page tail not aligned (4 tokens per page)
  ASSERT_OK(c->Allocate(seq, kTokens));
  // The arenas are device memory exported the way the daemon was told, with the device UUID:
  // VMM arenas by fd only (nothing in the export opens them), IPC ones by a 64-byte handle.
  ASSERT_FALSE(c->MappedArenas().empty());
  for (uint32_t id : c->MappedArenas()) {
    ASSERT_OK_AND_ASSIGN(v1::ArenaExport e, c->GetArena(id));
    EXPECT_EQ(e.kind(), GetParam().kind);
    EXPECT_EQ(e.handle().size(), GetParam().kind == v1::CUDA_IPC ? 64u : 0u);
    EXPECT_TRUE(IsGpuUuid(e.device_uuid())) << e.device_uuid();
  }
  std::vector<std::string> keys, values;
  for (uint32_t layer = 0; layer < 2; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      keys.push_back(PatternBytes(10 + layer * 2 + head, kTokens * kTokenBytes));
      values.push_back(PatternBytes(20 + layer * 2 + head, kTokens * kTokenBytes));
      const std::string& k = keys.back();
      const std::string& v = values.back();
      if (layer == 0) {
        // From host memory.
        ASSERT_OK(c->WriteInPlace(seq, layer, head, 0, kTokens, k.data(), v.data()));
      } else {
#if defined(KVKEEP_TEST_HAVE_CUDA)
        // From device memory, as an inference worker would (cudaMemcpyDefault).
        void* dk = nullptr;
        void* dv = nullptr;
        ASSERT_EQ(cudaMalloc(&dk, k.size()), cudaSuccess);
        ASSERT_EQ(cudaMalloc(&dv, v.size()), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(dk, k.data(), k.size(), cudaMemcpyHostToDevice), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(dv, v.data(), v.size(), cudaMemcpyHostToDevice), cudaSuccess);
        ASSERT_OK(c->WriteInPlace(seq, layer, head, 0, kTokens, dk, dv));
        // And back in place into device memory.
        ASSERT_EQ(cudaMemset(dk, 0, k.size()), cudaSuccess);
        ASSERT_EQ(cudaMemset(dv, 0, v.size()), cudaSuccess);
        ASSERT_OK(c->ReadInPlace(seq, layer, head, 0, kTokens, dk, dv));
        std::string kb(k.size(), '\0'), vb(v.size(), '\0');
        ASSERT_EQ(cudaMemcpy(kb.data(), dk, k.size(), cudaMemcpyDeviceToHost), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(vb.data(), dv, v.size(), cudaMemcpyDeviceToHost), cudaSuccess);
        EXPECT_TRUE(kb == k);
        EXPECT_TRUE(vb == v);
        cudaFree(dk);
        cudaFree(dv);
#else
        ASSERT_OK(c->WriteInPlace(seq, layer, head, 0, kTokens, k.data(), v.data()));
#endif
      }
    }
  }
  ASSERT_OK(c->Commit(seq, kTokens));
  // The daemon reads what the worker wrote (ReadKV through the backend's staging).
  for (uint32_t layer = 0; layer < 2; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      ASSERT_OK_AND_ASSIGN(HeadData back, c->ReadHead(seq, layer, head));
      EXPECT_TRUE(back.keys == keys[layer * 2 + head]) << "layer " << layer << " head " << head;
      EXPECT_TRUE(back.values == values[layer * 2 + head]);
      std::string k(kTokens * kTokenBytes, '\0'), v(kTokens * kTokenBytes, '\0');
      ASSERT_OK(c->ReadInPlace(seq, layer, head, 0, kTokens, k.data(), v.data()));
      EXPECT_TRUE(k == keys[layer * 2 + head]);
      EXPECT_TRUE(v == values[layer * 2 + head]);
    }
  }
  // Bytes written over WriteKV land where the in-place reader finds them.
  const std::string k2 = PatternBytes(99, 5 * kTokenBytes);
  const std::string v2 = PatternBytes(98, 5 * kTokenBytes);
  ASSERT_OK(c->WriteHead(seq, 1, 1, 30, 5, k2.data(), v2.data()));
  std::string k(5 * kTokenBytes, '\0'), v(5 * kTokenBytes, '\0');
  ASSERT_OK(c->ReadInPlace(seq, 1, 1, 30, 5, k.data(), v.data()));
  EXPECT_TRUE(k == k2);
  EXPECT_TRUE(v == v2);
  EXPECT_THAT(c->WriteInPlace(seq, 0, 0, 39, 2, k.data(), v.data()),
              StatusIs(StatusCode::kOutOfRange));
}

TEST_P(CudaEndToEndTest, TwoWorkersInOneProcessShareTheMappingAndCloseIt) {
  auto a = Attach("worker-a");
  ASSERT_NE(a, nullptr);
  ASSERT_OK_AND_ASSIGN(std::string seq, a->CreateSequence("test-model", /*retain=*/true));
  ASSERT_OK(a->Allocate(seq, 8));
  const std::string k = PatternBytes(1, 8 * kTokenBytes);
  const std::string v = PatternBytes(2, 8 * kTokenBytes);
  ASSERT_OK(a->WriteInPlace(seq, 0, 0, 0, 8, k.data(), v.data()));
  ASSERT_OK(a->Commit(seq, 8));
  {
    // A second session in this process maps the same arenas again: IPC handles opened twice (the
    // driver counts them), or VMM fds imported and mapped a second time at another address.
    auto b = Attach("worker-b");
    ASSERT_NE(b, nullptr);
    ASSERT_OK(b->Acquire(seq));
    std::string kb(k.size(), '\0'), vb(v.size(), '\0');
    ASSERT_OK(b->ReadInPlace(seq, 0, 0, 0, 8, kb.data(), vb.data()));
    EXPECT_TRUE(kb == k);
    EXPECT_TRUE(vb == v);
    ASSERT_OK(b->Release(seq));
  }  // b's mappings closed; a's stay usable
  std::string ka(k.size(), '\0'), va(v.size(), '\0');
  ASSERT_OK(a->ReadInPlace(seq, 0, 0, 0, 8, ka.data(), va.data()));
  EXPECT_TRUE(ka == k);
  EXPECT_TRUE(va == v);
}

TEST_P(CudaEndToEndTest, TamperedExportsAreRefused) {
  auto c = Attach("worker-0");
  ASSERT_NE(c, nullptr);
  ASSERT_OK_AND_ASSIGN(std::string seq, c->CreateSequence("test-model"));
  ASSERT_OK(c->Allocate(seq, 4));
  ASSERT_FALSE(c->MappedArenas().empty());
  ASSERT_OK_AND_ASSIGN(v1::ArenaExport e, c->GetArena(c->MappedArenas()[0]));
  auto raw = OpenRawSession(token_);
  ASSERT_NE(raw, nullptr);
  ASSERT_OK_AND_ASSIGN(auto mapping, MapAsWorker(*raw, e));
  EXPECT_TRUE(mapping->on_device());
  EXPECT_EQ(mapping->size(), e.size_bytes());
  v1::ArenaExport bigger = e;
  bigger.set_size_bytes(e.size_bytes() * 4);  // more than the allocation holds
  v1::ArenaExport elsewhere = e;
  elsewhere.set_device_uuid("GPU-00000000-0000-0000-0000-000000000000");
  if (e.kind() == v1::CUDA_VMM_FD) {
    EXPECT_THAT(ArenaMapping::Map(e), StatusIs(StatusCode::kFailedPrecondition, "MapFd"));
    ASSERT_OK_AND_ASSIGN(ReceivedArena got, raw->channel->Fetch(e.arena_id()));
    auto too_big = ArenaMapping::MapFd(bigger, std::move(got.fd));
    EXPECT_FALSE(too_big.ok());
    EXPECT_NE(too_big.status().message().find("CUDA_VMM_FD"), absl::string_view::npos)
        << too_big.status();
    ASSERT_OK_AND_ASSIGN(ReceivedArena again, raw->channel->Fetch(e.arena_id()));
    EXPECT_THAT(ArenaMapping::MapFd(elsewhere, std::move(again.fd)),
                StatusIs(StatusCode::kNotFound));
    // An fd that is no exported allocation.
    int pipe_fds[2];
    ASSERT_EQ(pipe(pipe_fds), 0);
    close(pipe_fds[1]);
    EXPECT_FALSE(ArenaMapping::MapFd(e, OwnedFd(pipe_fds[0])).ok());
  } else {
    EXPECT_THAT(ArenaMapping::Map(bigger), StatusIs(StatusCode::kFailedPrecondition));
    EXPECT_THAT(ArenaMapping::Map(elsewhere), StatusIs(StatusCode::kNotFound));
  }
}

// A sharing group's arena reaches another member read-only: the mapping refuses writes, reads the
// publisher's bytes, and (VMM) the device mapping itself has read access only where the driver
// allows it. A tenant outside the group gets nothing.
TEST_P(CudaEndToEndTest, GroupArenaIsMappedReadOnly) {
  std::string tokens[2];
  for (int i = 0; i < 2; ++i) {
    v1::CreateTenantRequest r;
    r.set_name(i == 0 ? "ga" : "gb");
    r.set_sharing_group("team");
    ASSERT_OK_AND_ASSIGN(v1::CreateTenantReply reply, daemon_.Admin()->CreateTenant(r));
    tokens[i] = reply.token();
  }
  auto a = Attach("ga0", tokens[0]);
  ASSERT_NE(a, nullptr);
  ASSERT_OK_AND_ASSIGN(std::string seq, a->CreateSequence("test-model"));
  ASSERT_OK(a->Allocate(seq, 8));
  const std::string k = PatternBytes(41, 8 * kTokenBytes);
  const std::string v = PatternBytes(42, 8 * kTokenBytes);
  ASSERT_OK(a->WriteInPlace(seq, 0, 0, 0, 8, k.data(), v.data()));
  ASSERT_OK(a->Commit(seq, 8).status());
  ASSERT_OK_AND_ASSIGN(v1::PublishPrefixReply pub, a->PublishPrefix(seq, {1, 2, 3, 4, 5, 6, 7, 8}));
  v1::ArenaExport group;
  for (const auto& arena : pub.table().arenas()) {
    if (arena.read_only()) group = arena;
  }
  ASSERT_NE(group.arena_id(), 0u);
  EXPECT_EQ(group.kind(), GetParam().kind);
  auto raw = OpenRawSession(tokens[1]);
  ASSERT_NE(raw, nullptr);
  ASSERT_OK_AND_ASSIGN(auto mapping, MapAsWorker(*raw, group));
  EXPECT_TRUE(mapping->arena().read_only());
  const std::string junk(64, 'x');
  EXPECT_THAT(mapping->Write(0, junk.data(), junk.size()),
              StatusIs(StatusCode::kPermissionDenied, "read-only"));
  std::string back(mapping->size(), '\0');
  ASSERT_OK(mapping->Read(0, back.data(), back.size()));
  ASSERT_OK(mapping->Finish());
  // The published keys are somewhere in the group arena (where is the pool's business).
  EXPECT_NE(back.find(k.substr(0, 4 * kTokenBytes)), std::string::npos);
#if defined(KVKEEP_TEST_HAVE_CUDA)
  if (group.kind() == v1::CUDA_VMM_FD) {
    ASSERT_OK_AND_ASSIGN(const CudaDriverApi* cu, CudaDriver());
    CUmemLocation location = {};
    location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    location.id = mapping->device_ordinal();
    unsigned long long flags = 0;
    ASSERT_EQ(cu->mem_get_access(&flags, &location,
                                 reinterpret_cast<CUdeviceptr>(mapping->data())),
              CUDA_SUCCESS);
    if (flags == static_cast<unsigned long long>(CU_MEM_ACCESS_FLAGS_PROT_READWRITE)) {
      std::printf("note: this driver refused read-only device access; mapped read-write\n");
    } else {
      EXPECT_EQ(flags, static_cast<unsigned long long>(CU_MEM_ACCESS_FLAGS_PROT_READ));
    }
  }
#endif
  // A tenant outside the group gets no fd (or handle) of it.
  auto outsider = OpenRawSession(token_);
  ASSERT_NE(outsider, nullptr);
  EXPECT_THAT(outsider->channel->Fetch(group.arena_id()), StatusIs(StatusCode::kPermissionDenied));
}

// The point of CUDA_VMM_FD (issue 13): a zero-copy worker in another process, under another uid
// than the daemon's when this runs as root (else under this uid: the fds still cross processes),
// with no shared IPC namespace arrangement, maps its tenant's device arenas from the fds it
// receives, writes its pages in place and reads them back; the daemon holds what it wrote.
class CudaVmmWorkerTest : public CudaEndToEndTest {};

TEST_P(CudaVmmWorkerTest, ZeroCopyWorkerProcessUsesItsDeviceArenas) {
  const bool as_root = geteuid() == 0;
  const uid_t uid = as_root ? 65534 : geteuid();
  if (!as_root) {
    std::printf("note: not root, so the worker runs under this uid (%d), not 65534\n",
                static_cast<int>(uid));
  }
  if (as_root) {
    ASSERT_EQ(chmod(daemon_.dir().c_str(), 0711), 0);
    for (const std::string& path :
         {daemon_.dir() + "/kvkeepd.sock", daemon_.dir() + "/kvkeepd.sock.arenas"}) {
      ASSERT_EQ(chown(path.c_str(), static_cast<uid_t>(-1), uid), 0) << path;
    }
  }
  const std::string worker = DaemonProcess::BinaryDir() + "/kvkeep-test-worker";
  const std::vector<std::string> args = {worker, daemon_.target(), token_, "vmm-worker", "24",
                                         "retain", "verify"};
  ProcessExit run = as_root ? RunAs(uid, args) : RunToExit(args);
  ASSERT_EQ(run.code, 0) << run.out << run.err;
  EXPECT_NE(run.out.find(absl::StrCat("VERIFIED uid=", uid)), std::string::npos) << run.out;
  // "READY <sequence> ..." (the CUDA runtime may have written to stderr, merged here, first).
  const std::size_t ready = run.out.find("READY ");
  ASSERT_NE(ready, std::string::npos) << run.out;
  const std::string seq = run.out.substr(ready + 6, run.out.find(' ', ready + 6) - ready - 6);
  auto reader = Attach("reader");
  ASSERT_NE(reader, nullptr);
  const v1::ModelLayout layout = TestLayout();
  for (uint32_t layer = 0; layer < layout.layers(); ++layer) {
    for (uint32_t head = 0; head < layout.kv_heads(); ++head) {
      ASSERT_OK_AND_ASSIGN(HeadData data, reader->ReadHead(seq, layer, head));
      const std::string want = PatternBytes(layer * 10 + head, 24 * layout.head_dim() * 2);
      EXPECT_TRUE(data.keys == want) << "layer " << layer << " head " << head;
      EXPECT_TRUE(data.values == want);
    }
  }
}

// --cuda_arena_kind=auto picks VMM exactly when the device reports both attributes.
TEST(CudaArenaSelectionTest, AutoFollowsTheDeviceAttributes) {
  if (!CudaDevicePresent()) GTEST_SKIP() << "needs the CUDA backend and a CUDA device";
  DaemonProcess daemon;
  ASSERT_OK(daemon.Start({"--backend=cuda", "--cuda_arena_kind=auto"}));
  ASSERT_OK_AND_ASSIGN(std::string token, daemon.CreateTenant("auto-tenant"));
  auto client = Client::Attach(daemon.channel(), token, "auto-worker");
  ASSERT_OK(client);
  ASSERT_OK((*client)->RegisterModel(TestLayout()));
  ASSERT_OK_AND_ASSIGN(std::string seq, (*client)->CreateSequence("test-model"));
  ASSERT_OK((*client)->Allocate(seq, 4));
  ASSERT_FALSE((*client)->MappedArenas().empty());
  ASSERT_OK_AND_ASSIGN(v1::ArenaExport e, (*client)->GetArena((*client)->MappedArenas()[0]));
  EXPECT_EQ(e.kind(), CudaVmmArenasAvailable() ? v1::CUDA_VMM_FD : v1::CUDA_IPC);
  ASSERT_OK_AND_ASSIGN(v1::DaemonStatus status, daemon.Admin()->GetStatus());
  EXPECT_NE(status.backend_device().find(v1::ArenaKind_Name(e.kind())), std::string::npos)
      << status.backend_device();
#if defined(KVKEEP_TEST_HAVE_CUDA)
  ASSERT_OK_AND_ASSIGN(CudaVmmSupport support, QueryCudaVmmSupport(0));
  const bool all = support.driver_entry_points && support.virtual_memory_management &&
                   support.posix_fd_handles;
  EXPECT_EQ(e.kind() == v1::CUDA_VMM_FD, all);
#endif
}

INSTANTIATE_TEST_SUITE_P(Vmm, CudaVmmWorkerTest,
                         ::testing::Values(ArenaKindCase{"vmm", v1::CUDA_VMM_FD}), CaseName);
INSTANTIATE_TEST_SUITE_P(ArenaKinds, CudaEndToEndTest,
                         ::testing::Values(ArenaKindCase{"vmm", v1::CUDA_VMM_FD},
                                           ArenaKindCase{"ipc", v1::CUDA_IPC}),
                         CaseName);

}  // namespace
}  // namespace kvkeep::testing
