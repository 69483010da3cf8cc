#include "service/rpc/request_auth.h"

#include "service/token_auth.h"

namespace kvkeep {

std::string CallToken(const grpc::CallbackServerContext& context) {
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return "";
  return BearerToken(absl::string_view(it->second.data(), it->second.size()));
}

absl::StatusOr<std::string> AuthenticateWorker(const grpc::CallbackServerContext& context,
                                               const CacheEngine& engine,
                                               const std::string& admin_token_hash) {
  std::string token = CallToken(context);
  auto tenant = engine.AuthenticateTenant(token);
  if (!tenant.ok() && !token.empty() && ConstantTimeEquals(HashToken(token), admin_token_hash)) {
    return absl::PermissionDeniedError(
        "the admin token cannot call the worker API; use a tenant token");
  }
  return tenant;
}

absl::Status AuthenticateAdmin(const grpc::CallbackServerContext& context,
                               const CacheEngine& engine, const std::string& admin_token_hash) {
  std::string token = CallToken(context);
  if (token.empty()) {
    return absl::UnauthenticatedError(
        "missing bearer token: send metadata \"authorization: Bearer <admin token>\"");
  }
  if (ConstantTimeEquals(HashToken(token), admin_token_hash)) return absl::OkStatus();
  if (engine.AuthenticateTenant(token).ok()) {
    return absl::PermissionDeniedError("a tenant token cannot call the admin API");
  }
  return absl::UnauthenticatedError("unknown admin token");
}

}  // namespace kvkeep
