// Names, keys and small helpers shared by the CacheEngine's source files (cache_engine*.cc).
// Not part of the engine's interface.
#ifndef KVKEEP_SERVICE_ENGINE_CACHE_ENGINE_INTERNAL_H_
#define KVKEEP_SERVICE_ENGINE_CACHE_ENGINE_INTERNAL_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvkeep::engine_internal {

// Metadata-store key prefixes.
inline constexpr char kTenantPrefix[] = "tenant/";
inline constexpr char kModelPrefix[] = "model/";
inline constexpr char kGroupPrefix[] = "group/";  // sharing groups' salts (SharingGroupRecord)

inline std::string ModelKey(const std::string& tenant, const std::string& model) {
  return absl::StrCat(kModelPrefix, tenant, "/", model);
}

// [a-z0-9][a-z0-9-]{0,62}
inline bool ValidTenantName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (i > 0 && c == '-');
    if (!ok) return false;
  }
  return true;
}

// [A-Za-z0-9._:-]{1,128}
inline bool ValidWorkerName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == ':';
    if (!ok) return false;
  }
  return true;
}

// Another tenant's sequence answers exactly as one that does not exist.
inline absl::Status NoSequence(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("no sequence \"", id, "\" for this tenant"));
}

}  // namespace kvkeep::engine_internal

#endif  // KVKEEP_SERVICE_ENGINE_CACHE_ENGINE_INTERNAL_H_
