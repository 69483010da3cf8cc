#include "service/fleet/open_pipeline.h"

#include <algorithm>
#include <utility>

#include "service/fleet/page_value.h"
#include "service/observability/log.h"

namespace kvkeep::fleet {

std::unique_ptr<char[]> ValueBufferCache::Take(size_t bytes) {
  {
    absl::MutexLock lock(&mu_);
    if (kept_bytes_each_ == bytes && !kept_.empty()) {
      std::unique_ptr<char[]> buffer = std::move(kept_.back());
      kept_.pop_back();
      return buffer;
    }
  }
  return std::unique_ptr<char[]>(new char[bytes]);
}

void ValueBufferCache::Give(std::unique_ptr<char[]> buffer, size_t bytes) {
  absl::MutexLock lock(&mu_);
  if (kept_bytes_each_ != bytes) {
    kept_.clear();  // the newest size wins: one model's values at a time are worth keeping
    kept_bytes_each_ = bytes;
  }
  if (kept_.size() < max_kept_) kept_.push_back(std::move(buffer));
}

OpenPipeline::OpenPipeline(const FleetScope& scope, absl::Span<const std::string> key_names,
                           PayloadWriter& writer, OpenPipelineOptions options,
                           ValueBufferCache* buffers)
    : scope_(scope),
      key_names_(key_names),
      writer_(writer),
      options_{options.threads, std::max<size_t>(1, options.slots)},
      buffers_(buffers),
      value_bytes_(scope.shape.payload_bytes() + kPageValueOverheadBytes),
      sinks_(key_names.size()),
      slot_buffers_(options_.slots),
      slot_busy_(options_.slots, false),
      pages_(key_names.size()) {
  for (size_t i = 0; i < sinks_.size(); ++i) {
    sinks_[i].pipeline = this;
    sinks_[i].page = i;
  }
}

OpenPipeline::~OpenPipeline() {
  Finish();
  std::vector<std::thread> helpers;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    helpers.swap(helpers_);
  }
  for (std::thread& helper : helpers) helper.join();
  for (std::unique_ptr<char[]>& buffer : slot_buffers_) {
    if (buffer != nullptr) buffers_->Give(std::move(buffer), value_bytes_);
  }
}

char* OpenPipeline::BufferFor(size_t page, size_t length) {
  absl::MutexLock lock(&mu_);
  if (length != value_bytes_) {
    pages_[page].end = PageEnd::kWrongSize;  // dropped unread: never opened, never served
    return nullptr;
  }
  pages_[page].end = PageEnd::kPending;
  std::unique_ptr<char[]>& buffer = slot_buffers_[page % options_.slots];
  if (buffer == nullptr) buffer = buffers_->Take(value_bytes_);
  return buffer.get();
}

void OpenPipeline::Submit(size_t page) {
  if (options_.threads == 0) {  // opened here, on the receiving thread: no hand-over
    {
      absl::MutexLock lock(&mu_);
      slot_busy_[page % options_.slots] = true;
      ++opening_;
    }
    Open(page);
    return;
  }
  absl::MutexLock lock(&mu_);
  slot_busy_[page % options_.slots] = true;
  queue_.push_back(page);
  if (queue_.size() > idle_helpers_ && helpers_.size() < options_.threads) {
    helpers_.emplace_back([this] { HelperLoop(); });  // it waits for mu_ to take the page
  }
}

void OpenPipeline::HelperLoop() {
  while (true) {
    size_t page = 0;
    {
      absl::MutexLock lock(&mu_);
      ++idle_helpers_;
      auto work_or_stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !queue_.empty() || stopping_;
      };
      mu_.Await(absl::Condition(&work_or_stop));
      --idle_helpers_;
      if (queue_.empty()) return;  // stopping
      page = queue_.front();
      queue_.pop_front();
      ++opening_;
    }
    Open(page);
  }
}

void OpenPipeline::Open(size_t page) {
  const size_t slot = page % options_.slots;
  const absl::string_view value(slot_buffers_[slot].get(), value_bytes_);
  absl::StatusOr<PageValueVerdict> verdict = OpenPageValueInto(
      value, scope_.shape, scope_.layout_hash, key_names_[page], scope_.keys->value_key,
      [this, page](uint64_t offset, size_t size) {
        return writer_.Destination(page, offset, size);
      },
      [this, page](uint64_t offset, absl::string_view bytes) {
        return writer_.Write(page, offset, bytes);
      });
  if (!verdict.ok()) {
    log::Error("fleet.payload_write_failed",
               {{"group", scope_.group}, {"page", page}, {"status", verdict.status()}});
  }
  absl::MutexLock lock(&mu_);
  PageState& state = pages_[page];
  if (!verdict.ok()) {
    state.end = PageEnd::kWriteFailed;
  } else {
    state.verdict = *verdict;
    state.end = *verdict == PageValueVerdict::kOk ? PageEnd::kOk : PageEnd::kRefused;
  }
  refused_ = refused_ || state.end != PageEnd::kOk;
  slot_busy_[slot] = false;
  --opening_;
}

bool OpenPipeline::SlotsFree(size_t first, size_t count) const {
  for (size_t k = 0; k < count && k < options_.slots; ++k) {
    if (slot_busy_[(first + k) % options_.slots]) return false;
  }
  return true;
}

void OpenPipeline::WaitForSlots(size_t first, size_t count) {
  absl::MutexLock lock(&mu_);
  auto slots_free = [this, first, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return SlotsFree(first, count);
  };
  mu_.Await(absl::Condition(&slots_free));
}

bool OpenPipeline::AnyRefused() const {
  absl::MutexLock lock(&mu_);
  return refused_;
}

void OpenPipeline::Finish() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(this, &OpenPipeline::QueueDrained));
}

OpenPipeline::PageEnd OpenPipeline::end(size_t page) const {
  absl::MutexLock lock(&mu_);
  return pages_[page].end;
}

PageValueVerdict OpenPipeline::verdict(size_t page) const {
  absl::MutexLock lock(&mu_);
  return pages_[page].verdict;
}

}  // namespace kvkeep::fleet
