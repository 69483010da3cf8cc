// The operator API (kvkeep.v1.Admin): admin token only. Handlers turn requests into CacheEngine
// calls through the reactor helpers the worker API uses (service/rpc/reactors.h); disk and
// scoring work runs on the executor.
//
// Thread-safe (the members are constant; the engine is thread-safe).
#ifndef KVKEEP_SERVICE_RPC_ADMIN_SERVICE_H_
#define KVKEEP_SERVICE_RPC_ADMIN_SERVICE_H_

#include <string>

#include "kvkeep/v1/admin.grpc.pb.h"
#include "service/engine/cache_engine.h"
#include "service/executor.h"
#include "service/rpc/reactors.h"

namespace kvkeep {

class AdminService final : public v1::Admin::CallbackService {
 public:
  // `engine` and `executor` (disk work) must outlive the service.
  AdminService(CacheEngine* engine, Executor* executor, std::string admin_token_hash);

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
  // Fleet tier (docs/fleet.md).
  grpc::ServerUnaryReactor* SetGroupSecret(grpc::CallbackServerContext* context,
                                           const v1::SetGroupSecretRequest* request,
                                           v1::SetGroupSecretReply* reply) override;
  grpc::ServerUnaryReactor* GetFleetStatus(grpc::CallbackServerContext* context,
                                           const v1::GetFleetStatusRequest* request,
                                           v1::FleetStatus* reply) override;

 private:
  // The caller as logs name it once the admin token is checked.
  static constexpr char kAdminCaller[] = "(admin)";

  CacheEngine* const engine_;
  const std::string admin_token_hash_;
  const UnaryCalls unary_;  // admits the admin token only
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_RPC_ADMIN_SERVICE_H_
