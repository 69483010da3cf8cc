#include "service/fleet/group_keys.h"

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <memory>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace kvkeep::fleet {
namespace {

constexpr absl::string_view kSalt = "kvkeep-fleet-v1";

struct KdfDeleter {
  void operator()(EVP_KDF* kdf) const { EVP_KDF_free(kdf); }
  void operator()(EVP_KDF_CTX* ctx) const { EVP_KDF_CTX_free(ctx); }
};

}  // namespace

absl::StatusOr<std::string> HkdfSha256(absl::string_view ikm, absl::string_view salt,
                                       absl::string_view info, size_t length) {
  if (length == 0 || length > 255 * 32) {
    return absl::InvalidArgumentError("HKDF-SHA256 output must be 1..8160 bytes");
  }
  std::unique_ptr<EVP_KDF, KdfDeleter> kdf(EVP_KDF_fetch(nullptr, "HKDF", nullptr));
  if (kdf == nullptr) return absl::InternalError("OpenSSL has no HKDF");
  std::unique_ptr<EVP_KDF_CTX, KdfDeleter> ctx(EVP_KDF_CTX_new(kdf.get()));
  if (ctx == nullptr) return absl::InternalError("OpenSSL: EVP_KDF_CTX_new failed");
  char digest[] = "SHA256";
  // OSSL_PARAM takes non-const pointers; the KDF only reads them.
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<char*>(ikm.data()),
                                        ikm.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<char*>(salt.data()),
                                        salt.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<char*>(info.data()),
                                        info.size()),
      OSSL_PARAM_construct_end(),
  };
  std::string out(length, '\0');
  if (EVP_KDF_derive(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), out.size(), params) !=
      1) {
    return absl::InternalError("OpenSSL: HKDF-SHA256 failed");
  }
  return out;
}

absl::StatusOr<GroupKeys> DeriveGroupKeys(absl::string_view group_secret) {
  if (group_secret.size() < kMinGroupSecretBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a group secret must have at least ", kMinGroupSecretBytes, " bytes"));
  }
  GroupKeys keys;
  absl::StatusOr<std::string> value_key = HkdfSha256(group_secret, kSalt, "value-key", 32);
  if (!value_key.ok()) return value_key.status();
  absl::StatusOr<std::string> chain_salt = HkdfSha256(group_secret, kSalt, "chain-salt", 32);
  if (!chain_salt.ok()) return chain_salt.status();
  absl::StatusOr<std::string> fingerprint = HkdfSha256(group_secret, kSalt, "fingerprint", 8);
  if (!fingerprint.ok()) return fingerprint.status();
  keys.value_key = *std::move(value_key);
  keys.chain_salt = *std::move(chain_salt);
  keys.fingerprint = absl::BytesToHexString(*fingerprint);
  return keys;
}

}  // namespace kvkeep::fleet
