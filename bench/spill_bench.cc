#include "bench/spill_bench.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench/rep_stats.h"
#include "bench/spill_baselines.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "rocksdb/db.h"
#include "common/process_tuning.h"
#include "service/storage/spill_store.h"

namespace kvkeep::bench {
namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// Process CPU seconds (user + system, all threads) and minor faults so far.
struct Usage {
  double cpu_s = 0;
  double faults = 0;
};
Usage UsageNow() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto sec = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  return {sec(u.ru_utime) + sec(u.ru_stime), static_cast<double>(u.ru_minflt)};
}

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- Shapes and flags ------------------------------------------------------------------------

struct Shape {
  const char* name;
  uint32_t layers, kv_heads, head_dim, dtype_bytes;
  const char* dtype;
};

constexpr Shape kShapes[] = {
    {"small", 4, 2, 64, 2, "fp16"},
    {"llama3-8b", 32, 8, 128, 2, "bf16"},
    {"qwen3-8b", 36, 8, 128, 2, "bf16"},
};

struct Options {
  Shape shape = kShapes[1];
  std::vector<uint32_t> tokens = {1024, 4096};
  uint32_t page_tokens = 16;
  int reps = 5;
  std::string dir;  // empty = a fresh folder under $TMPDIR (or /tmp), removed at the end
  std::string compression = "none";
  uint64_t write_buffer_mib = 64;
  uint64_t min_blob_size = 4096;
  uint64_t blob_file_mib = 256;
  uint64_t pages_per_value = 32;  // SpillStore::Options defaults
  uint64_t read_threads = 2;
  uint64_t read_batch_mib = 16;     // SpillStore::Options defaults
  bool direct_reads = false;
  uint64_t wal_bytes_per_sync = 1ull << 20;
  uint64_t write_batch_mib = 64;  // SpillStore::Options::write_batch_bytes default
  bool ingest = true;             // SpillStore::Options::ingest_large_spills default
  // kvkeepd's own default (--malloc_retain_mib 256), so that restores read with the allocator
  // the daemon reads with; 0: glibc's defaults (earlier releases of this bench).
  uint64_t malloc_retain_mib = 256;
  double prefill_tps = 10000;
  bool warm = false;
  bool json = false;
  bool smoke = false;
};

constexpr char kHelp[] = R"(kvkeep-bench spill - the spill tier vs raw RocksDB and a plain file

Usage: kvkeep-bench spill [flags]

Spills and restores whole sequences through SpillStore (all pages + manifest in one synced
WriteBatch, XXH64 per page written and verified) and, in the same rep, writes and reads the same
bytes (1) with raw RocksDB under the same options (one synced WriteBatch of the same keys, MultiGet)
and (2) as one plain file (writev + fdatasync, readv): the disk's bound. Restores are read twice:
with Get (every page collected in new memory; no daemon path uses it) and streamed (ReadInto,
each verified page copied into memory touched beforehand, as the daemon's restore writes into pool
pages: the daemon's restore, JSON restore_vs_file). The streamed restore reads its own copy of the
sequence, written right after the plain file, and the two are read back to back (which first
alternates every rep), so both are first reads of their bytes at about the same age (a VM host's
cache cannot be dropped from here; use --reps 2 or more so both orders occur). The page cache is
dropped for the benchmark's files before every read phase (posix_fadvise DONTNEED) unless --warm.
Each read phase also reports the process's CPU seconds and minor page faults (JSON *_cpu_s,
*_minor_faults), and the synced delete that ends a daemon restore is timed (delete_s).
Cells: median [min, max] over --reps, ratios computed within each rep.

Flags:
  --shape small|llama3-8b|qwen3-8b  model shape (default llama3-8b: 32 layers x 8 KV heads,
                        head_dim 128, bf16 = 128 KiB of K+V per token)
  --tokens N[,N...]     sequence lengths (default 1024,4096; 16384 needs ~8 GiB of RAM)
  --page_tokens N       tokens per page (default 16)
  --reps N              repetitions (default 5)
  --compression none|lz4|zstd|snappy   blob compression (default none)
  --write_buffer_mib N  memtable size (default 64)
  --min_blob_size N     bytes (default 4096)
  --blob_file_mib N     blob file size (default 256)
  --pages_per_value N   pages of one head per stored value (default 32; 1 = the version-1
                        layout of earlier releases, one value per page)
  --read_threads N      threads a restore reads with (default 2; 1 = earlier releases)
  --read_batch_mib N    bytes of values per MultiGet and read thread (default 16)
  --direct_reads 0|1    O_DIRECT reads of blob/table files (default 0)
  --wal_bytes_per_sync N  start WAL write-back every N bytes during a Put (default 1048576;
                        0 = off, as in earlier releases)
  --write_batch_mib N   bytes of pages per write batch of a spill (default 64); a larger spill is
                        written as one ingested SST file (or, with --ingest 0, in such batches
                        without the WAL, flushed), then its manifest
  --malloc_retain_mib N  allocator tuning as kvkeepd's --malloc_retain_mib (default 256, the
                        daemon's default; 0 = glibc's defaults, as earlier releases of this
                        bench: then RocksDB's fresh buffer for every value read page-faults
                        each of its pages, see stream_minor_faults)
  --ingest 0|1          large spills as one ingested SST file (default 1; 0 = memtable batches
                        and a flush, as the previous release)
  --prefill_tps X       ASSUMED prefill rate to compare restores with (default 10000 tokens/s,
                        roughly an 8B model on one H100; not measured here)
  --dir PATH            folder for the databases and the file (default: fresh temp folder)
  --warm                keep the page cache (restores from memory)
  --json                JSON on stdout instead of the table
  --smoke               CI mode: small shape, 256 tokens, 1 rep
  --help

Examples:
  kvkeep-bench spill --tokens 1024,4096,16384 --reps 3 --json
  kvkeep-bench spill --compression lz4 --json
)";

bool ParseUint(const std::string& v, uint64_t* out) { return absl::SimpleAtoi(v, out); }

int ParseFlags(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--smoke")) {
      o->smoke = true;
      o->shape = kShapes[0];
      o->tokens = {256};
      o->reps = 1;
    }
  }
  for (int i = 1; i < argc; ++i) {
    std::string name = argv[i], value;
    size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (name == "--help" || name == "-h") {
      std::printf("%s", kHelp);
      return 0;
    }
    if (name == "--smoke") continue;
    if (name == "--json") {
      o->json = true;
      continue;
    }
    if (name == "--warm") {
      o->warm = true;
      continue;
    }
    static const char* kValued[] = {"--shape", "--tokens", "--page_tokens", "--reps",
                                    "--compression", "--write_buffer_mib", "--min_blob_size",
                                    "--blob_file_mib", "--prefill_tps", "--dir",
                                    "--pages_per_value", "--read_threads", "--read_batch_mib",
                                    "--direct_reads", "--wal_bytes_per_sync",
                                    "--write_batch_mib", "--ingest",
                                    "--malloc_retain_mib"};
    if (std::find_if(std::begin(kValued), std::end(kValued),
                     [&](const char* f) { return name == f; }) == std::end(kValued)) {
      std::fprintf(stderr, "kvkeep-bench spill: unknown flag %s (see --help)\n", name.c_str());
      return 2;
    }
    if (eq == std::string::npos) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "kvkeep-bench spill: %s needs a value (see --help)\n", name.c_str());
        return 2;
      }
      value = argv[++i];
    }
    bool ok = true;
    uint64_t u = 0;
    if (name == "--shape") {
      ok = false;
      for (const Shape& s : kShapes) {
        if (value == s.name) {
          o->shape = s;
          ok = true;
        }
      }
    } else if (name == "--tokens") {
      o->tokens.clear();
      for (absl::string_view part : absl::StrSplit(value, ',')) {
        ok = ok && absl::SimpleAtoi(part, &u) && u > 0 && u <= (1u << 20);
        o->tokens.push_back(static_cast<uint32_t>(u));
      }
    } else if (name == "--page_tokens") {
      ok = ParseUint(value, &u) && u > 0 && u <= 4096;
      o->page_tokens = static_cast<uint32_t>(u);
    } else if (name == "--reps") {
      ok = ParseUint(value, &u) && u > 0 && u <= 1000;
      o->reps = static_cast<int>(u);
    } else if (name == "--compression") {
      ok = value == "none" || value == "lz4" || value == "zstd" || value == "snappy";
      o->compression = value;
    } else if (name == "--write_buffer_mib") {
      ok = ParseUint(value, &o->write_buffer_mib) && o->write_buffer_mib > 0;
    } else if (name == "--min_blob_size") {
      ok = ParseUint(value, &o->min_blob_size);
    } else if (name == "--blob_file_mib") {
      ok = ParseUint(value, &o->blob_file_mib) && o->blob_file_mib > 0;
    } else if (name == "--pages_per_value") {
      ok = ParseUint(value, &o->pages_per_value) && o->pages_per_value > 0 &&
           o->pages_per_value <= 4096;
    } else if (name == "--read_threads") {
      ok = ParseUint(value, &o->read_threads) && o->read_threads > 0 && o->read_threads <= 64;
    } else if (name == "--read_batch_mib") {
      ok = ParseUint(value, &o->read_batch_mib) && o->read_batch_mib > 0 &&
           o->read_batch_mib <= 4096;
    } else if (name == "--direct_reads") {
      ok = value == "0" || value == "1";
      o->direct_reads = value == "1";
    } else if (name == "--write_batch_mib") {
      ok = ParseUint(value, &o->write_batch_mib) && o->write_batch_mib > 0 &&
           o->write_batch_mib <= 4096;
    } else if (name == "--malloc_retain_mib") {
      ok = ParseUint(value, &o->malloc_retain_mib) && o->malloc_retain_mib <= 2047;
    } else if (name == "--ingest") {
      ok = value == "0" || value == "1";
      o->ingest = value == "1";
    } else if (name == "--wal_bytes_per_sync") {
      ok = ParseUint(value, &o->wal_bytes_per_sync);
    } else if (name == "--prefill_tps") {
      ok = absl::SimpleAtod(value, &o->prefill_tps) && o->prefill_tps > 0;
    } else if (name == "--dir") {
      o->dir = value;
    }
    if (!ok) {
      std::fprintf(stderr, "kvkeep-bench spill: bad value for %s: \"%s\" (see --help)\n",
                   name.c_str(), value.c_str());
      return 2;
    }
  }
  return -1;  // go on
}

rocksdb::CompressionType CompressionOf(const std::string& name) {
  if (name == "lz4") return rocksdb::kLZ4Compression;
  if (name == "zstd") return rocksdb::kZSTD;
  if (name == "snappy") return rocksdb::kSnappyCompression;
  return rocksdb::kNoCompression;
}

// ---- Data ------------------------------------------------------------------------------------

uint16_t ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);  // round to nearest
}

// K/V-like bytes: bf16 of N(0, 1) values (real activations compress about as badly: random
// mantissas, a narrow exponent range), tiled from an 8 MiB pool at random offsets so every page
// is distinct.
SpillRecord MakeSequence(const Options& o, uint32_t tokens, uint64_t seed) {
  static std::vector<char> pool = [] {
    std::mt19937_64 rng(42);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<char> p(8u << 20);
    for (size_t i = 0; i + 2 <= p.size(); i += 2) {
      uint16_t v = ToBf16(normal(rng));
      std::memcpy(&p[i], &v, 2);
    }
    return p;
  }();
  std::mt19937_64 rng(seed);
  const uint32_t heads = o.shape.layers * o.shape.kv_heads;
  const uint32_t pages = (tokens + o.page_tokens - 1) / o.page_tokens;
  const size_t page_bytes = 2ull * o.page_tokens * o.shape.head_dim * o.shape.dtype_bytes;
  SpillRecord r;
  r.tenant = "bench";
  r.model = o.shape.name;
  r.next_position = tokens;
  r.heads.resize(heads);
  for (SpilledHead& h : r.heads) {
    h.count = tokens;
    h.positions.resize(tokens);
    for (uint32_t t = 0; t < tokens; ++t) h.positions[t] = static_cast<int32_t>(t);
    h.pages.resize(pages);
    for (std::string& page : h.pages) {
      size_t off = (rng() % ((pool.size() - page_bytes) / 2)) * 2;
      page.assign(pool.data() + off, page_bytes);
    }
  }
  return r;
}

uint64_t BytesOfRecord(const SpillRecord& r) {
  uint64_t n = 0;
  for (const auto& h : r.heads)
    for (const auto& p : h.pages) n += p.size();
  return n;
}

bool SameBytes(const SpillRecord& a, const SpillRecord& b) {
  if (a.heads.size() != b.heads.size()) return false;
  for (size_t h = 0; h < a.heads.size(); ++h) {
    if (a.heads[h].pages != b.heads[h].pages || a.heads[h].positions != b.heads[h].positions) {
      return false;
    }
  }
  return true;
}

// ---- Cache control ---------------------------------------------------------------------------

// Drops the clean pages of every file under `dir` from the page cache (after writing back any
// dirty ones), so the next read comes from the device. Only touches the benchmark's own files.
void EvictPageCache(const std::string& dir) {
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    int fd = ::open(it->path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// Blob files in `dir` (name -> size).
std::map<std::string, uint64_t> BlobFiles(const std::string& dir) {
  std::map<std::string, uint64_t> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".blob") files[e.path().filename()] = e.file_size(ec);
  }
  return files;
}

// Bytes of the blob files that appeared since `before` (a flush only ever adds new files).
uint64_t NewBlobBytes(const std::map<std::string, uint64_t>& before, const std::string& dir) {
  uint64_t n = 0;
  for (const auto& [name, size] : BlobFiles(dir)) {
    if (!before.count(name)) n += size;
  }
  return n;
}

// ---- Streamed restore ------------------------------------------------------------------------

// A streamed restore's sink (SpillStore::ReadInto, as the daemon's restore uses it): every
// verified page is copied into memory allocated and touched before the clock starts, as the
// daemon writes into pool pages. Counts the pages, so a read that delivers nothing cannot pass.
class IntoBuffers : public SpillPageSink {
 public:
  explicit IntoBuffers(std::vector<std::vector<std::string>>* out) : out_(out) {}
  absl::Status Begin(SpillLayout& layout) override {
    if (layout.page_sizes.size() != out_->size()) return absl::DataLossError("heads differ");
    for (size_t h = 0; h < out_->size(); ++h) {
      if (layout.page_sizes[h].size() != (*out_)[h].size()) {
        return absl::DataLossError("pages differ");
      }
    }
    return absl::OkStatus();
  }
  absl::Status Page(uint32_t head, uint32_t page, absl::string_view bytes) override {
    std::string& dst = (*out_)[head][page];
    if (bytes.size() != dst.size()) return absl::DataLossError("page size differs");
    std::memcpy(dst.data(), bytes.data(), bytes.size());
    pages_.fetch_add(1, std::memory_order_relaxed);
    return absl::OkStatus();
  }
  uint64_t pages() const { return pages_.load(); }

 private:
  std::vector<std::vector<std::string>>* const out_;
  std::atomic<uint64_t> pages_{0};
};

void Scrub(std::vector<std::vector<std::string>>* out) {
  for (auto& h : *out)
    for (auto& p : h) std::memset(p.data(), 0, p.size());
}

// ---- Measurement -----------------------------------------------------------------------------

struct Rep {
  double spill_w, raw_w, file_w;  // GB/s
  double spill_r, raw_r, file_r;  // GB/s
  double restore_s;               // SpillStore::Get seconds
  double stream_r;                // GB/s of a streamed restore (ReadInto into touched memory)
  double stream_restore_s;        // its seconds
  double blob_ratio;              // blob-file bytes written / page bytes
  // Process CPU seconds (user + system, every thread) and minor page faults of three read
  // phases: Get, streamed restore, plain file read.
  double get_cpu_s, stream_cpu_s, file_cpu_s;
  double get_faults, stream_faults, file_faults;
  double delete_s;  // SpillStore::Delete of the streamed copy (synced), as after a daemon restore
};


struct Row {
  uint32_t tokens;
  uint64_t bytes, pages;
  std::vector<Rep> reps;
};

struct Field {
  const char* name;
  double (*get)(const Rep&);
};

const Field kFields[] = {
    {"spill_write_gbps", [](const Rep& r) { return r.spill_w; }},
    {"raw_write_gbps", [](const Rep& r) { return r.raw_w; }},
    {"file_write_gbps", [](const Rep& r) { return r.file_w; }},
    {"spill_read_gbps", [](const Rep& r) { return r.spill_r; }},
    {"raw_read_gbps", [](const Rep& r) { return r.raw_r; }},
    {"file_read_gbps", [](const Rep& r) { return r.file_r; }},
    {"write_vs_raw", [](const Rep& r) { return r.spill_w / r.raw_w; }},
    {"read_vs_raw", [](const Rep& r) { return r.spill_r / r.raw_r; }},
    {"write_vs_file", [](const Rep& r) { return r.spill_w / r.file_w; }},
    {"read_vs_file", [](const Rep& r) { return r.spill_r / r.file_r; }},
    {"restore_s", [](const Rep& r) { return r.restore_s; }},
    {"stream_read_gbps", [](const Rep& r) { return r.stream_r; }},
    {"stream_vs_file", [](const Rep& r) { return r.stream_r / r.file_r; }},
    {"stream_restore_s", [](const Rep& r) { return r.stream_restore_s; }},
    // The daemon's restore (Spiller::Restore streams with ReadInto into pool pages) over the
    // cold file read: the issue-15 goal's ratio. Same value as stream_vs_file.
    {"restore_vs_file", [](const Rep& r) { return r.stream_r / r.file_r; }},
    // CPU seconds (process-wide, user + system) and minor faults of each read phase.
    {"get_cpu_s", [](const Rep& r) { return r.get_cpu_s; }},
    {"stream_cpu_s", [](const Rep& r) { return r.stream_cpu_s; }},
    {"file_cpu_s", [](const Rep& r) { return r.file_cpu_s; }},
    {"get_minor_faults", [](const Rep& r) { return r.get_faults; }},
    {"stream_minor_faults", [](const Rep& r) { return r.stream_faults; }},
    {"file_minor_faults", [](const Rep& r) { return r.file_faults; }},
    {"delete_s", [](const Rep& r) { return r.delete_s; }},
    {"blob_bytes_per_page_byte", [](const Rep& r) { return r.blob_ratio; }},
};

Stats StatOf(const Row& row, const char* name) {
  for (const Field& f : kFields) {
    if (!std::strcmp(f.name, name)) {
      std::vector<double> v;
      for (const Rep& r : row.reps) v.push_back(f.get(r));
      return Summarise(v);
    }
  }
  return {};
}

std::string Cell(const Stats& s, const char* spec) {
  char fmt[64], buf[96];
  std::snprintf(fmt, sizeof fmt, "%s [%s,%s]", spec, spec, spec);
  std::snprintf(buf, sizeof buf, fmt, s.median, s.min, s.max);
  return buf;
}

std::string Json(const Stats& s) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "{\"median\":%.6g,\"min\":%.6g,\"max\":%.6g}", s.median, s.min,
                s.max);
  return buf;
}

absl::Status MeasureRow(const Options& o, const std::string& dir, SpillStore* store, RawDb* raw,
                        Row* row) {
  SpillRecord record = MakeSequence(o, row->tokens, row->tokens);
  row->bytes = BytesOfRecord(record);
  row->pages = 0;
  for (const auto& h : record.heads) row->pages += h.pages.size();
  const double gb = row->bytes / 1e9;
  std::vector<std::vector<std::string>> file_out(record.heads.size());
  for (size_t h = 0; h < record.heads.size(); ++h) {
    file_out[h].resize(record.heads[h].pages.size());
    for (size_t p = 0; p < file_out[h].size(); ++p) {
      file_out[h][p].resize(record.heads[h].pages[p].size());
    }
  }
  const std::string spill_dir = dir + "/spill", file_dir = dir + "/file";
  for (int rep = 0; rep < o.reps; ++rep) {
    record.sequence_id = absl::StrCat("t", row->tokens, "-r", rep);
    const std::string raw_prefix = absl::StrCat("bench/", record.sequence_id, "/");
    const std::string file_path = absl::StrCat(file_dir, "/", record.sequence_id);
    Rep r{};
    // The streamed restore (the daemon's restore) reads a copy of its own (same bytes, id + "-s")
    // and is paired with the plain-file read, its bound: the copy is written (untimed) right
    // after the file, and the two are read back to back, the first of the pair alternating every
    // rep. Both are then read for the first time since they were written, at about the same age
    // and after the same other traffic. (Reading the Get's copy a second time let earlier
    // streamed restores find it in the VM host's cache, which the posix_fadvise below cannot
    // drop: the "streamed" cells above 1.0 in docs/benchmarks.md.)
    const std::string get_id = record.sequence_id, stream_id = get_id + "-s";
    // Writes, in an order rotated every rep so no method always runs first.
    const std::map<std::string, uint64_t> blobs_before = BlobFiles(spill_dir);
    for (int k = 0; k < 3; ++k) {
      int which = (k + rep) % 3;
      if (which == 0) {
        auto t0 = Clock::now();
        absl::Status s = store->Put(record);
        if (!s.ok()) return s;
        r.spill_w = gb / SecondsSince(t0);
        if (absl::Status f = store->Flush(); !f.ok()) return f;
      } else if (which == 1) {
        auto t0 = Clock::now();
        if (absl::Status s = RawPut(raw, raw_prefix, record, row->bytes); !s.ok()) return s;
        r.raw_w = gb / SecondsSince(t0);
        rocksdb::FlushOptions f;
        raw->db()->Flush(f, raw->pages()).PermitUncheckedError();
      } else {
        auto t0 = Clock::now();
        if (absl::Status s = FileWrite(file_path, record); !s.ok()) return s;
        r.file_w = gb / SecondsSince(t0);
        // The streamed restore's copy, untimed, right after its bound's file.
        record.sequence_id = stream_id;
        absl::Status put = store->Put(record);
        record.sequence_id = get_id;
        if (!put.ok()) return put;
        if (absl::Status f = store->Flush(); !f.ok()) return f;
      }
    }
    // Blob bytes of the timed spill only (the streamed copy wrote as many again).
    r.blob_ratio = static_cast<double>(NewBlobBytes(blobs_before, spill_dir)) / row->bytes / 2;
    // Reads, each from a cold page cache: Get, raw, and the pair (file, streamed) in an order
    // rotated every rep; within the pair, the file first on even reps, the streamed restore first
    // on odd ones.
    std::vector<int> order;
    for (int k = 0; k < 3; ++k) {
      int slot = (k + rep) % 3;
      if (slot == 2) {
        order.push_back(rep % 2 ? 3 : 2);
        order.push_back(rep % 2 ? 2 : 3);
      } else {
        order.push_back(slot);
      }
    }
    for (int which : order) {
      if (!o.warm) EvictPageCache(dir);
      if (which == 0) {
        const Usage u0 = UsageNow();
        auto t0 = Clock::now();
        absl::StatusOr<SpillRecord> back = store->Get(record.tenant, record.sequence_id);
        double s = SecondsSince(t0);
        const Usage u1 = UsageNow();
        r.get_cpu_s = u1.cpu_s - u0.cpu_s;
        r.get_faults = u1.faults - u0.faults;
        if (!back.ok()) return back.status();
        r.spill_r = gb / s;
        r.restore_s = s;
        if (!SameBytes(*back, record)) return absl::DataLossError("spill restore not bit-exact");
      } else if (which == 1) {
        std::vector<std::vector<std::string>> out;
        auto t0 = Clock::now();
        if (absl::Status s = RawGet(raw, raw_prefix, record, &out); !s.ok()) return s;
        r.raw_r = gb / SecondsSince(t0);
        for (size_t h = 0; h < out.size(); ++h) {
          if (out[h] != record.heads[h].pages) return absl::DataLossError("raw get differs");
        }
      } else if (which == 3) {
        Scrub(&file_out);  // so a read that delivered nothing cannot compare equal
        IntoBuffers sink(&file_out);
        const Usage u0 = UsageNow();
        auto t0 = Clock::now();
        absl::Status st = store->ReadInto(record.tenant, stream_id, &sink);
        double s = SecondsSince(t0);
        const Usage u1 = UsageNow();
        r.stream_cpu_s = u1.cpu_s - u0.cpu_s;
        r.stream_faults = u1.faults - u0.faults;
        if (!st.ok()) return st;
        r.stream_r = gb / s;
        r.stream_restore_s = s;
        if (sink.pages() != row->pages) return absl::DataLossError("streamed restore: pages lost");
        for (size_t h = 0; h < file_out.size(); ++h) {
          if (file_out[h] != record.heads[h].pages) {
            return absl::DataLossError("streamed restore not bit-exact");
          }
        }
      } else {
        const Usage u0 = UsageNow();
        auto t0 = Clock::now();
        if (absl::Status s = FileRead(file_path, &file_out); !s.ok()) return s;
        r.file_r = gb / SecondsSince(t0);
        const Usage u1 = UsageNow();
        r.file_cpu_s = u1.cpu_s - u0.cpu_s;
        r.file_faults = u1.faults - u0.faults;
        for (size_t h = 0; h < file_out.size(); ++h) {
          if (file_out[h] != record.heads[h].pages) return absl::DataLossError("file read differs");
        }
      }
    }
    if (absl::Status s = store->Delete(record.tenant, record.sequence_id); !s.ok()) return s;
    {
      // The delete that ends a daemon restore (Spiller::Restore, after every page is in): one
      // synced WriteBatch of the value keys' tombstones and the manifest's.
      auto t0 = Clock::now();
      if (absl::Status s = store->Delete(record.tenant, stream_id); !s.ok()) return s;
      r.delete_s = SecondsSince(t0);
    }
    if (absl::Status s = RawDelete(raw, raw_prefix, record); !s.ok()) return s;
    fs::remove(file_path);
    std::fprintf(stderr,
                 "[spill] %u tokens rep %d/%d: write GB/s spill %.2f raw %.2f file %.2f | "
                 "read GB/s spill %.2f streamed %.2f raw %.2f file %.2f | cpu s get %.2f "
                 "streamed %.2f file %.2f | faults get %.0f streamed %.0f file %.0f | "
                 "delete s %.3f\n",
                 row->tokens, rep + 1, o.reps, r.spill_w, r.raw_w, r.file_w, r.spill_r,
                 r.stream_r, r.raw_r, r.file_r, r.get_cpu_s, r.stream_cpu_s, r.file_cpu_s,
                 r.get_faults, r.stream_faults, r.file_faults, r.delete_s);
    row->reps.push_back(r);
  }
  return absl::OkStatus();
}

void PrintJson(const Options& o, uint64_t page_bytes, const std::vector<Row>& rows) {
  std::printf("{\"bench\":\"spill\",\"shape\":{\"name\":\"%s\",\"layers\":%u,\"kv_heads\":%u,"
              "\"head_dim\":%u,\"dtype\":\"%s\"},\"page_tokens\":%u,\"page_bytes\":%llu,"
              "\"compression\":\"%s\",\"cold_reads\":%s,\"reps\":%d,"
              "\"prefill_tokens_per_s_assumed\":%.6g,\"pages_per_value\":%llu,"
              "\"read_threads\":%llu,\"read_batch_mib\":%llu,\"direct_reads\":%s,"
              "\"wal_bytes_per_sync\":%llu,\"write_batch_mib\":%llu,\"ingest\":%s,\"malloc_retain_mib\":%llu,\"rows\":[",
              o.shape.name, o.shape.layers, o.shape.kv_heads, o.shape.head_dim, o.shape.dtype,
              o.page_tokens, static_cast<unsigned long long>(page_bytes), o.compression.c_str(),
              o.warm ? "false" : "true", o.reps, o.prefill_tps,
              static_cast<unsigned long long>(o.pages_per_value),
              static_cast<unsigned long long>(o.read_threads),
              static_cast<unsigned long long>(o.read_batch_mib), o.direct_reads ? "true" : "false",
              static_cast<unsigned long long>(o.wal_bytes_per_sync),
              static_cast<unsigned long long>(o.write_batch_mib), o.ingest ? "true" : "false",
              static_cast<unsigned long long>(o.malloc_retain_mib));
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    std::printf("%s{\"tokens\":%u,\"bytes\":%llu,\"pages\":%llu,\"prefill_s_assumed\":%.6g",
                i ? "," : "", r.tokens, static_cast<unsigned long long>(r.bytes),
                static_cast<unsigned long long>(r.pages), r.tokens / o.prefill_tps);
    for (const Field& f : kFields) std::printf(",\"%s\":%s", f.name, Json(StatOf(r, f.name)).c_str());
    std::printf("}");
  }
  std::printf("]}\n");
}

void PrintTable(const Options& o, uint64_t page_bytes, const std::vector<Row>& rows) {
  std::printf("kvkeep-bench spill: shape %s (%u layers x %u KV heads, head_dim %u, %s), pages of %u "
              "tokens (%llu B), blob compression %s, %s reads, %d reps, %llu pages per value, "
              "%llu read threads, %llu MiB per MultiGet, direct reads %s, wal_bytes_per_sync "
              "%llu\n",
              o.shape.name, o.shape.layers, o.shape.kv_heads, o.shape.head_dim, o.shape.dtype,
              o.page_tokens, static_cast<unsigned long long>(page_bytes), o.compression.c_str(),
              o.warm ? "warm (page cache kept)" : "cold (page cache dropped)", o.reps,
              static_cast<unsigned long long>(o.pages_per_value),
              static_cast<unsigned long long>(o.read_threads),
              static_cast<unsigned long long>(o.read_batch_mib), o.direct_reads ? "on" : "off",
              static_cast<unsigned long long>(o.wal_bytes_per_sync));
  std::printf("every cell: median [min,max] over the reps; ratios computed within each rep\n\n");
  std::printf("ratios (SpillStore / bound; streamed = ReadInto into touched memory, as a restore):\n");
  std::printf("%7s %8s %18s %18s %18s %18s %18s\n", "tokens", "MiB", "write / raw RocksDB",
              "read / raw RocksDB", "write / file+fsync", "Get / file", "streamed / file");
  for (const Row& r : rows) {
    std::printf("%7u %8.0f %18s %18s %18s %18s %18s\n", r.tokens, r.bytes / 1048576.0,
                Cell(StatOf(r, "write_vs_raw"), "%.2f").c_str(),
                Cell(StatOf(r, "read_vs_raw"), "%.2f").c_str(),
                Cell(StatOf(r, "write_vs_file"), "%.2f").c_str(),
                Cell(StatOf(r, "read_vs_file"), "%.2f").c_str(),
                Cell(StatOf(r, "stream_vs_file"), "%.2f").c_str());
  }
  std::printf("\nabsolute GB/s (1 GB = 1e9 B of K+V; this machine's disk, not comparable elsewhere):\n");
  std::printf("%7s %16s %16s %16s %16s %16s %16s %16s\n", "tokens", "spill write", "raw write",
              "file write", "Get read", "streamed read", "raw read", "file read");
  for (const Row& r : rows) {
    std::printf("%7u %16s %16s %16s %16s %16s %16s %16s\n", r.tokens,
                Cell(StatOf(r, "spill_write_gbps"), "%.2f").c_str(),
                Cell(StatOf(r, "raw_write_gbps"), "%.2f").c_str(),
                Cell(StatOf(r, "file_write_gbps"), "%.2f").c_str(),
                Cell(StatOf(r, "spill_read_gbps"), "%.2f").c_str(),
                Cell(StatOf(r, "stream_read_gbps"), "%.2f").c_str(),
                Cell(StatOf(r, "raw_read_gbps"), "%.2f").c_str(),
                Cell(StatOf(r, "file_read_gbps"), "%.2f").c_str());
  }
  std::printf("\nrestore vs recompute (prefill at an ASSUMED %.0f tokens/s, not measured), "
              "blob bytes on disk:\n",
              o.prefill_tps);
  std::printf("%7s %20s %20s %11s %22s %16s\n", "tokens", "Get s", "streamed restore s",
              "prefill s", "prefill / streamed", "blob B / page B");
  for (const Row& r : rows) {
    Stats restore = StatOf(r, "stream_restore_s");
    double prefill = r.tokens / o.prefill_tps;
    Stats speedup{prefill / restore.median, prefill / restore.max, prefill / restore.min};
    std::printf("%7u %20s %20s %11.3f %22s %16s\n", r.tokens,
                Cell(StatOf(r, "restore_s"), "%.3f").c_str(), Cell(restore, "%.3f").c_str(),
                prefill, Cell(speedup, "%.2f").c_str(),
                Cell(StatOf(r, "blob_bytes_per_page_byte"), "%.3f").c_str());
  }
}

}  // namespace

int RunSpillBench(int argc, char** argv) {
  Options o;
  if (int rc = ParseFlags(argc, argv, &o); rc >= 0) return rc;
  if (o.malloc_retain_mib > 0) {
    if (absl::Status tuned = TuneAllocator(o.malloc_retain_mib << 20); !tuned.ok()) {
      std::fprintf(stderr, "kvkeep-bench spill: --malloc_retain_mib: %s\n",
                   std::string(tuned.message()).c_str());
      return 2;
    }
  }
  bool own_dir = o.dir.empty();
  if (own_dir) {
    const char* tmp = getenv("TMPDIR");
    std::string tmpl = absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/kvkeep-spill-bench.XXXXXX");
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::fprintf(stderr, "kvkeep-bench spill: mkdtemp: %s\n", std::strerror(errno));
      return 1;
    }
    o.dir = tmpl;
  }
  std::error_code ec;
  fs::create_directories(o.dir + "/file", ec);
  const uint64_t page_bytes = 2ull * o.page_tokens * o.shape.head_dim * o.shape.dtype_bytes;

  SpillStore::Options so;
  so.path = o.dir + "/spill";
  so.compression = CompressionOf(o.compression);
  so.write_buffer_mib = o.write_buffer_mib;
  so.min_blob_size = o.min_blob_size;
  so.blob_file_size = o.blob_file_mib << 20;
  so.pages_per_value = static_cast<uint32_t>(o.pages_per_value);
  so.read_threads = static_cast<int>(o.read_threads);
  so.read_batch_mib = static_cast<uint32_t>(o.read_batch_mib);
  so.use_direct_reads = o.direct_reads;
  so.wal_bytes_per_sync = o.wal_bytes_per_sync;
  so.write_batch_bytes = o.write_batch_mib << 20;
  so.ingest_large_spills = o.ingest;
  int rc = 0;
  std::vector<Row> rows;
  {
    auto store = SpillStore::Open(so);
    SpillStore::Options ro = so;
    ro.path = o.dir + "/raw";
    auto raw = store.ok() ? RawDb::Open(ro) : absl::StatusOr<std::unique_ptr<RawDb>>(store.status());
    if (!store.ok() || !raw.ok()) {
      std::fprintf(stderr, "kvkeep-bench spill: %s\n",
                   (store.ok() ? raw.status() : store.status()).ToString().c_str());
      rc = 1;
    } else {
      std::fprintf(stderr, "[spill] %s in %s, pages of %u B, compression %s\n", o.shape.name,
                   o.dir.c_str(), static_cast<unsigned>(page_bytes), o.compression.c_str());
      for (uint32_t tokens : o.tokens) {
        Row row{tokens, 0, 0, {}};
        absl::Status s = MeasureRow(o, o.dir, store->get(), raw->get(), &row);
        if (!s.ok()) {
          std::fprintf(stderr, "kvkeep-bench spill: %u tokens: %s\n", tokens,
                       s.ToString().c_str());
          rc = 1;
          break;
        }
        rows.push_back(std::move(row));
      }
    }
  }
  if (own_dir) fs::remove_all(o.dir, ec);
  if (rc != 0) return rc;
  if (o.json) {
    PrintJson(o, page_bytes, rows);
  } else {
    PrintTable(o, page_bytes, rows);
  }
  return 0;
}

}  // namespace kvkeep::bench
