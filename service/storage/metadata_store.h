// Durable metadata (tenants with their policies, models, pool watermarks) in RocksDB. Spilled
// sequences live in the spill tier's own database (service/storage/spill_store.h).
//
// Keys live in the "meta" column family; every write goes through a synced WAL, so a call that
// returned OK survives kill -9. Values are serialized protobuf messages chosen by the caller.
//
//   ASSIGN_OR_RETURN(auto store, MetadataStore::Open("/var/lib/kvkeep/db"));
//   RETURN_IF_ERROR(store->Put("tenant/team-a", record.SerializeAsString()));
//   ASSIGN_OR_RETURN(auto rows, store->Scan("tenant/"));
//
// Thread-safe (RocksDB is).
#ifndef KVKEEP_SERVICE_STORAGE_METADATA_STORE_H_
#define KVKEEP_SERVICE_STORAGE_METADATA_STORE_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "rocksdb/db.h"

namespace kvkeep {

class MetadataStore {
 public:
  // Opens (creating if missing) the database at `path`. UNAVAILABLE when another process holds it
  // (RocksDB's LOCK file) or the disk fails.
  static absl::StatusOr<std::unique_ptr<MetadataStore>> Open(const std::string& path);
  ~MetadataStore();

  absl::Status Put(const std::string& key, const std::string& value);
  absl::Status Delete(const std::string& key);
  // NOT_FOUND when absent.
  absl::StatusOr<std::string> Get(const std::string& key) const;
  // All (key, value) pairs whose key starts with `prefix`, in key order.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Scan(
      const std::string& prefix) const;

  rocksdb::DB* db() const { return db_.get(); }

 private:
  MetadataStore() = default;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // [default, meta]
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_STORAGE_METADATA_STORE_H_
