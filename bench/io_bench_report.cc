// Output of `kvkeep-bench io`: the table and the JSON object (bench/io_bench_internal.h).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/io_bench_internal.h"
#include "bench/rep_stats.h"

namespace kvkeep::bench::io_internal {
namespace {

template <typename Rep>
Stats Of(const std::vector<Rep>& reps, double (*f)(const Rep&)) {
  std::vector<double> v;
  for (const Rep& r : reps) v.push_back(f(r));
  return Summarise(v);
}

std::string Fmt(const Stats& s, const char* spec) {
  char buf[96];
  char fmt[48];
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

// Named per-rep figures, so the table and the JSON read the same list.
template <typename Rep>
struct Field {
  const char* name;
  double (*get)(const Rep&);
};

const Field<OpsRep> kOpsFields[] = {
    {"rpc_rate_ratio", [](const OpsRep& r) { return 2 * r.pair_per_s / r.ping_per_s; }},
    {"alloc_p50_ratio", [](const OpsRep& r) { return r.alloc_p50 / r.ping_p50; }},
    {"commit_p50_ratio", [](const OpsRep& r) { return r.commit_p50 / r.ping_p50; }},
    {"alloc_p99_ratio", [](const OpsRep& r) { return r.alloc_p99 / r.ping_p99; }},
    {"commit_p99_ratio", [](const OpsRep& r) { return r.commit_p99 / r.ping_p99; }},
    {"ping_per_s", [](const OpsRep& r) { return r.ping_per_s; }},
    {"pairs_per_s", [](const OpsRep& r) { return r.pair_per_s; }},
    {"ping_p50_us", [](const OpsRep& r) { return r.ping_p50; }},
    {"ping_p99_us", [](const OpsRep& r) { return r.ping_p99; }},
    {"alloc_p50_us", [](const OpsRep& r) { return r.alloc_p50; }},
    {"alloc_p99_us", [](const OpsRep& r) { return r.alloc_p99; }},
    {"commit_p50_us", [](const OpsRep& r) { return r.commit_p50; }},
    {"commit_p99_us", [](const OpsRep& r) { return r.commit_p99; }},
    {"pair_p50_us", [](const OpsRep& r) { return r.pair_p50; }},
    {"pair_p99_us", [](const OpsRep& r) { return r.pair_p99; }},
};

const Field<BytesRep> kBytesFields[] = {
    {"write_ratio", [](const BytesRep& r) { return r.write_gbps / r.raw_gbps; }},
    {"read_ratio", [](const BytesRep& r) { return r.read_gbps / r.raw_gbps; }},
    {"raw_socket_gbps", [](const BytesRep& r) { return r.raw_gbps; }},
    {"writekv_gbps", [](const BytesRep& r) { return r.write_gbps; }},
    {"readkv_gbps", [](const BytesRep& r) { return r.read_gbps; }},
    {"inplace_page_gbps", [](const BytesRep& r) { return r.inplace_page_gbps; }},
    {"inplace_seq_gbps", [](const BytesRep& r) { return r.inplace_seq_gbps; }},
    {"inplace_page_over_raw", [](const BytesRep& r) { return r.inplace_page_gbps / r.raw_gbps; }},
    {"inplace_seq_over_raw", [](const BytesRep& r) { return r.inplace_seq_gbps / r.raw_gbps; }},
};

// a / b, 0 where b is 0 (--reads_only leaves the write columns at 0): JSON has no NaN.
double Ratio(double a, double b) { return b == 0 ? 0 : a / b; }

// Only with the bulk channel (not --no_bulk).
const Field<BytesRep> kBulkFields[] = {
    {"bulk_write_ratio", [](const BytesRep& r) { return Ratio(r.bulk_write_gbps, r.raw_gbps); }},
    {"bulk_read_ratio", [](const BytesRep& r) { return Ratio(r.bulk_read_gbps, r.raw_gbps); }},
    {"bulk_write_gbps", [](const BytesRep& r) { return r.bulk_write_gbps; }},
    {"bulk_read_gbps", [](const BytesRep& r) { return r.bulk_read_gbps; }},
    {"bulk_write_over_writekv", [](const BytesRep& r) { return Ratio(r.bulk_write_gbps, r.write_gbps); }},
    {"bulk_read_over_readkv", [](const BytesRep& r) { return Ratio(r.bulk_read_gbps, r.read_gbps); }},
    {"raw_batched_gbps", [](const BytesRep& r) { return r.raw_batched_gbps; }},
    {"bulk_write_over_raw_batched",
     [](const BytesRep& r) { return Ratio(r.bulk_write_gbps, r.raw_batched_gbps); }},
    {"bulk_read_over_raw_batched",
     [](const BytesRep& r) { return Ratio(r.bulk_read_gbps, r.raw_batched_gbps); }},
};

// With the bulk channel and the Redis peer.
const Field<BytesRep> kBulkRedisFields[] = {
    {"bulk_write_over_redis_set", [](const BytesRep& r) { return Ratio(r.bulk_write_gbps, r.set_gbps); }},
    {"bulk_read_over_redis_get", [](const BytesRep& r) { return Ratio(r.bulk_read_gbps, r.get_gbps); }},
};

// Only with the Redis peer.
const Field<BytesRep> kRedisFields[] = {
    {"writekv_over_redis_set", [](const BytesRep& r) { return r.write_gbps / r.set_gbps; }},
    {"readkv_over_redis_get", [](const BytesRep& r) { return r.read_gbps / r.get_gbps; }},
    {"inplace_page_over_redis_set",
     [](const BytesRep& r) { return r.inplace_page_gbps / r.set_gbps; }},
    {"inplace_seq_over_redis_set",
     [](const BytesRep& r) { return r.inplace_seq_gbps / r.set_gbps; }},
    {"redis_set_gbps", [](const BytesRep& r) { return r.set_gbps; }},
    {"redis_get_gbps", [](const BytesRep& r) { return r.get_gbps; }},
    {"redis_set_over_raw", [](const BytesRep& r) { return r.set_gbps / r.raw_gbps; }},
    {"redis_get_over_raw", [](const BytesRep& r) { return r.get_gbps / r.raw_gbps; }},
};

template <typename Rep, size_t N>
Stats Get(const std::vector<Rep>& reps, const Field<Rep> (&fields)[N], const char* name) {
  static_assert(N > 0);
  for (const auto& f : fields) {
    if (std::strcmp(f.name, name) == 0) return Of(reps, f.get);
  }
  return Stats();
}

std::string JsonString(const std::string& v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
    out += c;
  }
  return out + "\"";
}

}  // namespace

void PrintJson(const Options& o, const std::vector<OpsRow>& ops,
               const std::vector<BytesRow>& bytes, const RunInfo& info) {
  const Shape& s = o.shape;
  std::printf("{\"bench\":\"io\",\"shape\":{\"name\":\"%s\",\"layers\":%u,\"q_heads\":%u,"
              "\"kv_heads\":%u,\"head_dim\":%u,\"dtype\":\"%s\"},\"reps\":%d,"
              "\"seconds_per_phase\":%g,\"daemon\":\"kvkeepd, separate process, Unix socket\"",
              s.name.c_str(), s.layers, s.q_heads, s.kv_heads, s.head_dim, s.dtype_name, o.reps,
              o.seconds);
  std::printf(",\"control_path\":{\"tokens_per_page\":%u,\"tokens_per_op\":%u,\"pages_per_op\":%u,"
              "\"rows\":[",
              o.pages.front(), o.pages.front(), Heads(s));
  for (size_t i = 0; i < ops.size(); ++i) {
    std::printf("%s{\"workers\":%u,\"ops_per_sequence\":%u", i ? "," : "", ops[i].workers,
                ops[i].seq_pages);
    for (const auto& f : kOpsFields) {
      std::printf(",\"%s\":%s", f.name, Json(Of(ops[i].reps, f.get)).c_str());
    }
    std::printf("}");
  }
  std::printf("]},\"bytes_path\":{\"batch_message_bytes\":%llu,"
              "\"client_process_settings\":%s,\"reads_only\":%s,\"rows\":[",
              static_cast<unsigned long long>(o.batch_kib << 10),
              o.client_process_settings ? "true" : "false", o.reads_only ? "true" : "false");
  for (size_t i = 0; i < bytes.size(); ++i) {
    const BytesRow& r = bytes[i];
    std::printf("%s{\"tokens_per_page\":%u,\"tokens_per_head\":%u,\"chunk_bytes\":%llu,"
                "\"chunks\":%llu,\"bytes\":%llu",
                i ? "," : "", r.tpp, r.tokens, static_cast<unsigned long long>(r.chunk_bytes),
                static_cast<unsigned long long>(r.chunks),
                static_cast<unsigned long long>(r.bytes));
    for (const auto& f : kBytesFields) {
      std::printf(",\"%s\":%s", f.name, Json(Of(r.reps, f.get)).c_str());
    }
    if (info.have_redis) {
      for (const auto& f : kRedisFields) {
        std::printf(",\"%s\":%s", f.name, Json(Of(r.reps, f.get)).c_str());
      }
    }
    if (!o.no_bulk) {
      for (const auto& f : kBulkFields) {
        std::printf(",\"%s\":%s", f.name, Json(Of(r.reps, f.get)).c_str());
      }
      if (info.have_redis) {
        for (const auto& f : kBulkRedisFields) {
          std::printf(",\"%s\":%s", f.name, Json(Of(r.reps, f.get)).c_str());
        }
      }
    }
    std::printf("}");
  }
  std::printf("]},\"redis\":{\"used\":%s,\"what\":%s,\"pipeline\":%u,\"peak_rss_bytes\":%llu,"
              "\"used_memory_bytes\":%llu}",
              info.have_redis ? "true" : "false", JsonString(info.redis).c_str(), o.redis_pipeline,
              static_cast<unsigned long long>(info.redis_hwm),
              static_cast<unsigned long long>(info.redis_used));
  std::printf(",\"daemon_memory\":{\"samples\":%llu,\"peak_rss_bytes\":%llu,"
              "\"peak_rss_sampled_bytes\":%llu,\"peak_anon_bytes\":%llu,"
              "\"peak_shmem_bytes\":%llu,\"end_rss_bytes\":%llu,\"end_anon_bytes\":%llu,"
              "\"end_shmem_bytes\":%llu}}\n",
              static_cast<unsigned long long>(info.samples),
              static_cast<unsigned long long>(info.daemon_end.vm_hwm),
              static_cast<unsigned long long>(info.daemon_peak_rss),
              static_cast<unsigned long long>(info.daemon_peak_anon),
              static_cast<unsigned long long>(info.daemon_peak_shmem),
              static_cast<unsigned long long>(info.daemon_end.vm_rss),
              static_cast<unsigned long long>(info.daemon_end.rss_anon),
              static_cast<unsigned long long>(info.daemon_end.rss_shmem));
}

void PrintTable(const Options& o, const std::vector<OpsRow>& ops,
                const std::vector<BytesRow>& bytes, const RunInfo& info) {
  const Shape& s = o.shape;
  std::printf("kvkeep-bench io: shape %s (%u layers, %u/%u heads, head_dim %u, %s), %d reps, "
              "kvkeepd as a separate process on a Unix socket\n",
              s.name.c_str(), s.layers, s.q_heads, s.kv_heads, s.head_dim, s.dtype_name, o.reps);
  std::printf("every cell: median [min,max] over the reps; ratios computed within each rep\n");
  if (!ops.empty()) {
    std::printf("\n1. Zero-copy control path: AllocatePages(%u tok) + CommitTokens(%u tok), "
                "%u pages of %u tokens per op, vs Ping (empty unary RPC), %.2g s phases\n",
                o.pages.front(), o.pages.front(), Heads(s), o.pages.front(), o.seconds);
    std::printf("   ratios (1.0 = as cheap as an empty RPC):\n");
    std::printf("%8s %22s %22s %22s %22s %22s\n", "workers", "RPC rate / Ping rate",
                "Alloc p50 / Ping p50", "Commit p50 / Ping p50", "Alloc p99 / Ping p99",
                "Commit p99 / Ping p99");
    for (const OpsRow& r : ops) {
      std::printf("%8u %22s %22s %22s %22s %22s\n", r.workers,
                  Fmt(Get(r.reps, kOpsFields, "rpc_rate_ratio"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "alloc_p50_ratio"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "commit_p50_ratio"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "alloc_p99_ratio"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "commit_p99_ratio"), "%.2f").c_str());
    }
    std::printf("   absolute (CPU host, this machine):\n");
    std::printf("%8s %20s %20s %18s %20s %18s %20s %18s %20s\n", "workers", "Ping calls/s",
                "Alloc+Commit ops/s", "Ping p50 us", "Ping p99 us", "Alloc p50 us",
                "Alloc p99 us", "Commit p50 us", "Commit p99 us");
    for (const OpsRow& r : ops) {
      std::printf("%8u %20s %20s %18s %20s %18s %20s %18s %20s\n", r.workers,
                  Fmt(Get(r.reps, kOpsFields, "ping_per_s"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "pairs_per_s"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "ping_p50_us"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "ping_p99_us"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "alloc_p50_us"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "alloc_p99_us"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "commit_p50_us"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "commit_p99_us"), "%.0f").c_str());
    }
  }
  if (!bytes.empty()) {
    std::printf("\n2. Bytes path: WriteKV / ReadKV vs a raw AF_UNIX stream copy of the same bytes "
                "in the same chunks\n");
    if (o.client_process_settings) {
      std::printf("   client process with kvkeepd's process settings (--client_process_settings)\n");
    }
    if (o.reads_only) {
      std::printf("   --reads_only: each rep the raw copy and ReadKV only, back to back (the "
                  "sequence was written once, before the reps)\n");
    }
    const auto write_cell = [&](const BytesRow& r, const char* field) {
      return o.reads_only ? std::string("-") : Fmt(Get(r.reps, kBytesFields, field), "%.2f");
    };
    std::printf("%6s %10s %10s %18s %18s %18s %18s %18s\n", "page", "chunk KiB", "MiB/rep",
                "WriteKV / raw", "ReadKV / raw", "raw GB/s", "WriteKV GB/s", "ReadKV GB/s");
    for (const BytesRow& r : bytes) {
      std::printf("%6u %10.1f %10.1f %18s %18s %18s %18s %18s\n", r.tpp, r.chunk_bytes / 1024.0,
                  r.bytes / 1048576.0,
                  write_cell(r, "write_ratio").c_str(),
                  Fmt(Get(r.reps, kBytesFields, "read_ratio"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kBytesFields, "raw_socket_gbps"), "%.2f").c_str(),
                  write_cell(r, "writekv_gbps").c_str(),
                  Fmt(Get(r.reps, kBytesFields, "readkv_gbps"), "%.2f").c_str());
    }
    std::printf("   (GB/s columns are CPU-host figures of this machine; 1 GB = 1e9 bytes of K+V)\n");
    if (!o.no_bulk) {
      std::printf("\n   The same chunks over the bulk channel (<socket>.bulk: raw frames, received "
                  "straight into the pages / the destination; docs/api.md 5.2)\n");
      const auto bulk_cell = [&](const BytesRow& r, const char* field) {
        return o.reads_only ? std::string("-") : Fmt(Get(r.reps, kBulkFields, field), "%.2f");
      };
      std::printf("%6s %18s %18s %18s %18s %20s %20s\n", "page", "bulk write / raw",
                  "bulk read / raw", "bulk write GB/s", "bulk read GB/s", "bulk / WriteKV",
                  "bulk / ReadKV");
      for (const BytesRow& r : bytes) {
        std::printf("%6u %18s %18s %18s %18s %20s %20s\n", r.tpp,
                    bulk_cell(r, "bulk_write_ratio").c_str(),
                    Fmt(Get(r.reps, kBulkFields, "bulk_read_ratio"), "%.2f").c_str(),
                    bulk_cell(r, "bulk_write_gbps").c_str(),
                    Fmt(Get(r.reps, kBulkFields, "bulk_read_gbps"), "%.2f").c_str(),
                    bulk_cell(r, "bulk_write_over_writekv").c_str(),
                    Fmt(Get(r.reps, kBulkFields, "bulk_read_over_readkv"), "%.2f").c_str());
      }
      std::printf("%6s %26s %26s %22s\n", "page", "bulk write / raw batched",
                  "bulk read / raw batched", "raw batched GB/s");
      for (const BytesRow& r : bytes) {
        std::printf("%6u %26s %26s %22s\n", r.tpp,
                    bulk_cell(r, "bulk_write_over_raw_batched").c_str(),
                    Fmt(Get(r.reps, kBulkFields, "bulk_read_over_raw_batched"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kBulkFields, "raw_batched_gbps"), "%.2f").c_str());
      }
      std::printf("   (raw batched: the same raw copy with the chunks gathered into 8 MiB "
                  "writev()s and read()s, as the bulk channel's frames move them)\n");
      if (info.have_redis && !o.reads_only) {
        for (const BytesRow& r : bytes) {
          std::printf("%6u bulk write / Redis SET %s, bulk read / Redis GET %s\n", r.tpp,
                      Fmt(Get(r.reps, kBulkRedisFields, "bulk_write_over_redis_set"), "%.2f").c_str(),
                      Fmt(Get(r.reps, kBulkRedisFields, "bulk_read_over_redis_get"), "%.2f").c_str());
        }
      }
    }
    if (o.reads_only) {
      std::printf("\n3. vs Redis and in-place writes: not run (--reads_only)\n");
    }
  }
  if (!bytes.empty() && !o.reads_only) {
    std::printf("\n3. vs Redis: %s\n", info.redis.c_str());
    std::printf("   same blobs (one value = keys+values of one chunk), same bytes; in-place = "
                "AllocatePages + WriteInPlace (memcpy into mapped shm) + CommitTokens\n");
    if (info.have_redis) {
      std::printf("%6s %18s %18s %20s %20s %14s %14s %14s %14s\n", "page", "WriteKV / SET",
                  "ReadKV / GET", "in-place/page / SET", "in-place/seq / SET", "SET GB/s",
                  "GET GB/s", "SET / raw", "GET / raw");
      for (const BytesRow& r : bytes) {
        std::printf("%6u %18s %18s %20s %20s %14s %14s %14s %14s\n", r.tpp,
                    Fmt(Get(r.reps, kRedisFields, "writekv_over_redis_set"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "readkv_over_redis_get"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "inplace_page_over_redis_set"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "inplace_seq_over_redis_set"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "redis_set_gbps"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "redis_get_gbps"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "redis_set_over_raw"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "redis_get_over_raw"), "%.2f").c_str());
      }
    }
    std::printf("%6s %20s %20s %22s %22s\n", "page", "in-place/page GB/s", "in-place/seq GB/s",
                "in-place/page / raw", "in-place/seq / raw");
    for (const BytesRow& r : bytes) {
      std::printf("%6u %20s %20s %22s %22s\n", r.tpp,
                  Fmt(Get(r.reps, kBytesFields, "inplace_page_gbps"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kBytesFields, "inplace_seq_gbps"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kBytesFields, "inplace_page_over_raw"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kBytesFields, "inplace_seq_over_raw"), "%.2f").c_str());
    }
  }
  const double mib = 1048576.0;
  std::printf("\nkvkeepd memory over the run (%llu samples, every 20 ms): peak RSS (VmHWM) %.1f MiB, "
              "peak anonymous %.1f MiB, peak shared (arenas touched) %.1f MiB; at the end RSS "
              "%.1f MiB, anonymous %.1f MiB\n",
              static_cast<unsigned long long>(info.samples), info.daemon_end.vm_hwm / mib,
              info.daemon_peak_anon / mib, info.daemon_peak_shmem / mib,
              info.daemon_end.vm_rss / mib, info.daemon_end.rss_anon / mib);
  if (info.have_redis) {
    std::printf("redis-server: peak RSS (VmHWM) %.1f MiB, used_memory at the end %.1f MiB\n",
                info.redis_hwm / mib, info.redis_used / mib);
  }
}

}  // namespace kvkeep::bench::io_internal
