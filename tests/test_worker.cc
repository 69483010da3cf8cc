// kvkeep-test-worker: a worker process for end-to-end tests. Attaches, writes `tokens` tokens into
// a new sequence, prints "READY <sequence> <pages>" and sleeps until killed.
//   kvkeep-test-worker TARGET TOKEN WORKER_NAME TOKENS [retain] [verify]
// With `verify` it reads every head back in place (its own mapping of the fd-passed arenas),
// compares, prints "VERIFIED uid=<uid> arenas=<n>" and exits 0 (1 on a mismatch) instead of
// sleeping: the uid-separation test runs it under another uid than the daemon's.
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
  const bool verify = argc > 6 && std::string(argv[6]) == "verify";
  auto layout = kvkeep::testing::TestLayout();
  if (!(*client)->RegisterModel(layout).ok()) return 1;
  if (absl::Status channel = (*client)->arena_channel_status(); !channel.ok()) {
    std::fprintf(stderr, "arena channel: %s\n", channel.ToString().c_str());
  }
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
    absl::Status wrote =
        (*client)->WriteInPlace(*seq, head.layer(), head.kv_head(), 0, tokens, k.data(), k.data());
    if (!wrote.ok()) {
      std::fprintf(stderr, "write in place: %s\n", wrote.ToString().c_str());
      return 1;
    }
  }
  if (!(*client)->Commit(*seq, tokens).ok()) return 1;
  std::printf("READY %s %d\n", seq->c_str(), pages);
  std::fflush(stdout);
  if (verify) {
    for (const auto& head : delta->heads()) {
      std::string want = kvkeep::testing::PatternBytes(head.layer() * 10 + head.kv_head(), bytes);
      std::string k(bytes, '\0'), v(bytes, '\0');
      auto read = (*client)->ReadInPlace(*seq, head.layer(), head.kv_head(), 0, tokens, k.data(),
                                         v.data());
      if (!read.ok() || k != want || v != want) {
        std::fprintf(stderr, "verify: layer %u head %u: %s\n", head.layer(), head.kv_head(),
                     read.ok() ? "bytes differ" : read.ToString().c_str());
        return 1;
      }
    }
    std::printf("VERIFIED uid=%d arenas=%zu\n", static_cast<int>(getuid()),
                (*client)->MappedArenas().size());
    return 0;
  }
  for (;;) pause();
}
