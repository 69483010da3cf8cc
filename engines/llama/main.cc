// kvkeep-llama: llama.cpp as a kvkeep worker. `kvkeep-llama --help` explains the commands.
// Exit status: 0 done, 1 failed (message on stderr), 2 usage error.
#include <cstdio>
#include <iostream>

#include "engines/llama/commands.h"
#include "engines/llama/options.h"

namespace {

constexpr const char* kHelp =
    R"(kvkeep-llama: llama.cpp (0.4.0-dev, pinned by node-llama-cpp 3.21.1) with kvkeep as the
home of its KV cache. After a prefill, the keys and values of every layer and KV head move into
kvkeep pages (written in place into the mapped arena), committed with the cells' positions and
the query statistics captured through llama.cpp's eval callback. Any process of the tenant can
restore them into a fresh llama.cpp context, also after a spill to disk, and another tenant of
the sharing group can start from the published prefix. Compression runs in kvkeep with
allocation `sequence` (one kept token set for all layers and heads, as llama.cpp keeps one set
of cells); llama.cpp then keeps exactly the cells kvkeep kept, at their original positions, and
decodes on.

Usage: kvkeep-llama COMMAND --model FILE --token-file PATH [--socket PATH] [flags]

Commands:
  check      every flow on one prompt, with its figures: store + restore in another process
             (identical logits), spill + restore, shared prefix (--peer-token-file), and per
             --policy the kept tokens, KL and top-1 agreement over --decode teacher-forced
             tokens. Exit 1 when a restore is not exact or the cells differ.
  generate   prompt -> tokens: prefill, store in kvkeep, compress with --policy (first one) at
             --keep (1 = no compression), decode --decode tokens greedily.
  bench      time to move the prompt's KV into kvkeep and back vs llama.cpp's own prefill of it,
             median [min, max] over --repeat repetitions (docs/benchmarks.md).
  store      (plumbing) prefill, store; prints the sequence id and probe token; --retain keeps
             it after this process; --logits-out FILE gets the probe's next-token logits.
  restore    (plumbing) --sequence ID --probe TOKEN --logits-out FILE: a fresh context from
             kvkeep, the probe decoded after the restored cells.
  prefix-restore  (plumbing) --probe TOKEN --logits-out FILE: the group's shared prefix of the
             prompt from kvkeep, the rest of the prompt decoded, then the probe.

Flags:
  --model FILE          GGUF model (Llama architecture). engines/llama/make_models.py writes some.
  --model-name NAME     name kvkeep registers the layout under (default: the file's base name); a
                        name registered with another layout is refused
  --socket PATH         daemon socket (default $KVKEEP_SOCKET or ./kvkeep-data/kvkeepd.sock)
  --token-file PATH     file with the tenant's token (kvkeepctl tenant create prints it)
  --peer-token-file P   check: a second tenant of the same sharing group (shared-prefix flow)
  --prompt TEXT         prompt (default: a built-in text of --prompt-tokens characters)
  --prompt-tokens N     length of the built-in prompt in characters, about as
                        many tokens (default 256)
  --policy A,B          scorers for check (default snapkv,expected,h2o,knorm,streaming);
                        generate uses the first
  --keep RATIO          keep ratio of the compression, (0, 1] (default 0.25)
  --decode N            tokens decoded after the prompt (default 32)
  --threads N           llama.cpp threads (default 2)
  --repeat N            bench repetitions (default 5, after one warm-up)
  --json                machine-readable figures on stdout (one JSON object)
  --help                this text

Example (deploy/example-llama does all of it):
  /usr/bin/python3 engines/llama/make_models.py --out /tmp/models --shape gqa2-d64
  kvkeep-llama check --model /tmp/models/gqa2-d64.gguf --socket kvkeep-data/kvkeepd.sock \
      --token-file alpha.token --peer-token-file beta.token --json
)";

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<kvkeep::llama::Options> options = kvkeep::llama::ParseOptions(argc, argv);
  if (!options.ok()) {
    std::cerr << "kvkeep-llama: " << options.status().message()
              << "\nkvkeep-llama --help explains the commands and flags\n";
    return 2;
  }
  if (options->help) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  using namespace kvkeep::llama;
  const std::string& c = options->command;
  if (c == "check") return RunCheck(*options);
  if (c == "generate") return RunGenerate(*options);
  if (c == "bench") return RunBench(*options);
  if (c == "store") return RunStore(*options);
  if (c == "restore") return RunRestore(*options);
  return RunPrefixRestore(*options);
}
