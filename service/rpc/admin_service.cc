#include "service/rpc/admin_service.h"

#include "common/status_macros.h"
#include "service/rpc/request_auth.h"

namespace kvkeep {

AdminService::AdminService(CacheEngine* engine, Executor* executor, std::string admin_token_hash)
    : engine_(engine),
      admin_token_hash_(std::move(admin_token_hash)),
      unary_("kvkeep.v1.Admin", executor,
             [this](grpc::CallbackServerContext* context,
                    const std::string&) -> absl::StatusOr<std::string> {
               RETURN_IF_ERROR(AuthenticateAdmin(*context, *engine_, admin_token_hash_));
               return std::string(kAdminCaller);
             }) {}

grpc::ServerUnaryReactor* AdminService::GetStatus(grpc::CallbackServerContext* context,
                                                  const v1::GetStatusRequest*,
                                                  v1::DaemonStatus* reply) {
  return unary_.Inline(context, "GetStatus", reply,
                       [&] { return absl::StatusOr<v1::DaemonStatus>(engine_->Status()); });
}

grpc::ServerUnaryReactor* AdminService::CreateTenant(grpc::CallbackServerContext* context,
                                                     const v1::CreateTenantRequest* request,
                                                     v1::CreateTenantReply* reply) {
  return unary_.Inline(context, "CreateTenant", reply,
                       [&] { return engine_->CreateTenant(*request); });
}

grpc::ServerUnaryReactor* AdminService::ListTenants(grpc::CallbackServerContext* context,
                                                    const v1::ListTenantsRequest*,
                                                    v1::ListTenantsReply* reply) {
  return unary_.Inline(context, "ListTenants", reply, [&] {
    return absl::StatusOr<v1::ListTenantsReply>(engine_->ListTenants());
  });
}

grpc::ServerUnaryReactor* AdminService::DeleteTenant(grpc::CallbackServerContext* context,
                                                     const v1::DeleteTenantRequest* request,
                                                     v1::DeleteTenantReply* reply) {
  return unary_.Inline(context, "DeleteTenant", reply,
                       [&] { return engine_->DeleteTenant(request->name(), request->force()); });
}

grpc::ServerUnaryReactor* AdminService::SetQuota(grpc::CallbackServerContext* context,
                                                 const v1::SetQuotaRequest* request,
                                                 v1::TenantInfo* reply) {
  return unary_.Inline(context, "SetQuota", reply, [&] { return engine_->SetQuota(*request); });
}

grpc::ServerUnaryReactor* AdminService::SetPolicy(grpc::CallbackServerContext* context,
                                                  const v1::SetPolicyRequest* request,
                                                  v1::Policy* reply) {
  return unary_.Inline(context, "SetPolicy", reply, [&] { return engine_->SetPolicy(*request); });
}

grpc::ServerUnaryReactor* AdminService::GetPolicy(grpc::CallbackServerContext* context,
                                                  const v1::GetPolicyRequest* request,
                                                  v1::Policy* reply) {
  return unary_.Inline(context, "GetPolicy", reply,
                       [&] { return engine_->GetPolicy(request->tenant()); });
}

grpc::ServerUnaryReactor* AdminService::ListSequences(grpc::CallbackServerContext* context,
                                                      const v1::ListSequencesRequest* request,
                                                      v1::ListSequencesReply* reply) {
  return unary_.Inline(context, "ListSequences", reply, [&] {
    return absl::StatusOr<v1::ListSequencesReply>(engine_->ListSequences(request->tenant()));
  });
}

grpc::ServerUnaryReactor* AdminService::SpillSequence(grpc::CallbackServerContext* context,
                                                      const v1::SequenceRef* request,
                                                      v1::SpillReply* reply) {
  return unary_.Offload(context, "SpillSequence", reply,
                        [this, request] { return engine_->AdminSpill(*request); });
}

grpc::ServerUnaryReactor* AdminService::RestoreSequence(grpc::CallbackServerContext* context,
                                                        const v1::SequenceRef* request,
                                                        v1::SequenceInfo* reply) {
  return unary_.Offload(context, "RestoreSequence", reply,
                        [this, request] { return engine_->AdminRestore(*request); });
}

grpc::ServerUnaryReactor* AdminService::DropSequence(grpc::CallbackServerContext* context,
                                                     const v1::SequenceRef* request,
                                                     v1::DropReply* reply) {
  return unary_.Offload(context, "DropSequence", reply,
                        [this, request] { return engine_->AdminDrop(*request); });
}

grpc::ServerUnaryReactor* AdminService::SetWatermarks(grpc::CallbackServerContext* context,
                                                      const v1::Watermarks* request,
                                                      v1::Watermarks* reply) {
  return unary_.Offload(context, "SetWatermarks", reply,
                        [this, request] { return engine_->SetWatermarks(*request); });
}

grpc::ServerUnaryReactor* AdminService::GetSequence(grpc::CallbackServerContext* context,
                                                    const v1::SequenceRef* request,
                                                    v1::SequenceDetail* reply) {
  return unary_.Inline(context, "GetSequence", reply,
                       [&] { return engine_->AdminGetSequence(*request); });
}

grpc::ServerUnaryReactor* AdminService::CompressSequence(grpc::CallbackServerContext* context,
                                                         const v1::CompressSequenceRequest* request,
                                                         v1::CompressReply* reply) {
  // Scoring and compaction: on the executor, as the worker's Compress.
  return unary_.Offload(context, "CompressSequence", reply,
                        [this, request] { return engine_->AdminCompress(*request); });
}

grpc::ServerUnaryReactor* AdminService::ValidatePolicy(grpc::CallbackServerContext* context,
                                                       const v1::SetPolicyRequest* request,
                                                       v1::ValidatePolicyReply* reply) {
  return unary_.Inline(context, "ValidatePolicy", reply,
                       [&] { return engine_->ValidatePolicy(*request); });
}

grpc::ServerUnaryReactor* AdminService::SetGroupSecret(grpc::CallbackServerContext* context,
                                                       const v1::SetGroupSecretRequest* request,
                                                       v1::SetGroupSecretReply* reply) {
  return unary_.Offload(context, "SetGroupSecret", reply,
                        [this, request] { return engine_->SetGroupSecret(*request); });
}

grpc::ServerUnaryReactor* AdminService::GetFleetStatus(grpc::CallbackServerContext* context,
                                                       const v1::GetFleetStatusRequest* request,
                                                       v1::FleetStatus* reply) {
  return unary_.Offload(context, "GetFleetStatus", reply, [this] {
    return engine_->FleetStatus(absl::Now() + absl::Seconds(2));
  });
}

}  // namespace kvkeep
