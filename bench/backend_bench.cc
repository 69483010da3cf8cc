#include "bench/backend_bench.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "bench/rep_stats.h"
#include "gpu/backend.h"
#include "gpu/cpu/cpu_backend.h"
#include "gpu/cuda_arena_kind.h"

#if defined(KVKEEP_BENCH_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace kvkeep::bench {
namespace {

constexpr char kUsage[] = R"(kvkeep-bench backend - the memory backend vs the copy bound

Usage: kvkeep-bench backend [flags]
  --backend auto|cpu|cuda   Default: auto (CUDA when built in and a device is present)
  --cuda_device N           Default: 0
  --cuda_arena_kind auto|vmm|ipc
                            CUDA arenas: cuMemCreate (vmm) or cudaMalloc (ipc). Default: auto
  --mib N                   bytes per large Write/Read and per compaction arena, MiB. Default: 256
  --reps N                  repetitions of each measurement (median, min, max). Default: 5
  --smoke                   tiny sizes, 1 rep: checks the benchmark runs
  --json                    one JSON object on stdout instead of the table
  --help, -h                this help

Exit status: 0 done, 1 the backend or a measured call failed, 2 usage error.
)";

struct Options {
  std::string backend = "auto";
  int cuda_device = 0;
  std::string cuda_arena_kind = "auto";
  std::size_t mib = 256;
  int reps = 5;
  bool json = false;
};

double Seconds(const std::function<absl::Status()>& f, absl::Status* status) {
  const auto t0 = std::chrono::steady_clock::now();
  absl::Status s = f();
  const auto t1 = std::chrono::steady_clock::now();
  if (status->ok()) *status = s;
  return std::chrono::duration<double>(t1 - t0).count();
}

// The bound: the same bytes copied by the plainest means this backend's memory allows.
class Bound {
 public:
  virtual ~Bound() = default;
  virtual absl::Status HostToMemory(std::size_t n) = 0;
  virtual absl::Status MemoryToHost(std::size_t n) = 0;
  virtual absl::Status MemoryToMemory(std::size_t n) = 0;
  virtual std::string name() const = 0;
};

class HostBound final : public Bound {
 public:
  explicit HostBound(std::size_t n) : a_(n, 1), b_(n, 2) {}
  absl::Status HostToMemory(std::size_t n) override { return Copy(n); }
  absl::Status MemoryToHost(std::size_t n) override { return Copy(n); }
  absl::Status MemoryToMemory(std::size_t n) override { return Copy(n); }
  std::string name() const override { return "memcpy"; }

 private:
  absl::Status Copy(std::size_t n) {
    std::memcpy(b_.data(), a_.data(), n);
    if (b_[n / 2] == 3) return absl::InternalError("impossible");  // keeps the copy alive
    return absl::OkStatus();
  }
  std::vector<char> a_, b_;
};

#if defined(KVKEEP_BENCH_HAVE_CUDA)
absl::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

class CudaBound final : public Bound {
 public:
  static absl::StatusOr<std::unique_ptr<CudaBound>> Create(int device, std::size_t n) {
    auto b = std::unique_ptr<CudaBound>(new CudaBound());
    b->device_ = device;
    absl::Status s = Cuda(cudaSetDevice(device), "cudaSetDevice");
    if (s.ok()) s = Cuda(cudaHostAlloc(&b->pinned_, n, cudaHostAllocDefault), "cudaHostAlloc");
    if (s.ok()) s = Cuda(cudaMalloc(&b->d0_, n), "cudaMalloc");
    if (s.ok()) s = Cuda(cudaMalloc(&b->d1_, n), "cudaMalloc");
    if (!s.ok()) return s;
    return b;
  }
  ~CudaBound() override {
    (void)cudaSetDevice(device_);
    if (pinned_ != nullptr) (void)cudaFreeHost(pinned_);
    if (d0_ != nullptr) (void)cudaFree(d0_);
    if (d1_ != nullptr) (void)cudaFree(d1_);
  }
  absl::Status HostToMemory(std::size_t n) override {
    return Cuda(cudaMemcpy(d0_, pinned_, n, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  absl::Status MemoryToHost(std::size_t n) override {
    return Cuda(cudaMemcpy(pinned_, d0_, n, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  }
  absl::Status MemoryToMemory(std::size_t n) override {
    absl::Status s = Cuda(cudaMemcpy(d1_, d0_, n, cudaMemcpyDeviceToDevice), "cudaMemcpy D2D");
    if (s.ok()) s = Cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    return s;
  }
  std::string name() const override { return "cudaMemcpy (pinned host)"; }

 private:
  CudaBound() = default;
  int device_ = 0;
  void* pinned_ = nullptr;
  void* d0_ = nullptr;
  void* d1_ = nullptr;
};
#endif

struct Row {
  std::string what;
  Stats backend_gbps;
  Stats bound_gbps;
  std::string unit = "GB/s";
};

// Compaction ops over one arena: pages of 16 tokens x 256-byte tokens (keys, then values), heads
// of 32 pages each; per head a random ~50 % of tokens kept and moved to the first slots.
std::vector<CopyOp> CompactionOps(Arena* arena, std::size_t* moved_bytes) {
  constexpr std::size_t kTokensPerPage = 16, kTokenBytes = 256;
  constexpr std::size_t kValueOffset = kTokensPerPage * kTokenBytes, kPageBytes = 2 * kValueOffset;
  constexpr std::size_t kPagesPerHead = 32;
  const std::size_t pages = arena->size() / kPageBytes;
  std::mt19937_64 rng(1);
  std::vector<CopyOp> ops;
  *moved_bytes = 0;
  for (std::size_t first = 0; first + kPagesPerHead <= pages; first += kPagesPerHead) {
    std::vector<std::size_t> kept;
    for (std::size_t s = 0; s < kPagesPerHead * kTokensPerPage; ++s) {
      if (rng() % 2 == 0) kept.push_back(s);
    }
    auto offset = [&](std::size_t slot) {
      return (first + slot / kTokensPerPage) * kPageBytes + (slot % kTokensPerPage) * kTokenBytes;
    };
    for (std::size_t i = 0; i < kept.size();) {
      std::size_t j = i + 1;
      while (j < kept.size() && kept[j] == kept[j - 1] + 1 && kept[j] % kTokensPerPage != 0 &&
             j % kTokensPerPage != 0) {
        ++j;
      }
      if (kept[i] != i) {
        for (std::size_t part : {std::size_t{0}, kValueOffset}) {
          ops.push_back({arena, offset(kept[i]) + part, arena, offset(i) + part,
                         (j - i) * kTokenBytes});
          *moved_bytes += (j - i) * kTokenBytes;
        }
      }
      i = j;
    }
  }
  return ops;
}

void PrintRow(const Row& r, const std::string& bound) {
  std::printf("%-34s %9.2f %9.2f %9.2f   %-10s %9.2f  %6.2f\n", r.what.c_str(),
              r.backend_gbps.median, r.backend_gbps.min, r.backend_gbps.max, bound.c_str(),
              r.bound_gbps.median,
              r.bound_gbps.median > 0 ? r.backend_gbps.median / r.bound_gbps.median : 0.0);
}

// Parses the flags into `o`: -1 to go on, else the exit code (0 after --help, 2 after a usage
// error, with the reason on stderr).
int ParseFlags(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "kvkeep-bench backend: %s needs a value (see --help)\n", flag);
        return nullptr;
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      return 0;
    } else if (a == "--json") {
      o->json = true;
    } else if (a == "--smoke") {
      o->mib = 4;
      o->reps = 1;
    } else if (a == "--backend") {
      const char* v = value("--backend");
      if (v == nullptr) return 2;
      o->backend = v;
    } else if (a == "--cuda_arena_kind") {
      const char* v = value("--cuda_arena_kind");
      if (v == nullptr) return 2;
      o->cuda_arena_kind = v;
    } else if (a == "--cuda_device" || a == "--mib" || a == "--reps") {
      const char* v = value(a.c_str());
      if (v == nullptr) return 2;
      char* end = nullptr;
      const long n = std::strtol(v, &end, 10);
      if (*end != '\0' || n < 0 || (a != "--cuda_device" && n < 1) || n > 65536) {
        std::fprintf(stderr, "kvkeep-bench backend: bad value for %s: \"%s\"\n", a.c_str(), v);
        return 2;
      }
      if (a == "--cuda_device") o->cuda_device = static_cast<int>(n);
      if (a == "--mib") o->mib = static_cast<std::size_t>(n);
      if (a == "--reps") o->reps = static_cast<int>(n);
    } else {
      std::fprintf(stderr, "kvkeep-bench backend: unknown flag %s (see --help)\n", a.c_str());
      return 2;
    }
  }
  return -1;
}

// The copy bound of the backend's memory: cudaMemcpy for CUDA, memcpy on the host otherwise.
absl::StatusOr<std::unique_ptr<Bound>> MakeBound(const Backend& backend, std::size_t bytes) {
  if (backend.name() != "cuda") return std::make_unique<HostBound>(bytes);
#if defined(KVKEEP_BENCH_HAVE_CUDA)
  auto b = CudaBound::Create(backend.device_ordinal(), bytes);
  if (!b.ok()) return absl::Status(b.status().code(), absl::StrCat("bound: ", b.status().ToString()));
  return std::unique_ptr<Bound>(std::move(*b));
#else
  return absl::FailedPreconditionError("built without CUDA");
#endif
}

// Every row, measured in one arena of `bytes`: large Write/Read, small writes, CopyBatch
// compaction. The first failed call's status lands in *status (the timings go on).
std::vector<Row> MeasureRows(const Options& o, Backend& backend, Arena& arena, Bound& bound,
                             std::size_t bytes, absl::Status* status) {
  std::vector<Row> rows;
  std::vector<char> host(bytes, 7);
  const double gb = static_cast<double>(bytes) / 1e9;
  Row write{"Write (host -> arena), large"}, read{"Read (arena -> host), large"};
  std::vector<double> w, wb, r, rb;
  for (int rep = 0; rep < o.reps; ++rep) {
    w.push_back(gb / Seconds([&] { return backend.Write(arena, 0, host.data(), bytes); }, status));
    wb.push_back(gb / Seconds([&] { return bound.HostToMemory(bytes); }, status));
    r.push_back(gb / Seconds([&] { return backend.Read(arena, 0, host.data(), bytes); }, status));
    rb.push_back(gb / Seconds([&] { return bound.MemoryToHost(bytes); }, status));
  }
  write.backend_gbps = Summarise(w);
  write.bound_gbps = Summarise(wb);
  read.backend_gbps = Summarise(r);
  read.bound_gbps = Summarise(rb);
  rows.push_back(write);
  rows.push_back(read);

  // Small writes: 16 tokens x 256 bytes per call, as WriteKV issues them.
  constexpr std::size_t kRun = 16 * 256;
  const std::size_t calls = std::min<std::size_t>(bytes / kRun, 20000);
  std::vector<double> small;
  for (int rep = 0; rep < o.reps; ++rep) {
    const double s = Seconds(
        [&] {
          for (std::size_t c = 0; c < calls; ++c) {
            absl::Status st = backend.Write(arena, c * kRun, host.data() + c * kRun, kRun);
            if (!st.ok()) return st;
          }
          return absl::OkStatus();
        },
        status);
    small.push_back(s / static_cast<double>(calls) * 1e6);
  }
  Row small_row{"Write of 4 KiB token runs", Summarise(small), {}, "us/call"};
  rows.push_back(small_row);

  std::size_t moved = 0;
  std::vector<CopyOp> ops = CompactionOps(&arena, &moved);
  const double moved_gb = static_cast<double>(moved) / 1e9;
  std::vector<double> c, cb;
  for (int rep = 0; rep < o.reps; ++rep) {
    c.push_back(moved_gb / Seconds([&] { return backend.CopyBatch(ops); }, status));
    cb.push_back(moved_gb / Seconds([&] { return bound.MemoryToMemory(moved); }, status));
  }
  Row compact{absl::StrCat("CopyBatch compaction (", ops.size(), " ops)"), Summarise(c),
              Summarise(cb)};
  rows.push_back(compact);
  return rows;
}

void PrintJson(const Options& o, const Backend& backend, const Bound& bound, std::size_t bytes,
               const std::vector<Row>& rows) {
  std::printf("{\"bench\":\"backend\",\"backend\":\"%s\",\"device\":\"%s\",\"bytes\":%zu,"
              "\"reps\":%d,\"bound\":\"%s\",\"rows\":[",
              backend.name().c_str(), backend.device().c_str(), bytes, o.reps,
              bound.name().c_str());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    std::printf("%s{\"what\":\"%s\",\"unit\":\"%s\",\"median\":%.4f,\"min\":%.4f,\"max\":%.4f,"
                "\"bound_median\":%.4f}",
                i ? "," : "", r.what.c_str(), r.unit.c_str(), r.backend_gbps.median,
                r.backend_gbps.min, r.backend_gbps.max, r.bound_gbps.median);
  }
  std::printf("]}\n");
}

void PrintTable(const Options& o, const Backend& backend, const Bound& bound,
                const std::vector<Row>& rows) {
  std::printf("kvkeep-bench backend: %s on %s, %zu MiB, %d reps (median min max)\n",
              backend.name().c_str(), backend.device().c_str(), o.mib, o.reps);
  std::printf("%-34s %9s %9s %9s   %-10s %9s  %6s\n", "", "median", "min", "max", "bound",
              "median", "ratio");
  for (const Row& r : rows) {
    if (r.unit == "GB/s") {
      PrintRow(r, "GB/s");
    } else {
      std::printf("%-34s %9.2f %9.2f %9.2f   %s\n", r.what.c_str(), r.backend_gbps.median,
                  r.backend_gbps.min, r.backend_gbps.max, r.unit.c_str());
    }
  }
  std::printf("bound: %s\n", bound.name().c_str());
}

}  // namespace

int RunBackendBench(int argc, char** argv) {
  Options o;
  if (const int code = ParseFlags(argc, argv, &o); code >= 0) return code;
  auto kind = ParseBackendKind(o.backend);
  if (!kind.ok()) {
    std::fprintf(stderr, "kvkeep-bench backend: %s\n", std::string(kind.status().message()).c_str());
    return 2;
  }
  auto arena_kind = ParseCudaArenaKind(o.cuda_arena_kind);
  if (!arena_kind.ok()) {
    std::fprintf(stderr, "kvkeep-bench backend: --cuda_arena_kind: %s\n",
                 std::string(arena_kind.status().message()).c_str());
    return 2;
  }
  BackendOptions options;
  options.kind = *kind;
  options.cuda_device = o.cuda_device;
  options.cuda_arena_kind = *arena_kind;
  options.shm_prefix = absl::StrCat("kvkeep-bench-backend-", getpid());
  auto backend_or = CreateBackend(options);
  if (!backend_or.ok()) {
    std::fprintf(stderr, "kvkeep-bench backend: %s\n", backend_or.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<Backend> backend = std::move(*backend_or);
  const std::size_t bytes = o.mib << 20;
  auto bound = MakeBound(*backend, bytes);
  if (!bound.ok()) {
    std::fprintf(stderr, "kvkeep-bench backend: %s\n", std::string(bound.status().message()).c_str());
    return 1;
  }
  absl::Status status;
  std::vector<Row> rows;
  {
    auto arena = backend->CreateArena(bytes);
    if (!arena.ok()) {
      std::fprintf(stderr, "kvkeep-bench backend: %s\n", arena.status().ToString().c_str());
      RemoveStaleArenas(options.shm_prefix);
      return 1;
    }
    rows = MeasureRows(o, *backend, **arena, **bound, bytes, &status);
  }
  RemoveStaleArenas(options.shm_prefix);
  if (!status.ok()) {
    std::fprintf(stderr, "kvkeep-bench backend: %s\n", status.ToString().c_str());
    return 1;
  }
  if (o.json) {
    PrintJson(o, *backend, **bound, bytes, rows);
  } else {
    PrintTable(o, *backend, **bound, rows);
  }
  return 0;
}

}  // namespace kvkeep::bench
