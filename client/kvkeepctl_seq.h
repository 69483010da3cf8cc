// kvkeepctl's sequence commands: `seq list / show / compress / spill / restore / drop`.
#ifndef KVKEEP_CLIENT_KVKEEPCTL_SEQ_H_
#define KVKEEP_CLIENT_KVKEEPCTL_SEQ_H_

#include <string>

#include "client/kvkeepctl_context.h"

namespace kvkeep::ctl {

// `seq SUB ...`; kvkeepctl's exit status.
int RunSeq(Ctx& c, const std::string& sub);

}  // namespace kvkeep::ctl

#endif  // KVKEEP_CLIENT_KVKEEPCTL_SEQ_H_
