// kvkeep-llama bench: the time to move a sequence's KV cache into kvkeep and back, against
// llama.cpp's own prefill of the same prompt, side by side in one run (docs/benchmarks.md rules:
// per repetition ratios; median [min, max] over --repeat repetitions).
//   prefill  llama_decode of the prompt into an empty sequence (no eval callback work)
//   store    llama_state_seq_get_data + parse + WriteInPlace of every (layer, head) + Commit
//   load     Acquire + ReadInPlace of every head + build state + llama_state_seq_set_data + Release
// Each repetition uses a new kvkeep sequence (dropped after) and checks the state came back equal.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engines/llama/commands.h"
#include "engines/llama/kv_bridge.h"
#include "engines/llama/worker_common.h"
#include "nlohmann/json.hpp"

namespace kvkeep::llama {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

json Summary(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  const double median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  return json{{"median", median}, {"min", v.front()}, {"max", v.back()}};
}

absl::StatusOr<json> Bench(const Options& o) {
  ASSIGN_OR_RETURN(auto rt, LoadModel(o, /*capture=*/false));
  ASSIGN_OR_RETURN(auto client, AttachWorker(o, o.token_file, "kvkeep-llama-bench"));
  const std::string model = ModelName(o);
  RETURN_IF_ERROR(RegisterLayout(*client, LayoutFor(model, rt->shape())));
  ASSIGN_OR_RETURN(std::vector<int32_t> tokens, rt->Tokenize(PromptText(o)));
  std::vector<double> prefill, store, load, ratio;
  // One warm-up repetition, not counted.
  for (uint32_t rep = 0; rep <= o.repeat; ++rep) {
    rt->Clear();
    auto t0 = Clock::now();
    RETURN_IF_ERROR(rt->Decode(tokens, 0));
    const double prefill_ms = Ms(t0);
    t0 = Clock::now();
    ASSIGN_OR_RETURN(std::string state, rt->GetState());
    ASSIGN_OR_RETURN(std::string sequence, StoreState(*client, model, rt->shape(), state, {}));
    const double store_ms = Ms(t0);
    rt->Clear();
    t0 = Clock::now();
    ASSIGN_OR_RETURN(std::string back, LoadState(*client, model, rt->shape(), sequence));
    RETURN_IF_ERROR(rt->SetState(back));
    const double load_ms = Ms(t0);
    RETURN_IF_ERROR(client->Drop(sequence).status());
    if (back != state) return absl::InternalError("the state did not come back equal");
    if (rep == 0) continue;
    prefill.push_back(prefill_ms);
    store.push_back(store_ms);
    load.push_back(load_ms);
    ratio.push_back((store_ms + load_ms) / prefill_ms);
  }
  const ModelShape& s = rt->shape();
  return json{{"model", model},
              {"layers", s.layers},
              {"q_heads", s.q_heads},
              {"kv_heads", s.kv_heads},
              {"head_dim", s.head_dim},
              {"prompt_tokens", tokens.size()},
              {"kv_bytes", uint64_t{2} * tokens.size() * s.layers * s.kv_heads * s.head_dim * 2},
              {"threads", o.threads},
              {"repeat", o.repeat},
              {"prefill_ms", Summary(prefill)},
              {"store_ms", Summary(store)},
              {"load_ms", Summary(load)},
              {"store_plus_load_over_prefill", Summary(ratio)}};
}

}  // namespace

int RunBench(const Options& o) {
  absl::StatusOr<json> r = Bench(o);
  if (!r.ok()) {
    std::cerr << "kvkeep-llama bench: " << r.status().message() << "\n";
    return 1;
  }
  if (o.json) {
    std::cout << r->dump() << "\n";
    return 0;
  }
  auto line = [&](const char* name, const json& v) {
    std::printf("%-32s %10.3f  [%.3f, %.3f]\n", name, v["median"].get<double>(),
                v["min"].get<double>(), v["max"].get<double>());
  };
  std::printf("%s: %d layers, %d/%d heads, head_dim %d; %d tokens (%llu KV bytes), %d reps\n",
              (*r)["model"].get<std::string>().c_str(), (*r)["layers"].get<int>(),
              (*r)["q_heads"].get<int>(), (*r)["kv_heads"].get<int>(), (*r)["head_dim"].get<int>(),
              (*r)["prompt_tokens"].get<int>(), (*r)["kv_bytes"].get<unsigned long long>(),
              (*r)["repeat"].get<int>());
  line("llama.cpp prefill (ms)", (*r)["prefill_ms"]);
  line("into kvkeep (ms)", (*r)["store_ms"]);
  line("back from kvkeep (ms)", (*r)["load_ms"]);
  line("(into + back) / prefill", (*r)["store_plus_load_over_prefill"]);
  return 0;
}

}  // namespace kvkeep::llama
