// CUDA end to end (label gpu): the real kvkeepd with --backend=cuda, a worker (this process) that
// maps the daemon's device arenas over CUDA IPC, writes keys and values in place from host and
// from device memory, and reads them back bit-exact over ReadKV and in place. SKIPs with a message
// when the CUDA backend is not built or no device is present.
#include <string>
#include <vector>

#include "common/status_matchers.h"
#include "gpu/backend.h"
#include "gpu/gpu_uuid.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"

#if defined(KVKEEP_TEST_HAVE_CUDA)
#include <cuda_runtime_api.h>
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

class CudaEndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDevicePresent()) {
      GTEST_SKIP() << "needs the CUDA backend and a CUDA device (built with CUDA: "
                   << (CudaBackendCompiled() ? "yes" : "no") << ")";
    }
    ASSERT_OK(daemon_.Start({"--backend=cuda"}));
    ASSERT_OK_AND_ASSIGN(token_, daemon_.CreateTenant("gpu-tenant"));
  }

  std::unique_ptr<Client> Attach(const std::string& worker) {
    auto client = Client::Attach(daemon_.channel(), token_, worker);
    EXPECT_OK(client);
    if (!client.ok()) return nullptr;
    EXPECT_OK((*client)->RegisterModel(TestLayout()));
    return std::move(*client);
  }

  DaemonProcess daemon_;
  std::string token_;
};

TEST_F(CudaEndToEndTest, DaemonReportsTheDevice) {
  ASSERT_OK_AND_ASSIGN(v1::DaemonStatus status, daemon_.Admin()->GetStatus());
  EXPECT_EQ(status.backend(), "cuda");
  EXPECT_NE(status.backend_device().find("GPU-"), std::string::npos) << status.backend_device();
}

TEST_F(CudaEndToEndTest, WorkerWritesInPlaceAndReadsBackBitExact) {
  auto c = Attach("worker-0");
  ASSERT_NE(c, nullptr);
  ASSERT_OK_AND_ASSIGN(std::string seq, c->CreateSequence("test-model"));
  constexpr uint32_t kTokens = 37;  // page tail not aligned (4 tokens per page)
  ASSERT_OK(c->Allocate(seq, kTokens));
  // The arenas are device memory exported by CUDA IPC with the device UUID.
  ASSERT_FALSE(c->MappedArenas().empty());
  for (uint32_t id : c->MappedArenas()) {
    ASSERT_OK_AND_ASSIGN(v1::ArenaExport e, c->GetArena(id));
    EXPECT_EQ(e.kind(), v1::CUDA_IPC);
    EXPECT_EQ(e.handle().size(), 64u);
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
              ::kvkeep::testing::StatusIs(StatusCode::kOutOfRange));
}

TEST_F(CudaEndToEndTest, TwoWorkersInOneProcessShareTheMappingAndCloseIt) {
  auto a = Attach("worker-a");
  ASSERT_NE(a, nullptr);
  ASSERT_OK_AND_ASSIGN(std::string seq, a->CreateSequence("test-model", /*retain=*/true));
  ASSERT_OK(a->Allocate(seq, 8));
  const std::string k = PatternBytes(1, 8 * kTokenBytes);
  const std::string v = PatternBytes(2, 8 * kTokenBytes);
  ASSERT_OK(a->WriteInPlace(seq, 0, 0, 0, 8, k.data(), v.data()));
  ASSERT_OK(a->Commit(seq, 8));
  {
    // A second session in this process opens the same IPC handles (the driver counts them).
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

TEST_F(CudaEndToEndTest, TamperedExportsAreRefused) {
  auto c = Attach("worker-0");
  ASSERT_NE(c, nullptr);
  ASSERT_OK_AND_ASSIGN(std::string seq, c->CreateSequence("test-model"));
  ASSERT_OK(c->Allocate(seq, 4));
  ASSERT_FALSE(c->MappedArenas().empty());
  ASSERT_OK_AND_ASSIGN(v1::ArenaExport e, c->GetArena(c->MappedArenas()[0]));
  ASSERT_OK_AND_ASSIGN(auto mapping, ArenaMapping::Map(e));
  EXPECT_TRUE(mapping->on_device());
  EXPECT_EQ(mapping->size(), e.size_bytes());
  v1::ArenaExport bigger = e;
  bigger.set_size_bytes(e.size_bytes() * 4);  // more than the allocation holds
  EXPECT_THAT(ArenaMapping::Map(bigger), ::kvkeep::testing::StatusIs(StatusCode::kFailedPrecondition));
  v1::ArenaExport elsewhere = e;
  elsewhere.set_device_uuid("GPU-00000000-0000-0000-0000-000000000000");
  EXPECT_THAT(ArenaMapping::Map(elsewhere), ::kvkeep::testing::StatusIs(StatusCode::kNotFound));
}

}  // namespace
}  // namespace kvkeep::testing
