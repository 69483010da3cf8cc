// The operator API (kvkeep.v1.Admin): admin token only.
#ifndef KVKEEP_SERVICE_RPC_ADMIN_SERVICE_H_
#define KVKEEP_SERVICE_RPC_ADMIN_SERVICE_H_

#include <string>

#include "kvkeep/v1/admin.grpc.pb.h"
#include "service/engine/cache_engine.h"
#include "service/executor.h"

namespace kvkeep {

class AdminService final : public v1::Admin::CallbackService {
 public:
  // `engine` and `executor` (disk work) must outlive the service.
  AdminService(CacheEngine* engine, Executor* executor, std::string admin_token_hash)
      : engine_(engine), executor_(executor), admin_token_hash_(std::move(admin_token_hash)) {}

  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context,
                                      const v1::GetStatusRequest* request,
                                      v1::DaemonStatus* reply) override;
  grpc::ServerUnaryReactor* CreateTenant(grpc::CallbackServerContext* context,
                                         const v1::CreateTenantRequest* request,
                                         v1::CreateTenantReply* reply) override;
  grpc::ServerUnaryReactor* ListTenants(grpc::CallbackServerContext* context,
                                        const v1::ListTenantsRequest* request,
                                        v1::ListTenantsReply* reply) override;
  grpc::ServerUnaryReactor* DeleteTenant(grpc::CallbackServerContext* context,
                                         const v1::DeleteTenantRequest* request,
                                         v1::DeleteTenantReply* reply) override;
  grpc::ServerUnaryReactor* SetQuota(grpc::CallbackServerContext* context,
                                     const v1::SetQuotaRequest* request,
                                     v1::TenantInfo* reply) override;
  grpc::ServerUnaryReactor* SetPolicy(grpc::CallbackServerContext* context,
                                      const v1::SetPolicyRequest* request,
                                      v1::Policy* reply) override;
  grpc::ServerUnaryReactor* GetPolicy(grpc::CallbackServerContext* context,
                                      const v1::GetPolicyRequest* request,
                                      v1::Policy* reply) override;
  grpc::ServerUnaryReactor* ListSequences(grpc::CallbackServerContext* context,
                                          const v1::ListSequencesRequest* request,
                                          v1::ListSequencesReply* reply) override;
  grpc::ServerUnaryReactor* SpillSequence(grpc::CallbackServerContext* context,
                                          const v1::SequenceRef* request,
                                          v1::SpillReply* reply) override;
  grpc::ServerUnaryReactor* RestoreSequence(grpc::CallbackServerContext* context,
                                            const v1::SequenceRef* request,
                                            v1::SequenceInfo* reply) override;
  grpc::ServerUnaryReactor* DropSequence(grpc::CallbackServerContext* context,
                                         const v1::SequenceRef* request,
                                         v1::DropReply* reply) override;
  grpc::ServerUnaryReactor* SetWatermarks(grpc::CallbackServerContext* context,
                                          const v1::Watermarks* request,
                                          v1::Watermarks* reply) override;
  grpc::ServerUnaryReactor* GetSequence(grpc::CallbackServerContext* context,
                                        const v1::SequenceRef* request,
                                        v1::SequenceDetail* reply) override;
  grpc::ServerUnaryReactor* CompressSequence(grpc::CallbackServerContext* context,
                                             const v1::CompressSequenceRequest* request,
                                             v1::CompressReply* reply) override;
  grpc::ServerUnaryReactor* ValidatePolicy(grpc::CallbackServerContext* context,
                                           const v1::SetPolicyRequest* request,
                                           v1::ValidatePolicyReply* reply) override;

 private:
  template <typename Reply, typename Fn>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, Reply* reply, Fn fn);

  template <typename Reply, typename Fn>
  grpc::ServerUnaryReactor* Offload(grpc::CallbackServerContext* context, Reply* reply, Fn fn);

  CacheEngine* const engine_;
  Executor* const executor_;
  const std::string admin_token_hash_;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_RPC_ADMIN_SERVICE_H_
