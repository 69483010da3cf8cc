// The daemon's log: levelled, structured events, one line each, in text or JSON.
//
// An event has a name ("session.attach") and key/value fields. Text format:
//   2026-12-07T10:00:00.123456Z INFO session.attach tenant=team-a worker=w0 session=3f2a…
// JSON format (--log_format=json, one object per line, for cluster log collectors):
//   {"ts":"2026-12-07T10:00:00.123456Z","level":"info","event":"session.attach","tenant":"team-a",…}
// Written to stderr through spdlog. Never log tokens, keys or values.
//
//   log::Info("spill.done", {{"tenant", tenant}, {"sequence", id}, {"bytes", bytes}});
//
// Thread-safe. Before Configure() the level is info and the format text. Every line is written
// whole (no interleaving between threads). In JSON, "ts", "level" and "event" are the line's own
// keys: a field with one of those names is written as "field.<name>". Bytes that are not UTF-8
// become U+FFFD, so every line parses as JSON.
#ifndef KVKEEP_SERVICE_OBSERVABILITY_LOG_H_
#define KVKEEP_SERVICE_OBSERVABILITY_LOG_H_

#include <cstdint>
#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace kvkeep::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };
enum class Format { kText, kJson };

// One key/value field of an event. Numbers stay numbers in JSON.
struct Field {
  Field(absl::string_view k, absl::string_view v) : key(k), value(v) {}
  Field(absl::string_view k, const std::string& v) : key(k), value(v) {}
  Field(absl::string_view k, const char* v) : key(k), value(v != nullptr ? v : "") {}
  Field(absl::string_view k, bool v) : key(k), value(v ? "true" : "false"), number(true) {}
  Field(absl::string_view k, int v) : key(k), value(absl::StrCat(v)), number(true) {}
  Field(absl::string_view k, long v) : key(k), value(absl::StrCat(v)), number(true) {}
  Field(absl::string_view k, long long v) : key(k), value(absl::StrCat(v)), number(true) {}
  Field(absl::string_view k, unsigned v) : key(k), value(absl::StrCat(v)), number(true) {}
  Field(absl::string_view k, unsigned long v) : key(k), value(absl::StrCat(v)), number(true) {}
  Field(absl::string_view k, unsigned long long v) : key(k), value(absl::StrCat(v)), number(true) {}
  // The shortest text that reads back as the same double; inf and NaN become strings in JSON.
  Field(absl::string_view k, double v);
  // A status as its code name and message ("status":"RESOURCE_EXHAUSTED: ...").
  Field(absl::string_view k, const absl::Status& s) : key(k), value(s.ToString()) {}

  std::string key;
  std::string value;
  bool number = false;
};
using Fields = std::initializer_list<Field>;

// "debug" | "info" | "warn" | "error" | "off"; "text" | "json". INVALID_ARGUMENT naming the
// accepted values otherwise.
absl::StatusOr<Level> ParseLevel(absl::string_view name);
absl::StatusOr<Format> ParseFormat(absl::string_view name);
void Configure(Level level, Format format);

bool Enabled(Level level);
void Write(Level level, absl::string_view event, Fields fields);

inline void Debug(absl::string_view event, Fields fields = {}) {
  if (Enabled(Level::kDebug)) Write(Level::kDebug, event, fields);
}
inline void Info(absl::string_view event, Fields fields = {}) {
  if (Enabled(Level::kInfo)) Write(Level::kInfo, event, fields);
}
inline void Warn(absl::string_view event, Fields fields = {}) {
  if (Enabled(Level::kWarn)) Write(Level::kWarn, event, fields);
}
inline void Error(absl::string_view event, Fields fields = {}) {
  if (Enabled(Level::kError)) Write(Level::kError, event, fields);
}

// The formatted line of an event, without the trailing newline (what Write emits; for tests).
std::string FormatLine(Level level, Format format, absl::string_view event, Fields fields);

}  // namespace kvkeep::log

#endif  // KVKEEP_SERVICE_OBSERVABILITY_LOG_H_
