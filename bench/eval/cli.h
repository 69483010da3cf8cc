// The kvkeep-eval command line, as a function so that tests can run it in-process.
//
//   std::ostringstream out, err;
//   int rc = RunCli({"run", "--data", dir, "--policy", "snapkv,oracle", "--json"}, out, err);
//
// Exit codes: 0 success; 2 bad arguments, missing or malformed input files (message on `err`);
// 1 any other failure.
#ifndef KVKEEP_BENCH_EVAL_CLI_H_
#define KVKEEP_BENCH_EVAL_CLI_H_

#include <ostream>
#include <string>
#include <vector>

namespace kvkeep::eval {

// `args` excludes the program name. Results go to `out`; errors, help for errors, and progress
// (unless --quiet) go to `err`.
int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace kvkeep::eval

#endif  // KVKEEP_BENCH_EVAL_CLI_H_
