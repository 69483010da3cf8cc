// End-to-end: kvkeep-llama (real llama.cpp) against the real kvkeepd, on tiny generated models.
// Skipped, saying why, when the pinned llama.cpp is not installed (deploy/install-deps).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_matchers.h"
#include "nlohmann/json.hpp"
#include "tests/daemon_process.h"

namespace kvkeep::testing {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

struct Result {
  int status = -1;
  std::string out, err;
};

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class LlamaTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string deps = KVKEEP_LLAMA_DEPS_DIR "/llama-cpp-3.21.1";
    if (!std::filesystem::exists(deps + "/VERSION")) {
      skip_ = "the pinned llama.cpp is not installed in " + deps + " (deploy/install-deps)";
      return;
    }
    // The models are deterministic: written once per build folder, again when the script changes.
    models_ = KVKEEP_LLAMA_MODELS_DIR;
    const std::filesystem::path script = KVKEEP_LLAMA_MAKE_MODELS;
    bool fresh = true;
    for (const char* shape : {"gqa2-d64", "mha-d64", "gqa2-d128"}) {
      const std::filesystem::path model = models_ + "/" + shape + ".gguf";
      fresh = fresh && std::filesystem::exists(model) &&
              std::filesystem::last_write_time(model) >= std::filesystem::last_write_time(script);
    }
    if (fresh) return;
    const std::string cmd =
        absl::StrCat("/usr/bin/python3 ", script.string(), " --out ", models_,
                     " --shape gqa2-d64 --shape mha-d64 --shape gqa2-d128 > /dev/null");
    if (std::system(cmd.c_str()) != 0) skip_ = "make_models.py failed: " + cmd;
  }

  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << skip_;
    ASSERT_OK(daemon_.Start());
    alpha_ = Tenant("alpha");
    beta_ = Tenant("beta");
  }
  void TearDown() override {
    if (daemon_.running()) daemon_.Stop(SIGTERM);
  }

  // A tenant of sharing group "team" with room to spill; returns its token file.
  std::string Tenant(const std::string& name) {
    v1::CreateTenantRequest r;
    r.set_name(name);
    r.set_sharing_group("team");
    r.set_spill_quota_bytes(64 << 20);
    auto reply = daemon_.Admin()->CreateTenant(r);
    EXPECT_OK(reply);
    const std::string path = daemon_.dir() + "/" + name + ".token";
    std::ofstream(path) << (reply.ok() ? reply->token() : "") << "\n";
    return path;
  }

  std::string Model(const std::string& shape) const { return models_ + "/" + shape + ".gguf"; }

  Result Llama(const std::vector<std::string>& args) {
    std::vector<std::string> quoted;
    for (const std::string& a : args) quoted.push_back(Quote(a));
    const std::string err = daemon_.dir() + "/llama.err";
    const std::string cmd = absl::StrCat(Quote(DaemonProcess::BinaryDir() + "/kvkeep-llama"), " ",
                                         absl::StrJoin(quoted, " "), " 2>", Quote(err));
    Result r;
    FILE* p = popen(cmd.c_str(), "r");
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
    const int status = pclose(p);
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.err = ReadFile(err);
    return r;
  }
  std::vector<std::string> Common(const std::string& command, const std::string& model,
                                  const std::string& token_file) {
    return {command,
            "--model",
            model,
            "--socket",
            daemon_.dir() + "/kvkeepd.sock",
            "--token-file",
            token_file,
            "--prompt-tokens",
            "96",
            "--decode",
            "8",
            "--json"};
  }

  static std::string skip_, models_;
  DaemonProcess daemon_;
  std::string alpha_, beta_;
};
std::string LlamaTest::skip_;
std::string LlamaTest::models_;

TEST_F(LlamaTest, CheckIsExactOnEveryShapeAndCompressionKeepsTheSameCells) {
  for (const std::string shape : {"gqa2-d64", "mha-d64", "gqa2-d128"}) {
    std::vector<std::string> args = Common("check", Model(shape), alpha_);
    const bool first = shape == std::string("gqa2-d64");
    args.insert(args.end(), {"--peer-token-file", beta_, "--policy",
                             first ? "snapkv,h2o,expected" : "expected", "--keep", "0.5"});
    const Result r = Llama(args);
    ASSERT_EQ(r.status, 0) << shape << ": " << r.err << r.out;
    const json f = json::parse(r.out);
    SCOPED_TRACE(shape + ": " + r.out);
    EXPECT_TRUE(f["exact"].get<bool>());
    EXPECT_TRUE(f["roundtrip_state_identical"].get<bool>());
    EXPECT_EQ(f["restore_max_abs_logit_diff"].get<double>(), 0.0);
    EXPECT_EQ(f["spill_restore_max_abs_logit_diff"].get<double>(), 0.0);
    EXPECT_GT(f["spill_bytes"].get<uint64_t>(), 0u);
    EXPECT_GE(f["shared_prefix"]["shared_tokens"].get<int>(), 16);
    EXPECT_EQ(f["shared_prefix"]["max_abs_logit_diff"].get<double>(), 0.0);
    EXPECT_TRUE(f["attention_mass_captured"].get<bool>());
    const int n = f["prompt_tokens"].get<int>();
    ASSERT_EQ(f["policies"].size(), first ? 3u : 1u);
    for (const json& p : f["policies"]) {
      // One kept set of round(0.5 n) tokens, held cell for cell by kvkeep and llama.cpp, and
      // 8 tokens decoded on after it.
      EXPECT_EQ(p["kept_tokens"].get<int>(), (n + 1) / 2) << p;
      EXPECT_TRUE(p["cells_match"].get<bool>()) << p;
      EXPECT_EQ(p["decoded"].get<int>(), 8);
      EXPECT_GE(p["kl"].get<double>(), 0.0);
      EXPECT_GE(p["top1_agreement"].get<double>(), 0.0);
    }
  }
}

TEST_F(LlamaTest, RestoreAfterSpillAndKill9OfTheDaemonGivesIdenticalLogits) {
  const std::string before = daemon_.dir() + "/before.logits";
  std::vector<std::string> args = Common("store", Model("gqa2-d64"), alpha_);
  args.insert(args.end(), {"--retain", "--logits-out", before});
  const Result stored = Llama(args);
  ASSERT_EQ(stored.status, 0) << stored.err;
  const json s = json::parse(stored.out);
  v1::SequenceRef ref;
  ref.set_tenant("alpha");
  ref.set_sequence_id(s["sequence"].get<std::string>());
  ASSERT_OK(daemon_.Admin()->SpillSequence(ref));
  daemon_.Stop(SIGKILL);
  ASSERT_OK(daemon_.Start());

  const std::string after = daemon_.dir() + "/after.logits";
  args = Common("restore", Model("gqa2-d64"), alpha_);
  args.insert(args.end(), {"--sequence", ref.sequence_id(), "--probe",
                           std::to_string(s["probe"].get<int>()), "--logits-out", after});
  const Result restored = Llama(args);
  ASSERT_EQ(restored.status, 0) << restored.err;
  EXPECT_EQ(json::parse(restored.out)["cells"].get<int>(), s["tokens"].get<int>());
  const std::string a = ReadFile(before), b = ReadFile(after);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, b) << "logits after spill + kill -9 + restart differ";
}

TEST_F(LlamaTest, AModelWhoseLayoutDoesNotMatchTheRegisteredOneIsRefused) {
  std::vector<std::string> args = Common("store", Model("gqa2-d64"), alpha_);
  args.insert(args.end(), {"--model-name", "shared-name", "--retain"});
  const Result stored = Llama(args);
  ASSERT_EQ(stored.status, 0) << stored.err;
  const std::string sequence = json::parse(stored.out)["sequence"];

  args = Common("restore", Model("gqa2-d128"), alpha_);
  args.insert(args.end(), {"--model-name", "shared-name", "--sequence", sequence, "--probe", "5",
                           "--logits-out", daemon_.dir() + "/x.logits"});
  const Result refused = Llama(args);
  EXPECT_EQ(refused.status, 1);
  EXPECT_THAT(refused.err, HasSubstr("is registered in kvkeep with another layout than this GGUF"));
  // Under its own name the layout registers, but the sequence is another model's.
  args[args.size() - 7] = "other-name";
  const Result mismatch = Llama(args);
  EXPECT_EQ(mismatch.status, 1);
  EXPECT_THAT(mismatch.err, HasSubstr("holds the KV cache of model \"shared-name\""));
}

TEST_F(LlamaTest, GenerateCompressesThenDecodesOn) {
  std::vector<std::string> args = Common("generate", Model("gqa2-d64"), alpha_);
  args.insert(args.end(), {"--policy", "h2o", "--keep", "0.5", "--decode", "4"});
  const Result r = Llama(args);
  ASSERT_EQ(r.status, 0) << r.err;
  const json f = json::parse(r.out);
  EXPECT_EQ(f["kept_tokens"].get<int>(), (f["prompt_tokens"].get<int>() + 1) / 2);
  EXPECT_EQ(f["generated_tokens"].size(), 4u);
  EXPECT_GT(f["bytes_freed"].get<uint64_t>(), 0u);
}

TEST_F(LlamaTest, HelpTeachesAndUsageErrorsExit2) {
  const Result help = Llama({"--help"});
  EXPECT_EQ(help.status, 0);
  EXPECT_THAT(help.out, HasSubstr("Usage: kvkeep-llama COMMAND"));
  EXPECT_THAT(help.out, HasSubstr("allocation `sequence`"));
  const Result none = Llama({});
  EXPECT_EQ(none.status, 2);
  EXPECT_THAT(none.err, HasSubstr("no command given"));
  const Result bad = Llama({"check", "--model", "x", "--token-file", "y", "--keep", "2"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_THAT(bad.err, HasSubstr("--keep has a bad value"));
}

}  // namespace
}  // namespace kvkeep::testing
