// kvkeepctl's eviction policies: the policy flags (--scorer, --keep-ratio ...; PolicyFlags() in
// kvkeepctl_commands.h) read into a wire Policy, a Policy printed with its defaults, and the
// `policy show / set / validate` commands.
//
//   v1::Policy p;
//   std::string error;
//   if (!ctl::PolicyFromFlags(c.args, &p, &error)) return ctl::Fail(error);
#ifndef KVKEEP_CLIENT_KVKEEPCTL_POLICY_H_
#define KVKEEP_CLIENT_KVKEEPCTL_POLICY_H_

#include <string>

#include "client/kvkeepctl_context.h"
#include "kvkeep/v1/admin.pb.h"

namespace kvkeep::ctl {

// Sets the fields of *p whose flags `args` gives; false with a usage error in *error when a
// number does not parse (fields set before it stay set: the caller then sends nothing).
bool PolicyFromFlags(const Args& args, v1::Policy* p, std::string* error);
// Prints every field as a two-column table, unset ones as their defaults.
void PrintPolicy(const v1::Policy& p);

// `policy SUB TENANT ...` (SUB: show, set, validate); kvkeepctl's exit status.
int RunPolicy(Ctx& c, const std::string& sub);

}  // namespace kvkeep::ctl

#endif  // KVKEEP_CLIENT_KVKEEPCTL_POLICY_H_
