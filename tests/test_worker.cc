// kvkeep-test-worker: a worker process for end-to-end tests. Attaches, writes `tokens` tokens into
// a new sequence, prints "READY <sequence> <pages>" and sleeps until killed.
//   kvkeep-test-worker TARGET TOKEN WORKER_NAME TOKENS [retain] [verify]
// With `verify` it reads every head back in place (its own mapping of the fd-passed arenas),
// compares, prints "VERIFIED uid=<uid> arenas=<n>" and exits 0 (1 on a mismatch) instead of
// sleeping: the uid-separation test runs it under another uid than the daemon's.
// With `sketch SEED` it writes tests/sketch_workload.h's data into a new retained sequence of its
// fp32 model, computes each layer's query sketch (client/layer_query_sketch.h), sends layer 0's
// with the Commit and the others with PutStats, prints "READY <sequence>" and exits.
//   kvkeep-test-worker TARGET TOKEN WORKER_NAME TOKENS sketch SEED
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "client/client.h"
#include "client/layer_query_sketch.h"
#include "tests/daemon_process.h"
#include "tests/sketch_workload.h"

namespace {

int Fail(const char* what, const absl::Status& status) {
  std::fprintf(stderr, "%s: %s\n", what, status.ToString().c_str());
  return 1;
}

// The `sketch` mode: a worker that computes query sketches and sends them (see the top).
int RunSketchWorker(kvkeep::Client& client, uint32_t tokens, uint64_t seed) {
  using kvkeep::testing::SketchWorkload;
  const kvkeep::testing::SketchWorkload w = kvkeep::testing::MakeSketchWorkload(tokens, seed);
  if (auto st = client.RegisterModel(SketchWorkload::Layout()); !st.ok()) {
    return Fail("register", st.status());
  }
  auto seq = client.CreateSequence(SketchWorkload::kModel, /*retain=*/true);
  if (!seq.ok()) return Fail("create", seq.status());
  if (auto st = client.Allocate(*seq, tokens); !st.ok()) return Fail("allocate", st.status());
  for (uint32_t l = 0; l < SketchWorkload::kLayers; ++l) {
    for (uint32_t h = 0; h < SketchWorkload::kKvHeads; ++h) {
      absl::Status st = client.WriteInPlace(*seq, l, h, 0, tokens, w.keys[l][h].data(),
                                            w.values[l][h].data());
      if (!st.ok()) return Fail("write", st);
    }
  }
  std::vector<kvkeep::v1::LayerStats> sketches;
  for (uint32_t l = 0; l < SketchWorkload::kLayers; ++l) {
    auto s = kvkeep::LayerQuerySketch::Build(l, SketchWorkload::kQHeads, SketchWorkload::kDim,
                                             w.queries[l].data(), static_cast<int>(tokens), 0,
                                             SketchWorkload::Options(seed));
    if (!s.ok()) return Fail("sketch", s.status());
    sketches.push_back(s->ToLayerStats());
  }
  if (auto st = client.Commit(*seq, tokens, {}, {sketches[0]}); !st.ok()) {
    return Fail("commit", st.status());
  }
  sketches.erase(sketches.begin());
  if (auto st = client.PutStats(*seq, sketches); !st.ok()) return Fail("put_stats", st.status());
  std::printf("READY %s\n", seq->c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace

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
  if (argc > 6 && std::string(argv[5]) == "sketch") {
    return RunSketchWorker(**client, tokens, std::strtoull(argv[6], nullptr, 10));
  }
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
