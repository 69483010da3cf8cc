// The values of one fleet GET run, opened (checked and decrypted, page_value.h) on helper threads
// while the caller's thread goes on receiving the next ones, into the caller's PayloadWriter.
//
//   OpenPipeline pipeline(scope, names, writer, {.threads = 4, .slots = 16}, &buffers);
//   for each window [first, first + count) of the run:
//     pipeline.WaitForSlots(first, count);         // the buffers of those pages are free again
//     commands[i].sink = pipeline.SinkFor(i);      // GET replies land in the page's buffer and
//     client.Execute(commands, deadline);          //   are opened as soon as each is whole
//   pipeline.Finish();
//   pipeline.verdict(i) ...
//
// Each page's value is received into buffer slot (page % slots), straight from the socket
// (resp_reader.h); its sink refuses a value whose length is not the scope's value size (the
// bytes are dropped, the page is marked wrong_size: a corrupt value, never opened). Helper
// threads start on demand, at most `threads`.
//
// Thread-safe: sinks are called by the receiving threads (one per node when the cluster client
// reads nodes in parallel), opens run on the helpers; mu_ protects the queue, the per-page
// states, the slots' busy flags and the helper list.
#ifndef KVKEEP_SERVICE_FLEET_OPEN_PIPELINE_H_
#define KVKEEP_SERVICE_FLEET_OPEN_PIPELINE_H_

#include <cstddef>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "service/fleet/fleet_scope.h"
#include "service/fleet/fleet_tier.h"
#include "service/fleet/resp_reader.h"

namespace kvkeep::fleet {

// Value buffers kept between runs (so a run does not fault in fresh memory for every value).
// Thread-safe.
class ValueBufferCache {
 public:
  explicit ValueBufferCache(size_t max_kept) : max_kept_(max_kept) {}
  // A buffer of exactly `bytes` bytes (contents unspecified).
  std::unique_ptr<char[]> Take(size_t bytes);
  // Keeps `buffer` (of `bytes` bytes) for a later Take, up to max_kept buffers.
  void Give(std::unique_ptr<char[]> buffer, size_t bytes);

 private:
  const size_t max_kept_;
  absl::Mutex mu_;
  size_t kept_bytes_each_ ABSL_GUARDED_BY(mu_) = 0;  // buffers of another size are dropped
  std::vector<std::unique_ptr<char[]>> kept_ ABSL_GUARDED_BY(mu_);
};

struct OpenPipelineOptions {
  // Helper threads, at most. 0: no helpers, the receiving thread opens each value itself as soon
  // as it is whole (in its sink's Filled), while the next values wait in the socket buffers.
  size_t threads = 4;
  size_t slots = 16;   // value buffers (pages in flight: received, not yet opened)
};

class OpenPipeline {
 public:
  // How one page ended. kPending: no whole value arrived for it (nil, error, cut short).
  enum class PageEnd { kPending, kOk, kRefused, kWrongSize, kWriteFailed };

  // Borrows everything: it must all outlive the pipeline.
  OpenPipeline(const FleetScope& scope, absl::Span<const std::string> key_names,
               PayloadWriter& writer, OpenPipelineOptions options, ValueBufferCache* buffers);
  // Finishes (waits for every open) and gives the buffers back.
  ~OpenPipeline();
  OpenPipeline(const OpenPipeline&) = delete;
  OpenPipeline& operator=(const OpenPipeline&) = delete;

  // Waits until the slots of pages [first, first + count) are free (their previous pages opened).
  void WaitForSlots(size_t first, size_t count);
  // The sink of `page`'s GET reply (owned by the pipeline).
  BulkSink* SinkFor(size_t page) { return &sinks_[page]; }
  // True once some opened value did not verify (the run can stop asking).
  bool AnyRefused() const;
  // Waits until every value received so far is opened.
  void Finish();

  // After Finish: how `page` ended, and the verdict of an opened one (kOk for kOk).
  PageEnd end(size_t page) const;
  PageValueVerdict verdict(size_t page) const;

 private:
  class PageSink final : public BulkSink {
   public:
    char* Buffer(size_t length) override { return pipeline->BufferFor(page, length); }
    void Filled(size_t length) override { pipeline->Submit(page); }
    OpenPipeline* pipeline = nullptr;
    size_t page = 0;
  };
  struct PageState {
    PageEnd end = PageEnd::kPending;
    PageValueVerdict verdict = PageValueVerdict::kOk;
  };

  char* BufferFor(size_t page, size_t length);
  void Submit(size_t page);
  void HelperLoop();
  void Open(size_t page);
  bool SlotsFree(size_t first, size_t count) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool QueueDrained() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return queue_.empty() && opening_ == 0;
  }

  // Constant after construction
  const FleetScope& scope_;
  const absl::Span<const std::string> key_names_;
  PayloadWriter& writer_;
  const OpenPipelineOptions options_;
  ValueBufferCache* const buffers_;
  const size_t value_bytes_;
  std::vector<PageSink> sinks_;
  // A slot's buffer is written by the receiving thread only while the slot is not busy, and read
  // by one helper while it is; the hand-over goes through mu_.
  std::vector<std::unique_ptr<char[]>> slot_buffers_;

  mutable absl::Mutex mu_;
  std::deque<size_t> queue_ ABSL_GUARDED_BY(mu_);  // pages received, not yet taken
  std::vector<bool> slot_busy_ ABSL_GUARDED_BY(mu_);
  std::vector<PageState> pages_ ABSL_GUARDED_BY(mu_);
  size_t idle_helpers_ ABSL_GUARDED_BY(mu_) = 0;
  size_t opening_ ABSL_GUARDED_BY(mu_) = 0;
  bool refused_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Started by the receiving threads (one per node: cluster_client.h), joined by the destructor.
  std::vector<std::thread> helpers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_OPEN_PIPELINE_H_
