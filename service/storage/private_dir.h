// The daemon's data directory is private: tenant bytes (spill WAL and blobs), the metadata database
// and the admin token live there.
//
// Guarantees, after PreparePrivateDir returned OK:
//   - the directory exists, belongs to the daemon's effective uid and has mode 0700;
//   - every file and directory the process creates from then on gets no group or other bits,
//     whatever umask it was started with (RestrictNewFiles: umask 077);
//   - a directory that group or others could write (they could have planted or swapped files) or
//     that another uid owns is refused with FAILED_PRECONDITION saying what to do.
// A directory that was only readable by others (e.g. made by an older kvkeepd under umask 022) is
// tightened to 0700, and the files already in it to 0600 / directories to 0700.
#ifndef KVKEEP_SERVICE_STORAGE_PRIVATE_DIR_H_
#define KVKEEP_SERVICE_STORAGE_PRIVATE_DIR_H_

#include <string>

#include "absl/status/status.h"

namespace kvkeep {

// umask(077) for the whole process: the daemon creates nothing others can read.
void RestrictNewFiles();

// Checks and tightens `path` (which must exist; `what` names it in messages, e.g. "data dir").
absl::Status PreparePrivateDir(const std::string& path, const std::string& what);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_STORAGE_PRIVATE_DIR_H_
