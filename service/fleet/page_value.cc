#include "service/fleet/page_value.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "service/engine/model_layout.h"
#include "service/storage/xxhash64.h"

namespace kvkeep::fleet {
namespace {

constexpr char kMagic[4] = {'K', 'V', 'K', 'F'};
constexpr size_t kNonceOffset = 40, kNonceBytes = 12, kTagBytes = 16, kChecksumBytes = 8;
constexpr size_t kLayoutHashBytes = 8;

void PutLe(std::string& out, size_t offset, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out[offset + i] = static_cast<char>(v >> (8 * i));
}

uint64_t GetLe(absl::string_view in, size_t offset, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) {
    v |= uint64_t{static_cast<unsigned char>(in[offset + i])} << (8 * i);
  }
  return v;
}

// The header a value of `shape` and `layout_hash` has (nonce left zero).
std::string MakeHeader(const PageShape& shape, absl::string_view layout_hash) {
  std::string header(kPageValueHeaderBytes, '\0');
  std::memcpy(header.data(), kMagic, sizeof(kMagic));
  PutLe(header, 4, kPageValueVersion, 2);
  PutLe(header, 6, static_cast<uint64_t>(shape.dtype), 1);
  PutLe(header, 8, shape.tokens_per_page, 4);
  PutLe(header, 12, shape.layers, 4);
  PutLe(header, 16, shape.kv_heads, 4);
  PutLe(header, 20, shape.head_dim, 4);
  std::memcpy(header.data() + 24, layout_hash.data(), kLayoutHashBytes);
  PutLe(header, 32, shape.payload_bytes(), 8);
  return header;
}

struct CipherDeleter {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherDeleter>;

const unsigned char* U(absl::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

// AES-256-GCM over `in` into `out` (same size), authenticating `aad_header` and `aad_key`.
// Encrypting writes the tag to `tag`; decrypting checks it. False on any failure.
bool Gcm(bool encrypt, absl::string_view key, absl::string_view nonce, absl::string_view aad_header,
         absl::string_view aad_key, absl::string_view in, char* out, unsigned char* tag) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (ctx == nullptr) return false;
  auto init = encrypt ? EVP_EncryptInit_ex : EVP_DecryptInit_ex;
  auto update = encrypt ? EVP_EncryptUpdate : EVP_DecryptUpdate;
  int len = 0;
  if (init(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(nonce.size()),
                          nullptr) != 1 ||
      init(ctx.get(), nullptr, nullptr, U(key), U(nonce)) != 1 ||
      update(ctx.get(), nullptr, &len, U(aad_header), static_cast<int>(aad_header.size())) != 1 ||
      update(ctx.get(), nullptr, &len, U(aad_key), static_cast<int>(aad_key.size())) != 1) {
    return false;
  }
  // EVP takes int lengths: feed the payload in chunks.
  constexpr size_t kChunk = size_t{1} << 30;
  for (size_t done = 0; done < in.size(); done += kChunk) {
    const size_t n = std::min(kChunk, in.size() - done);
    if (update(ctx.get(), reinterpret_cast<unsigned char*>(out + done), &len, U(in) + done,
               static_cast<int>(n)) != 1) {
      return false;
    }
  }
  if (!encrypt && EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, tag) != 1) {
    return false;
  }
  unsigned char final_block[16];
  const int finished = encrypt ? EVP_EncryptFinal_ex(ctx.get(), final_block, &len)
                               : EVP_DecryptFinal_ex(ctx.get(), final_block, &len);
  if (finished != 1) return false;
  return !encrypt || EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes, tag) == 1;
}

}  // namespace

PageShape PageShape::Of(const v1::ModelLayout& layout) {
  return PageShape{layout.dtype(), layout.tokens_per_page(), layout.layers(), layout.kv_heads(),
                   layout.head_dim()};
}

uint64_t PageShape::page_bytes() const {
  return 2 * uint64_t{tokens_per_page} * head_dim * DTypeSize(dtype);
}

uint64_t PageShape::payload_bytes() const { return uint64_t{layers} * kv_heads * page_bytes(); }

absl::string_view PageValueVerdictName(PageValueVerdict verdict) {
  switch (verdict) {
    case PageValueVerdict::kOk:
      return "ok";
    case PageValueVerdict::kOtherVersion:
      return "other_version";
    case PageValueVerdict::kShort:
      return "short";
    case PageValueVerdict::kChecksum:
      return "checksum";
    case PageValueVerdict::kHeaderMismatch:
      return "header_mismatch";
    case PageValueVerdict::kAuthentication:
      return "authentication";
  }
  return "unknown";
}

absl::StatusOr<std::string> SealPageValue(const PageShape& shape, absl::string_view layout_hash,
                                          absl::string_view key_name, absl::string_view payload,
                                          absl::string_view value_key) {
  if (shape.payload_bytes() == 0 || payload.size() != shape.payload_bytes()) {
    return absl::InvalidArgumentError("page value payload does not match the page shape");
  }
  if (layout_hash.size() < kLayoutHashBytes || value_key.size() != 32) {
    return absl::InvalidArgumentError("page value needs a layout hash and a 32-byte key");
  }
  std::string value = MakeHeader(shape, layout_hash);
  if (RAND_bytes(reinterpret_cast<unsigned char*>(value.data()) + kNonceOffset, kNonceBytes) != 1) {
    return absl::InternalError("OpenSSL: no random nonce");
  }
  value.resize(kPageValueHeaderBytes + payload.size() + kTagBytes + kChecksumBytes);
  const absl::string_view header(value.data(), kPageValueHeaderBytes);
  unsigned char* tag =
      reinterpret_cast<unsigned char*>(value.data()) + kPageValueHeaderBytes + payload.size();
  if (!Gcm(/*encrypt=*/true, value_key, header.substr(kNonceOffset, kNonceBytes), header, key_name,
           payload, value.data() + kPageValueHeaderBytes, tag)) {
    return absl::InternalError("OpenSSL: AES-256-GCM encryption failed");
  }
  const size_t checked = value.size() - kChecksumBytes;
  PutLe(value, checked, XxHash64(absl::string_view(value.data(), checked)), 8);
  return value;
}

PageValueVerdict OpenPageValue(absl::string_view value, const PageShape& shape,
                               absl::string_view layout_hash, absl::string_view key_name,
                               absl::string_view value_key, std::string* payload) {
  if (value.size() < 6 || std::memcmp(value.data(), kMagic, sizeof(kMagic)) != 0 ||
      GetLe(value, 4, 2) != kPageValueVersion) {
    return PageValueVerdict::kOtherVersion;
  }
  if (value.size() < kPageValueOverheadBytes) return PageValueVerdict::kShort;
  const uint64_t stored_payload = GetLe(value, 32, 8);
  if (stored_payload != value.size() - kPageValueOverheadBytes) return PageValueVerdict::kShort;
  const size_t checked = value.size() - kChecksumBytes;
  if (XxHash64(value.substr(0, checked)) != GetLe(value, checked, 8)) {
    return PageValueVerdict::kChecksum;
  }
  const absl::string_view header = value.substr(0, kPageValueHeaderBytes);
  std::string expected = MakeHeader(shape, layout_hash);
  // Compare everything but the nonce (and the reserved bytes after it, which must be zero).
  if (layout_hash.size() < kLayoutHashBytes || shape.payload_bytes() != stored_payload ||
      header.substr(0, kNonceOffset) != absl::string_view(expected).substr(0, kNonceOffset) ||
      GetLe(header, kNonceOffset + kNonceBytes, 4) != 0) {
    return PageValueVerdict::kHeaderMismatch;
  }
  if (value_key.size() != 32) return PageValueVerdict::kAuthentication;
  payload->resize(stored_payload);
  unsigned char tag[kTagBytes];
  std::memcpy(tag, value.data() + kPageValueHeaderBytes + stored_payload, kTagBytes);
  if (!Gcm(/*encrypt=*/false, value_key, header.substr(kNonceOffset, kNonceBytes), header, key_name,
           value.substr(kPageValueHeaderBytes, stored_payload), payload->data(), tag)) {
    return PageValueVerdict::kAuthentication;
  }
  return PageValueVerdict::kOk;
}

}  // namespace kvkeep::fleet
