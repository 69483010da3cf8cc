// Command-line options of kvkeep-llama and their parser (flags.cc). `--flag value` and
// `--flag=value`; unknown flags and missing values are usage errors (exit 2).
#ifndef KVKEEP_ENGINES_LLAMA_OPTIONS_H_
#define KVKEEP_ENGINES_LLAMA_OPTIONS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvkeep::llama {

struct Options {
  std::string command;  // check, generate, bench, store, restore, prefix-restore
  bool help = false;
  bool json = false;
  std::string model;       // --model FILE (GGUF)
  std::string model_name;  // --model-name NAME (default: the file's base name)
  std::string socket;      // --socket PATH (default $KVKEEP_SOCKET or ./kvkeep-data/kvkeepd.sock)
  std::string token_file;  // --token-file PATH (the tenant's token)
  std::string peer_token_file;  // --peer-token-file PATH (check: another tenant of the group)
  std::string prompt;           // --prompt TEXT (default: a built-in text)
  uint32_t prompt_tokens = 256;       // --prompt-tokens N: length of the built-in prompt
  std::vector<std::string> policies;  // --policy a,b (scorers; allocation `sequence`)
  double keep = 0.25;                 // --keep RATIO
  uint32_t decode = 32;  // --decode N: tokens decoded after the prompt (check, generate)
  int threads = 2;       // --threads N
  uint32_t repeat = 5;   // --repeat N (bench)
  // Plumbing of check and the tests.
  std::string sequence;    // --sequence ID
  int32_t probe = -1;      // --probe TOKEN
  std::string logits_out;  // --logits-out FILE (float32, the probe's next-token logits)
  bool retain = false;     // --retain (store)
};

// Parses argv; INVALID_ARGUMENT with a message for a usage error.
absl::StatusOr<Options> ParseOptions(int argc, char** argv);
// The model name kvkeep registers: --model-name, else the GGUF file's base name without
// extension, characters outside [A-Za-z0-9._-] replaced by '-', at most 64.
std::string ModelName(const Options& options);
// The prompt: --prompt, else the built-in text cut to prompt_tokens characters.
std::string PromptText(const Options& options);

}  // namespace kvkeep::llama

#endif  // KVKEEP_ENGINES_LLAMA_OPTIONS_H_
