// BackendConformanceTest: the whole gpu/backend.h interface, run against each backend. Every
// operation is also run on a CPU-backend twin and the two arenas are compared byte for byte, so
// on CUDA each result is checked against the reference (on CPU the twin checks determinism).
// Built twice (tests/CMakeLists.txt): backend_conformance_test instantiates it for the CPU (label
// unit), backend_conformance_gpu_test for CUDA (label gpu; every test SKIPs with a message when
// the CUDA backend is not built or no device is present).
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "gpu/backend.h"
#include "gpu/cpu/cpu_backend.h"
#include "gpu/gpu_uuid.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using absl::StatusCode;
using ::kvkeep::testing::StatusIs;

std::string Pattern(uint64_t seed, std::size_t n) {
  std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull + 1);
  std::string out(n, '\0');
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

// An arena no backend made.
class ForeignArena final : public Arena {
 public:
  ForeignArena() { handle_.size_bytes = 1 << 20; }
  const ArenaHandle& handle() const override { return handle_; }

 private:
  ArenaHandle handle_;
};

// The backend under test: its kind and, for CUDA, how its arenas are allocated and exported.
struct BackendUnderTest {
  BackendKind kind = BackendKind::kCpu;
  CudaArenaKind arenas = CudaArenaKind::kAuto;
};

// Test names and failure messages say "kCuda/vmm", not "8-byte object <02-00 ...>".
void PrintTo(const BackendUnderTest& b, std::ostream* os) {
  *os << (b.kind == BackendKind::kCpu ? "kCpu" : b.kind == BackendKind::kCuda ? "kCuda" : "kAuto");
  if (b.kind != BackendKind::kCpu) {
    *os << (b.arenas == CudaArenaKind::kVmm   ? "/vmm"
            : b.arenas == CudaArenaKind::kIpc ? "/ipc"
                                              : "");
  }
}

std::string BackendKindName(const ::testing::TestParamInfo<BackendUnderTest>& info) {
  const char* arenas = info.param.arenas == CudaArenaKind::kVmm   ? "Vmm"
                       : info.param.arenas == CudaArenaKind::kIpc ? "Ipc"
                                                                  : "";
  switch (info.param.kind) {
    case BackendKind::kCpu: return "Cpu";
    case BackendKind::kCuda: return std::string("Cuda") + arenas;
    case BackendKind::kAuto: return std::string("Auto") + arenas;
  }
  return "Unknown";
}

class BackendConformanceTest : public ::testing::TestWithParam<BackendUnderTest> {
 protected:
  // An arena of the backend under test and its CPU twin, always holding the same bytes.
  struct Twin {
    std::unique_ptr<Arena> arena;
    std::unique_ptr<Arena> ref;
  };

  void SetUp() override {
    prefix_ = absl::StrCat("kvkeep-conformance-", getpid());
    BackendOptions options;
    options.kind = GetParam().kind;
    options.cuda_arena_kind = GetParam().arenas;
    options.shm_prefix = prefix_;
    auto backend = CreateBackend(options);
    if (!backend.ok() && (absl::IsFailedPrecondition(backend.status()) ||
                          absl::IsUnimplemented(backend.status()))) {
      GTEST_SKIP() << "backend unavailable here: " << backend.status();
    }
    ASSERT_OK(backend);
    backend_ = std::move(*backend);
    options.kind = BackendKind::kCpu;
    ASSERT_OK_AND_ASSIGN(reference_, CreateBackend(options));
  }

  void TearDown() override {
    backend_.reset();
    reference_.reset();
    RemoveStaleArenas(prefix_);
  }

  Twin NewTwin(std::size_t bytes) {
    Twin t;
    auto a = backend_->CreateArena(bytes);
    EXPECT_OK(a);
    auto r = reference_->CreateArena(bytes);
    EXPECT_OK(r);
    if (a.ok()) t.arena = std::move(*a);
    if (r.ok()) t.ref = std::move(*r);
    return t;
  }

  std::string ReadAll(const Backend& backend, const Arena& arena) {
    std::string out(arena.size(), '\0');
    EXPECT_OK(backend.Read(arena, 0, out.data(), out.size()));
    return out;
  }

  // Writes the same bytes to both sides.
  void WriteBoth(Twin& t, std::size_t offset, const std::string& bytes) {
    ASSERT_OK(backend_->Write(*t.arena, offset, bytes.data(), bytes.size()));
    ASSERT_OK(reference_->Write(*t.ref, offset, bytes.data(), bytes.size()));
  }

  // The arena under test holds exactly what its CPU twin holds.
  void ExpectSameAsReference(const Twin& t) {
    const std::string got = ReadAll(*backend_, *t.arena);
    const std::string want = ReadAll(*reference_, *t.ref);
    ASSERT_EQ(got.size(), want.size());
    if (got != want) {
      std::size_t i = 0;
      while (got[i] == want[i]) ++i;
      FAIL() << backend_->name() << " arena differs from the CPU reference first at byte " << i;
    }
  }

  std::string prefix_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Backend> reference_;
};

TEST_P(BackendConformanceTest, NewArenasAreZeroFilled) {
  for (std::size_t bytes : {std::size_t{1}, std::size_t{4097}, std::size_t{3} << 20}) {
    ASSERT_OK_AND_ASSIGN(auto arena, backend_->CreateArena(bytes));
    EXPECT_EQ(arena->size(), bytes);
    EXPECT_EQ(ReadAll(*backend_, *arena), std::string(bytes, '\0'));
  }
}

TEST_P(BackendConformanceTest, ZeroByteArenaIsInvalidArgument) {
  EXPECT_THAT(backend_->CreateArena(0), StatusIs(StatusCode::kInvalidArgument));
}

TEST_P(BackendConformanceTest, ExportDescribesTheArena) {
  ASSERT_OK_AND_ASSIGN(auto arena, backend_->CreateArena(1 << 20));
  const ArenaHandle& h = arena->handle();
  EXPECT_EQ(h.size_bytes, std::size_t{1} << 20);
  if (backend_->name() == "cpu") {
    EXPECT_EQ(h.kind, ArenaExportKind::kHostMemfd);
    EXPECT_TRUE(h.handle.empty()) << h.handle;  // passed as an fd, never by name
    EXPECT_GE(arena->export_fd(), 0);
    EXPECT_EQ(h.device_ordinal, -1);
    EXPECT_TRUE(h.device_uuid.empty());
    EXPECT_EQ(backend_->device_ordinal(), -1);
    EXPECT_EQ(backend_->DeviceAddress(*arena), nullptr);
    EXPECT_NE(HostArenaData(*arena), nullptr);
  } else {
    ASSERT_EQ(backend_->name(), "cuda");
    if (GetParam().arenas == CudaArenaKind::kVmm) {
      EXPECT_EQ(h.kind, ArenaExportKind::kCudaVmmFd);
      EXPECT_TRUE(h.handle.empty()) << "passed as an fd, never by handle";
      EXPECT_GE(arena->export_fd(), 0);
      EXPECT_NE(backend_->device().find("CUDA_VMM_FD"), std::string::npos) << backend_->device();
    } else {
      EXPECT_EQ(h.kind, ArenaExportKind::kCudaIpc);
      EXPECT_EQ(h.handle.size(), 64u);  // cudaIpcMemHandle_t
      EXPECT_EQ(arena->export_fd(), -1);
    }
    EXPECT_GE(h.device_ordinal, 0);
    EXPECT_EQ(h.device_ordinal, backend_->device_ordinal());
    EXPECT_TRUE(IsGpuUuid(h.device_uuid)) << h.device_uuid;
    EXPECT_NE(backend_->device().find(h.device_uuid), std::string::npos) << backend_->device();
    EXPECT_NE(backend_->DeviceAddress(*arena), nullptr);
    EXPECT_EQ(HostArenaData(*arena), nullptr);
    // Two arenas, two allocations, two handles.
    ASSERT_OK_AND_ASSIGN(auto other, backend_->CreateArena(1 << 20));
    if (h.kind == ArenaExportKind::kCudaIpc) {
      EXPECT_NE(other->handle().handle, h.handle);
    }
    if (h.kind == ArenaExportKind::kCudaVmmFd) {
      EXPECT_NE(other->export_fd(), arena->export_fd());
    }
    EXPECT_NE(backend_->DeviceAddress(*other), backend_->DeviceAddress(*arena));
  }
  EXPECT_FALSE(backend_->device().empty());
}

TEST_P(BackendConformanceTest, WriteReadRoundTripsAtUnalignedOffsets) {
  Twin t = NewTwin((1 << 20) + 13);
  std::mt19937_64 rng(11);
  for (int i = 0; i < 64; ++i) {
    const std::size_t n = 1 + rng() % 9000;
    const std::size_t offset = rng() % (t.arena->size() - n);
    const std::string bytes = Pattern(i, n);
    WriteBoth(t, offset, bytes);
    std::string back(n, '\0');
    ASSERT_OK(backend_->Read(*t.arena, offset, back.data(), n));
    ASSERT_EQ(back, bytes) << "offset " << offset << " n " << n;
  }
  // The last byte, alone.
  WriteBoth(t, t.arena->size() - 1, "\x5a");
  ExpectSameAsReference(t);
}

TEST_P(BackendConformanceTest, ZeroLengthWriteAndReadAreOkAnywhereInside) {
  Twin t = NewTwin(4096);
  EXPECT_OK(backend_->Write(*t.arena, 4096, nullptr, 0));
  EXPECT_OK(backend_->Read(*t.arena, 0, nullptr, 0));
  EXPECT_THAT(backend_->Write(*t.arena, 4097, nullptr, 0), StatusIs(StatusCode::kOutOfRange));
}

TEST_P(BackendConformanceTest, OutOfRangeWriteAndReadChangeNothing) {
  Twin t = NewTwin(4096);
  WriteBoth(t, 0, Pattern(1, 4096));
  const std::string bytes = Pattern(2, 16);
  EXPECT_THAT(backend_->Write(*t.arena, 4096 - 15, bytes.data(), 16),
              StatusIs(StatusCode::kOutOfRange));
  EXPECT_THAT(backend_->Write(*t.arena, SIZE_MAX - 3, bytes.data(), 16),
              StatusIs(StatusCode::kOutOfRange));  // offset + n overflows
  EXPECT_THAT(backend_->Write(*t.arena, 8, bytes.data(), SIZE_MAX),
              StatusIs(StatusCode::kOutOfRange));
  std::string out(16, '\x77');
  EXPECT_THAT(backend_->Read(*t.arena, 4090, out.data(), 16), StatusIs(StatusCode::kOutOfRange));
  EXPECT_EQ(out, std::string(16, '\x77'));  // the destination is untouched too
  ExpectSameAsReference(t);
}

TEST_P(BackendConformanceTest, ForeignArenasAreInvalidArgument) {
  Twin t = NewTwin(4096);
  ForeignArena foreign;
  char byte = 1;
  EXPECT_THAT(backend_->Write(foreign, 0, &byte, 1), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(backend_->Read(foreign, 0, &byte, 1), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(backend_->Copy(foreign, 0, *t.arena, 0, 1), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(backend_->Copy(*t.arena, 0, foreign, 0, 1), StatusIs(StatusCode::kInvalidArgument));
  const CopyOp ops[] = {{t.arena.get(), 0, t.arena.get(), 8, 8}, {&foreign, 0, t.arena.get(), 0, 4}};
  EXPECT_THAT(backend_->CopyBatch(ops), StatusIs(StatusCode::kInvalidArgument));
  if (backend_->name() != "cpu") {
    // An arena of the CPU backend is foreign to the CUDA backend and the other way round.
    EXPECT_THAT(backend_->Write(*t.ref, 0, &byte, 1), StatusIs(StatusCode::kInvalidArgument));
    EXPECT_THAT(reference_->Write(*t.arena, 0, &byte, 1), StatusIs(StatusCode::kInvalidArgument));
  }
  ExpectSameAsReference(t);
}

TEST_P(BackendConformanceTest, CopyIsMemmoveWithinAndAcrossArenas) {
  Twin a = NewTwin(1 << 16);
  Twin b = NewTwin(1 << 16);
  WriteBoth(a, 0, Pattern(3, 1 << 16));
  WriteBoth(b, 0, Pattern(4, 1 << 16));
  struct Move { Twin* src; std::size_t from; Twin* dst; std::size_t to; std::size_t n; };
  const Move moves[] = {
      {&a, 100, &a, 103, 5000},    // overlapping, forwards
      {&a, 9000, &a, 8990, 7001},  // overlapping, backwards
      {&a, 1, &b, 60001, 5000},    // across, unaligned
      {&b, 0, &a, 0, 1 << 16},     // whole arena
      {&a, 77, &a, 77, 100},       // onto itself
  };
  for (const Move& m : moves) {
    ASSERT_OK(backend_->Copy(*m.src->arena, m.from, *m.dst->arena, m.to, m.n));
    ASSERT_OK(reference_->Copy(*m.src->ref, m.from, *m.dst->ref, m.to, m.n));
  }
  ExpectSameAsReference(a);
  ExpectSameAsReference(b);
  // And the reference is memmove.
  std::string model = Pattern(3, 1 << 16);
  std::memmove(model.data() + 103, model.data() + 100, 5000);
  std::string after(1 << 16, '\0');
  Twin c = NewTwin(1 << 16);
  WriteBoth(c, 0, Pattern(3, 1 << 16));
  ASSERT_OK(backend_->Copy(*c.arena, 100, *c.arena, 103, 5000));
  ASSERT_OK(backend_->Read(*c.arena, 0, after.data(), after.size()));
  EXPECT_EQ(after, model);
}

TEST_P(BackendConformanceTest, CopyOutOfRangeChangesNothing) {
  Twin a = NewTwin(4096);
  WriteBoth(a, 0, Pattern(5, 4096));
  EXPECT_THAT(backend_->Copy(*a.arena, 4000, *a.arena, 0, 97), StatusIs(StatusCode::kOutOfRange));
  EXPECT_THAT(backend_->Copy(*a.arena, 0, *a.arena, 4000, 97), StatusIs(StatusCode::kOutOfRange));
  EXPECT_THAT(backend_->Copy(*a.arena, SIZE_MAX, *a.arena, 0, 2),
              StatusIs(StatusCode::kOutOfRange));
  ExpectSameAsReference(a);
}

// In-place per-head compaction as the compressor does it: pages of 16 tokens x 128 fp16 dims
// (keys then values), several heads spread over two arenas in shuffled page order; a random
// subset of each head's tokens is kept and moved, in order, to the head's first slots. Token runs
// are cut at page boundaries; sources overlap destinations (pages are compacted in place).
TEST_P(BackendConformanceTest, CopyBatchCompactsHeadsBitExact) {
  constexpr std::size_t kTokensPerPage = 16;
  constexpr std::size_t kTokenBytes = 128 * 2;
  constexpr std::size_t kValueOffset = kTokensPerPage * kTokenBytes;
  constexpr std::size_t kPageBytes = 2 * kValueOffset;
  constexpr std::size_t kPagesPerArena = 48;
  Twin arenas[2] = {NewTwin(kPagesPerArena * kPageBytes), NewTwin(kPagesPerArena * kPageBytes)};
  WriteBoth(arenas[0], 0, Pattern(6, kPagesPerArena * kPageBytes));
  WriteBoth(arenas[1], 0, Pattern(7, kPagesPerArena * kPageBytes));

  // Heads: 8 heads x 10 pages, pages drawn without replacement from both arenas, shuffled.
  std::mt19937_64 rng(8);
  std::vector<std::pair<int, std::size_t>> all_pages;
  for (int a = 0; a < 2; ++a) {
    for (std::size_t p = 0; p < kPagesPerArena; ++p) all_pages.push_back({a, p});
  }
  std::shuffle(all_pages.begin(), all_pages.end(), rng);
  struct Slot { int arena; std::size_t offset; };  // byte offset of a token's key
  auto slot_of = [&](const std::vector<std::pair<int, std::size_t>>& pages, std::size_t s) {
    const auto& [a, p] = pages[s / kTokensPerPage];
    return Slot{a, p * kPageBytes + (s % kTokensPerPage) * kTokenBytes};
  };
  std::vector<CopyOp> ops;
  std::vector<CopyOp> ref_ops;
  // Host model of both arenas: what compaction must produce (gather from the snapshot).
  std::string before[2] = {ReadAll(*reference_, *arenas[0].ref), ReadAll(*reference_, *arenas[1].ref)};
  std::string model[2] = {before[0], before[1]};
  std::size_t staged_runs = 0;
  for (int head = 0; head < 8; ++head) {
    std::vector<std::pair<int, std::size_t>> pages(all_pages.begin() + head * 10,
                                                   all_pages.begin() + head * 10 + 10);
    const std::size_t tokens = 10 * kTokensPerPage - rng() % kTokensPerPage;
    std::vector<std::size_t> kept;
    for (std::size_t s = 0; s < tokens; ++s) {
      if (rng() % 10 < 6) kept.push_back(s);
    }
    // Runs: consecutive kept sources that stay contiguous in both source and destination pages.
    for (std::size_t i = 0; i < kept.size();) {
      std::size_t j = i + 1;
      while (j < kept.size() && kept[j] == kept[j - 1] + 1 &&
             kept[j] % kTokensPerPage != 0 && j % kTokensPerPage != 0) {
        ++j;
      }
      const std::size_t n = j - i;
      const Slot src = slot_of(pages, kept[i]);
      const Slot dst = slot_of(pages, i);
      for (std::size_t part : {std::size_t{0}, kValueOffset}) {
        if (kept[i] != i) {
          ops.push_back({arenas[src.arena].arena.get(), src.offset + part,
                         arenas[dst.arena].arena.get(), dst.offset + part, n * kTokenBytes});
          ref_ops.push_back({arenas[src.arena].ref.get(), src.offset + part,
                             arenas[dst.arena].ref.get(), dst.offset + part, n * kTokenBytes});
          ++staged_runs;
        }
        std::memcpy(model[dst.arena].data() + dst.offset + part,
                    before[src.arena].data() + src.offset + part, n * kTokenBytes);
      }
      i = j;
    }
  }
  ASSERT_GT(staged_runs, 100u);
  // The semantics are one parallel assignment, so the order of the ops must not matter: shuffle
  // them (a one-by-one schedule in this order would read already-overwritten bytes).
  std::vector<std::size_t> order(ops.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<CopyOp> shuffled;
  std::vector<CopyOp> ref_shuffled;
  for (std::size_t i : order) {
    shuffled.push_back(ops[i]);
    ref_shuffled.push_back(ref_ops[i]);
  }
  ops.swap(shuffled);
  ref_ops.swap(ref_shuffled);
  bool overlap = false;
  ASSERT_OK(CheckCopyBatch(ops, &overlap));
  EXPECT_TRUE(overlap) << "the pattern should compact pages in place";
  ASSERT_OK(backend_->CopyBatch(ops));
  ASSERT_OK(reference_->CopyBatch(ref_ops));
  for (int a = 0; a < 2; ++a) {
    ExpectSameAsReference(arenas[a]);
    EXPECT_TRUE(ReadAll(*backend_, *arenas[a].arena) == model[a]) << "arena " << a;
  }
}

// Parallel assignment, not a sequence: swapping two ranges needs every source read first.
TEST_P(BackendConformanceTest, CopyBatchSwapsRangesAsOneAssignment) {
  Twin a = NewTwin(8192);
  const std::string bytes = Pattern(9, 8192);
  WriteBoth(a, 0, bytes);
  const CopyOp ops[] = {{a.arena.get(), 0, a.arena.get(), 4096, 4096},
                        {a.arena.get(), 4096, a.arena.get(), 0, 4096}};
  ASSERT_OK(backend_->CopyBatch(ops));
  const std::string got = ReadAll(*backend_, *a.arena);
  EXPECT_TRUE(got == bytes.substr(4096) + bytes.substr(0, 4096));
}

TEST_P(BackendConformanceTest, CopyBatchWithoutOverlapMovesAcrossArenas) {
  Twin a = NewTwin(1 << 20);
  Twin b = NewTwin(1 << 20);
  WriteBoth(a, 0, Pattern(10, 1 << 20));
  std::vector<CopyOp> ops;
  std::vector<CopyOp> ref_ops;
  std::mt19937_64 rng(12);
  std::size_t to = 0;
  while (true) {
    const std::size_t n = 1 + rng() % 40000;  // some runs span several kernel chunks
    if (to + n > (1u << 20)) break;
    const std::size_t from = rng() % ((1u << 20) - n);
    ops.push_back({a.arena.get(), from, b.arena.get(), to, n});
    ref_ops.push_back({a.ref.get(), from, b.ref.get(), to, n});
    to += n + rng() % 3;
  }
  bool overlap = true;
  ASSERT_OK(CheckCopyBatch(ops, &overlap));
  EXPECT_FALSE(overlap);
  ASSERT_OK(backend_->CopyBatch(ops));
  ASSERT_OK(reference_->CopyBatch(ref_ops));
  ExpectSameAsReference(a);
  ExpectSameAsReference(b);
}

TEST_P(BackendConformanceTest, CopyBatchOfNothingIsOk) {
  Twin a = NewTwin(4096);
  WriteBoth(a, 0, Pattern(13, 4096));
  EXPECT_OK(backend_->CopyBatch({}));
  const CopyOp empty[] = {{a.arena.get(), 0, a.arena.get(), 0, 0},
                          {a.arena.get(), 4096, a.arena.get(), 4096, 0}};
  EXPECT_OK(backend_->CopyBatch(empty));
  ExpectSameAsReference(a);
}

TEST_P(BackendConformanceTest, BadCopyBatchesChangeNothing) {
  Twin a = NewTwin(4096);
  WriteBoth(a, 0, Pattern(14, 4096));
  Arena* x = a.arena.get();
  // The first op is valid: it must not run when a later one is bad.
  const CopyOp overlapping_destinations[] = {{x, 0, x, 1000, 100}, {x, 200, x, 1050, 10}};
  EXPECT_THAT(backend_->CopyBatch(overlapping_destinations),
              StatusIs(StatusCode::kInvalidArgument));
  const CopyOp out_of_range[] = {{x, 0, x, 1000, 100}, {x, 4000, x, 0, 200}};
  EXPECT_THAT(backend_->CopyBatch(out_of_range), StatusIs(StatusCode::kOutOfRange));
  const CopyOp overflowing[] = {{x, 0, x, 1000, 100}, {x, 0, x, SIZE_MAX - 10, 100}};
  EXPECT_THAT(backend_->CopyBatch(overflowing), StatusIs(StatusCode::kOutOfRange));
  const CopyOp null_arena[] = {{x, 0, x, 1000, 100}, {nullptr, 0, x, 0, 10}};
  EXPECT_THAT(backend_->CopyBatch(null_arena), StatusIs(StatusCode::kInvalidArgument));
  ExpectSameAsReference(a);
}

TEST_P(BackendConformanceTest, ConcurrentDisjointWritesFromManyThreads) {
  constexpr int kThreads = 8;
  constexpr std::size_t kSlice = 300001;  // odd: slices start unaligned
  Twin a = NewTwin(kThreads * kSlice);
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 6 && results[t].ok(); ++round) {
        const std::string bytes = Pattern(100 * t + round, kSlice);
        results[t] = backend_->Write(*a.arena, t * kSlice, bytes.data(), bytes.size());
        std::string back(kSlice, '\0');
        if (results[t].ok()) {
          results[t] = backend_->Read(*a.arena, t * kSlice, back.data(), back.size());
        }
        if (results[t].ok() && back != bytes) results[t] = absl::DataLossError("read back differs");
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_OK(results[t]) << "thread " << t;
    WriteBoth(a, t * kSlice, Pattern(100 * t + 5, kSlice));  // the twin gets the last round
  }
  ExpectSameAsReference(a);
}

// Bigger than the CUDA backend's staging buffers (4 MiB halves): several chunks each way.
TEST_P(BackendConformanceTest, LargeArenaRoundTripsThroughStaging) {
  constexpr std::size_t kBytes = std::size_t{64} << 20;
  Twin a = NewTwin(kBytes);
  const std::string bytes = Pattern(15, (std::size_t{9} << 20) + 5);
  WriteBoth(a, 3, bytes);
  std::string back(bytes.size(), '\0');
  ASSERT_OK(backend_->Read(*a.arena, 3, back.data(), back.size()));
  EXPECT_TRUE(back == bytes);
  ASSERT_OK(backend_->Copy(*a.arena, 3, *a.arena, kBytes - bytes.size(), bytes.size()));
  ASSERT_OK(reference_->Copy(*a.ref, 3, *a.ref, kBytes - bytes.size(), bytes.size()));
  ExpectSameAsReference(a);
}

#if defined(KVKEEP_CONFORMANCE_CUDA)
// Both CUDA arena exports: every operation (Write/Read staging, Copy, the CopyBatch kernel) must
// work on a cuMemMap'ed VMM arena as on a cudaMalloc'ed one. A device without VMM SKIPs the first.
INSTANTIATE_TEST_SUITE_P(
    Cuda, BackendConformanceTest,
    ::testing::Values(BackendUnderTest{BackendKind::kCuda, CudaArenaKind::kVmm},
                      BackendUnderTest{BackendKind::kCuda, CudaArenaKind::kIpc}),
    BackendKindName);
#else
INSTANTIATE_TEST_SUITE_P(Cpu, BackendConformanceTest,
                         ::testing::Values(BackendUnderTest{BackendKind::kCpu}), BackendKindName);
#endif

}  // namespace
}  // namespace kvkeep
