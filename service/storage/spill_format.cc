#include "service/storage/spill_format.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "service/storage/xxhash64.h"

namespace kvkeep::spill_format {
namespace {

// ---- Encoding primitives ---------------------------------------------------------------------

void PutFixed32(std::string* out, uint32_t v) {
  char b[4];
  std::memcpy(b, &v, 4);
  out->append(b, 4);
}
void PutFixed64(std::string* out, uint64_t v) {
  char b[8];
  std::memcpy(b, &v, 8);
  out->append(b, 8);
}
void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}
void PutString(std::string* out, absl::string_view s) {
  PutVarint(out, s.size());
  out->append(s.data(), s.size());
}
uint64_t ZigZag(int64_t v) { return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63); }
int64_t UnZigZag(uint64_t v) { return static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1); }

class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  bool Fixed32(uint32_t* v) { return Raw(v, 4); }
  bool Fixed64(uint64_t* v) { return Raw(v, 8); }
  bool Varint(uint64_t* v) {
    uint64_t r = 0;
    for (int shift = 0; shift <= 63; shift += 7) {
      if (in_.empty()) return false;
      uint8_t b = static_cast<uint8_t>(in_[0]);
      in_.remove_prefix(1);
      r |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) {
        *v = r;
        return true;
      }
    }
    return false;
  }
  bool Varint32(uint32_t* v) {
    uint64_t r;
    if (!Varint(&r) || r > UINT32_MAX) return false;
    *v = static_cast<uint32_t>(r);
    return true;
  }
  bool String(std::string* s) {
    uint64_t n;
    if (!Varint(&n) || n > in_.size()) return false;
    s->assign(in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  size_t left() const { return in_.size(); }

 private:
  bool Raw(void* v, size_t n) {
    if (in_.size() < n) return false;
    std::memcpy(v, in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  absl::string_view in_;
};

}  // namespace

// ---- Keys ------------------------------------------------------------------------------------

absl::Status CheckId(absl::string_view what, absl::string_view id) {
  if (id.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  if (id.find('/') != absl::string_view::npos || id.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " \"", id, "\" contains '/' or NUL (reserved by the key layout)"));
  }
  return absl::OkStatus();
}

std::string ManifestKey(absl::string_view tenant, absl::string_view id) {
  return absl::StrCat(tenant, "/", id);
}

std::string PagePrefix(absl::string_view tenant, absl::string_view id) {
  return absl::StrCat(tenant, "/", id, "/");
}

void AppendHex8(std::string* out, uint32_t v) {
  static constexpr char kHex[] = "0123456789abcdef";
  char buf[8];
  for (int i = 7; i >= 0; --i) {
    buf[i] = kHex[v & 0xf];
    v >>= 4;
  }
  out->append(buf, 8);
}

// `<prefix><head:08x>/<page:08x>`
std::string PageKey(const std::string& prefix, uint32_t head, uint32_t page) {
  std::string key;
  key.reserve(prefix.size() + 17);
  key.append(prefix);
  AppendHex8(&key, head);
  key.push_back('/');
  AppendHex8(&key, page);
  return key;
}

// ---- Manifest codec --------------------------------------------------------------------------

std::string EncodeManifest(const SpillWrite& r, const std::vector<std::vector<PageMeta>>& pages,
                           uint64_t total_bytes, uint64_t page_count, absl::Time created,
                           uint32_t pages_per_value) {
  std::string out;
  PutFixed32(&out, kManifestMagic);
  if (pages_per_value <= 1) {
    PutVarint(&out, kManifestVersionOnePage);
  } else {
    PutVarint(&out, kManifestVersion);
    PutVarint(&out, pages_per_value);
  }
  PutString(&out, r.tenant);
  PutString(&out, r.sequence_id);
  PutString(&out, r.model);
  PutFixed64(&out, static_cast<uint64_t>(r.next_position));
  PutFixed64(&out, static_cast<uint64_t>(absl::ToUnixMicros(created)));
  PutVarint(&out, total_bytes);
  PutVarint(&out, page_count);
  PutVarint(&out, r.counts.size());
  std::string runs;
  for (size_t h = 0; h < r.counts.size(); ++h) {
    const absl::Span<const int32_t> positions = r.positions[h];
    PutVarint(&out, r.counts[h]);
    runs.clear();
    uint64_t nruns = 0;
    int64_t prev_end = 0;
    for (size_t i = 0; i < positions.size();) {
      size_t j = i + 1;
      while (j < positions.size() &&
             static_cast<int64_t>(positions[j]) == static_cast<int64_t>(positions[j - 1]) + 1) {
        ++j;
      }
      PutVarint(&runs, ZigZag(static_cast<int64_t>(positions[i]) - prev_end));
      PutVarint(&runs, j - i);
      prev_end = static_cast<int64_t>(positions[j - 1]) + 1;
      ++nruns;
      i = j;
    }
    PutVarint(&out, nruns);
    out.append(runs);
    PutVarint(&out, pages[h].size());
    for (const PageMeta& p : pages[h]) {
      PutVarint(&out, p.size);
      PutFixed64(&out, p.checksum);
    }
  }
  PutFixed64(&out, XxHash64(out));
  return out;
}

absl::StatusOr<Manifest> DecodeManifest(absl::string_view key, absl::string_view in, bool full) {
  auto corrupt = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("manifest of spilled sequence ", key, " is corrupt (",
                                            why, ")"));
  };
  if (in.size() < 12) return corrupt("too short");
  uint64_t stored_sum;
  std::memcpy(&stored_sum, in.data() + in.size() - 8, 8);
  absl::string_view body = in.substr(0, in.size() - 8);
  if (XxHash64(body) != stored_sum) return corrupt("checksum mismatch");
  Reader rd(body);
  Manifest m;
  uint32_t magic;
  uint64_t version, next, created, heads;
  if (!rd.Fixed32(&magic) || magic != kManifestMagic) return corrupt("bad magic");
  if (!rd.Varint(&version) ||
      (version != kManifestVersion && version != kManifestVersionOnePage)) {
    return corrupt("unknown version");
  }
  if (version == kManifestVersion &&
      (!rd.Varint32(&m.pages_per_value) || m.pages_per_value == 0)) {
    return corrupt("pages per value");
  }
  if (!rd.String(&m.summary.tenant) || !rd.String(&m.summary.sequence_id) ||
      !rd.String(&m.summary.model) || !rd.Fixed64(&next) || !rd.Fixed64(&created) ||
      !rd.Varint(&m.summary.bytes) || !rd.Varint(&m.summary.pages) || !rd.Varint(&heads)) {
    return corrupt("truncated header");
  }
  m.next_position = static_cast<int64_t>(next);
  m.summary.created = absl::FromUnixMicros(static_cast<int64_t>(created));
  if (!full) return m;
  // Every head takes at least 3 bytes; refuse counts the value cannot hold before allocating.
  if (heads > rd.left() / 3) return corrupt("head count");
  m.counts.resize(heads);
  m.positions.resize(heads);
  m.pages.resize(heads);
  uint64_t total_bytes = 0, total_pages = 0;
  for (uint64_t h = 0; h < heads; ++h) {
    uint64_t nruns, npages;
    if (!rd.Varint32(&m.counts[h]) || !rd.Varint(&nruns) || nruns > rd.left() / 2) {
      return corrupt("head table");
    }
    std::vector<int32_t>& pos = m.positions[h];
    pos.reserve(m.counts[h]);
    int64_t prev_end = 0;
    for (uint64_t r = 0; r < nruns; ++r) {
      uint64_t delta, len;
      if (!rd.Varint(&delta) || !rd.Varint(&len) || len == 0 || len > m.counts[h] - pos.size()) {
        return corrupt("positions");
      }
      int64_t start = prev_end + UnZigZag(delta);
      if (start < INT32_MIN || start + static_cast<int64_t>(len) - 1 > INT32_MAX) {
        return corrupt("positions");
      }
      for (uint64_t i = 0; i < len; ++i) pos.push_back(static_cast<int32_t>(start + i));
      prev_end = start + static_cast<int64_t>(len);
    }
    if (pos.size() != m.counts[h]) return corrupt("position count");
    if (!rd.Varint(&npages) || npages > rd.left() / 9) return corrupt("page count");
    m.pages[h].resize(npages);
    for (PageMeta& p : m.pages[h]) {
      if (!rd.Varint32(&p.size) || !rd.Fixed64(&p.checksum)) return corrupt("page table");
      total_bytes += p.size;
    }
    total_pages += npages;
  }
  if (rd.left() != 0) return corrupt("trailing bytes");
  if (total_bytes != m.summary.bytes || total_pages != m.summary.pages) return corrupt("totals");
  return m;
}

std::vector<ValueRun> ValueRuns(const std::vector<std::vector<PageMeta>>& pages,
                                uint32_t pages_per_value) {
  const uint32_t ppv = pages_per_value == 0 ? 1 : pages_per_value;
  std::vector<ValueRun> runs;
  for (size_t h = 0; h < pages.size(); ++h) {
    const uint32_t n = static_cast<uint32_t>(pages[h].size());
    for (uint32_t first = 0; first < n; first += ppv) {
      ValueRun r{static_cast<uint32_t>(h), first, std::min(ppv, n - first), 0};
      for (uint32_t p = first; p < first + r.count; ++p) r.bytes += pages[h][p].size;
      runs.push_back(r);
    }
  }
  return runs;
}

}  // namespace kvkeep::spill_format
