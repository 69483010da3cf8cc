#include "service/storage/private_dir.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/observability/log.h"

namespace kvkeep {
namespace {

std::string Mode(mode_t mode) { return absl::StrFormat("%04o", mode & 07777); }

// Takes group and other bits off everything under `dir` (not following links).
void TightenContents(const std::string& dir) {
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    struct stat st;
    if (lstat(it->path().c_str(), &st) != 0 || S_ISLNK(st.st_mode) || S_ISSOCK(st.st_mode)) {
      continue;
    }
    if ((st.st_mode & 077) != 0) chmod(it->path().c_str(), st.st_mode & 0700);
  }
}

}  // namespace

void RestrictNewFiles() { umask(077); }

absl::Status PreparePrivateDir(const std::string& path, const std::string& what) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot inspect ", what, " ", path, ": ", std::strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(what, " ", path, " is not a directory"));
  }
  if (st.st_uid != geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " ", path, " belongs to uid ", st.st_uid, ", not to the daemon's uid ", geteuid(),
        "; give kvkeepd a directory of its own"));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " ", path, " has mode ", Mode(st.st_mode),
        ": group or others may write it, so its files (tenant data, the admin token) could have "
        "been planted or replaced. Check its contents, then chmod 700 ", path,
        " (or choose another directory) and start again"));
  }
  if ((st.st_mode & 077) != 0) {
    if (chmod(path.c_str(), 0700) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot chmod 700 ", what, " ", path, ": ", std::strerror(errno)));
    }
    TightenContents(path);
    log::Warn("data_dir.tightened",
              {{"path", path}, {"what", what}, {"old_mode", Mode(st.st_mode)}, {"mode", "0700"}});
  }
  return absl::OkStatus();
}

}  // namespace kvkeep
