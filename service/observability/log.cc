#include "service/observability/log.h"

#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdint>
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

// Length of the valid UTF-8 sequence at the start of `s`, or 0 when it is not one (a stray
// continuation byte, a truncated or overlong sequence, a surrogate, beyond U+10FFFF).
size_t Utf8SequenceLength(absl::string_view s) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char b0 = byte(0);
  size_t n;
  uint32_t min_code;
  uint32_t code;
  if (b0 < 0x80) return 1;
  if ((b0 & 0xe0) == 0xc0) {
    n = 2, min_code = 0x80, code = b0 & 0x1f;
  } else if ((b0 & 0xf0) == 0xe0) {
    n = 3, min_code = 0x800, code = b0 & 0x0f;
  } else if ((b0 & 0xf8) == 0xf0) {
    n = 4, min_code = 0x10000, code = b0 & 0x07;
  } else {
    return 0;
  }
  if (s.size() < n) return 0;
  for (size_t i = 1; i < n; ++i) {
    if ((byte(i) & 0xc0) != 0x80) return 0;
    code = (code << 6) | (byte(i) & 0x3f);
  }
  if (code < min_code || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return 0;
  return n;
}

// A JSON string literal: quotes, backslashes and control characters escaped; bytes that are not
// UTF-8 replaced by U+FFFD (a collector's JSON parser would reject the whole line otherwise).
void AppendJsonString(absl::string_view s, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  while (!s.empty()) {
    const char c = s.front();
    const size_t n = Utf8SequenceLength(s);
    if (n == 0) {
      out->append("\\ufffd");
      s.remove_prefix(1);
      continue;
    }
    if (n > 1) {
      out->append(s.data(), n);
      s.remove_prefix(n);
      continue;
    }
    s.remove_prefix(1);
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          const auto u = static_cast<unsigned char>(c);
          const char escape[] = {'\\', 'u', '0', '0', kHex[u >> 4], kHex[u & 0xf]};
          out->append(escape, sizeof(escape));
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

// Text values that are empty, hold a space, quote, '=', control character or bytes that are not
// UTF-8 are written as JSON strings, so a line splits back into its fields.
void AppendTextValue(absl::string_view s, std::string* out) {
  bool plain = !s.empty();
  for (absl::string_view rest = s; plain && !rest.empty();) {
    const size_t n = Utf8SequenceLength(rest);
    const auto c = static_cast<unsigned char>(rest.front());
    if (n == 0 || c == ' ' || c == '"' || c == '=' || c < 0x20 || c == 0x7f) plain = false;
    rest.remove_prefix(n == 0 ? 1 : n);
  }
  if (plain) {
    out->append(s.data(), s.size());
  } else {
    AppendJsonString(s, out);
  }
}

// A JSON line's own keys; a field of that name is renamed so that no key appears twice.
void AppendJsonKey(absl::string_view key, std::string* out) {
  if (key == "ts" || key == "level" || key == "event") {
    AppendJsonString(absl::StrCat("field.", key), out);
  } else {
    AppendJsonString(key, out);
  }
}

}  // namespace

Field::Field(absl::string_view k, double v) : key(k) {
  if (!std::isfinite(v)) {
    value = absl::StrCat(v);  // "inf", "-inf", "nan": JSON has no number for them
    return;
  }
  number = true;
  // Whole numbers as integers ("100000", not the shorter "1e+05"), exact below 2^53.
  if (std::trunc(v) == v && std::fabs(v) < 9007199254740992.0) {
    value = absl::StrCat(static_cast<int64_t>(v));
    return;
  }
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), v);
  value.assign(buffer, result.ptr);
}

absl::StatusOr<Level> ParseLevel(absl::string_view name) {
  std::string n = absl::AsciiStrToLower(name);
  if (n == "debug") return Level::kDebug;
  if (n == "info") return Level::kInfo;
  if (n == "warn" || n == "warning") return Level::kWarn;
  if (n == "error") return Level::kError;
  if (n == "off") return Level::kOff;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown log level \"", name, "\"; use debug, info, warn, error or off"));
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
      AppendJsonKey(f.key, &line);
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
