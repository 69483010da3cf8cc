// kvkeep-llama check: every flow of the adapter on one prompt, with its figures.
//  1. prefill (eval callback on: query statistics), export the sequence state, store it in kvkeep
//     pages zero-copy with the statistics; load it back and compare the bytes;
//  2. a second process restores it into a fresh context: the probe's next-token logits must be
//     identical to this process's;
//  3. spill to the daemon's disk tier, and a second process restores again (Acquire restores);
//  4. with --peer-token-file: another tenant of the sharing group finds the published prefix,
//     restores it and decodes the rest of the prompt: identical logits to the same split here;
//  5. per scorer (allocation `sequence`, --keep): Compress in kvkeep, keep exactly those cells in
//     llama.cpp, check that both hold the same cells and bytes, then decode --decode tokens
//     teacher-forced against the uncompressed run: mean KL and top-1 agreement.
// Exit 1 when a restore is not exact or the cells differ.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
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

// Flags a second kvkeep-llama needs to reach the same daemon and model.
std::vector<std::string> ChildArgs(const Options& o, const std::string& command,
                                   const std::string& token_file) {
  return {command,
          "--model",
          o.model,
          "--model-name",
          ModelName(o),
          "--socket",
          o.socket,
          "--token-file",
          token_file,
          "--threads",
          std::to_string(o.threads),
          "--prompt-tokens",
          std::to_string(o.prompt_tokens),
          "--decode",
          std::to_string(o.decode),
          "--json"};
}

struct Run {
  const Options& o;
  LlamaRuntime& rt;
  Client& client;
  std::vector<int32_t> tokens;
  std::string state;  // the prefill's sequence state
  std::vector<v1::LayerStats> stats;
  int32_t probe = 0;
  std::string tmp;  // folder for the logits files
};

// A second process restores `sequence`; max |logit diff| against `want`.
absl::StatusOr<double> RestoreElsewhere(Run& r, const std::string& sequence,
                                        const std::vector<float>& want, const std::string& tag) {
  const std::string path = absl::StrCat(r.tmp, "/", tag, ".logits");
  std::vector<std::string> args = ChildArgs(r.o, "restore", r.o.token_file);
  args.insert(args.end(),
              {"--sequence", sequence, "--probe", std::to_string(r.probe), "--logits-out", path});
  RETURN_IF_ERROR(RunSelf(args).status());
  ASSIGN_OR_RETURN(std::vector<float> got, ReadLogits(path));
  return MaxAbsDiff(got, want);
}

absl::StatusOr<json> SharedPrefix(Run& r, const std::string& sequence) {
  const std::vector<uint32_t> ids(r.tokens.begin(), r.tokens.end());
  ASSIGN_OR_RETURN(v1::PublishPrefixReply published, r.client.PublishPrefix(sequence, ids));
  const std::string path = r.tmp + "/prefix.logits";
  std::vector<std::string> args = ChildArgs(r.o, "prefix-restore", r.o.peer_token_file);
  args.insert(args.end(), {"--prompt", PromptText(r.o), "--probe", std::to_string(r.probe),
                           "--logits-out", path});
  ASSIGN_OR_RETURN(std::string out, RunSelf(args));
  const json child = json::parse(out);
  const uint32_t shared = child.at("shared_tokens").get<uint32_t>();
  // The same computation here: the stored prefix, then the rest of the prompt in one batch.
  r.rt.Clear();
  RETURN_IF_ERROR(r.rt.SetState(r.state));
  RETURN_IF_ERROR(r.rt.RemoveCells(static_cast<int32_t>(shared), -1));
  const int32_t n = static_cast<int32_t>(r.tokens.size());
  if (static_cast<int32_t>(shared) < n) {
    RETURN_IF_ERROR(r.rt.Decode(std::vector<int32_t>(r.tokens.begin() + shared, r.tokens.end()),
                                static_cast<int32_t>(shared)));
  }
  RETURN_IF_ERROR(r.rt.Decode({r.probe}, n));
  ASSIGN_OR_RETURN(std::vector<float> got, ReadLogits(path));
  return json{{"shared_tokens", shared},
              {"max_abs_logit_diff", MaxAbsDiff(got, r.rt.LastLogits())}};
}

// The uncompressed continuation: greedy tokens and the logits after each.
absl::Status Continue(Run& r, std::vector<int32_t>& forced,
                      std::vector<std::vector<float>>& logits) {
  r.rt.Clear();
  RETURN_IF_ERROR(r.rt.SetState(r.state));
  const int32_t n = static_cast<int32_t>(r.tokens.size());
  forced = {r.probe};
  for (uint32_t i = 0; i < r.o.decode; ++i) {
    RETURN_IF_ERROR(r.rt.Decode({forced[i]}, n + static_cast<int32_t>(i)));
    logits.push_back(r.rt.LastLogits());
    forced.push_back(ArgMax(logits.back()));
  }
  return absl::OkStatus();
}

absl::StatusOr<json> Compressed(Run& r, const std::string& scorer,
                                const std::vector<int32_t>& forced,
                                const std::vector<std::vector<float>>& reference) {
  const int32_t n = static_cast<int32_t>(r.tokens.size());
  ASSIGN_OR_RETURN(std::string sequence,
                   StoreState(r.client, ModelName(r.o), r.rt.shape(), r.state, r.stats));
  const auto t0 = Clock::now();
  ASSIGN_OR_RETURN(v1::CompressReply reply,
                   r.client.Compress(sequence, SequencePolicy(scorer, r.o.keep)));
  const double compress_ms = Ms(t0);
  ASSIGN_OR_RETURN(std::vector<int32_t> kept, SequencePositions(r.client, r.rt.shape(), sequence));
  r.rt.Clear();
  RETURN_IF_ERROR(r.rt.SetState(r.state));
  RETURN_IF_ERROR(KeepOnly(r.rt, kept, n));
  // Both sides must now hold the same cells, position for position and byte for byte.
  ASSIGN_OR_RETURN(std::string ours, r.rt.GetState());
  ASSIGN_OR_RETURN(std::string theirs, LoadState(r.client, ModelName(r.o), r.rt.shape(), sequence));
  const bool same = ours == theirs;
  double kl = 0;
  uint32_t agree = 0;
  for (uint32_t i = 0; i < r.o.decode; ++i) {
    RETURN_IF_ERROR(r.rt.Decode({forced[i]}, n + static_cast<int32_t>(i)));
    const std::vector<float> got = r.rt.LastLogits();
    kl += KlDivergence(reference[i], got);
    agree += ArgMax(got) == ArgMax(reference[i]);
  }
  (void)r.client.Drop(sequence);
  return json{{"policy", scorer},
              {"allocation", "sequence"},
              {"keep", r.o.keep},
              {"kept_tokens", kept.size()},
              {"cells_match", same},
              {"compress_ms", compress_ms},
              {"evicted_score_max", reply.summary().evicted_score_max()},
              {"decoded", r.o.decode},
              {"kl", kl / r.o.decode},
              {"top1_agreement", static_cast<double>(agree) / r.o.decode}};
}

absl::StatusOr<json> Check(const Options& o) {
  ASSIGN_OR_RETURN(auto rt, LoadModel(o, /*capture=*/true));
  ASSIGN_OR_RETURN(auto client, AttachWorker(o, o.token_file, "kvkeep-llama-check"));
  RETURN_IF_ERROR(RegisterLayout(*client, LayoutFor(ModelName(o), rt->shape())));
  char tmpl[] = "/tmp/kvkeep-llama-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
  Run r{o, *rt, *client, {}, {}, {}, 0, tmpl};
  ASSIGN_OR_RETURN(r.tokens, rt->Tokenize(PromptText(o)));
  const int32_t n = static_cast<int32_t>(r.tokens.size());
  const ModelShape& s = rt->shape();
  json figures = {{"model",
                   {{"name", ModelName(o)},
                    {"layers", s.layers},
                    {"q_heads", s.q_heads},
                    {"kv_heads", s.kv_heads},
                    {"head_dim", s.head_dim},
                    {"rope_theta", s.rope_theta}}},
                  {"prompt_tokens", n}};

  // The prefill with the statistics capture (also warms llama.cpp up), then llama.cpp's own
  // prefill of the same prompt, timed without it; the state is the same either way.
  rt->capture().Start();
  RETURN_IF_ERROR(rt->Decode(r.tokens, 0));
  rt->capture().Stop();
  r.probe = ArgMax(rt->LastLogits());
  r.stats = rt->capture().Stats(n, 4, 32);
  figures["attention_mass_captured"] = rt->capture().has_attention_mass();
  rt->Clear();
  auto t0 = Clock::now();
  RETURN_IF_ERROR(rt->Decode(r.tokens, 0));
  figures["prefill_ms"] = Ms(t0);

  // Into kvkeep (state export + zero-copy writes + commit with the statistics), and back.
  t0 = Clock::now();
  ASSIGN_OR_RETURN(r.state, rt->GetState());
  ASSIGN_OR_RETURN(std::string sequence,
                   StoreState(*client, ModelName(o), s, r.state, r.stats, {.retain = true}));
  figures["store_ms"] = Ms(t0);
  figures["kv_bytes"] = uint64_t{2} * n * s.layers * s.kv_heads * s.head_dim * 2;
  figures["state_bytes"] = r.state.size();
  t0 = Clock::now();
  ASSIGN_OR_RETURN(std::string back, LoadState(*client, ModelName(o), s, sequence));
  RETURN_IF_ERROR(rt->SetState(back));
  figures["load_ms"] = Ms(t0);
  figures["roundtrip_state_identical"] = back == r.state;

  RETURN_IF_ERROR(rt->Decode({r.probe}, n));
  const std::vector<float> want = rt->LastLogits();
  ASSIGN_OR_RETURN(figures["restore_max_abs_logit_diff"],
                   RestoreElsewhere(r, sequence, want, "restore"));

  v1::SpillRequest spill;
  spill.set_session_id(client->session_id());
  spill.set_sequence_id(sequence);
  v1::SpillReply spilled;
  auto ctx = MakeCallContext(client->token());
  const grpc::Status gs = client->stub().Spill(ctx.get(), spill, &spilled);
  if (!gs.ok()) return absl::UnavailableError(absl::StrCat("Spill: ", gs.error_message()));
  figures["spill_bytes"] = spilled.bytes();
  ASSIGN_OR_RETURN(figures["spill_restore_max_abs_logit_diff"],
                   RestoreElsewhere(r, sequence, want, "spill"));

  if (!o.peer_token_file.empty()) {
    ASSIGN_OR_RETURN(figures["shared_prefix"], SharedPrefix(r, sequence));
  } else {
    figures["shared_prefix"] = nullptr;
  }
  (void)client->Drop(sequence);

  std::vector<int32_t> forced;
  std::vector<std::vector<float>> reference;
  RETURN_IF_ERROR(Continue(r, forced, reference));
  json policies = json::array();
  for (const std::string& scorer : o.policies) {
    ASSIGN_OR_RETURN(json p, Compressed(r, scorer, forced, reference));
    policies.push_back(std::move(p));
  }
  figures["policies"] = std::move(policies);
  std::filesystem::remove_all(r.tmp);
  return figures;
}

bool Exact(const json& f) {
  bool ok = f["roundtrip_state_identical"].get<bool>() &&
            f["restore_max_abs_logit_diff"].get<double>() == 0 &&
            f["spill_restore_max_abs_logit_diff"].get<double>() == 0;
  if (!f["shared_prefix"].is_null()) ok = ok && f["shared_prefix"]["max_abs_logit_diff"] == 0.0;
  for (const json& p : f["policies"]) ok = ok && p["cells_match"].get<bool>();
  return ok;
}

void PrintText(const json& f) {
  std::printf("model %s: %d layers, %d q / %d KV heads, head_dim %d; prompt %d tokens\n",
              f["model"]["name"].get<std::string>().c_str(), f["model"]["layers"].get<int>(),
              f["model"]["q_heads"].get<int>(), f["model"]["kv_heads"].get<int>(),
              f["model"]["head_dim"].get<int>(), f["prompt_tokens"].get<int>());
  std::printf("llama.cpp prefill %.2f ms; into kvkeep %.2f ms, back %.2f ms (%llu KV bytes)\n",
              f["prefill_ms"].get<double>(), f["store_ms"].get<double>(),
              f["load_ms"].get<double>(), f["kv_bytes"].get<unsigned long long>());
  std::printf("restore in another process: max |logit diff| %g\n",
              f["restore_max_abs_logit_diff"].get<double>());
  std::printf("after spill (%llu bytes) and restore: max |logit diff| %g\n",
              f["spill_bytes"].get<unsigned long long>(),
              f["spill_restore_max_abs_logit_diff"].get<double>());
  if (!f["shared_prefix"].is_null()) {
    std::printf("shared prefix (%d tokens) in another tenant: max |logit diff| %g\n",
                f["shared_prefix"]["shared_tokens"].get<int>(),
                f["shared_prefix"]["max_abs_logit_diff"].get<double>());
  }
  std::printf("%-10s %-9s %6s %6s %6s %10s %8s\n", "policy", "alloc", "keep", "kept", "cells", "KL",
              "top-1");
  for (const json& p : f["policies"]) {
    std::printf("%-10s %-9s %6.3f %6d %6s %10.6f %8.3f\n", p["policy"].get<std::string>().c_str(),
                "sequence", p["keep"].get<double>(), p["kept_tokens"].get<int>(),
                p["cells_match"].get<bool>() ? "same" : "DIFFER", p["kl"].get<double>(),
                p["top1_agreement"].get<double>());
  }
}

}  // namespace

int RunCheck(const Options& o) {
  absl::StatusOr<json> figures = Check(o);
  if (!figures.ok()) {
    std::cerr << "kvkeep-llama check: " << figures.status().message() << " ("
              << absl::StatusCodeToString(figures.status().code()) << ")\n";
    return 1;
  }
  const bool exact = Exact(*figures);
  (*figures)["exact"] = exact;
  if (o.json) {
    std::cout << figures->dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  } else {
    PrintText(*figures);
    std::printf("%s\n", exact ? "all restores exact, cells match" : "MISMATCH (see above)");
  }
  return exact ? 0 : 1;
}

}  // namespace kvkeep::llama
