// The sink of a streamed restore: a spilled sequence's pages go from the spill store's read
// buffers straight into the device pages allocated for them (SpillStore::ReadInto), so a restore
// never holds a copy of the sequence in host memory.
//
//   RestoreSink sink(geometry, table.heads(), pages, &pool, backend);   // pages allocated first
//   RETURN_IF_ERROR(store->ReadInto(tenant, id, &sink));   // verified pages written as they come
//   RETURN_IF_ERROR(sink.Install(&table));                 // only now does the table see them
//
// Guarantees: Begin() checks the spilled layout against the sequence's model (head count, page
// size, pages per head, positions per head) and the number of pages allocated - DATA_LOSS names
// the mismatch - and resolves every page's destination before any byte is read. Page() writes
// one verified page into its destination. The table is untouched until Install(), which the
// caller runs only when the whole read succeeded; on any error the caller frees the pages and the
// sequence stays spilled, so a half-written restore is never visible.
//
// Threads: Begin() and Install() on the restoring thread; Page() from the store's read threads
// concurrently, for different pages. The destinations are written in Begin() and only read
// afterwards (the read threads start after Begin() returns), so they need no lock.
#ifndef KVKEEP_SERVICE_ENGINE_RESTORE_SINK_H_
#define KVKEEP_SERVICE_ENGINE_RESTORE_SINK_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "gpu/backend.h"
#include "service/engine/model_layout.h"
#include "service/engine/sequence_table.h"
#include "service/pool/page_pool.h"
#include "service/storage/spill_store.h"

namespace kvkeep {

class RestoreSink : public SpillPageSink {
 public:
  // `pages`: the pages allocated for the restore (geometry.page_bytes each), handed to the heads
  // in order. `sequence` only names it in errors. Everything must outlive the sink.
  RestoreSink(const PageGeometry& geometry, uint32_t heads, const std::vector<uint64_t>& pages,
              const PagePool* pool, Backend* backend, std::string sequence);

  absl::Status Begin(SpillLayout& layout) override;
  absl::Status Page(uint32_t head, uint32_t page, absl::string_view bytes) override;

  // After a successful read: restores every head of `table` (which must be empty) and its next
  // position. An error leaves heads restored so far; the caller then releases the table.
  absl::Status Install(SequenceTable* table);

 private:
  struct Destination {
    Arena* arena = nullptr;
    uint64_t offset = 0;
  };

  const PageGeometry geometry_;
  const uint32_t heads_;
  const std::vector<uint64_t>& pages_;
  const PagePool* const pool_;
  Backend* const backend_;
  const std::string sequence_;
  // Set by Begin(), read-only afterwards.
  std::vector<std::vector<Destination>> destinations_;  // [head][page]
  std::vector<uint32_t> counts_;
  std::vector<std::vector<int32_t>> positions_;
  int64_t next_position_ = 0;
  bool begun_ = false;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_RESTORE_SINK_H_
