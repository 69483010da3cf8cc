// `kvkeep-bench mem`: kvkeepd's own memory (shared/docs/benchmarks.md §4).
//
//   1. Metadata bytes per page: a fresh kvkeepd; pages are allocated in steps (AllocatePages for
//      many sequences, nothing written into them) and after every step the daemon's *anonymous*
//      memory is read from /proc/PID/smaps_rollup ("Anonymous": heap, gRPC buffers, page tables
//      of sequences - never the arenas, which are POSIX shared memory and show up as Shmem / file
//      pages, and are not touched by AllocatePages anyway). Bytes per page = least-squares slope
//      of anonymous bytes over pages held. Goal: <= 64 B per page. Two layouts: a few long
//      sequences (per-page cost) and many one-page sequences (per-sequence cost included).
//   2. Hot path: CommitTokens of 1 token (and of 64 tokens) at a time on a sequence whose pages
//      are already allocated; anonymous bytes over committed tokens (slope), reported per token
//      and per token per KV head. What the daemon must keep per token is the original position
//      (int32) of every head: 4 B per token per (layer, KV head).
//   3. Peaks: VmHWM (peak RSS, shared memory included) and the peak of RssAnon sampled every 20 ms
//      over the run.
//
//   kvkeep-bench mem                       # small shape, 3 reps, table on stdout
//   kvkeep-bench mem --shape llama3-8b --json
//   kvkeep-bench mem --smoke
#ifndef KVKEEP_BENCH_MEM_BENCH_H_
#define KVKEEP_BENCH_MEM_BENCH_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <thread>

namespace kvkeep::bench {

// A process's memory from /proc/PID/status and /proc/PID/smaps_rollup, bytes.
struct ProcMemory {
  bool ok = false;
  uint64_t vm_rss = 0;     // status VmRSS: resident, all kinds
  uint64_t vm_hwm = 0;     // status VmHWM: peak of VmRSS over the process's life
  uint64_t rss_anon = 0;   // status RssAnon: anonymous (heap, stacks)
  uint64_t rss_shmem = 0;  // status RssShmem: shared memory (the arenas, once touched)
  uint64_t rss_file = 0;   // status RssFile: mapped files (binary, libraries)
  uint64_t anonymous = 0;  // smaps_rollup Anonymous (same pages as RssAnon, exact count)
  uint64_t private_dirty = 0;  // smaps_rollup Private_Dirty (includes shm mapped only here)
};

ProcMemory ReadProcMemory(pid_t pid);

// Samples RssAnon and VmRSS of `pid` every `period_ms` on a thread; keeps the maxima.
class MemorySampler {
 public:
  MemorySampler(pid_t pid, int period_ms);
  ~MemorySampler();  // Stop()s
  void Stop();
  uint64_t max_rss_anon() const { return max_anon_; }
  uint64_t max_rss_shmem() const { return max_shmem_; }
  uint64_t max_vm_rss() const { return max_rss_; }
  uint64_t samples() const { return samples_; }

 private:
  void Sample();
  pid_t pid_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> max_anon_{0}, max_shmem_{0}, max_rss_{0}, samples_{0};
  std::thread thread_;
  int period_ms_;
};

// argv[0] is the subcommand name ("mem") and is skipped. Exit code: 0 ok, 2 bad flags,
// 1 the daemon could not be started or a call failed.
int RunMemBench(int argc, char** argv);

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_MEM_BENCH_H_
