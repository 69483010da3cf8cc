// The bounds `kvkeep-bench spill` (spill_bench.h) measures SpillStore against, on the same disk
// with the same bytes: raw RocksDB opened with the store's own options (SpillStore::MakeDbConfig),
// and one plain file written with writev + fdatasync and read with readv.
#ifndef KVKEEP_BENCH_SPILL_BASELINES_H_
#define KVKEEP_BENCH_SPILL_BASELINES_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rocksdb/db.h"
#include "service/storage/spill_store.h"

namespace kvkeep::bench {

// A RocksDB with the store's "pages" column family options, nothing of the store around it.
class RawDb {
 public:
  static absl::StatusOr<std::unique_ptr<RawDb>> Open(const SpillStore::Options& o);
  ~RawDb();
  rocksdb::DB* db() { return db_.get(); }
  rocksdb::ColumnFamilyHandle* pages() { return handles_[1]; }

 private:
  RawDb() = default;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
};

// Every page of `r` under `<prefix><head:08x>/<page:08x>` in one synced WriteBatch.
absl::Status RawPut(RawDb* raw, const std::string& prefix, const SpillRecord& r, uint64_t bytes);
// MultiGet in batches of 1024 keys, each value copied into its own std::string.
absl::Status RawGet(RawDb* raw, const std::string& prefix, const SpillRecord& shape,
                    std::vector<std::vector<std::string>>* out);
absl::Status RawDelete(RawDb* raw, const std::string& prefix, const SpillRecord& r);

// The pages of `r` as one file, writev + fdatasync.
absl::Status FileWrite(const std::string& path, const SpillRecord& r);
// Reads into `out`, whose strings already have the page sizes (the bound: no allocation timed).
absl::Status FileRead(const std::string& path, std::vector<std::vector<std::string>>* out);

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_SPILL_BASELINES_H_
