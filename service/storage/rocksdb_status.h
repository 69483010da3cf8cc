// The one place rocksdb::Status becomes absl::Status.
#ifndef KVKEEP_SERVICE_STORAGE_ROCKSDB_STATUS_H_
#define KVKEEP_SERVICE_STORAGE_ROCKSDB_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "rocksdb/status.h"

namespace kvkeep {

// NotFound -> NOT_FOUND, Corruption -> DATA_LOSS, IOError/NoSpace -> UNAVAILABLE (disk trouble the
// caller may retry), InvalidArgument -> INVALID_ARGUMENT, Busy/TryAgain -> UNAVAILABLE, others ->
// INTERNAL. The message names the operation.
absl::Status FromRocksDb(const rocksdb::Status& status, const std::string& what);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_STORAGE_ROCKSDB_STATUS_H_
