// kvkeep-test-worker: a worker process for end-to-end tests. Attaches, writes `tokens` tokens into
// a new sequence, prints "READY <sequence> <pages>" and sleeps until killed.
//   kvkeep-test-worker TARGET TOKEN WORKER_NAME TOKENS [retain]
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "client/client.h"
#include "tests/daemon_process.h"

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: kvkeep-test-worker TARGET TOKEN WORKER_NAME TOKENS [retain]\n");
    return 2;
  }
  kvkeep::ChannelOptions channel;
  channel.target = argv[1];
  auto client = kvkeep::Client::Attach(channel, argv[2], argv[3]);
  if (!client.ok()) {
    std::fprintf(stderr, "attach: %s\n", client.status().ToString().c_str());
    return 1;
  }
  const uint32_t tokens = static_cast<uint32_t>(std::atoi(argv[4]));
  const bool retain = argc > 5 && std::string(argv[5]) == "retain";
  auto layout = kvkeep::testing::TestLayout();
  if (!(*client)->RegisterModel(layout).ok()) return 1;
  auto seq = (*client)->CreateSequence(layout.name(), retain);
  if (!seq.ok()) return 1;
  auto delta = (*client)->Allocate(*seq, tokens);
  if (!delta.ok()) {
    std::fprintf(stderr, "allocate: %s\n", delta.status().ToString().c_str());
    return 1;
  }
  const size_t bytes = size_t{tokens} * layout.head_dim() * 2;
  int pages = 0;
  for (const auto& head : delta->heads()) {
    pages += head.pages_size();
    std::string k = kvkeep::testing::PatternBytes(head.layer() * 10 + head.kv_head(), bytes);
    if (!(*client)->WriteInPlace(*seq, head.layer(), head.kv_head(), 0, tokens, k.data(), k.data()).ok()) {
      return 1;
    }
  }
  if (!(*client)->Commit(*seq, tokens).ok()) return 1;
  std::printf("READY %s %d\n", seq->c_str(), pages);
  std::fflush(stdout);
  for (;;) pause();
}
