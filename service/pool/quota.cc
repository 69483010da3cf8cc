#include "service/pool/quota.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/failure_reason.h"

namespace kvkeep {

// Messages name only the requesting tenant's own figures (and the pool capacity, which bounds its
// maximum): never the pool's usage or the other tenants' reservations, which would tell one tenant
// about the others.
absl::Status CheckAdmission(const TenantUsage& t, uint64_t request, uint64_t pool_capacity,
                            uint64_t pool_used, uint64_t reserved_for_others) {
  if (t.max_bytes != 0 && (request > t.max_bytes || t.used_bytes > t.max_bytes - request)) {
    return WithReason(absl::ResourceExhaustedError(absl::StrCat(
                          "tenant ", t.name, " quota exceeded: used ", t.used_bytes, " of max ",
                          t.max_bytes, " bytes, request needs ", request, " more")),
                      FailureReason::kTenantMax);
  }
  // Within its guarantee a tenant is always admitted (the others' reservations exclude it).
  // Guarantees are validated to fit the pool together.
  const uint64_t own_reserved = t.quota_bytes > t.used_bytes ? t.quota_bytes - t.used_bytes : 0;
  if (request <= own_reserved && request <= pool_capacity) return absl::OkStatus();
  // The part of the request inside the tenant's own remaining guarantee is reserved for it; the
  // rest must come from free bytes nobody is guaranteed.
  auto sat_add = [](uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; };
  const uint64_t taken = sat_add(sat_add(pool_used, reserved_for_others), own_reserved);
  const uint64_t free_unreserved = pool_capacity - std::min(pool_capacity, taken);
  if (request - std::min(request, own_reserved) > free_unreserved) {
    return WithReason(absl::ResourceExhaustedError(absl::StrCat(
        "pool exhausted for tenant ", t.name, ": used ", t.used_bytes, " bytes (guaranteed ",
        t.quota_bytes, ", max ", t.max_bytes == 0 ? pool_capacity : t.max_bytes,
        "), request needs ", request,
        " more; the rest of the pool is in use or reserved for other tenants' guarantees")),
        FailureReason::kPoolShort);
  }
  return absl::OkStatus();
}

}  // namespace kvkeep
