#include "engines/llama/options.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace kvkeep::llama {
namespace {

constexpr const char* kCommands[] = {"check", "generate", "bench",
                                     "store", "restore",  "prefix-restore"};

constexpr const char* kText =
    "kvkeep is the home of a model's KV cache: after the prefill the keys and values of every "
    "layer and head move into shared pages, where another process can find them, spill them to "
    "disk, share their prefix with a colleague of the group, or compress them to the tokens that "
    "matter. The engine then decodes on from exactly the cells it got back. ";

absl::Status Usage(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

}  // namespace

absl::StatusOr<Options> ParseOptions(int argc, char** argv) {
  Options o;
  std::map<std::string, std::string> flags;
  const std::vector<std::string> boolean = {"json", "help", "retain"};
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h") arg = "--help";
    if (arg.rfind("--", 0) != 0) {
      if (!o.command.empty()) return Usage(absl::StrCat("unexpected argument \"", arg, "\""));
      o.command = arg;
      continue;
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool is_bool = std::find(boolean.begin(), boolean.end(), name) != boolean.end();
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (!is_bool) {
      if (i + 1 >= argc) return Usage(absl::StrCat("--", name, " needs a value"));
      value = argv[++i];
    }
    flags[name] = value;
  }
  auto take = [&](const std::string& name, std::string* out) {
    auto it = flags.find(name);
    if (it == flags.end()) return false;
    *out = it->second;
    flags.erase(it);
    return true;
  };
  std::string v;
  o.help = flags.erase("help") > 0;
  o.json = flags.erase("json") > 0;
  o.retain = flags.erase("retain") > 0;
  take("model", &o.model);
  take("model-name", &o.model_name);
  take("socket", &o.socket);
  take("token-file", &o.token_file);
  take("peer-token-file", &o.peer_token_file);
  take("prompt", &o.prompt);
  take("sequence", &o.sequence);
  take("logits-out", &o.logits_out);
  if (take("policy", &v)) o.policies = absl::StrSplit(v, ',', absl::SkipEmpty());
  struct Number {
    const char* name;
    std::function<bool(const std::string&)> set;
  };
  const std::vector<Number> numbers = {
      {"prompt-tokens",
       [&](const std::string& s) {
         return absl::SimpleAtoi(s, &o.prompt_tokens) && o.prompt_tokens >= 8;
       }},
      {"keep",
       [&](const std::string& s) {
         return absl::SimpleAtod(s, &o.keep) && o.keep > 0 && o.keep <= 1;
       }},
      {"decode",
       [&](const std::string& s) { return absl::SimpleAtoi(s, &o.decode) && o.decode >= 1; }},
      {"threads",
       [&](const std::string& s) { return absl::SimpleAtoi(s, &o.threads) && o.threads >= 1; }},
      {"repeat",
       [&](const std::string& s) { return absl::SimpleAtoi(s, &o.repeat) && o.repeat >= 1; }},
      {"probe",
       [&](const std::string& s) { return absl::SimpleAtoi(s, &o.probe) && o.probe >= 0; }},
  };
  for (const Number& n : numbers) {
    if (take(n.name, &v) && !n.set(v)) {
      return Usage(absl::StrCat("--", n.name, " has a bad value \"", v, "\""));
    }
  }
  if (!flags.empty()) return Usage(absl::StrCat("unknown flag --", flags.begin()->first));
  if (o.help) return o;
  if (o.command.empty()) return Usage("no command given");
  if (std::find(std::begin(kCommands), std::end(kCommands), o.command) == std::end(kCommands)) {
    return Usage(absl::StrCat("unknown command \"", o.command, "\""));
  }
  if (o.model.empty()) return Usage("--model FILE is required");
  if (o.token_file.empty()) return Usage("--token-file PATH is required");
  if (o.socket.empty()) {
    const char* env = std::getenv("KVKEEP_SOCKET");
    o.socket = env != nullptr ? env : "./kvkeep-data/kvkeepd.sock";
  }
  if ((o.command == "restore") && o.sequence.empty()) return Usage("restore needs --sequence ID");
  if ((o.command == "restore" || o.command == "prefix-restore") &&
      (o.probe < 0 || o.logits_out.empty())) {
    return Usage(absl::StrCat(o.command, " needs --probe TOKEN and --logits-out FILE"));
  }
  // A given prompt sizes the context like the built-in one (its bytes bound its tokens).
  if (!o.prompt.empty()) o.prompt_tokens = std::max<uint32_t>(o.prompt_tokens, o.prompt.size() + 1);
  if (o.policies.empty()) o.policies = {"snapkv", "expected", "h2o", "knorm", "streaming"};
  return o;
}

std::string ModelName(const Options& options) {
  std::string name = options.model_name;
  if (name.empty()) name = std::filesystem::path(options.model).stem().string();
  for (char& c : name) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) c = '-';
  }
  if (name.size() > 64) name.resize(64);
  return name.empty() ? "llama" : name;
}

std::string PromptText(const Options& options) {
  if (!options.prompt.empty()) return options.prompt;
  std::string text;
  while (text.size() < options.prompt_tokens) text += kText;
  text.resize(options.prompt_tokens - 1);  // BOS is the first token
  return text;
}

}  // namespace kvkeep::llama
