#include "client/kvkeepctl_context.h"

#include <cstdio>

namespace kvkeep::ctl {

int Fail(const std::string& message, int code) {
  std::fprintf(stderr, "kvkeepctl: %s\n", message.c_str());
  return code;
}

int FailStatus(const absl::Status& status) {
  std::fprintf(stderr, "kvkeepctl: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return 1;
}

}  // namespace kvkeep::ctl
