// `kvkeep-bench backend`: the memory backend itself (gpu/backend.h), in-process, each figure as a
// ratio to the copy bound of the same machine measured in the same run.
//
//   1. Write / Read of large buffers (the spill tier's and ReadKV's path: host bytes through the
//      backend; CUDA: through the pinned staging buffers) vs the bound: memcpy on the CPU backend;
//      cudaMemcpy from/to one pinned buffer on CUDA (the PCIe/NVLink-C2C bound).
//   2. Small writes as WriteKV does them (one token run of token_bytes x 16 per call): calls per
//      second and microseconds per call.
//   3. CopyBatch of a realistic in-place compaction (pages of 16 tokens x 128 fp16 dims, keys then
//      values; about half of each head's tokens kept, moved to the head's first slots in runs cut
//      at page boundaries) vs the bound: one contiguous copy of the same number of bytes (memcpy;
//      cudaMemcpy device to device).
//
//   kvkeep-bench backend                    # --backend auto: CUDA when present, else CPU
//   kvkeep-bench backend --backend cpu --mib 256 --reps 5 --json
//   kvkeep-bench backend --smoke
#ifndef KVKEEP_BENCH_BACKEND_BENCH_H_
#define KVKEEP_BENCH_BACKEND_BENCH_H_

namespace kvkeep::bench {

// argv[0] is the subcommand name ("backend") and is skipped. Exit code: 0 ok, 2 bad flags,
// 1 the backend could not be created or an operation failed (the bound's failure included).
int RunBackendBench(int argc, char** argv);

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_BACKEND_BENCH_H_
