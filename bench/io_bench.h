// `kvkeep-bench io`: the data path of a real kvkeepd (shared/docs/benchmarks.md §2), always as a
// ratio to a bound measured in the same run.
//
//   * Zero-copy control path: AllocatePages + CommitTokens against an empty unary RPC (Ping) on the
//     same server, the floor of the gRPC stack: RPCs/s and p50/p99 latency at 1, 8, 64 workers
//     (threads, each its own Client session).
//   * Bytes path: WriteKV / ReadKV GB/s against a raw AF_UNIX stream copy of the same bytes in
//     the same chunk sizes (one page per chunk by default), pages of 16, 64 and 256 tokens.
//
// The benchmark starts its own kvkeepd (a separate process) in a fresh temporary data dir,
// creates a tenant through the Admin API, and stops the daemon with SIGTERM at the end - on
// failure and on Ctrl-C as well.
//
//   kvkeep-bench io                                   # small shape, 5 reps, table on stdout
//   kvkeep-bench io --shape llama3-8b --mib 256 --json
//   kvkeep-bench io --smoke                           # CI: a few seconds, exit code only
//
// Run `kvkeep-bench io --help` for every flag. Progress goes to stderr; the table (or JSON) to
// stdout.
#ifndef KVKEEP_BENCH_IO_BENCH_H_
#define KVKEEP_BENCH_IO_BENCH_H_

#include "bench/bench_daemon.h"  // Daemon, FindDaemon, InstallBenchSignalHandlers

namespace kvkeep::bench {

// argv[0] is the subcommand name ("io") and is skipped. Returns a process exit code: 0 ok,
// 2 bad flags, 1 the daemon could not be started or a measured call failed.
int RunIoBench(int argc, char** argv);

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_IO_BENCH_H_
