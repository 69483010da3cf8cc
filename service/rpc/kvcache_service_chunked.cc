// KvCacheService: the chunked table replies (CreateSequenceStream, AllocatePagesStream,
// CompressStream, RestoreStream, GetSequenceStream, AcquireStream). Each runs the same engine call
// as its unary twin, where the twin runs it, then splits the reply below the message limit
// (common/table_chunks.h); the contract is in docs/api.md "Chunked replies".
#include <utility>
#include <vector>

#include "common/status_macros.h"
#include "common/table_chunks.h"
#include "service/rpc/kvcache_service.h"

namespace kvkeep {

grpc::ServerWriteReactor<v1::PageTable>* KvCacheService::CreateSequenceStream(
    grpc::CallbackServerContext* context, const v1::CreateSequenceRequest* request) {
  return new ChunkedReplyWriter<v1::PageTable>(
      FullName("CreateSequenceStream"), Admit(context, request->session_id()),
      RunOn::kCallThread, executor_,
      [this, request](const std::string& t) -> absl::StatusOr<std::vector<v1::PageTable>> {
        ASSIGN_OR_RETURN(v1::PageTable table,
                         engine_->CreateSequence(t, *request, /*chunked_reply=*/true));
        return SplitPageTable(std::move(table), ReplyBudget());
      });
}

grpc::ServerWriteReactor<v1::PageTableDelta>* KvCacheService::AllocatePagesStream(
    grpc::CallbackServerContext* context, const v1::AllocateRequest* request) {
  return new ChunkedReplyWriter<v1::PageTableDelta>(
      FullName("AllocatePagesStream"), Admit(context, request->session_id()),
      RunOn::kCallThread, executor_,
      [this, request](const std::string& t) -> absl::StatusOr<std::vector<v1::PageTableDelta>> {
        ASSIGN_OR_RETURN(v1::PageTableDelta delta,
                         engine_->AllocatePages(t, *request, /*chunked_reply=*/true));
        return SplitPageTableDelta(std::move(delta), ReplyBudget());
      });
}

grpc::ServerWriteReactor<v1::CompressReply>* KvCacheService::CompressStream(
    grpc::CallbackServerContext* context, const v1::CompressRequest* request) {
  return new ChunkedReplyWriter<v1::CompressReply>(
      FullName("CompressStream"), Admit(context, request->session_id()), RunOn::kExecutor,
      executor_,
      [this, request](const std::string& t) -> absl::StatusOr<std::vector<v1::CompressReply>> {
        ASSIGN_OR_RETURN(v1::CompressReply reply, engine_->Compress(t, *request));
        return SplitCompressReply(std::move(reply), ReplyBudget());
      });
}

grpc::ServerWriteReactor<v1::PageTable>* KvCacheService::RestoreStream(
    grpc::CallbackServerContext* context, const v1::RestoreRequest* request) {
  return new ChunkedReplyWriter<v1::PageTable>(
      FullName("RestoreStream"), Admit(context, request->session_id()), RunOn::kExecutor,
      executor_,
      [this, request](const std::string& t) -> absl::StatusOr<std::vector<v1::PageTable>> {
        ASSIGN_OR_RETURN(v1::PageTable table, engine_->Restore(t, *request));
        return SplitPageTable(std::move(table), ReplyBudget());
      });
}

grpc::ServerWriteReactor<v1::PageTable>* KvCacheService::GetSequenceStream(
    grpc::CallbackServerContext* context, const v1::GetSequenceRequest* request) {
  return new ChunkedReplyWriter<v1::PageTable>(
      FullName("GetSequenceStream"), Admit(context, ""), RunOn::kCallThread, executor_,
      [this, request](const std::string& t) -> absl::StatusOr<std::vector<v1::PageTable>> {
        ASSIGN_OR_RETURN(v1::PageTable table,
                         engine_->GetSequence(t, request->sequence_id(),
                                              request->with_positions()));
        return SplitPageTable(std::move(table), ReplyBudget());
      });
}

grpc::ServerWriteReactor<v1::PageTable>* KvCacheService::AcquireStream(
    grpc::CallbackServerContext* context, const v1::AcquireRequest* request) {
  // May restore a spilled sequence from disk.
  return new ChunkedReplyWriter<v1::PageTable>(
      FullName("AcquireStream"), Admit(context, request->session_id()), RunOn::kExecutor,
      executor_,
      [this, request](const std::string& t) -> absl::StatusOr<std::vector<v1::PageTable>> {
        ASSIGN_OR_RETURN(v1::PageTable table, engine_->Acquire(t, *request));
        return SplitPageTable(std::move(table), ReplyBudget());
      });
}

}  // namespace kvkeep
