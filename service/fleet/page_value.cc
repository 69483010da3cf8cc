#include "service/fleet/page_value.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "service/engine/model_layout.h"
#include "service/fleet/xxhash64_stream.h"
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

// AES-256-GCM fed chunk by chunk, authenticating `aad_header` and `aad_key` (the value's Redis
// key name). Sealing: Update encrypts, Finish writes the tag. Opening: Update decrypts, Finish
// checks the tag. False on any failure.
class GcmStream {
 public:
  explicit GcmStream(bool encrypt) : encrypt_(encrypt) {}
  bool Init(absl::string_view key, absl::string_view nonce, absl::string_view aad_header,
            absl::string_view aad_key) {
    auto init = encrypt_ ? EVP_EncryptInit_ex : EVP_DecryptInit_ex;
    return ctx_ != nullptr && init(ctx_.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
           EVP_CIPHER_CTX_ctrl(ctx_.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(nonce.size()),
                               nullptr) == 1 &&
           init(ctx_.get(), nullptr, nullptr, U(key), U(nonce)) == 1 &&
           Aad(aad_header) && Aad(aad_key);
  }
  // `in` (at most kOpenChunkBytes) into `out` (as many bytes).
  bool Update(absl::string_view in, char* out) {
    auto update = encrypt_ ? EVP_EncryptUpdate : EVP_DecryptUpdate;
    int len = 0;
    return update(ctx_.get(), reinterpret_cast<unsigned char*>(out), &len, U(in),
                  static_cast<int>(in.size())) == 1 &&
           static_cast<size_t>(len) == in.size();
  }
  bool Finish(unsigned char* tag) {
    unsigned char final_block[16];
    int len = 0;
    if (encrypt_) {
      return EVP_EncryptFinal_ex(ctx_.get(), final_block, &len) == 1 &&
             EVP_CIPHER_CTX_ctrl(ctx_.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes, tag) == 1;
    }
    return EVP_CIPHER_CTX_ctrl(ctx_.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, tag) == 1 &&
           EVP_DecryptFinal_ex(ctx_.get(), final_block, &len) == 1;
  }

 private:
  bool Aad(absl::string_view aad) {
    auto update = encrypt_ ? EVP_EncryptUpdate : EVP_DecryptUpdate;
    int len = 0;
    return update(ctx_.get(), nullptr, &len, U(aad), static_cast<int>(aad.size())) == 1;
  }
  const bool encrypt_;
  CipherCtx ctx_{EVP_CIPHER_CTX_new()};
};

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

absl::Status SealPageValueInto(const PageShape& shape, absl::string_view layout_hash,
                               absl::string_view key_name, absl::string_view payload,
                               absl::string_view value_key, std::string* value_out) {
  if (shape.payload_bytes() == 0 || payload.size() != shape.payload_bytes()) {
    return absl::InvalidArgumentError("page value payload does not match the page shape");
  }
  if (layout_hash.size() < kLayoutHashBytes || value_key.size() != 32) {
    return absl::InvalidArgumentError("page value needs a layout hash and a 32-byte key");
  }
  std::string& value = *value_out;
  // A buffer of the right size already is reused as it is (no zero-fill, no fresh pages).
  value.resize(kPageValueHeaderBytes + payload.size() + kTagBytes + kChecksumBytes);
  const std::string made = MakeHeader(shape, layout_hash);
  std::memcpy(value.data(), made.data(), kPageValueHeaderBytes);
  if (RAND_bytes(reinterpret_cast<unsigned char*>(value.data()) + kNonceOffset, kNonceBytes) != 1) {
    return absl::InternalError("OpenSSL: no random nonce");
  }
  const std::string header = value.substr(0, kPageValueHeaderBytes);
  char* const cipher = value.data() + kPageValueHeaderBytes;
  char* const tag = cipher + payload.size();
  // One pass: each chunk is encrypted, then hashed while it is still in cache.
  XxHash64Stream sum;
  sum.Update(header);
  GcmStream gcm(/*encrypt=*/true);
  if (!gcm.Init(value_key, absl::string_view(header).substr(kNonceOffset, kNonceBytes), header,
                key_name)) {
    return absl::InternalError("OpenSSL: AES-256-GCM encryption failed");
  }
  for (size_t done = 0; done < payload.size(); done += kOpenChunkBytes) {
    const absl::string_view chunk = payload.substr(done, kOpenChunkBytes);
    if (!gcm.Update(chunk, cipher + done)) {
      return absl::InternalError("OpenSSL: AES-256-GCM encryption failed");
    }
    sum.Update(absl::string_view(cipher + done, chunk.size()));
  }
  if (!gcm.Finish(reinterpret_cast<unsigned char*>(tag))) {
    return absl::InternalError("OpenSSL: AES-256-GCM encryption failed");
  }
  sum.Update(absl::string_view(tag, kTagBytes));
  PutLe(value, value.size() - kChecksumBytes, sum.Digest(), 8);
  return absl::OkStatus();
}

absl::StatusOr<std::string> SealPageValue(const PageShape& shape, absl::string_view layout_hash,
                                          absl::string_view key_name, absl::string_view payload,
                                          absl::string_view value_key) {
  std::string value;
  if (absl::Status sealed = SealPageValueInto(shape, layout_hash, key_name, payload, value_key,
                                              &value);
      !sealed.ok()) {
    return sealed;
  }
  return value;
}

namespace {

// The verdict on everything before the payload: kOk when the header is the expected one.
PageValueVerdict CheckHeader(absl::string_view value, const PageShape& shape,
                             absl::string_view layout_hash, absl::string_view value_key) {
  const uint64_t stored_payload = GetLe(value, 32, 8);
  const absl::string_view header = value.substr(0, kPageValueHeaderBytes);
  // Compare everything but the nonce (and the reserved bytes after it, which must be zero).
  if (layout_hash.size() < kLayoutHashBytes || shape.payload_bytes() != stored_payload ||
      header.substr(0, kNonceOffset) !=
          absl::string_view(MakeHeader(shape, layout_hash)).substr(0, kNonceOffset) ||
      GetLe(header, kNonceOffset + kNonceBytes, 4) != 0) {
    return PageValueVerdict::kHeaderMismatch;
  }
  if (value_key.size() != 32) return PageValueVerdict::kAuthentication;
  return PageValueVerdict::kOk;
}

}  // namespace

absl::StatusOr<PageValueVerdict> OpenPageValueInto(absl::string_view value,
                                                   const PageShape& shape,
                                                   absl::string_view layout_hash,
                                                   absl::string_view key_name,
                                                   absl::string_view value_key,
                                                   PayloadChunkWriter write) {
  return OpenPageValueInto(
      value, shape, layout_hash, key_name, value_key,
      [](uint64_t, size_t) -> char* { return nullptr; }, write);
}

absl::StatusOr<PageValueVerdict> OpenPageValueInto(absl::string_view value,
                                                   const PageShape& shape,
                                                   absl::string_view layout_hash,
                                                   absl::string_view key_name,
                                                   absl::string_view value_key,
                                                   PayloadChunkTarget target,
                                                   PayloadChunkWriter write) {
  if (value.size() < 6 || std::memcmp(value.data(), kMagic, sizeof(kMagic)) != 0 ||
      GetLe(value, 4, 2) != kPageValueVersion) {
    return PageValueVerdict::kOtherVersion;
  }
  if (value.size() < kPageValueOverheadBytes) return PageValueVerdict::kShort;
  const uint64_t stored_payload = GetLe(value, 32, 8);
  if (stored_payload != value.size() - kPageValueOverheadBytes) return PageValueVerdict::kShort;
  const size_t checked = value.size() - kChecksumBytes;
  const uint64_t stored_sum = GetLe(value, checked, 8);
  const PageValueVerdict header_verdict = CheckHeader(value, shape, layout_hash, value_key);
  if (header_verdict != PageValueVerdict::kOk) {
    // Nothing to decrypt: the checksum decides between corruption and another shape/key.
    return XxHash64(value.substr(0, checked)) != stored_sum ? PageValueVerdict::kChecksum
                                                            : header_verdict;
  }
  // One pass: each chunk is hashed, then decrypted while it is still in cache.
  const absl::string_view header = value.substr(0, kPageValueHeaderBytes);
  XxHash64Stream sum;
  sum.Update(header);
  GcmStream gcm(/*encrypt=*/false);
  if (!gcm.Init(value_key, header.substr(kNonceOffset, kNonceBytes), header, key_name)) {
    return PageValueVerdict::kAuthentication;
  }
  std::unique_ptr<char[]> plain;  // only for chunks the target has no memory for
  const absl::string_view cipher = value.substr(kPageValueHeaderBytes, stored_payload);
  bool decrypted = true;
  for (size_t done = 0; done < cipher.size(); done += kOpenChunkBytes) {
    const absl::string_view chunk = cipher.substr(done, kOpenChunkBytes);
    sum.Update(chunk);
    if (!decrypted) continue;  // hash on: a corrupted value still says kChecksum
    if (char* const direct = target(done, chunk.size()); direct != nullptr) {
      decrypted = gcm.Update(chunk, direct);  // straight into the destination: no copy
      continue;
    }
    if (plain == nullptr) plain.reset(new char[kOpenChunkBytes]);
    decrypted = gcm.Update(chunk, plain.get());
    if (!decrypted) continue;
    if (absl::Status written = write(done, absl::string_view(plain.get(), chunk.size()));
        !written.ok()) {
      return written;
    }
  }
  const absl::string_view tag = value.substr(kPageValueHeaderBytes + stored_payload, kTagBytes);
  sum.Update(tag);
  if (sum.Digest() != stored_sum) return PageValueVerdict::kChecksum;
  unsigned char expected_tag[kTagBytes];
  std::memcpy(expected_tag, tag.data(), kTagBytes);
  if (!decrypted || !gcm.Finish(expected_tag)) return PageValueVerdict::kAuthentication;
  return PageValueVerdict::kOk;
}

PageValueVerdict OpenPageValue(absl::string_view value, const PageShape& shape,
                               absl::string_view layout_hash, absl::string_view key_name,
                               absl::string_view value_key, std::string* payload) {
  payload->resize(shape.payload_bytes());
  absl::StatusOr<PageValueVerdict> verdict = OpenPageValueInto(
      value, shape, layout_hash, key_name, value_key,
      [payload](uint64_t offset, absl::string_view bytes) {
        if (offset + bytes.size() > payload->size()) {
          return absl::OutOfRangeError("page value payload past its shape");
        }
        std::memcpy(payload->data() + offset, bytes.data(), bytes.size());
        return absl::OkStatus();
      });
  // The writer above fails only for a payload longer than the shape, which the header check
  // already refuses.
  return verdict.ok() ? *verdict : PageValueVerdict::kHeaderMismatch;
}

}  // namespace kvkeep::fleet
