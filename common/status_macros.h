// Small helpers for absl::Status plumbing. Abseil 20220623 (Debian 12) ships neither
// ABSL_RETURN_IF_ERROR nor ASSIGN_OR_RETURN, so they live here, once.
//
//   RETURN_IF_ERROR(pool.Reserve(n));
//   ASSIGN_OR_RETURN(auto arena, backend.CreateArena(bytes));
#ifndef KVKEEP_COMMON_STATUS_MACROS_H_
#define KVKEEP_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KVKEEP_CONCAT_INNER_(a, b) a##b
#define KVKEEP_CONCAT_(a, b) KVKEEP_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                     \
  do {                                            \
    ::absl::Status kvkeep_status_ = (expr);       \
    if (!kvkeep_status_.ok()) return kvkeep_status_; \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(KVKEEP_CONCAT_(kvkeep_statusor_, __LINE__), lhs, expr)

#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                           \
  if (!statusor.ok()) return statusor.status();     \
  lhs = std::move(statusor).value()

#endif  // KVKEEP_COMMON_STATUS_MACROS_H_
