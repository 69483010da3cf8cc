// ReadKV replies that reference page memory instead of copying it (docs/architecture.md, "Reply
// pins"). A ReadChunk's key and value bytes are views: into the pages themselves on backends
// whose memory the host can read in place (the CPU backend), pinned in the pool until the last
// copy of `hold` goes (gRPC releases the reply's slices after writing them to the socket, or when
// the call ends); or into strings `hold` owns (the CUDA backend: device memory is copied out).
//
// What keeps the bytes right while a reply references them:
//   - a page freed meanwhile (Drop, Spill, pool-pressure eviction, the pages Compress empties,
//     a released shared prefix) is retired, not freed: its bytes and its arena stay until the
//     last pin goes (PagePool::Free);
//   - Compress moves kept tokens inside the sequence's pages: it first waits, holding the
//     sequence's lock exclusively (no new reply can pin its pages), until no reply pins them
//     (AwaitNoReplyPins), and answers UNAVAILABLE when a reply is stuck past the wait.
//   - Writes into the same slots (WriteKV, WriteInPlace) may show in a reply sent after them, as
//     in any read concurrent with writes of the same slots.
//
//   ReadChunk chunk;
//   ASSIGN_OR_RETURN(bool more, cursor->NextReferenced(&chunk));
//   SerializeKvChunkRefs(chunk.header, chunk.keys, chunk.values, chunk.hold, &buffer);
//
// Thread-safe as PagePool is; a ReadChunk is a plain value.
#ifndef KVKEEP_SERVICE_ENGINE_REPLY_PINS_H_
#define KVKEEP_SERVICE_ENGINE_REPLY_PINS_H_

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "absl/time/time.h"
#include "kvkeep/v1/kvcache.pb.h"
#include "service/engine/sequence.h"
#include "service/pool/page_pool.h"

namespace kvkeep {

struct ReadChunk {
  v1::KvChunk header;                     // every field but keys and values
  std::vector<absl::string_view> keys;    // concatenated in order: the chunk's keys
  std::vector<absl::string_view> values;
  std::shared_ptr<const void> hold;       // keeps every view valid while a copy lives

  void Clear() {
    header.Clear();
    keys.clear();
    values.clear();
    hold.reset();
  }
};

// Where a bulk-channel write's bytes go (CacheEngine::PinWriteTargets): the page memory of its
// keys and of its values, in token order, pinned as a reply's pages are (so a page freed meanwhile
// is retired and never handed to anyone else while the bytes arrive) until `hold` goes.
struct WriteTargets {
  std::vector<absl::Span<char>> keys;
  std::vector<absl::Span<char>> values;
  std::shared_ptr<const void> hold;
};

// Pins `pages` (pages the caller holds, under their sequence's lock) and returns the holder that
// unpins them when its last copy goes. `pool` must outlive the holder.
std::shared_ptr<const void> PinPages(PagePool* pool, std::vector<uint64_t> pages);

// How long Compress waits for replies that still reference the sequence's pages.
inline constexpr absl::Duration kCompressWaitForReplies = absl::Seconds(2);

// OK when no reply pins the sequence's own pages (its shared prefix pages are never written),
// after waiting up to `timeout`; UNAVAILABLE otherwise, saying why and what to do.
absl::Status AwaitNoReplyPins(const PagePool& pool, Sequence& seq, absl::Duration timeout)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq.mu);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_REPLY_PINS_H_
