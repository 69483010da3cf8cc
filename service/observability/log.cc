#include "service/observability/log.h"

#include <atomic>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace kvkeep::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::atomic<int> g_format{static_cast<int>(Format::kText)};

// One logger writing the line as given ("%v"): the line is formatted here, in one piece.
spdlog::logger& Sink() {
  static spdlog::logger* logger = [] {
    auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    auto* l = new spdlog::logger("kvkeep", sink);
    l->set_pattern("%v");
    l->set_level(spdlog::level::trace);
    l->flush_on(spdlog::level::trace);
    return l;
  }();
  return *logger;
}

absl::string_view LevelName(Level level, Format format) {
  static constexpr absl::string_view kText[] = {"DEBUG", "INFO", "WARN", "ERROR", "OFF"};
  static constexpr absl::string_view kJson[] = {"debug", "info", "warn", "error", "off"};
  int i = static_cast<int>(level);
  return format == Format::kJson ? kJson[i] : kText[i];
}

void AppendJsonString(absl::string_view s, std::string* out) {
  out->push_back('"');
  for (char c : s) {
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppend(out, "\\u00", absl::string_view("0123456789abcdef" + ((c >> 4) & 0xf), 1),
                          absl::string_view("0123456789abcdef" + (c & 0xf), 1));
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

// Text values with spaces, quotes or '=' are quoted so a line splits back into its fields.
void AppendTextValue(absl::string_view s, std::string* out) {
  bool plain = !s.empty();
  for (char c : s) {
    if (c == ' ' || c == '"' || c == '=' || static_cast<unsigned char>(c) < 0x20) plain = false;
  }
  if (plain) {
    out->append(s.data(), s.size());
  } else {
    AppendJsonString(s, out);
  }
}

}  // namespace

absl::StatusOr<Level> ParseLevel(absl::string_view name) {
  std::string n = absl::AsciiStrToLower(name);
  if (n == "debug") return Level::kDebug;
  if (n == "info") return Level::kInfo;
  if (n == "warn" || n == "warning") return Level::kWarn;
  if (n == "error") return Level::kError;
  if (n == "off") return Level::kOff;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown log level \"", name, "\"; use debug, info, warn, error or off"));
}

absl::StatusOr<Format> ParseFormat(absl::string_view name) {
  std::string n = absl::AsciiStrToLower(name);
  if (n == "text") return Format::kText;
  if (n == "json") return Format::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown log format \"", name, "\"; use text or json"));
}

void Configure(Level level, Format format) {
  g_level.store(static_cast<int>(level));
  g_format.store(static_cast<int>(format));
}

bool Enabled(Level level) {
  return level != Level::kOff && static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

std::string FormatLine(Level level, Format format, absl::string_view event, Fields fields) {
  const std::string ts = absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone());
  std::string line;
  if (format == Format::kJson) {
    absl::StrAppend(&line, "{\"ts\":\"", ts, "\",\"level\":\"", LevelName(level, format),
                    "\",\"event\":");
    AppendJsonString(event, &line);
    for (const Field& f : fields) {
      line.push_back(',');
      AppendJsonString(f.key, &line);
      line.push_back(':');
      if (f.number) {
        line.append(f.value);
      } else {
        AppendJsonString(f.value, &line);
      }
    }
    line.push_back('}');
  } else {
    absl::StrAppend(&line, ts, " ", LevelName(level, format), " ", event);
    for (const Field& f : fields) {
      absl::StrAppend(&line, " ", f.key, "=");
      AppendTextValue(f.value, &line);
    }
  }
  return line;
}

void Write(Level level, absl::string_view event, Fields fields) {
  if (!Enabled(level)) return;
  Sink().info(FormatLine(level, static_cast<Format>(g_format.load()), event, fields));
}

}  // namespace kvkeep::log
