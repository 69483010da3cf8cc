#include "service/storage/metadata_store.h"

#include "service/storage/rocksdb_status.h"

namespace kvkeep {
namespace {
constexpr int kMeta = 1;
}  // namespace

absl::StatusOr<std::unique_ptr<MetadataStore>> MetadataStore::Open(const std::string& path) {
  rocksdb::DBOptions options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  options.max_background_jobs = 2;
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {"meta", rocksdb::ColumnFamilyOptions()}};
  auto store = std::unique_ptr<MetadataStore>(new MetadataStore());
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, path, families, &store->handles_, &raw);
  if (!s.ok()) return FromRocksDb(s, "opening metadata store at " + path);
  store->db_.reset(raw);
  return store;
}

MetadataStore::~MetadataStore() {
  for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
  if (db_) db_->Close().PermitUncheckedError();
}

absl::Status MetadataStore::Put(const std::string& key, const std::string& value) {
  rocksdb::WriteOptions w;
  w.sync = true;
  return FromRocksDb(db_->Put(w, handles_[kMeta], key, value), "writing " + key);
}

absl::Status MetadataStore::Delete(const std::string& key) {
  rocksdb::WriteOptions w;
  w.sync = true;
  return FromRocksDb(db_->Delete(w, handles_[kMeta], key), "deleting " + key);
}

absl::StatusOr<std::string> MetadataStore::Get(const std::string& key) const {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), handles_[kMeta], key, &value);
  if (!s.ok()) return FromRocksDb(s, "reading " + key);
  return value;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> MetadataStore::Scan(
    const std::string& prefix) const {
  std::vector<std::pair<std::string, std::string>> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), handles_[kMeta]));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    out.emplace_back(it->key().ToString(), it->value().ToString());
  }
  if (!it->status().ok()) return FromRocksDb(it->status(), "scanning " + prefix);
  return out;
}

}  // namespace kvkeep
