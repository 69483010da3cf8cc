// kvkeep-bench: performance figures measured against a bound or a peer in the same run
// (shared/docs/benchmarks.md). One subcommand per measurement.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/backend_bench.h"
#include "bench/fleet_bench.h"
#include "bench/io_bench.h"
#include "bench/long_bench.h"
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
  backend the memory backend (CPU or CUDA): large Write/Read vs memcpy/cudaMemcpy, small
          writes, CopyBatch compaction vs a contiguous copy (kvkeep-bench backend --help)
  long    long sequences (1k..128k tokens, Llama-8B shape) end to end: allocate, commit, table,
          compress, spill, restore per token, with chunked replies (kvkeep-bench long --help)
  fleet   fleet tier put/get of page values vs raw hiredis SET/GET on a local Redis Cluster
          (kvkeep-bench fleet --help)
  all     score, io, spill and mem one after the other with their defaults
          (--smoke: tiny sizes, a few seconds; --json: each prints its JSON object)

Flags:
  --help, -h   this help; `kvkeep-bench COMMAND --help` lists a command's flags and defaults

Every command prints a table (or --json), repeats each measurement and reports
median, min and max. Exit status: 0 done, 1 a measurement or a helper process failed,
2 usage error.
)";

constexpr char kAllUsage[] = R"(kvkeep-bench all - score, io, spill and mem in turn, with their defaults

Usage: kvkeep-bench all [--smoke] [--json]

  --smoke   tiny sizes, a few seconds (score: --shape small --ctx 256 --reps 1; the others
            their own --smoke)
  --json    each benchmark prints its JSON object instead of its table
  --help    this help

Stops at the first benchmark that fails and exits with its code.
)";

}  // namespace

// Runs every benchmark in turn; stops at the first that fails and returns its code.
int RunAll(int argc, char** argv) {
  bool smoke = false, json = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--smoke") {
      smoke = true;
    } else if (a == "--json") {
      json = true;
    } else if (a == "--help" || a == "-h") {
      std::fputs(kAllUsage, stdout);
      return 0;
    } else {
      std::fprintf(stderr, "kvkeep-bench all: unknown flag %s (only --smoke and --json)\n", a.c_str());
      return 2;
    }
  }
  struct Step {
    const char* name;
    int (*run)(int, char**);
    std::vector<std::string> smoke_args;
  };
  const std::vector<Step> steps = {
      {"score", &kvkeep::bench::RunScoreBench, {"--shape", "small", "--ctx", "256", "--reps", "1"}},
      {"io", &kvkeep::bench::RunIoBench, {"--smoke"}},
      {"spill", &kvkeep::bench::RunSpillBench, {"--smoke"}},
      {"mem", &kvkeep::bench::RunMemBench, {"--smoke"}},
  };
  for (const Step& step : steps) {
    std::vector<std::string> args = {step.name};
    if (smoke) args.insert(args.end(), step.smoke_args.begin(), step.smoke_args.end());
    if (json) args.push_back("--json");
    std::vector<char*> argv_step;
    for (auto& a : args) argv_step.push_back(a.data());
    argv_step.push_back(nullptr);
    std::fprintf(stderr, "== kvkeep-bench %s\n", step.name);
    const int rc = step.run(static_cast<int>(args.size()), argv_step.data());
    if (rc != 0) return rc;
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2) {  // a usage error: the help goes to stderr
    std::fputs(kUsage, stderr);
    return 2;
  }
  if (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  std::string cmd = argv[1];
  if (cmd == "score") return RunScoreBench(argc - 1, argv + 1);
  if (cmd == "io") return kvkeep::bench::RunIoBench(argc - 1, argv + 1);
  if (cmd == "spill") return kvkeep::bench::RunSpillBench(argc - 1, argv + 1);
  if (cmd == "mem") return kvkeep::bench::RunMemBench(argc - 1, argv + 1);
  if (cmd == "backend") return kvkeep::bench::RunBackendBench(argc - 1, argv + 1);
  if (cmd == "fleet") return kvkeep::bench::RunFleetBench(argc - 1, argv + 1);
  if (cmd == "long") return kvkeep::bench::RunLongBench(argc - 1, argv + 1);
  if (cmd == "all") return RunAll(argc - 1, argv + 1);
  std::fprintf(stderr, "kvkeep-bench: unknown %s \"%s\" (see kvkeep-bench --help)\n",
               cmd.rfind('-', 0) == 0 ? "flag" : "command", cmd.c_str());
  return 2;
}
