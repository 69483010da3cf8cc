// kvkeep-bench: performance figures measured against a bound or a peer in the same run
// (shared/docs/benchmarks.md). One subcommand per measurement.
#include <cstdio>
#include <cstring>
#include <string>

#include "bench/io_bench.h"
#include "bench/mem_bench.h"
#include "bench/score_bench.h"
#include "bench/spill_bench.h"

namespace {

constexpr char kUsage[] = R"(kvkeep-bench - kvkeep performance, always as a ratio to a bound or peer

Usage: kvkeep-bench COMMAND [flags]

Commands:
  score   scorer throughput vs the copy-bandwidth / GEMM bound of this machine
          (kvkeep-bench score --help)
  io      data path through a real kvkeepd: AllocatePages+CommitTokens vs an empty RPC,
          WriteKV/ReadKV vs a raw Unix-socket copy (kvkeep-bench io --help)
  spill   spill/restore of whole sequences vs raw RocksDB Put/Get and a file write+fsync
          (kvkeep-bench spill --help)
  mem     kvkeepd's own memory: metadata bytes per page, bytes per committed token, peak RSS
          (kvkeep-bench mem --help)

Every command prints a table (or --json), repeats each measurement and reports
median, min and max.
)";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::printf("%s", kUsage);
    return argc < 2 ? 2 : 0;
  }
  std::string cmd = argv[1];
  if (cmd == "score") return RunScoreBench(argc - 1, argv + 1);
  if (cmd == "io") return kvkeep::bench::RunIoBench(argc - 1, argv + 1);
  if (cmd == "spill") return kvkeep::bench::RunSpillBench(argc - 1, argv + 1);
  if (cmd == "mem") return kvkeep::bench::RunMemBench(argc - 1, argv + 1);
  std::fprintf(stderr, "kvkeep-bench: unknown command \"%s\" (see kvkeep-bench --help)\n",
               cmd.c_str());
  return 2;
}
