// The daemon's log: JSON lines that parse as one object each with every field, escaping, number
// formatting, text-format quoting, level filtering through the real stderr sink, and the parsers
// of --log_level / --log_format.
#include "service/observability/log.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvkeep::log {
namespace {

using ::kvkeep::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::StartsWith;

nlohmann::json ParseLine(const std::string& line) {
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  return nlohmann::json::parse(line);  // throws (and fails the test) on anything but JSON
}

// Everything written to file descriptor 2 while it lives (spdlog's sink writes to stderr).
class StderrCapture {
 public:
  StderrCapture() {
    std::fflush(stderr);
    file_ = std::tmpfile();
    saved_ = dup(2);
    dup2(fileno(file_), 2);
  }
  ~StderrCapture() { Restore(); }

  std::string Take() {
    Restore();
    std::string out;
    std::rewind(file_);
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof(buffer), file_)) > 0) out.append(buffer, n);
    std::fclose(file_);
    file_ = nullptr;
    return out;
  }

 private:
  void Restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    dup2(saved_, 2);
    close(saved_);
    saved_ = -1;
  }
  std::FILE* file_ = nullptr;
  int saved_ = -1;
};

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

// Puts the log back as a fresh daemon has it, whatever a test configured.
class LogTest : public ::testing::Test {
 protected:
  void TearDown() override { Configure(Level::kInfo, Format::kText); }
};

TEST_F(LogTest, JsonLineIsOneObjectWithEveryField) {
  const std::string line = FormatLine(Level::kInfo, Format::kJson, "session.attach",
                                      {{"tenant", "team-a"},
                                       {"pages", 12},
                                       {"bytes", std::numeric_limits<unsigned long long>::max()},
                                       {"delta", -3LL},
                                       {"ratio", 0.25},
                                       {"leased", true},
                                       {"status", absl::ResourceExhaustedError("quota exceeded")}});
  const nlohmann::json j = ParseLine(line);
  ASSERT_TRUE(j.is_object());
  EXPECT_THAT(j["ts"].get<std::string>(),
              MatchesRegex("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z"));
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["event"], "session.attach");
  EXPECT_EQ(j["tenant"], "team-a");
  ASSERT_TRUE(j["pages"].is_number_integer());
  EXPECT_EQ(j["pages"].get<int>(), 12);
  EXPECT_EQ(j["bytes"].get<unsigned long long>(), std::numeric_limits<unsigned long long>::max());
  EXPECT_EQ(j["delta"].get<long long>(), -3);
  EXPECT_EQ(j["ratio"].get<double>(), 0.25);
  ASSERT_TRUE(j["leased"].is_boolean());
  EXPECT_TRUE(j["leased"].get<bool>());
  EXPECT_EQ(j["status"], "RESOURCE_EXHAUSTED: quota exceeded");
  EXPECT_EQ(j.size(), 10u);
}

TEST_F(LogTest, JsonLevelsAreLowerCase) {
  EXPECT_EQ(ParseLine(FormatLine(Level::kDebug, Format::kJson, "e", {}))["level"], "debug");
  EXPECT_EQ(ParseLine(FormatLine(Level::kWarn, Format::kJson, "e", {}))["level"], "warn");
  EXPECT_EQ(ParseLine(FormatLine(Level::kError, Format::kJson, "e", {}))["level"], "error");
}

TEST_F(LogTest, JsonEscapesQuotesBackslashesNewlinesAndControlCharacters) {
  std::string nasty = "say \"hi\" \\ path\nnext line\r\tend {} {0} \x01\x1f\x7f caf\xc3\xa9";
  nasty.push_back('\0');
  nasty += "after nul";
  const std::string line = FormatLine(Level::kError, Format::kJson, "event \"quoted\"\n",
                                      {{"value", nasty}, {"key \"odd\"", "v"}});
  for (char c : line) {
    EXPECT_GE(static_cast<unsigned char>(c), 0x20) << "raw control character in " << line;
  }
  EXPECT_THAT(line, HasSubstr("\\u0001"));
  EXPECT_THAT(line, HasSubstr("\\u007f"));
  EXPECT_THAT(line, HasSubstr("\\u0000"));
  const nlohmann::json j = ParseLine(line);
  EXPECT_EQ(j["value"].get<std::string>(), nasty);  // round-trips byte for byte
  EXPECT_EQ(j["event"], "event \"quoted\"\n");
  EXPECT_EQ(j["key \"odd\""], "v");
}

TEST_F(LogTest, BytesThatAreNotUtf8BecomeReplacementCharacters) {
  // A stray continuation byte, a truncated sequence, an overlong '/', a surrogate.
  const std::string bad =
      "a\x80"
      "b\xc3"
      "c\xc0\xaf"
      "d\xed\xa0\x80"
      "e";
  const nlohmann::json j = ParseLine(FormatLine(Level::kInfo, Format::kJson, "e", {{"v", bad}}));
  const std::string r = "\xef\xbf\xbd";  // U+FFFD
  EXPECT_EQ(j["v"].get<std::string>(), "a" + r + "b" + r + "c" + r + r + "d" + r + r + r + "e");
  // Valid multi-byte UTF-8 (2, 3 and 4 bytes) passes through unchanged.
  const std::string good = "\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
  EXPECT_EQ(ParseLine(FormatLine(Level::kInfo, Format::kJson, "e", {{"v", good}}))["v"], good);
}

TEST_F(LogTest, DoublesAreShortestRoundTripAndNonFiniteOnesAreStrings) {
  const std::string line = FormatLine(Level::kInfo, Format::kJson, "e",
                                      {{"low", 0.05},
                                       {"big", 64.0 * (1ull << 30)},
                                       {"third", 1.0 / 3},
                  {"whole", 100000.0},
                  {"negative", -2.5},
                  {"huge", 1e300},
                                       {"inf", std::numeric_limits<double>::infinity()},
                                       {"nan", std::nan("")}});
  EXPECT_THAT(line, HasSubstr("\"low\":0.05,"));
  EXPECT_THAT(line, HasSubstr("\"big\":68719476736,"));
  EXPECT_THAT(line, HasSubstr("\"whole\":100000,"));
  EXPECT_THAT(line, HasSubstr("\"negative\":-2.5,"));
  const nlohmann::json j = ParseLine(line);
  EXPECT_EQ(j["third"].get<double>(), 1.0 / 3);
  EXPECT_EQ(j["huge"].get<double>(), 1e300);
  EXPECT_EQ(j["inf"], "inf");
  EXPECT_EQ(j["nan"], "nan");
}

TEST_F(LogTest, FieldsNamedLikeTheLinesOwnKeysAreRenamed) {
  const nlohmann::json j = ParseLine(FormatLine(Level::kWarn, Format::kJson, "real.event",
                                                {{"event", "x"}, {"level", "y"}, {"ts", "z"}}));
  EXPECT_EQ(j["event"], "real.event");
  EXPECT_EQ(j["level"], "warn");
  EXPECT_EQ(j["field.event"], "x");
  EXPECT_EQ(j["field.level"], "y");
  EXPECT_EQ(j["field.ts"], "z");
}

TEST_F(LogTest, TextLineQuotesOnlyValuesThatNeedIt) {
  const std::string line = FormatLine(Level::kWarn, Format::kText, "spill.failed",
                                      {{"tenant", "team-a"},
                                       {"reason", "disk full"},
                                       {"expr", "a=b"},
                                       {"empty", ""},
                                       {"quoted", "say \"hi\""},
                                       {"multi", "one\ntwo"},
                                       {"bytes", 4096},
                                       {"ok", false},
                                       {"status", absl::UnavailableError("no space")}});
  EXPECT_THAT(line, MatchesRegex("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{15}Z WARN spill\\.failed .*"));
  EXPECT_THAT(line, HasSubstr(" WARN spill.failed tenant=team-a reason=\"disk full\" "
                              "expr=\"a=b\" empty=\"\" quoted=\"say \\\"hi\\\"\" "
                              "multi=\"one\\ntwo\" bytes=4096 ok=false "
                              "status=\"UNAVAILABLE: no space\""));
  EXPECT_EQ(line.find('\n'), std::string::npos);
}

TEST_F(LogTest, LevelFiltersWhatReachesStderr) {
  Configure(Level::kWarn, Format::kJson);
  EXPECT_FALSE(Enabled(Level::kDebug));
  EXPECT_FALSE(Enabled(Level::kInfo));
  EXPECT_TRUE(Enabled(Level::kWarn));
  EXPECT_TRUE(Enabled(Level::kError));
  EXPECT_FALSE(Enabled(Level::kOff));
  StderrCapture capture;
  Debug("a.debug");
  Info("a.info", {{"n", 1}});
  Warn("a.warn", {{"braces", "{} {0} %s"}});  // spdlog must not treat the line as a format
  Error("a.error");
  Write(Level::kInfo, "b.info", {});
  const std::vector<std::string> lines = Lines(capture.Take());
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(ParseLine(lines[0])["event"], "a.warn");
  EXPECT_EQ(ParseLine(lines[0])["braces"], "{} {0} %s");
  EXPECT_EQ(ParseLine(lines[1])["event"], "a.error");
}

TEST_F(LogTest, OffWritesNothingAndDebugWritesEverything) {
  Configure(Level::kOff, Format::kText);
  StderrCapture quiet;
  Error("a.error");
  EXPECT_EQ(quiet.Take(), "");

  Configure(Level::kDebug, Format::kText);
  StderrCapture loud;
  Debug("a.debug");
  Info("a.info");
  const std::vector<std::string> lines = Lines(loud.Take());
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_THAT(lines[0], HasSubstr(" DEBUG a.debug"));
  EXPECT_THAT(lines[1], HasSubstr(" INFO a.info"));
}

TEST_F(LogTest, ConcurrentWritersNeverInterleaveLines) {
  Configure(Level::kInfo, Format::kJson);
  StderrCapture capture;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < 200; ++i) {
        Info("load", {{"thread", t}, {"i", i}, {"padding", std::string(300, 'a' + t)}});
      }
    });
  }
  for (auto& thread : threads) thread.join();
  const std::vector<std::string> lines = Lines(capture.Take());
  ASSERT_EQ(lines.size(), 800u);
  for (const std::string& line : lines) {
    const nlohmann::json j = ParseLine(line);
    EXPECT_EQ(j["padding"].get<std::string>(), std::string(300, 'a' + j["thread"].get<int>()));
  }
}

TEST(LogParseTest, LevelsAndFormatsByName) {
  EXPECT_EQ(*ParseLevel("debug"), Level::kDebug);
  EXPECT_EQ(*ParseLevel("INFO"), Level::kInfo);
  EXPECT_EQ(*ParseLevel("warn"), Level::kWarn);
  EXPECT_EQ(*ParseLevel("warning"), Level::kWarn);
  EXPECT_EQ(*ParseLevel("error"), Level::kError);
  EXPECT_EQ(*ParseLevel("off"), Level::kOff);
  EXPECT_EQ(*ParseFormat("text"), Format::kText);
  EXPECT_EQ(*ParseFormat("JSON"), Format::kJson);
}

TEST(LogParseTest, UnknownNamesAreInvalidArgumentsListingTheAcceptedOnes) {
  EXPECT_THAT(ParseLevel("verbose"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "unknown log level \"verbose\"; use debug, info, warn, error or off"));
  EXPECT_THAT(ParseLevel(""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseFormat("logfmt"), StatusIs(absl::StatusCode::kInvalidArgument,
                                              "unknown log format \"logfmt\"; use text or json"));
}

}  // namespace
}  // namespace kvkeep::log
