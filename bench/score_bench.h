// `kvkeep-bench score`: eviction speed (shared/docs/benchmarks.md §1). For each scorer and context
// length: tokens·heads scored per second for one layer and the time of a whole-sequence
// Compress-equivalent (score every layer + SelectTokens), next to the bounds measured in the same
// run: bytes that must be read over a STREAM-style copy bandwidth of the same size, and the
// GEMM-shaped work over the cblas GEMM rate on the same shapes. Median, min and max of --reps.
//
//   kvkeep-bench score --shape llama3-8b --ctx 1024,4096,8192 --reps 5 [--json]
//   kvkeep-bench score --shape small --ctx 256 --reps 1          # CI smoke, a couple of seconds
//
// Flags: --shape small|llama3-8b|qwen3-8b  --ctx N[,N...]  --reps N  --keep RATIO
//        --scorers a,b,...  --layers N (Compress layers; default: the shape's)  --json  --help
// Progress goes to stderr; the table (or JSON) to stdout.
#ifndef KVKEEP_BENCH_SCORE_BENCH_H_
#define KVKEEP_BENCH_SCORE_BENCH_H_

namespace kvkeep::bench {

// Parses argv by hand; leading arguments that are not flags (a program or subcommand name) are
// skipped. Returns a process exit code (0 ok, 2 bad flags, 1 a scorer failed).
int RunScoreBench(int argc, char** argv);

}  // namespace kvkeep::bench

using kvkeep::bench::RunScoreBench;

#endif  // KVKEEP_BENCH_SCORE_BENCH_H_
