// kvkeep-bench long: one Llama-3.1-8B-shaped sequence per length (1k .. 128k tokens by default,
// those the pool allows), through allocate, commit, page table, compress, spill and restore with
// the default 4 MiB message limit (chunked replies where a table passes it). Reports the seconds
// and the cost per token of each step and the log-log slope of each step's time over the lengths
// (1.0 = cost per token flat).
#ifndef KVKEEP_BENCH_LONG_BENCH_H_
#define KVKEEP_BENCH_LONG_BENCH_H_

namespace kvkeep::bench {

int RunLongBench(int argc, char** argv);

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_LONG_BENCH_H_
