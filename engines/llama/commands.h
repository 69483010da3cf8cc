// The commands of kvkeep-llama (main.cc dispatches; `kvkeep-llama --help` explains them). Each
// returns the process exit status: 0 done, 1 failed (the error is printed on stderr).
#ifndef KVKEEP_ENGINES_LLAMA_COMMANDS_H_
#define KVKEEP_ENGINES_LLAMA_COMMANDS_H_

#include "engines/llama/options.h"

namespace kvkeep::llama {

int RunCheck(const Options& options);     // check.cc
int RunBench(const Options& options);     // bench.cc
int RunGenerate(const Options& options);  // commands.cc, and the plumbing below
int RunStore(const Options& options);
int RunRestore(const Options& options);
int RunPrefixRestore(const Options& options);

}  // namespace kvkeep::llama

#endif  // KVKEEP_ENGINES_LLAMA_COMMANDS_H_
