// Query sketches through the real daemon: a worker process computes and sends them
// (kvkeep-test-worker ... sketch), the daemon compresses with qsketch, and the kept tokens read
// back are exactly those the eviction library selects from the same inputs; the daemon folds the
// window queries it receives into a stored sketch (qsketch-post); bad sketches are refused with
// INVALID_ARGUMENT naming the field, and nothing changes.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "client/layer_query_sketch.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "service/eviction/scorers.h"
#include "service/eviction/selection.h"
#include "tests/daemon_process.h"
#include "tests/sketch_workload.h"

namespace kvkeep::testing {
namespace {

using absl::StatusCode;
using W = SketchWorkload;

constexpr uint64_t kSeed = 5;
constexpr double kKeep = 0.3;
// Few forced tokens, so the scores choose most of the kept ones.
constexpr uint32_t kSinks = 2, kWindow = 4;

// The sketch as LayerInputs holds it: k slots per query head, unused slots of weight 0.
void PutSketch(const LayerQuerySketch& s, int k, bool post_rope, eviction::LayerInputs* in) {
  in->sketch_k = k;
  in->sketch_post_rope = post_rope;
  in->sketch_centroids.assign(size_t{W::kQHeads} * k * W::kDim, 0.0f);
  in->sketch_weights.assign(size_t{W::kQHeads} * k, 0.0f);
  for (uint32_t h = 0; h < W::kQHeads; ++h) {
    const sketch::HeadSketch& head = s.heads()[h];
    std::copy(head.centroids.begin(), head.centroids.end(),
              in->sketch_centroids.begin() + size_t{h} * k * W::kDim);
    std::copy(head.weights.begin(), head.weights.end(), in->sketch_weights.begin() + size_t{h} * k);
  }
}

class QuerySketchEndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(daemon_.Start());
    ASSERT_OK_AND_ASSIGN(token_, daemon_.CreateTenant("alpha"));
    auto c = Client::Attach(daemon_.channel(), token_, "checker");
    ASSERT_OK(c);
    client_ = std::move(*c);
    ASSERT_OK(client_->RegisterModel(W::Layout()));
  }

  // A sequence of this client holding `w`'s keys and values, committed with `stats`.
  std::string Fill(const SketchWorkload& w, const std::vector<v1::LayerStats>& stats = {}) {
    auto seq = client_->CreateSequence(W::kModel);
    EXPECT_OK(seq);
    EXPECT_OK(client_->Allocate(*seq, w.n));
    for (uint32_t l = 0; l < W::kLayers; ++l) {
      for (uint32_t h = 0; h < W::kKvHeads; ++h) {
        EXPECT_OK(client_->WriteInPlace(*seq, l, h, 0, w.n, w.keys[l][h].data(),
                                        w.values[l][h].data()));
      }
    }
    EXPECT_OK(client_->Commit(*seq, w.n, {}, stats));
    return *seq;
  }

  // The library's selection over `inputs` (one LayerInputs per layer; shapes, RoPE, keys and
  // values filled in here).
  eviction::Selection LibrarySelection(const SketchWorkload& w, const std::string& scorer,
                                       std::vector<eviction::LayerInputs> inputs) {
    eviction::Policy p;
    p.scorer = *eviction::ParseScorer(scorer);
    p.allocation = eviction::Allocation::kUniform;
    p.sinks = kSinks;
    p.window = kWindow;
    eviction::ScoringWorkspace workspace;
    std::vector<eviction::HeadScores> scores;
    for (uint32_t l = 0; l < W::kLayers; ++l) {
      eviction::LayerInputs& in = inputs[l];
      in.q_heads = W::kQHeads;
      in.kv_heads = W::kKvHeads;
      in.head_dim = W::kDim;
      in.layer_index = static_cast<int>(l);
      in.rope.theta = 10000;
      in.next_position = w.n;
      for (uint32_t h = 0; h < W::kKvHeads; ++h) {
        in.heads.push_back({static_cast<int>(w.n), w.keys[l][h].data(), w.values[l][h].data(),
                            nullptr});
      }
      EXPECT_OK(eviction::ValidateLayerInputs(in, p));
      scores.push_back(*eviction::ScoreLayer(p, in, workspace));
    }
    eviction::Budget budget;
    budget.keep_ratio = kKeep;
    return *eviction::SelectTokens(p, budget, scores, W::kQHeads / W::kKvHeads);
  }

  // Compresses `seq` with `scorer` and checks that exactly `want` is kept, positions and bytes.
  void ExpectDaemonKeeps(const std::string& seq, const SketchWorkload& w,
                         const std::string& scorer, const eviction::Selection& want) {
    v1::Policy wire;
    wire.set_scorer(scorer);
    wire.set_allocation("uniform");
    wire.set_keep_ratio(kKeep);
    wire.set_sinks(kSinks);
    wire.set_window(kWindow);
    ASSERT_OK_AND_ASSIGN(v1::CompressReply reply, client_->Compress(seq, wire));
    uint64_t kept_total = 0;
    for (uint32_t l = 0; l < W::kLayers; ++l) {
      for (uint32_t h = 0; h < W::kKvHeads; ++h) {
        const auto& kept = want.kept[l][h];
        kept_total += kept.size();
        ASSERT_LT(kept.size(), w.n);
        ASSERT_OK_AND_ASSIGN(HeadData back, client_->ReadHead(seq, l, h));
        ASSERT_EQ(back.positions.size(), kept.size()) << "layer " << l << " head " << h;
        for (size_t i = 0; i < kept.size(); ++i) {
          const int32_t j = kept[i];
          ASSERT_EQ(back.positions[i], j) << "layer " << l << " head " << h << " kept " << i;
          EXPECT_EQ(std::memcmp(back.keys.data() + i * W::kDim * 4, &w.keys[l][h][j * W::kDim],
                                W::kDim * 4),
                    0);
          EXPECT_EQ(std::memcmp(back.values.data() + i * W::kDim * 4,
                                &w.values[l][h][j * W::kDim], W::kDim * 4),
                    0);
        }
      }
    }
    EXPECT_EQ(reply.summary().scorer(), scorer);
    EXPECT_EQ(reply.summary().tokens_after(), kept_total);
  }

  uint64_t StatsBytes(const std::string& seq) {
    v1::SequenceRef ref;
    ref.set_tenant("alpha");
    ref.set_sequence_id(seq);
    auto detail = daemon_.Admin()->GetSequence(ref);
    EXPECT_OK(detail);
    return detail.ok() ? detail->stats_bytes() : 0;
  }

  DaemonProcess daemon_;
  std::string token_;
  std::unique_ptr<Client> client_;
};

TEST_F(QuerySketchEndToEndTest, WorkerSketchGivesExactlyTheLibrarySelection) {
  constexpr uint32_t n = 160;
  const std::string worker = DaemonProcess::BinaryDir() + "/kvkeep-test-worker";
  ProcessExit run = RunToExit({worker, daemon_.target(), token_, "sketcher", std::to_string(n),
                               "sketch", std::to_string(kSeed)});
  ASSERT_EQ(run.code, 0) << run.err;
  ASSERT_EQ(run.out.rfind("READY ", 0), 0u) << run.out;
  std::string seq = run.out.substr(6);
  while (!seq.empty() && (seq.back() == '\n' || seq.back() == ' ')) seq.pop_back();
  ASSERT_OK(client_->Acquire(seq));
  EXPECT_GT(StatsBytes(seq), size_t{W::kLayers} * W::kQHeads * (W::kDim + 1) * 4);

  // The same sketches, computed here from the same queries and seed.
  const SketchWorkload w = MakeSketchWorkload(n, kSeed);
  std::vector<eviction::LayerInputs> inputs(W::kLayers);
  for (uint32_t l = 0; l < W::kLayers; ++l) {
    ASSERT_OK_AND_ASSIGN(LayerQuerySketch s,
                         LayerQuerySketch::Build(l, W::kQHeads, W::kDim, w.queries[l].data(), n,
                                                 0, W::Options(kSeed)));
    PutSketch(s, W::Options(kSeed).k, /*post_rope=*/false, &inputs[l]);
  }
  ExpectDaemonKeeps(seq, w, "qsketch", LibrarySelection(w, "qsketch", std::move(inputs)));
}

TEST_F(QuerySketchEndToEndTest, DaemonFoldsWindowQueriesIntoThePostRopeSketch) {
  constexpr uint32_t n = 120, early = 8, window = 32;
  const SketchWorkload w = MakeSketchWorkload(n, kSeed + 1);
  LayerQuerySketch::Options options = W::Options(kSeed);
  options.post_rope = true;
  // Sketches of positions 0..early-1 only (the workload's queries taken as post-RoPE ones).
  std::vector<LayerQuerySketch> sketches;
  std::vector<v1::LayerStats> stats;
  const size_t per_head = size_t{n} * W::kDim;
  for (uint32_t l = 0; l < W::kLayers; ++l) {
    std::vector<float> first;
    for (uint32_t h = 0; h < W::kQHeads; ++h) {
      const float* q = w.queries[l].data() + h * per_head;
      first.insert(first.end(), q, q + early * W::kDim);
    }
    ASSERT_OK_AND_ASSIGN(LayerQuerySketch s, LayerQuerySketch::Build(l, W::kQHeads, W::kDim,
                                                                     first.data(), early, 0,
                                                                     options));
    stats.push_back(s.ToLayerStats());
    sketches.push_back(std::move(s));
  }
  const std::string seq = Fill(w, stats);
  // The window (the last `window` positions) goes to the daemon, which folds it in; here the
  // worker-side fold of the same queries gives the sketch the daemon should hold.
  std::vector<eviction::LayerInputs> folded(W::kLayers), unfolded(W::kLayers);
  std::vector<v1::LayerStats> windows(W::kLayers);
  for (uint32_t l = 0; l < W::kLayers; ++l) {
    PutSketch(sketches[l], options.k, /*post_rope=*/true, &unfolded[l]);
    windows[l].set_layer(l);
    windows[l].set_window(window);
    for (uint32_t h = 0; h < W::kQHeads; ++h) {
      const float* q = w.queries[l].data() + h * per_head + (n - window) * W::kDim;
      windows[l].mutable_window_queries()->Add(q, q + window * W::kDim);
    }
    for (uint32_t i = 0; i < window; ++i) {
      std::vector<float> one;
      for (uint32_t h = 0; h < W::kQHeads; ++h) {
        const float* q = w.queries[l].data() + h * per_head + (n - window + i) * W::kDim;
        one.insert(one.end(), q, q + W::kDim);
      }
      ASSERT_OK(sketches[l].Fold(one.data(), n - window + i));
    }
    PutSketch(sketches[l], options.k, /*post_rope=*/true, &folded[l]);
  }
  const uint64_t before = StatsBytes(seq);
  ASSERT_OK(client_->PutStats(seq, windows));
  EXPECT_GT(StatsBytes(seq), before);  // the window itself is held too
  const eviction::Selection want = LibrarySelection(w, "qsketch-post", std::move(folded));
  // The fold matters: without it the library would keep other tokens (so this test can fail).
  ASSERT_NE(LibrarySelection(w, "qsketch-post", std::move(unfolded)).kept, want.kept);
  ExpectDaemonKeeps(seq, w, "qsketch-post", want);
}

TEST_F(QuerySketchEndToEndTest, BadSketchesAreRefusedAndChangeNothing) {
  constexpr uint32_t n = 64;
  const SketchWorkload w = MakeSketchWorkload(n, kSeed + 2);
  ASSERT_OK_AND_ASSIGN(LayerQuerySketch good,
                       LayerQuerySketch::Build(0, W::kQHeads, W::kDim, w.queries[0].data(), n, 0,
                                               W::Options(kSeed)));
  const std::string seq = Fill(w, {good.ToLayerStats()});
  const uint64_t before = StatsBytes(seq);
  ASSERT_GT(before, 0u);

  // Queries of half the head_dim: a sketch of another model.
  std::vector<float> narrow;
  for (size_t i = 0; i < w.queries[0].size(); i += 2) narrow.push_back(w.queries[0][i]);
  ASSERT_OK_AND_ASSIGN(LayerQuerySketch other,
                       LayerQuerySketch::Build(0, W::kQHeads, W::kDim / 2, narrow.data(), n, 0,
                                               W::Options(kSeed)));
  struct Case {
    const char* name;
    v1::LayerStats stats;
    const char* message;
  };
  std::vector<Case> cases;
  cases.push_back({"nan", good.ToLayerStats(), "LayerStats.sketch.centroids holds a non-finite"});
  cases.back().stats.mutable_sketch()->set_centroids(5, std::nanf(""));
  cases.push_back({"zero weight", good.ToLayerStats(), "LayerStats.sketch.weights[2] = 0"});
  cases.back().stats.mutable_sketch()->set_weights(2, 0.0f);
  cases.push_back({"k too large", good.ToLayerStats(), "LayerStats.sketch.k = 1000"});
  cases.back().stats.mutable_sketch()->set_k(1000);
  cases.push_back({"head_dim", other.ToLayerStats(),
                   "LayerStats.sketch.head_dim = 8 but the model's head_dim is 16"});
  for (const Case& c : cases) {
    EXPECT_THAT(client_->PutStats(seq, {c.stats}), StatusIs(StatusCode::kInvalidArgument,
                                                            c.message))
        << c.name;
    EXPECT_EQ(StatsBytes(seq), before) << c.name;
    // With a commit: refused before anything is committed.
    ASSERT_OK(client_->Allocate(seq, 1));
    EXPECT_THAT(client_->Commit(seq, 1, {}, {c.stats}),
                StatusIs(StatusCode::kInvalidArgument, c.message))
        << c.name;
    ASSERT_OK_AND_ASSIGN(v1::PageTable table, client_->GetSequence(seq, false));
    EXPECT_EQ(table.next_position(), n) << c.name;
    EXPECT_EQ(table.heads(0).token_count(), n) << c.name;
    EXPECT_EQ(StatsBytes(seq), before) << c.name;
  }
}

}  // namespace
}  // namespace kvkeep::testing
