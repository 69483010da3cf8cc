// kvkeepd's logs and command line, end to end on the real daemon process: with --log_format=json
// every stderr line is one JSON object; the first event lists the whole configuration (a field
// for every flag defined in service/main.cc) and no line holds a token; listeners, backend, spill
// tier and shutdown are events; --log_level filters; a failed start is an error event. And
// `kvkeepd --help` names every flag with its default (exit 0) while usage errors exit 2.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/daemon_process.h"

extern char** environ;

namespace kvkeep::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

// The names of the flags service/main.cc defines, read from its source: a flag added there is
// checked here without editing this test.
std::vector<std::string> DaemonFlagNames() {
  const std::string source = ReadAll(std::string(KVKEEP_SOURCE_DIR) + "/service/main.cc");
  const std::regex flag(R"(ABSL_FLAG\(\s*[A-Za-z0-9_:]+\s*,\s*([a-z0-9_]+)\s*,)");
  std::vector<std::string> names;
  for (auto it = std::sregex_iterator(source.begin(), source.end(), flag);
       it != std::sregex_iterator(); ++it) {
    names.push_back((*it)[1]);
  }
  return names;
}

// Runs kvkeepd with `flags` (and a fresh --data_dir unless `with_data_dir` is false) to its exit.
ProcessExit RunDaemon(const std::vector<std::string>& flags, bool with_data_dir = true) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/kvkeep-logging-", getpid(), "-",
                                       std::chrono::steady_clock::now().time_since_epoch().count());
  std::vector<std::string> args = {DaemonProcess::BinaryDir() + "/kvkeepd"};
  if (with_data_dir) {
    args.insert(args.end(), {"--data_dir=" + dir + "/data", "--pool_mib=16", "--arena_mib=1",
                             "--metrics_address="});
  }
  args.insert(args.end(), flags.begin(), flags.end());
  ProcessExit run = RunToExit(args);
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return run;
}

// Every line of `log` as a JSON object (a line that is not one fails the test).
std::vector<nlohmann::json> JsonEvents(const std::string& log) {
  std::vector<nlohmann::json> events;
  for (const std::string& line : Lines(log)) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_TRUE(j.is_object()) << "not a JSON object: " << line;
    if (!j.is_object()) continue;
    EXPECT_TRUE(j["ts"].is_string()) << line;
    EXPECT_TRUE(j["level"].is_string()) << line;
    EXPECT_TRUE(j["event"].is_string()) << line;
    events.push_back(std::move(j));
  }
  return events;
}

std::vector<nlohmann::json> Named(const std::vector<nlohmann::json>& events,
                                  const std::string& name) {
  std::vector<nlohmann::json> out;
  for (const auto& e : events) {
    if (e["event"] == name) out.push_back(e);
  }
  return out;
}

TEST(LoggingE2eTest, JsonLogIsOneObjectPerLineFromStartToStop) {
  DaemonProcess daemon;
  ASSERT_OK(daemon.Start({"--log_format=json", "--backend=cpu", "--tcp=127.0.0.1:0",
                          "--insecure_tcp", "--metrics_address=127.0.0.1:0"}));
  ASSERT_OK_AND_ASSIGN(const std::string tenant_token, daemon.CreateTenant("team-a"));
  const std::string admin_token = daemon.admin_token();
  ASSERT_GE(admin_token.size(), 16u);
  const int status = daemon.Stop(SIGTERM);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);

  const std::string log = ReadAll(daemon.dir() + "/kvkeepd.log");
  EXPECT_THAT(log, Not(HasSubstr(admin_token)));
  EXPECT_THAT(log, Not(HasSubstr(tenant_token)));
  const std::vector<nlohmann::json> events = JsonEvents(log);
  ASSERT_FALSE(events.empty()) << log;

  // The first event is the configuration: a field for every flag, in the flag's unit.
  const nlohmann::json& start = events.front();
  EXPECT_EQ(start["event"], "daemon.start") << log;
  EXPECT_EQ(start["level"], "info");
  for (const std::string& flag : DaemonFlagNames()) {
    EXPECT_TRUE(start.contains(flag)) << "daemon.start lacks --" << flag << ": " << start;
  }
  EXPECT_EQ(start["data_dir"], daemon.dir());
  EXPECT_EQ(start["pool_mib"], 64);
  EXPECT_EQ(start["backend"], "cpu");
  EXPECT_EQ(start["insecure_tcp"], true);
  EXPECT_EQ(start["log_format"], "json");
  EXPECT_EQ(start["low_free"], 0.05);
  EXPECT_TRUE(start["pid"].is_number_integer()) << start;

  const auto backend = Named(events, "backend.ready");
  ASSERT_EQ(backend.size(), 1u) << log;
  EXPECT_EQ(backend[0]["requested"], "cpu");
  EXPECT_EQ(backend[0]["backend"], "cpu");
  EXPECT_EQ(backend[0]["device"], "host shared memory");
  EXPECT_TRUE(Named(events, "backend.fallback").empty()) << log;

  const auto spill = Named(events, "spill.opened");
  ASSERT_EQ(spill.size(), 1u) << log;
  EXPECT_EQ(spill[0]["sequences"], 0);
  EXPECT_EQ(spill[0]["corrupt_manifests"], 0);

  const auto token = Named(events, "admin_token.ready");
  ASSERT_EQ(token.size(), 1u) << log;
  EXPECT_EQ(token[0]["created"], true);
  EXPECT_EQ(token[0]["path"], daemon.dir() + "/admin.token");

  // Unix socket, plain TCP (a warning) and the metrics endpoint, each with where it listens.
  const auto listeners = Named(events, "listener.bound");
  ASSERT_EQ(listeners.size(), 3u) << log;
  EXPECT_EQ(listeners[0]["transport"], "unix");
  EXPECT_EQ(listeners[0]["address"], daemon.dir() + "/kvkeepd.sock");
  EXPECT_EQ(listeners[1]["transport"], "tcp");
  EXPECT_EQ(listeners[1]["level"], "warn");
  EXPECT_EQ(listeners[1]["security"], "none");
  EXPECT_GT(listeners[1]["port"].get<int>(), 0);
  EXPECT_EQ(listeners[2]["transport"], "http");
  EXPECT_TRUE(absl::StartsWith(listeners[2]["address"].get<std::string>(), "127.0.0.1:"));

  const auto ready = Named(events, "daemon.ready");
  ASSERT_EQ(ready.size(), 1u) << log;
  EXPECT_EQ(ready[0]["backend"], "cpu");
  EXPECT_EQ(ready[0]["pool_mib"], 64);

  const auto stopping = Named(events, "daemon.stopping");
  ASSERT_EQ(stopping.size(), 1u) << log;
  EXPECT_EQ(stopping[0]["signal"], "SIGTERM");
  EXPECT_TRUE(stopping[0]["sessions"].is_number_unsigned()) << stopping[0];
  EXPECT_EQ(events.back()["event"], "daemon.stopped") << log;
}

TEST(LoggingE2eTest, RestartReportsWhatTheSpillTierAndTokenFileHeld) {
  DaemonProcess daemon;
  ASSERT_OK(daemon.Start({"--log_format=json", "--backend=cpu"}));
  daemon.Stop(SIGTERM);
  const size_t first_run = ReadAll(daemon.dir() + "/kvkeepd.log").size();
  ASSERT_OK(daemon.Start({"--log_format=json", "--backend=cpu"}));
  daemon.Stop(SIGTERM);
  const std::vector<nlohmann::json> events =
      JsonEvents(ReadAll(daemon.dir() + "/kvkeepd.log").substr(first_run));
  const auto token = Named(events, "admin_token.ready");
  ASSERT_EQ(token.size(), 1u);
  EXPECT_EQ(token[0]["created"], false);
  EXPECT_EQ(Named(events, "spill.opened").size(), 1u);
}

TEST(LoggingE2eTest, TextIsTheDefaultAndLevelWarnHidesInfo) {
  ProcessExit text = RunDaemon({"--backend=cpu", "--tcp=127.0.0.1:1"});  // fails: TCP without TLS
  EXPECT_EQ(text.code, 1) << text.err;
  EXPECT_THAT(text.err, HasSubstr(" INFO daemon.start version="));
  EXPECT_THAT(text.err, HasSubstr(" ERROR daemon.start_failed status=\"INVALID_ARGUMENT: TCP "
                                  "needs TLS"));

  ProcessExit warn = RunDaemon({"--backend=cpu", "--tcp=127.0.0.1:1", "--log_level=warn"});
  EXPECT_EQ(warn.code, 1) << warn.err;
  EXPECT_THAT(warn.err, Not(HasSubstr(" INFO "))) << warn.err;
  EXPECT_THAT(warn.err, HasSubstr(" ERROR daemon.start_failed ")) << warn.err;
}

TEST(LoggingE2eTest, FailedStartIsAJsonErrorEvent) {
  ProcessExit run = RunDaemon({"--log_format=json", "--backend=cpu", "--tcp=127.0.0.1:1"});
  EXPECT_EQ(run.code, 1) << run.err;
  const std::vector<nlohmann::json> events = JsonEvents(run.err);
  ASSERT_FALSE(events.empty()) << run.err;
  EXPECT_EQ(events.front()["event"], "daemon.start");
  const nlohmann::json& last = events.back();
  EXPECT_EQ(last["event"], "daemon.start_failed") << run.err;
  EXPECT_EQ(last["level"], "error");
  EXPECT_THAT(last["status"].get<std::string>(), HasSubstr("INVALID_ARGUMENT: TCP needs TLS"));
}

// gRPC's own error messages (here: a TCP address it cannot bind, TEST-NET-1) are log events too.
TEST(LoggingE2eTest, GrpcMessagesAreJsonEventsToo) {
  ProcessExit run = RunDaemon({"--log_format=json", "--backend=cpu", "--tcp=192.0.2.1:80",
                        "--insecure_tcp"});
  EXPECT_EQ(run.code, 1) << run.err;
  const std::vector<nlohmann::json> events = JsonEvents(run.err);
  const auto grpc = Named(events, "grpc.log");
  ASSERT_FALSE(grpc.empty()) << run.err;
  EXPECT_EQ(grpc[0]["level"], "error");
  EXPECT_THAT(grpc[0]["message"].get<std::string>(), HasSubstr("192.0.2.1:80"));
  EXPECT_TRUE(grpc[0]["line"].is_number_integer());
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["event"], "daemon.start_failed");
  EXPECT_THAT(events.back()["status"].get<std::string>(), HasSubstr("UNAVAILABLE: cannot listen"));
}

TEST(KvkeepdHelpTest, HelpNamesEveryFlagWithItsDefaultAndExitsZero) {
  const std::vector<std::string> flags = DaemonFlagNames();
  ASSERT_GE(flags.size(), 30u);  // the regex found main.cc's flags
  for (const char* help : {"--help", "-help", "--helpshort"}) {
    ProcessExit run = RunDaemon({help}, /*with_data_dir=*/false);
    EXPECT_EQ(run.code, 0) << help << ": " << run.err;
    EXPECT_THAT(run.out, HasSubstr("kvkeepd - KV-cache memory manager")) << help;
    for (const std::string& flag : flags) {
      EXPECT_THAT(run.out, HasSubstr("  --" + flag + "  (default: ")) << help << " lacks " << flag;
    }
  }
  ProcessExit run = RunDaemon({"--help"}, false);
  EXPECT_THAT(run.out, HasSubstr("  --pool_mib  (default: 1024)\n"));
  EXPECT_THAT(run.out, HasSubstr("  --log_format  (default: \"text\")\n"));
  EXPECT_THAT(run.out, Not(HasSubstr("  --flagfile  ")));  // Abseil's own flags: --helpfull
  ProcessExit version = RunDaemon({"--version"}, false);
  EXPECT_EQ(version.code, 0) << version.err;
  EXPECT_THAT(version.out, HasSubstr("kvkeepd "));
}

TEST(KvkeepdHelpTest, UsageErrorsExitTwoNamingTheFlag) {
  struct Case {
    std::vector<std::string> flags;
    std::vector<std::string> said;
  };
  const std::vector<Case> cases = {
      {{"--no_such_flag"}, {"unknown flag --no_such_flag"}},
      {{"--no_such_flag=3"}, {"unknown flag --no_such_flag"}},
      {{"--pool_mib=lots"}, {"--pool_mib=lots"}},
      {{"--insecure_tcp=maybe"}, {"--insecure_tcp=maybe"}},
      {{"--pool_mib"}, {"--pool_mib needs a value"}},
      {{"--log_level=loud"}, {"--log_level", "debug, info, warn, error or off"}},
      {{"--log_format=xml"}, {"--log_format", "text or json"}},
      {{"--backend=tpu"}, {"--backend", "unknown backend \"tpu\""}},
      {{"stray"}, {"unexpected argument \"stray\""}},
  };
  for (const Case& c : cases) {
    ProcessExit run = RunDaemon(c.flags);
    EXPECT_EQ(run.code, 2) << c.flags[0] << ": " << run.err;
    for (const std::string& s : c.said) EXPECT_THAT(run.err, HasSubstr(s)) << c.flags[0];
  }
  // Negated booleans and "--flag value" are not usage errors: this start gets as far as the
  // listeners (TCP without TLS: exit 1) with the values given.
  ProcessExit run = RunDaemon({"--noinsecure_tcp", "--pool_mib", "32", "--log_format", "json",
                       "--backend=cpu", "--tcp=127.0.0.1:1"});
  EXPECT_EQ(run.code, 1) << run.err;
  const std::vector<nlohmann::json> events = JsonEvents(run.err);
  ASSERT_FALSE(events.empty()) << run.err;
  EXPECT_EQ(events.front()["pool_mib"], 32);
  EXPECT_EQ(events.front()["insecure_tcp"], false);
}

}  // namespace
}  // namespace kvkeep::testing
