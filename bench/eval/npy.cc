#include "bench/eval/npy.h"

#include <bit>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace kvkeep::eval {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

absl::Status Bad(const std::string& path, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", why));
}

// Returns the text following `'key':` in a header dict, up to the end of the header.
absl::StatusOr<absl::string_view> ValueOf(absl::string_view header, absl::string_view key) {
  const std::string quoted = absl::StrCat("'", key, "'");
  size_t at = header.find(quoted);
  if (at == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("header has no '", key, "' entry"));
  }
  at = header.find(':', at + quoted.size());
  if (at == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("malformed '", key, "' entry"));
  }
  return absl::StripLeadingAsciiWhitespace(header.substr(at + 1));
}

struct Header {
  NpyDtype dtype;
  std::vector<int64_t> shape;
};

absl::StatusOr<Header> ParseHeader(absl::string_view header) {
  Header out;
  auto descr = ValueOf(header, "descr");
  if (!descr.ok()) return descr.status();
  if (descr->empty() || ((*descr)[0] != '\'' && (*descr)[0] != '"')) {
    return absl::InvalidArgumentError("malformed 'descr' entry");
  }
  const char quote = (*descr)[0];
  const size_t end = descr->find(quote, 1);
  if (end == absl::string_view::npos) return absl::InvalidArgumentError("malformed 'descr'");
  const absl::string_view type = descr->substr(1, end - 1);
  if (type == "<f4" || type == "=f4") {
    out.dtype = NpyDtype::kFloat32;
  } else if (type == "<f2" || type == "=f2") {
    out.dtype = NpyDtype::kFloat16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported dtype '", type,
        "' (only little-endian float16 '<f2' and float32 '<f4' are read; convert with "
        "arr.astype('<f4'))"));
  }

  auto fortran = ValueOf(header, "fortran_order");
  if (!fortran.ok()) return fortran.status();
  if (absl::StartsWith(*fortran, "True")) {
    return absl::InvalidArgumentError(
        "Fortran-order arrays are not supported (save with np.ascontiguousarray)");
  }
  if (!absl::StartsWith(*fortran, "False")) {
    return absl::InvalidArgumentError("malformed 'fortran_order' entry");
  }

  auto shape = ValueOf(header, "shape");
  if (!shape.ok()) return shape.status();
  if (shape->empty() || (*shape)[0] != '(') return absl::InvalidArgumentError("malformed 'shape'");
  const size_t close = shape->find(')');
  if (close == absl::string_view::npos) return absl::InvalidArgumentError("malformed 'shape'");
  for (absl::string_view part : absl::StrSplit(shape->substr(1, close - 1), ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) continue;  // "(5,)" has a trailing comma
    if (!part.empty() && part.back() == 'L') part.remove_suffix(1);  // Python 2 longs
    int64_t dim;
    if (!absl::SimpleAtoi(part, &dim) || dim < 0) {
      return absl::InvalidArgumentError(absl::StrCat("malformed shape entry '", part, "'"));
    }
    out.shape.push_back(dim);
  }
  return out;
}

}  // namespace

int64_t NpyArray::size() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

uint16_t FloatToHalf(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // Inf or NaN
    return sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u);
  }
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: overflow to Inf
  if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (abs < 0x33000000u) return sign;  // < 2^-25 rounds to zero
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(e);  // 14..24 from the exponent
    const uint32_t half_m = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    uint32_t r = half_m;
    if (rem > halfway || (rem == halfway && (half_m & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  // Normal: re-bias the exponent, round the mantissa to 10 bits (nearest even).
  uint32_t r = abs - ((127u - 15u) << 23);
  const uint32_t rem = r & 0x1fffu;
  r >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return sign | static_cast<uint16_t>(r);
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open file"));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  if (bytes.size() < kMagicLen + 4 || std::memcmp(bytes.data(), kMagic, kMagicLen) != 0) {
    return Bad(path, "not a NumPy .npy file (bad magic)");
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, header_start;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) |
                 (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return Bad(path, "truncated header");
    header_len = 0;
    for (int i = 0; i < 4; ++i) {
      header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    }
    header_start = 12;
  } else {
    return Bad(path, absl::StrCat("unsupported .npy format version ", major));
  }
  if (bytes.size() < header_start + header_len) return Bad(path, "truncated header");
  const absl::string_view header(bytes.data() + header_start, header_len);
  auto parsed = ParseHeader(header);
  if (!parsed.ok()) return Bad(path, parsed.status().message());

  NpyArray out;
  out.shape = std::move(parsed->shape);
  const int64_t count = out.size();
  const size_t elem = parsed->dtype == NpyDtype::kFloat32 ? 4 : 2;
  const size_t payload = bytes.size() - header_start - header_len;
  if (payload < static_cast<size_t>(count) * elem) {
    return Bad(path, absl::StrCat("truncated data: header promises ", count, " elements (",
                                  count * elem, " bytes), file holds ", payload, " bytes"));
  }
  const char* src = bytes.data() + header_start + header_len;
  out.data.resize(count);
  if (parsed->dtype == NpyDtype::kFloat32) {
    std::memcpy(out.data.data(), src, count * 4);
  } else {
    for (int64_t i = 0; i < count; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      out.data[i] = HalfToFloat(h);
    }
  }
  return out;
}

absl::Status WriteNpy(const std::string& path, const NpyArray& array, NpyDtype dtype) {
  if (static_cast<int64_t>(array.data.size()) != array.size()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": data holds ", array.data.size(),
                                                   " values, shape wants ", array.size()));
  }
  std::string shape = "(";
  for (size_t i = 0; i < array.shape.size(); ++i) {
    absl::StrAppend(&shape, array.shape[i], array.shape.size() == 1 ? "," : "",
                    i + 1 < array.shape.size() ? ", " : "");
  }
  shape += ")";
  std::string header =
      absl::StrCat("{'descr': '", dtype == NpyDtype::kFloat32 ? "<f4" : "<f2",
                   "', 'fortran_order': False, 'shape': ", shape, ", }");
  // Pad with spaces so magic + version + length + header + '\n' is a multiple of 64.
  const size_t total = kMagicLen + 2 + 2 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  if (header.size() > 0xffff) return absl::InvalidArgumentError("npy header too long");

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat(path, ": cannot open for writing"));
  out.write(kMagic, kMagicLen);
  const char version[2] = {1, 0};
  out.write(version, 2);
  const char len[2] = {static_cast<char>(header.size() & 0xff),
                       static_cast<char>((header.size() >> 8) & 0xff)};
  out.write(len, 2);
  out.write(header.data(), header.size());
  if (dtype == NpyDtype::kFloat32) {
    out.write(reinterpret_cast<const char*>(array.data.data()), array.data.size() * 4);
  } else {
    std::vector<uint16_t> half(array.data.size());
    for (size_t i = 0; i < half.size(); ++i) half[i] = FloatToHalf(array.data[i]);
    out.write(reinterpret_cast<const char*>(half.data()), half.size() * 2);
  }
  out.close();
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace kvkeep::eval
