// End to end: the CLI in-process on a tiny synthetic profile.
#include "bench/eval/cli.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "bench/eval/npy.h"
#include "common/status_matchers.h"

namespace kvkeep::eval {
namespace {

using ::testing::HasSubstr;

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string((std::filesystem::temp_directory_path() /
                            ("kvkeep_cli_test_" + std::to_string(::getpid())))
                               .string());
    std::ostringstream out, err;
    const int rc = RunCli({"synth", "--profile", "mixed", "--out", *dir_, "--layers", "2",
                           "--q-heads", "4", "--kv-heads", "2", "--head-dim", "32", "--prefix",
                           "256", "--future", "16", "--dtype", "f16"},
                          out, err);
    ASSERT_EQ(rc, 0) << err.str();
    ASSERT_THAT(out.str(), HasSubstr("wrote"));
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  struct Result {
    int rc;
    std::string out, err;
  };
  static Result Cli(const std::vector<std::string>& args) {
    std::ostringstream out, err;
    const int rc = RunCli(args, out, err);
    return {rc, out.str(), err.str()};
  }
  static std::string* dir_;
};
std::string* CliTest::dir_ = nullptr;

TEST_F(CliTest, RunJsonIsOneObjectWithEveryCombination) {
  const Result r = Cli({"run", "--data", *dir_, "--policy", "snapkv,h2o,oracle", "--allocation",
                        "uniform,ada", "--keep", "0.2,0.5", "--json", "--quiet"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.err, "");  // --quiet
  const nlohmann::json j = nlohmann::json::parse(r.out);  // throws (fails) on anything else
  ASSERT_TRUE(j.contains("results"));
  ASSERT_EQ(j["results"].size(), 3u * 2u * 2u);
  EXPECT_GT(j["profile_sparsity"].get<double>(), 0.05);
  EXPECT_LE(j["profile_sparsity"].get<double>(), 1.0);
  double oracle_mass = -1, best_other_mass = 0;
  int gaps = 0;
  for (const auto& row : j["results"]) {
    for (const char* key : {"policy", "allocation", "keep_ratio", "rel_error", "retained_mass",
                            "needle_recall", "oracle_recall"}) {
      ASSERT_TRUE(row.contains(key)) << key;
    }
    const double mass = row["retained_mass"];
    EXPECT_GT(mass, 0.0);
    EXPECT_LE(mass, 1.0 + 1e-9);
    EXPECT_GE(row["rel_error"].get<double>(), 0.0);
    EXPECT_NEAR(row["kept_fraction"].get<double>(), row["keep_ratio"].get<double>(), 0.02);
    if (row["keep_ratio"] == 0.2 && row["allocation"] == "uniform") {
      if (row["policy"] == "oracle") {
        oracle_mass = mass;
        EXPECT_DOUBLE_EQ(row["oracle_recall"].get<double>(), 1.0);
      } else {
        best_other_mass = std::max(best_other_mass, mass);
      }
    }
    // gap_closed is null only where snapkv is within 5 % of the oracle.
    if (!row["gap_closed"].is_null()) {
      ++gaps;
      const double gap = row["gap_closed"];
      if (row["policy"] == "oracle") {
        EXPECT_DOUBLE_EQ(gap, 1.0);
      } else if (row["policy"] == "snapkv") {
        EXPECT_DOUBLE_EQ(gap, 0.0);
      }
    }
  }
  // The oracle maximises retained mass for its budget.
  EXPECT_GE(oracle_mass, best_other_mass - 1e-9);
  EXPECT_GT(gaps, 0);
}

TEST_F(CliTest, RunTablePrintsSparsityAndProgress) {
  const Result r = Cli({"run", "--data", *dir_, "--policy", "streaming,oracle", "--keep", "0.1"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("sparsity"));
  EXPECT_THAT(r.out, HasSubstr("streaming"));
  EXPECT_THAT(r.out, HasSubstr("oracle"));
  EXPECT_THAT(r.err, HasSubstr("[kvkeep-eval]"));
}

TEST_F(CliTest, JsonOutKeepsTheTableAndWritesTheSameRows) {
  const std::string path = *dir_ + "/run.json";
  const Result r = Cli({"run", "--data", *dir_, "--policy", "knorm,oracle-out", "--keep", "0.3",
                        "--quiet", "--json-out", path});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("oracle-out"));
  std::ifstream in(path);
  const nlohmann::json j = nlohmann::json::parse(in);
  ASSERT_EQ(j["results"].size(), 2u);
  EXPECT_EQ(j["results"][1]["policy"], "oracle-out");
}

TEST_F(CliTest, ScoresWritesKvHeadsByPrefix) {
  const std::string path = *dir_ + "/scores.npy";
  const Result r = Cli({"scores", "--data", *dir_, "--layer", "1", "--policy", "knorm", "--out",
                        path});
  ASSERT_EQ(r.rc, 0) << r.err;
  ASSERT_OK_AND_ASSIGN(NpyArray a, ReadNpy(path));
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 256}));
}

TEST_F(CliTest, BadArgumentsExitWithTwoAndSayWhy) {
  struct Case {
    std::vector<std::string> args;
    const char* message;
  };
  const std::vector<Case> cases = {
      {{"run", "--policy", "snapkv"}, "--data is required"},
      {{"run", "--data", "/nonexistent/kv"}, "meta.json"},
      {{"run", "--data", *dir_, "--policy", "lru"}, "lru"},
      {{"run", "--data", *dir_, "--allocation", "fair"}, "fair"},
      {{"run", "--data", *dir_, "--keep", "1.5"}, "1.5"},
      {{"run", "--data", *dir_, "--frobnicate"}, "unknown flag"},
      {{"synth", "--profile", "llama", "--out", "/tmp/x"}, "llama"},
      {{"scores", "--data", *dir_, "--layer", "9", "--policy", "knorm", "--out", "/tmp/x.npy"},
       "out of range"},
      {{"evaluate"}, "unknown command"},
  };
  for (const Case& c : cases) {
    const Result r = Cli(c.args);
    EXPECT_EQ(r.rc, 2) << c.args[0] << " " << c.message;
    EXPECT_THAT(r.err, HasSubstr(c.message));
  }
  EXPECT_EQ(Cli({}).rc, 2);
}

TEST_F(CliTest, HelpTeachesWithExamples) {
  const Result r = Cli({"--help"});
  EXPECT_EQ(r.rc, 0);
  EXPECT_THAT(r.out, HasSubstr("Examples:"));
  EXPECT_THAT(r.out, HasSubstr("kvkeep-eval run --data"));
  EXPECT_THAT(r.out, HasSubstr("mixed"));
}

}  // namespace
}  // namespace kvkeep::eval
