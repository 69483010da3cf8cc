#include "bench/spill_baselines.h"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "rocksdb/write_batch.h"

namespace kvkeep::bench {

// ---- Raw RocksDB with the store's options ------------------------------------------------------

absl::StatusOr<std::unique_ptr<RawDb>> RawDb::Open(const SpillStore::Options& o) {
  SpillStore::DbConfig c = SpillStore::MakeDbConfig(o);
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()}, {"pages", c.pages}};
  auto raw = std::unique_ptr<RawDb>(new RawDb());
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(c.db, o.path, families, &raw->handles_, &db);
  if (!s.ok()) return absl::UnavailableError("raw RocksDB: " + s.ToString());
  raw->db_.reset(db);
  return raw;
}

RawDb::~RawDb() {
  for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  db_->Close().PermitUncheckedError();
}

namespace {

std::string RawKey(const std::string& prefix, uint32_t h, uint32_t p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%08x/%08x", h, p);
  return prefix + buf;
}

}  // namespace

absl::Status RawPut(RawDb* raw, const std::string& prefix, const SpillRecord& r, uint64_t bytes) {
  rocksdb::WriteBatch batch(bytes + 64 * r.heads.size() * r.heads[0].pages.size());
  for (uint32_t h = 0; h < r.heads.size(); ++h) {
    for (uint32_t p = 0; p < r.heads[h].pages.size(); ++p) {
      batch.Put(raw->pages(), RawKey(prefix, h, p), r.heads[h].pages[p]).PermitUncheckedError();
    }
  }
  rocksdb::WriteOptions w;
  w.sync = true;
  rocksdb::Status s = raw->db()->Write(w, &batch);
  return s.ok() ? absl::OkStatus() : absl::UnavailableError("raw put: " + s.ToString());
}

// MultiGet in batches of 1024 keys (as SpillStore::Get does), each value copied into its own
// std::string (as a Get(&std::string) would).
absl::Status RawGet(RawDb* raw, const std::string& prefix, const SpillRecord& shape,
                    std::vector<std::vector<std::string>>* out) {
  constexpr size_t kBatch = 1024;
  out->assign(shape.heads.size(), {});
  std::vector<std::pair<uint32_t, uint32_t>> slots;
  for (uint32_t h = 0; h < shape.heads.size(); ++h) {
    (*out)[h].resize(shape.heads[h].pages.size());
    for (uint32_t p = 0; p < shape.heads[h].pages.size(); ++p) slots.push_back({h, p});
  }
  std::vector<std::string> keys(kBatch);
  std::vector<rocksdb::Slice> slices(kBatch);
  std::vector<rocksdb::PinnableSlice> values(kBatch);
  std::vector<rocksdb::Status> statuses(kBatch);
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  for (size_t b = 0; b < slots.size(); b += kBatch) {
    size_t n = std::min(kBatch, slots.size() - b);
    for (size_t i = 0; i < n; ++i) {
      keys[i] = RawKey(prefix, slots[b + i].first, slots[b + i].second);
      slices[i] = keys[i];
      values[i].Reset();
    }
    raw->db()->MultiGet(ro, raw->pages(), n, slices.data(), values.data(), statuses.data(), true);
    for (size_t i = 0; i < n; ++i) {
      if (!statuses[i].ok()) return absl::UnavailableError("raw get: " + statuses[i].ToString());
      (*out)[slots[b + i].first][slots[b + i].second].assign(values[i].data(), values[i].size());
    }
  }
  return absl::OkStatus();
}

absl::Status RawDelete(RawDb* raw, const std::string& prefix, const SpillRecord& r) {
  rocksdb::WriteBatch batch;
  for (uint32_t h = 0; h < r.heads.size(); ++h) {
    for (uint32_t p = 0; p < r.heads[h].pages.size(); ++p) {
      batch.Delete(raw->pages(), RawKey(prefix, h, p)).PermitUncheckedError();
    }
  }
  rocksdb::Status s = raw->db()->Write(rocksdb::WriteOptions(), &batch);
  return s.ok() ? absl::OkStatus() : absl::UnavailableError("raw delete: " + s.ToString());
}

// ---- Plain file ------------------------------------------------------------------------------

namespace {

absl::Status Vectored(int fd, std::vector<iovec>& iov, bool write) {
  size_t i = 0;
  while (i < iov.size()) {
    int n = static_cast<int>(std::min<size_t>(iov.size() - i, IOV_MAX));
    ssize_t done = write ? ::writev(fd, &iov[i], n) : ::readv(fd, &iov[i], n);
    if (done < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat(write ? "writev: " : "readv: ",
                                                 std::strerror(errno)));
    }
    if (done == 0) return absl::DataLossError("file: short read");
    // Advance over what was transferred (possibly part of an iovec).
    while (done > 0) {
      size_t take = std::min<size_t>(done, iov[i].iov_len);
      iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + take;
      iov[i].iov_len -= take;
      done -= static_cast<ssize_t>(take);
      if (iov[i].iov_len == 0) ++i;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status FileWrite(const std::string& path, const SpillRecord& r) {
  int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  std::vector<iovec> iov;
  for (const auto& h : r.heads)
    for (const auto& p : h.pages) iov.push_back({const_cast<char*>(p.data()), p.size()});
  absl::Status s = Vectored(fd, iov, true);
  if (s.ok() && ::fdatasync(fd) != 0) s = absl::UnavailableError("fdatasync failed");
  ::close(fd);
  return s;
}

// Reads into `out`, whose strings already have the page sizes (the bound: no allocation timed).
absl::Status FileRead(const std::string& path, std::vector<std::vector<std::string>>* out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  std::vector<iovec> iov;
  for (auto& h : *out)
    for (auto& p : h) iov.push_back({p.data(), p.size()});
  absl::Status s = Vectored(fd, iov, false);
  ::close(fd);
  return s;
}

}  // namespace kvkeep::bench
