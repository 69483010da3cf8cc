#include "service/storage/drop_journal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "service/storage/xxhash64.h"

namespace kvkeep {
namespace {

constexpr uint32_t kMagic = 0x4b56444a;  // "KVDJ"
constexpr size_t kHeaderBytes = 16;      // magic, key length, XXH64

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::UnavailableError(absl::StrCat(what, " drop journal ", path, ": ", strerror(errno)));
}

bool WriteAll(int fd, const char* data, size_t n, off_t offset) {
  while (n > 0) {
    ssize_t w = pwrite(fd, data, n, offset);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data += w;
    n -= static_cast<size_t>(w);
    offset += w;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DropJournal>> DropJournal::Open(const std::string& path) {
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("opening", path);
  auto journal = std::unique_ptr<DropJournal>(new DropJournal(path, fd));
  const size_t total = kSlots * kSlotBytes;
  std::string bytes(total, '\0');
  ssize_t have = pread(fd, bytes.data(), total, 0);
  if (have < 0) return Errno("reading", path);
  if (static_cast<size_t>(have) < total) {
    // New (or short) file: write every byte now, so later records overwrite and need no space.
    std::string zeros(total - static_cast<size_t>(have), '\0');
    if (!WriteAll(fd, zeros.data(), zeros.size(), have) || fsync(fd) != 0) {
      return Errno("creating", path);
    }
  }
  absl::MutexLock lock(&journal->mu_);
  journal->used_.assign(kSlots, false);
  for (size_t slot = 0; slot < kSlots; ++slot) {
    const char* p = bytes.data() + slot * kSlotBytes;
    uint32_t magic, len;
    uint64_t sum;
    std::memcpy(&magic, p, 4);
    std::memcpy(&len, p + 4, 4);
    std::memcpy(&sum, p + 8, 8);
    if (magic != kMagic || len == 0 || len > kSlotBytes - kHeaderBytes) continue;
    absl::string_view key(p + kHeaderBytes, len);
    if (XxHash64(key) != sum) continue;
    journal->used_[slot] = true;
    journal->slot_of_.emplace(std::string(key), slot);
  }
  return journal;
}

DropJournal::~DropJournal() { close(fd_); }

std::vector<std::string> DropJournal::Pending() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> keys;
  for (const auto& [key, slot] : slot_of_) keys.push_back(key);
  return keys;
}

absl::Status DropJournal::WriteSlot(size_t slot, const std::string& bytes) {
  if (!WriteAll(fd_, bytes.data(), bytes.size(), static_cast<off_t>(slot * kSlotBytes)) ||
      fdatasync(fd_) != 0) {
    return Errno("writing", path_);
  }
  return absl::OkStatus();
}

absl::Status DropJournal::Record(absl::string_view key) {
  if (key.empty() || key.size() > kSlotBytes - kHeaderBytes) {
    return absl::ResourceExhaustedError(absl::StrCat("key of ", key.size(),
                                                     " bytes does not fit a drop journal slot"));
  }
  absl::MutexLock lock(&mu_);
  if (slot_of_.contains(key)) return absl::OkStatus();
  size_t slot = 0;
  while (slot < kSlots && used_[slot]) ++slot;
  if (slot == kSlots) {
    return absl::ResourceExhaustedError(
        absl::StrCat("drop journal ", path_, " is full (", kSlots, " pending drops)"));
  }
  std::string bytes(kSlotBytes, '\0');
  const uint32_t len = static_cast<uint32_t>(key.size());
  const uint64_t sum = XxHash64(key);
  std::memcpy(bytes.data(), &kMagic, 4);
  std::memcpy(bytes.data() + 4, &len, 4);
  std::memcpy(bytes.data() + 8, &sum, 8);
  std::memcpy(bytes.data() + kHeaderBytes, key.data(), key.size());
  // A slot is never torn into a different valid key: the checksum covers the key.
  if (absl::Status s = WriteSlot(slot, bytes); !s.ok()) return s;
  used_[slot] = true;
  slot_of_.emplace(std::string(key), slot);
  return absl::OkStatus();
}

absl::Status DropJournal::Clear(absl::string_view key) {
  absl::MutexLock lock(&mu_);
  auto it = slot_of_.find(key);
  if (it == slot_of_.end()) return absl::OkStatus();
  if (absl::Status s = WriteSlot(it->second, std::string(kSlotBytes, '\0')); !s.ok()) return s;
  used_[it->second] = false;
  slot_of_.erase(it);
  return absl::OkStatus();
}

}  // namespace kvkeep
