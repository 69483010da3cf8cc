// Admission of page allocations against tenant quotas and the pool.
//
// A tenant may always grow up to its guarantee (quota). Beyond it, it takes only pool bytes that
// no other tenant is guaranteed: capacity - Σ over other tenants of max(0, quota - used). It never
// grows past its hard maximum. Pure functions: the caller holds whatever lock protects the figures.
#ifndef KVKEEP_SERVICE_POOL_QUOTA_H_
#define KVKEEP_SERVICE_POOL_QUOTA_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace kvkeep {

struct TenantUsage {
  std::string name;
  uint64_t quota_bytes = 0;  // guaranteed
  uint64_t max_bytes = 0;    // hard maximum; 0 = the pool capacity
  uint64_t used_bytes = 0;
};

// OK, or RESOURCE_EXHAUSTED whose message gives the tenant's used/limit bytes and the request,
// with a FailureReason (common/failure_reason.h): kTenantMax when the tenant's own hard maximum
// is the limit, kPoolShort when the pool (after other tenants' guarantees) is — only the latter
// can be relieved by spilling.
// `reserved_for_others` is Σ over other tenants of max(0, quota - used); `pool_used` counts all
// tenants' pages.
absl::Status CheckAdmission(const TenantUsage& tenant, uint64_t request_bytes,
                            uint64_t pool_capacity, uint64_t pool_used,
                            uint64_t reserved_for_others);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_POOL_QUOTA_H_
