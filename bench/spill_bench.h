// `kvkeep-bench spill`: the spill tier (shared/docs/benchmarks.md §3), always as a ratio to bounds
// measured in the same run, on the same disk, with the same bytes.
//
//   * SpillStore::Put / Get of whole sequences (every page + manifest in one synced WriteBatch;
//     XXH64 per page written and verified);
//   * raw RocksDB with the same options (SpillStore::MakeDbConfig): the same page keys and values
//     in one synced WriteBatch, read back with MultiGet - what the store costs over RocksDB;
//   * a plain file: the same bytes written with writev + fdatasync and read back with readv - the
//     disk's bound.
//   * the same restore streamed (SpillStore::ReadInto) into memory touched beforehand, as the
//     daemon's restore writes each verified page into its pool page - no copy of the sequence;
// Before every read phase the files of all three are dropped from the page cache
// (posix_fadvise DONTNEED), so restores come from the disk unless --warm is given.
// Restore time is also compared with recomputing the sequence by prefill at an assumed rate
// (--prefill_tps, default 10000 tokens/s: an assumption for an 8B model on one H100, not a
// measurement).
//
//   kvkeep-bench spill                              # llama3-8b, 1k and 4k tokens, 5 reps
//   kvkeep-bench spill --tokens 1024,4096,16384 --reps 3 --json
//   kvkeep-bench spill --smoke                      # CI: a few seconds, exit code only
//
// Progress goes to stderr; the table (or JSON) to stdout.
#ifndef KVKEEP_BENCH_SPILL_BENCH_H_
#define KVKEEP_BENCH_SPILL_BENCH_H_

namespace kvkeep::bench {

// argv[0] is the subcommand name ("spill") and is skipped. Returns a process exit code: 0 ok,
// 2 bad flags, 1 a store could not be opened, a call failed or a restore was not bit-exact.
int RunSpillBench(int argc, char** argv);

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_SPILL_BENCH_H_
