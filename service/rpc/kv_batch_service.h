// kvkeep.v1.KvBatch: the bytes path with several chunks per message (proto/kvkeep/v1/
// kv_batch.proto). Raw methods (KvChunkBatch parsed from and serialised into the gRPC buffers,
// service/rpc/kv_wire.h) that KvCacheService serves: same authentication, limits and engine.
//
// Thread-safe as KvCacheService is.
#ifndef KVKEEP_SERVICE_RPC_KV_BATCH_SERVICE_H_
#define KVKEEP_SERVICE_RPC_KV_BATCH_SERVICE_H_

#include "kvkeep/v1/kv_batch.grpc.pb.h"
#include "service/rpc/kvcache_service.h"

namespace kvkeep {

class KvBatchService final
    : public v1::KvBatch::WithRawCallbackMethod_WriteKVBatch<
          v1::KvBatch::WithRawCallbackMethod_ReadKVBatch<v1::KvBatch::CallbackService>> {
 public:
  // `kvcache` must outlive the service.
  explicit KvBatchService(KvCacheService* kvcache) : kvcache_(kvcache) {}

  grpc::ServerReadReactor<grpc::ByteBuffer>* WriteKVBatch(grpc::CallbackServerContext* context,
                                                          grpc::ByteBuffer* reply) override {
    return kvcache_->WriteKVBatch(context, reply);
  }
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ReadKVBatch(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) override {
    return kvcache_->ReadKVBatch(context, request);
  }

 private:
  KvCacheService* const kvcache_;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_RPC_KV_BATCH_SERVICE_H_
