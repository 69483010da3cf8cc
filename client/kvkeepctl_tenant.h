// kvkeepctl's tenant commands (tenant list / create / set-quota / delete) and the tenant table
// that `status` and `top` print too: budgets, pool and spill usage, sharing group, and the daemon
// memory charged to the tenant with its bound (METADATA, METADATA-MAX).
//
//   std::vector<std::vector<std::string>> rows = {ctl::TenantHeader()};
//   for (const v1::TenantInfo& t : status.tenant_usage()) rows.push_back(ctl::TenantRow(t));
//   ctl::PrintTable(rows);
#ifndef KVKEEP_CLIENT_KVKEEPCTL_TENANT_H_
#define KVKEEP_CLIENT_KVKEEPCTL_TENANT_H_

#include <string>
#include <vector>

#include "client/kvkeepctl_context.h"
#include "kvkeep/v1/admin.pb.h"

namespace kvkeep::ctl {

// The tenant table's column names, and one tenant's row (human-readable sizes).
std::vector<std::string> TenantHeader();
std::vector<std::string> TenantRow(const v1::TenantInfo& t);

// `tenant SUB ...` (SUB: list, create, set-quota, delete); kvkeepctl's exit status.
int RunTenant(Ctx& c, const std::string& sub);

}  // namespace kvkeep::ctl

#endif  // KVKEEP_CLIENT_KVKEEPCTL_TENANT_H_
