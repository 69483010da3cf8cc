#include "service/rpc/admin_service.h"

#include "common/grpc_status.h"
#include "service/rpc/request_auth.h"

namespace kvkeep {

template <typename Reply, typename Fn>
grpc::ServerUnaryReactor* AdminService::Unary(grpc::CallbackServerContext* context, Reply* reply,
                                              Fn fn) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status auth = AuthenticateAdmin(*context, *engine_, admin_token_hash_);
  if (!auth.ok()) {
    reactor->Finish(ToGrpcStatus(auth));
    return reactor;
  }
  absl::StatusOr<Reply> result = fn();
  if (result.ok()) *reply = std::move(*result);
  reactor->Finish(ToGrpcStatus(result.status()));
  return reactor;
}

template <typename Reply, typename Fn>
grpc::ServerUnaryReactor* AdminService::Offload(grpc::CallbackServerContext* context, Reply* reply,
                                                Fn fn) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status auth = AuthenticateAdmin(*context, *engine_, admin_token_hash_);
  if (!auth.ok()) {
    reactor->Finish(ToGrpcStatus(auth));
    return reactor;
  }
  executor_->Schedule([reactor, reply, fn = std::move(fn)] {
    absl::StatusOr<Reply> result = fn();
    if (result.ok()) *reply = std::move(*result);
    reactor->Finish(ToGrpcStatus(result.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::GetStatus(grpc::CallbackServerContext* context,
                                                  const v1::GetStatusRequest*,
                                                  v1::DaemonStatus* reply) {
  return Unary(context, reply, [&] { return absl::StatusOr<v1::DaemonStatus>(engine_->Status()); });
}

grpc::ServerUnaryReactor* AdminService::CreateTenant(grpc::CallbackServerContext* context,
                                                     const v1::CreateTenantRequest* request,
                                                     v1::CreateTenantReply* reply) {
  return Unary(context, reply, [&] { return engine_->CreateTenant(*request); });
}

grpc::ServerUnaryReactor* AdminService::ListTenants(grpc::CallbackServerContext* context,
                                                    const v1::ListTenantsRequest*,
                                                    v1::ListTenantsReply* reply) {
  return Unary(context, reply,
               [&] { return absl::StatusOr<v1::ListTenantsReply>(engine_->ListTenants()); });
}

grpc::ServerUnaryReactor* AdminService::DeleteTenant(grpc::CallbackServerContext* context,
                                                     const v1::DeleteTenantRequest* request,
                                                     v1::DeleteTenantReply* reply) {
  return Unary(context, reply,
               [&] { return engine_->DeleteTenant(request->name(), request->force()); });
}

grpc::ServerUnaryReactor* AdminService::SetQuota(grpc::CallbackServerContext* context,
                                                 const v1::SetQuotaRequest* request,
                                                 v1::TenantInfo* reply) {
  return Unary(context, reply, [&] { return engine_->SetQuota(*request); });
}

grpc::ServerUnaryReactor* AdminService::SetPolicy(grpc::CallbackServerContext* context,
                                                  const v1::SetPolicyRequest* request,
                                                  v1::Policy* reply) {
  return Unary(context, reply, [&] { return engine_->SetPolicy(*request); });
}

grpc::ServerUnaryReactor* AdminService::GetPolicy(grpc::CallbackServerContext* context,
                                                  const v1::GetPolicyRequest* request,
                                                  v1::Policy* reply) {
  return Unary(context, reply, [&] { return engine_->GetPolicy(request->tenant()); });
}

grpc::ServerUnaryReactor* AdminService::ListSequences(grpc::CallbackServerContext* context,
                                                      const v1::ListSequencesRequest* request,
                                                      v1::ListSequencesReply* reply) {
  return Unary(context, reply, [&] {
    return absl::StatusOr<v1::ListSequencesReply>(engine_->ListSequences(request->tenant()));
  });
}

grpc::ServerUnaryReactor* AdminService::SpillSequence(grpc::CallbackServerContext* context,
                                                      const v1::SequenceRef* request,
                                                      v1::SpillReply* reply) {
  return Offload(context, reply, [this, request] { return engine_->AdminSpill(*request); });
}

grpc::ServerUnaryReactor* AdminService::RestoreSequence(grpc::CallbackServerContext* context,
                                                        const v1::SequenceRef* request,
                                                        v1::SequenceInfo* reply) {
  return Offload(context, reply, [this, request] { return engine_->AdminRestore(*request); });
}

grpc::ServerUnaryReactor* AdminService::DropSequence(grpc::CallbackServerContext* context,
                                                     const v1::SequenceRef* request,
                                                     v1::DropReply* reply) {
  return Offload(context, reply, [this, request] { return engine_->AdminDrop(*request); });
}

grpc::ServerUnaryReactor* AdminService::SetWatermarks(grpc::CallbackServerContext* context,
                                                      const v1::Watermarks* request,
                                                      v1::Watermarks* reply) {
  return Offload(context, reply, [this, request] { return engine_->SetWatermarks(*request); });
}

grpc::ServerUnaryReactor* AdminService::GetSequence(grpc::CallbackServerContext* context,
                                                    const v1::SequenceRef* request,
                                                    v1::SequenceDetail* reply) {
  return Unary(context, reply, [&] { return engine_->AdminGetSequence(*request); });
}

grpc::ServerUnaryReactor* AdminService::CompressSequence(
    grpc::CallbackServerContext* context, const v1::CompressSequenceRequest* request,
    v1::CompressReply* reply) {
  // Scoring and compaction: on the executor, as the worker's Compress.
  return Offload(context, reply, [this, request] { return engine_->AdminCompress(*request); });
}

grpc::ServerUnaryReactor* AdminService::ValidatePolicy(grpc::CallbackServerContext* context,
                                                       const v1::SetPolicyRequest* request,
                                                       v1::ValidatePolicyReply* reply) {
  return Unary(context, reply, [&] { return engine_->ValidatePolicy(*request); });
}

}  // namespace kvkeep
