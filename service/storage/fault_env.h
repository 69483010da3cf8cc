// A fault-injecting file system for storage tests: wraps the real (or an in-memory) FileSystem and,
// while a fault is switched on, makes RocksDB's writes, syncs or reads fail the way a full or
// broken disk would.
//
//   FaultEnv fault;                                   // wraps the default (POSIX) file system
//   SpillStore::Options o;  o.env = fault.env();
//   ...
//   fault.SetWriteFault(FaultEnv::Fault::kNoSpace);   // every Append/Sync now fails
//   EXPECT_THAT(store->Put(record), StatusIs(absl::StatusCode::kUnavailable));
//   fault.SetWriteFault(FaultEnv::Fault::kNone);      // the disk is back
//
// RocksDB (since 6.x) does all file I/O through Env::GetFileSystem(), so overriding
// Env::NewWritableFile alone would not be seen; the wrapper is a rocksdb::FileSystemWrapper turned
// into an Env with rocksdb::NewCompositeEnv.
//
// Faults apply to files opened before and after the switch (the check is made on every call).
// Thread-safe: the switches are atomics. Test-only; not linked into the daemon's code paths.
#ifndef KVKEEP_SERVICE_STORAGE_FAULT_ENV_H_
#define KVKEEP_SERVICE_STORAGE_FAULT_ENV_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "rocksdb/env.h"
#include "rocksdb/file_system.h"

namespace kvkeep {

class FaultEnv {
 public:
  enum class Fault {
    kNone,
    kIoError,  // IOStatus::IOError
    kNoSpace,  // IOStatus::NoSpace (ENOSPC)
  };

  // Wraps `base` (not owned, must outlive this object); nullptr means rocksdb::Env::Default().
  explicit FaultEnv(rocksdb::Env* base = nullptr);
  ~FaultEnv();
  FaultEnv(const FaultEnv&) = delete;
  FaultEnv& operator=(const FaultEnv&) = delete;

  // The Env to hand to RocksDB (owned by this object).
  rocksdb::Env* env() const { return env_.get(); }

  // Append / PositionedAppend / Sync / Fsync / RangeSync / Flush of writable files, and creation of
  // new writable files, fail with `fault`.
  void SetWriteFault(Fault fault);
  // Only Sync / Fsync / RangeSync fail (the bytes reach the OS, durability does not).
  void SetSyncFault(Fault fault);
  // Reads from files whose name ends with `suffix` (e.g. ".blob") return their bytes with one bit
  // flipped in every read; empty suffix switches it off.
  void SetReadCorruption(const std::string& suffix);

  // How many operations failed (or were corrupted) because of an injected fault.
  uint64_t injected() const;

  struct State;  // shared with the file wrappers

 private:
  std::shared_ptr<State> state_;
  std::unique_ptr<rocksdb::Env> env_;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_STORAGE_FAULT_ENV_H_
