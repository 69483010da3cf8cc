// Who is calling: the bearer token of a gRPC call, checked against tenants or the admin token.
#ifndef KVKEEP_SERVICE_RPC_REQUEST_AUTH_H_
#define KVKEEP_SERVICE_RPC_REQUEST_AUTH_H_

#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"
#include "service/engine/cache_engine.h"

namespace kvkeep {

// The token in the call's "authorization: Bearer <token>" metadata; empty when absent.
std::string CallToken(const grpc::CallbackServerContext& context);

// The calling tenant. UNAUTHENTICATED without a valid tenant token; PERMISSION_DENIED for the
// admin token (the worker API is for tenants).
absl::StatusOr<std::string> AuthenticateWorker(const grpc::CallbackServerContext& context,
                                               const CacheEngine& engine,
                                               const std::string& admin_token_hash);

// OK for the admin token. PERMISSION_DENIED for a tenant token, UNAUTHENTICATED otherwise.
absl::Status AuthenticateAdmin(const grpc::CallbackServerContext& context,
                               const CacheEngine& engine, const std::string& admin_token_hash);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_RPC_REQUEST_AUTH_H_
