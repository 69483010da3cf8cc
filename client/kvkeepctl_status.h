// kvkeepctl's daemon-wide views: `status` (the daemon at a glance), `top` (per-tenant usage,
// polled) and `pool watermarks` (shown, or set). Each returns kvkeepctl's exit status.
#ifndef KVKEEP_CLIENT_KVKEEPCTL_STATUS_H_
#define KVKEEP_CLIENT_KVKEEPCTL_STATUS_H_

#include "client/kvkeepctl_context.h"

namespace kvkeep::ctl {

int RunStatus(Ctx& c);
// Until --iterations refreshes are printed (0: until interrupted), --interval seconds apart.
int RunTop(Ctx& c);
int RunPool(Ctx& c);

}  // namespace kvkeep::ctl

#endif  // KVKEEP_CLIENT_KVKEEPCTL_STATUS_H_
