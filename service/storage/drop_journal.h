// The spill tier's drop journal: a small file, written in full when it is created, into which a
// Drop records the manifest key of a spilled sequence when RocksDB cannot take the delete (disk
// full, read-only after a failed write). Overwriting bytes that already exist needs no new disk
// space, so recording a drop works on a full disk; the store then hides the sequence at once and
// deletes its keys from RocksDB once the database accepts writes again (also after a restart).
//
//   ASSIGN_OR_RETURN(auto journal, DropJournal::Open(path));     // reads the drops left pending
//   RETURN_IF_ERROR(journal->Record("tenant/seq"));              // synced: survives a crash
//   ... the delete reached RocksDB ...
//   RETURN_IF_ERROR(journal->Clear("tenant/seq"));
//
// Layout: kSlots fixed slots of kSlotBytes, each either zero or [magic u32][key length u32]
// [XXH64 of the key u64][key]; a slot whose checksum does not match reads as empty. A key
// longer than a slot, or a full journal, is RESOURCE_EXHAUSTED (the caller then fails the drop
// as before). I/O errors are UNAVAILABLE. The file is created mode 0600.
//
// Thread-safe: mu_ guards the slot map and the file writes.
#ifndef KVKEEP_SERVICE_STORAGE_DROP_JOURNAL_H_
#define KVKEEP_SERVICE_STORAGE_DROP_JOURNAL_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace kvkeep {

class DropJournal {
 public:
  static constexpr size_t kSlotBytes = 512;
  static constexpr size_t kSlots = 512;  // 256 KiB

  // Opens (creating and filling with zeros when missing or short) the journal at `path`.
  static absl::StatusOr<std::unique_ptr<DropJournal>> Open(const std::string& path);
  ~DropJournal();
  DropJournal(const DropJournal&) = delete;
  DropJournal& operator=(const DropJournal&) = delete;

  // Keys recorded and not cleared.
  std::vector<std::string> Pending() const;
  // Records `key` (no-op when already recorded), synced.
  absl::Status Record(absl::string_view key);
  // Forgets `key` (no-op when not recorded), synced.
  absl::Status Clear(absl::string_view key);

 private:
  DropJournal(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  absl::Status WriteSlot(size_t slot, const std::string& bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  const int fd_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, size_t> slot_of_ ABSL_GUARDED_BY(mu_);  // key -> slot
  std::vector<bool> used_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_STORAGE_DROP_JOURNAL_H_
