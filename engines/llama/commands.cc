// generate, and the plumbing commands that check and the tests run as separate processes:
// store (prefill, store the KV in kvkeep, write the probe's logits), restore (a fresh context from
// kvkeep, the probe's logits), prefix-restore (another tenant of the group: the shared prefix from
// kvkeep, the rest of the prompt decoded, the probe's logits).
#include "engines/llama/commands.h"

#include <chrono>
#include <cstdio>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engines/llama/kv_bridge.h"
#include "engines/llama/worker_common.h"
#include "nlohmann/json.hpp"

namespace kvkeep::llama {
namespace {

using json = nlohmann::json;

int Fail(const absl::Status& status, const std::string& command) {
  std::cerr << "kvkeep-llama " << command << ": " << status.message() << " ("
            << absl::StatusCodeToString(status.code()) << ")\n";
  return 1;
}

double Ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since)
      .count();
}

absl::StatusOr<json> Store(const Options& o) {
  ASSIGN_OR_RETURN(auto rt, LoadModel(o, /*capture=*/true));
  ASSIGN_OR_RETURN(auto client, AttachWorker(o, o.token_file, "kvkeep-llama-store"));
  RETURN_IF_ERROR(RegisterLayout(*client, LayoutFor(ModelName(o), rt->shape())));
  ASSIGN_OR_RETURN(std::vector<int32_t> tokens, rt->Tokenize(PromptText(o)));
  rt->capture().Start();
  RETURN_IF_ERROR(rt->Decode(tokens, 0));
  rt->capture().Stop();
  const int32_t probe = ArgMax(rt->LastLogits());
  ASSIGN_OR_RETURN(std::string state, rt->GetState());
  const uint32_t n = static_cast<uint32_t>(tokens.size());
  ASSIGN_OR_RETURN(std::string sequence,
                   StoreState(*client, ModelName(o), rt->shape(), state,
                              rt->capture().Stats(n, 4, 32), {.retain = o.retain}));
  RETURN_IF_ERROR(rt->Decode({probe}, static_cast<int32_t>(n)));
  if (!o.logits_out.empty()) RETURN_IF_ERROR(WriteLogits(o.logits_out, rt->LastLogits()));
  return json{{"sequence", sequence}, {"tokens", n}, {"probe", probe}, {"model", ModelName(o)}};
}

absl::StatusOr<json> Restore(const Options& o) {
  ASSIGN_OR_RETURN(auto rt, LoadModel(o, /*capture=*/false));
  ASSIGN_OR_RETURN(auto client, AttachWorker(o, o.token_file, "kvkeep-llama-restore"));
  RETURN_IF_ERROR(RegisterLayout(*client, LayoutFor(ModelName(o), rt->shape())));
  const auto t0 = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(std::string state, LoadState(*client, ModelName(o), rt->shape(), o.sequence));
  RETURN_IF_ERROR(rt->SetState(state));
  const double load_ms = Ms(t0);
  ASSIGN_OR_RETURN(
      const SeqState parsed,
      SeqState::Parse(
          absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(state.data()), state.size()),
          rt->shape().cache()));
  const int32_t next = parsed.positions().back() + 1;
  RETURN_IF_ERROR(rt->Decode({o.probe}, next));
  RETURN_IF_ERROR(WriteLogits(o.logits_out, rt->LastLogits()));
  return json{{"sequence", o.sequence}, {"cells", parsed.cells()}, {"load_ms", load_ms}};
}

absl::StatusOr<json> PrefixRestore(const Options& o) {
  ASSIGN_OR_RETURN(auto rt, LoadModel(o, /*capture=*/false));
  ASSIGN_OR_RETURN(auto client, AttachWorker(o, o.token_file, "kvkeep-llama-prefix"));
  RETURN_IF_ERROR(RegisterLayout(*client, LayoutFor(ModelName(o), rt->shape())));
  ASSIGN_OR_RETURN(std::vector<int32_t> tokens, rt->Tokenize(PromptText(o)));
  const std::vector<uint32_t> ids(tokens.begin(), tokens.end());
  ASSIGN_OR_RETURN(v1::PageTable table, client->CreateSequenceWithPrefix(ModelName(o), ids));
  const uint32_t shared = table.shared_tokens();
  if (shared == 0) {
    return absl::NotFoundError("no shared prefix of this prompt in the tenant's sharing group");
  }
  ASSIGN_OR_RETURN(std::string state,
                   LoadState(*client, ModelName(o), rt->shape(), table.sequence_id(), shared));
  RETURN_IF_ERROR(rt->SetState(state));
  if (shared < tokens.size()) {
    RETURN_IF_ERROR(rt->Decode(std::vector<int32_t>(tokens.begin() + shared, tokens.end()),
                               static_cast<int32_t>(shared)));
  }
  RETURN_IF_ERROR(rt->Decode({o.probe}, static_cast<int32_t>(tokens.size())));
  RETURN_IF_ERROR(WriteLogits(o.logits_out, rt->LastLogits()));
  (void)client->Drop(table.sequence_id());
  return json{{"shared_tokens", shared}, {"tokens", tokens.size()}};
}

absl::StatusOr<json> Generate(const Options& o) {
  ASSIGN_OR_RETURN(auto rt, LoadModel(o, /*capture=*/true));
  ASSIGN_OR_RETURN(auto client, AttachWorker(o, o.token_file, "kvkeep-llama-generate"));
  RETURN_IF_ERROR(RegisterLayout(*client, LayoutFor(ModelName(o), rt->shape())));
  ASSIGN_OR_RETURN(std::vector<int32_t> tokens, rt->Tokenize(PromptText(o)));
  const uint32_t n = static_cast<uint32_t>(tokens.size());
  rt->capture().Start();
  RETURN_IF_ERROR(rt->Decode(tokens, 0));
  rt->capture().Stop();
  int32_t next = ArgMax(rt->LastLogits());
  ASSIGN_OR_RETURN(std::string state, rt->GetState());
  ASSIGN_OR_RETURN(std::string sequence, StoreState(*client, ModelName(o), rt->shape(), state,
                                                    rt->capture().Stats(n, 4, 32)));
  json figures = {{"sequence", sequence}, {"prompt_tokens", n}};
  const std::string policy = o.policies.front();
  if (o.keep < 1) {
    ASSIGN_OR_RETURN(v1::CompressReply reply,
                     client->Compress(sequence, SequencePolicy(policy, o.keep)));
    ASSIGN_OR_RETURN(std::vector<int32_t> kept, SequencePositions(*client, rt->shape(), sequence));
    RETURN_IF_ERROR(KeepOnly(*rt, kept, static_cast<int32_t>(n)));
    figures["policy"] = policy;
    figures["keep"] = o.keep;
    figures["kept_tokens"] = kept.size();
    figures["bytes_freed"] = reply.summary().bytes_freed();
  }
  std::vector<int32_t> out = {next};
  for (uint32_t i = 1; i < o.decode; ++i) {
    RETURN_IF_ERROR(rt->Decode({next}, static_cast<int32_t>(n + i - 1)));
    next = ArgMax(rt->LastLogits());
    out.push_back(next);
  }
  (void)client->Drop(sequence);
  figures["generated_tokens"] = out;
  figures["text"] = rt->Detokenize(out);
  return figures;
}

int Print(const absl::StatusOr<json>& result, const Options& o, const char* command) {
  if (!result.ok()) return Fail(result.status(), command);
  if (o.json) {
    std::cout << result->dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  } else {
    for (const auto& [key, value] : result->items()) {
      std::cout << key << ": " << value.dump(-1, ' ', false, json::error_handler_t::replace)
                << "\n";
    }
  }
  return 0;
}

}  // namespace

int RunStore(const Options& o) { return Print(Store(o), o, "store"); }
int RunRestore(const Options& o) { return Print(Restore(o), o, "restore"); }
int RunPrefixRestore(const Options& o) { return Print(PrefixRestore(o), o, "prefix-restore"); }
int RunGenerate(const Options& o) { return Print(Generate(o), o, "generate"); }

}  // namespace kvkeep::llama
