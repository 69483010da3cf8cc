// kvkeep-eval: eviction quality harness. See `kvkeep-eval --help` and docs/quality.md.
#include <iostream>
#include <string>
#include <vector>

#include "bench/eval/cli.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return kvkeep::eval::RunCli(args, std::cout, std::cerr);
}
