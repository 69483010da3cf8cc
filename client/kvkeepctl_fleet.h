// kvkeepctl's fleet tier commands (docs/fleet.md): `group set-secret GROUP --from-file PATH` and
// `fleet status`. Each returns kvkeepctl's exit status (0 done, 1 the daemon refused or could not
// be reached, 2 a usage error: nothing sent).
#ifndef KVKEEP_CLIENT_KVKEEPCTL_FLEET_H_
#define KVKEEP_CLIENT_KVKEEPCTL_FLEET_H_

#include <string>

#include "client/admin_client.h"

namespace kvkeep::ctl {

// Reads the secret from `path` (all its bytes; one trailing newline is stripped, so `echo` and
// Kubernetes Secrets both work) and stores it; prints the group's fingerprint.
int RunGroupSetSecret(AdminClient& admin, const std::string& group, const std::string& path,
                      bool json);
// Prints the cluster as the daemon sees it and its fleet counters.
int RunFleetStatus(AdminClient& admin, bool json);

}  // namespace kvkeep::ctl

#endif  // KVKEEP_CLIENT_KVKEEPCTL_FLEET_H_
