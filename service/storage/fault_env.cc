#include "service/storage/fault_env.h"

#include <cstring>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace kvkeep {

struct FaultEnv::State {
  std::atomic<Fault> write{Fault::kNone};
  std::atomic<Fault> sync{Fault::kNone};
  std::atomic<uint64_t> injected{0};
  absl::Mutex mu;
  std::string corrupt_suffix ABSL_GUARDED_BY(mu);

  // The injected status for a write-type call, OK when no fault is on.
  rocksdb::IOStatus Check(const std::atomic<Fault>& which, const char* what) {
    Fault f = which.load(std::memory_order_acquire);
    if (f == Fault::kNone) return rocksdb::IOStatus::OK();
    injected.fetch_add(1, std::memory_order_relaxed);
    if (f == Fault::kNoSpace) return rocksdb::IOStatus::NoSpace("injected fault", what);
    return rocksdb::IOStatus::IOError("injected fault", what);
  }
  rocksdb::IOStatus CheckWrite(const char* what) { return Check(write, what); }
  rocksdb::IOStatus CheckSync(const char* what) {
    rocksdb::IOStatus s = Check(write, what);
    if (!s.ok()) return s;
    return Check(sync, what);
  }
  bool Corrupts(const std::string& fname) {
    absl::MutexLock lock(&mu);
    return !corrupt_suffix.empty() && fname.size() >= corrupt_suffix.size() &&
           fname.compare(fname.size() - corrupt_suffix.size(), corrupt_suffix.size(),
                         corrupt_suffix) == 0;
  }
};

namespace {

using State = FaultEnv::State;

class FaultWritableFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FaultWritableFile(std::unique_ptr<rocksdb::FSWritableFile> target, std::shared_ptr<State> state)
      : FSWritableFileOwnerWrapper(std::move(target)), state_(std::move(state)) {}

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                           rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = state_->CheckWrite("append");
    return s.ok() ? FSWritableFileOwnerWrapper::Append(data, o, dbg) : s;
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                           const rocksdb::DataVerificationInfo& info,
                           rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = state_->CheckWrite("append");
    return s.ok() ? FSWritableFileOwnerWrapper::Append(data, o, info, dbg) : s;
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& o,
                                     rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = state_->CheckWrite("positioned append");
    return s.ok() ? FSWritableFileOwnerWrapper::PositionedAppend(data, offset, o, dbg) : s;
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& o,
                                     const rocksdb::DataVerificationInfo& info,
                                     rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = state_->CheckWrite("positioned append");
    return s.ok() ? FSWritableFileOwnerWrapper::PositionedAppend(data, offset, o, info, dbg) : s;
  }
  rocksdb::IOStatus Flush(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = state_->CheckWrite("flush");
    return s.ok() ? FSWritableFileOwnerWrapper::Flush(o, dbg) : s;
  }
  rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = state_->CheckSync("sync");
    return s.ok() ? FSWritableFileOwnerWrapper::Sync(o, dbg) : s;
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = state_->CheckSync("fsync");
    return s.ok() ? FSWritableFileOwnerWrapper::Fsync(o, dbg) : s;
  }
  rocksdb::IOStatus RangeSync(uint64_t offset, uint64_t n, const rocksdb::IOOptions& o,
                              rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = state_->CheckSync("range sync");
    return s.ok() ? FSWritableFileOwnerWrapper::RangeSync(offset, n, o, dbg) : s;
  }

 private:
  std::shared_ptr<State> state_;
};

class FaultRandomAccessFile : public rocksdb::FSRandomAccessFileOwnerWrapper {
 public:
  FaultRandomAccessFile(std::unique_ptr<rocksdb::FSRandomAccessFile> target, std::string fname,
                        std::shared_ptr<State> state)
      : FSRandomAccessFileOwnerWrapper(std::move(target)),
        fname_(std::move(fname)),
        state_(std::move(state)) {}

  rocksdb::IOStatus Read(uint64_t offset, size_t n, const rocksdb::IOOptions& o,
                         rocksdb::Slice* result, char* scratch,
                         rocksdb::IODebugContext* dbg) const override {
    rocksdb::IOStatus s = FSRandomAccessFileOwnerWrapper::Read(offset, n, o, result, scratch, dbg);
    if (s.ok()) MaybeCorrupt(result, scratch);
    return s;
  }
  rocksdb::IOStatus MultiRead(rocksdb::FSReadRequest* reqs, size_t num_reqs,
                              const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = FSRandomAccessFileOwnerWrapper::MultiRead(reqs, num_reqs, o, dbg);
    for (size_t i = 0; s.ok() && i < num_reqs; ++i) {
      if (reqs[i].status.ok()) MaybeCorrupt(&reqs[i].result, reqs[i].scratch);
    }
    return s;
  }

 private:
  // Flips the lowest bit of the last byte read: for a blob read that is a byte of the value.
  void MaybeCorrupt(rocksdb::Slice* result, char* scratch) const {
    if (result->empty() || scratch == nullptr || !state_->Corrupts(fname_)) return;
    if (result->data() != scratch) {
      std::memmove(scratch, result->data(), result->size());
      *result = rocksdb::Slice(scratch, result->size());
    }
    scratch[result->size() - 1] ^= 1;
    state_->injected.fetch_add(1, std::memory_order_relaxed);
  }

  const std::string fname_;
  std::shared_ptr<State> state_;
};

class FaultFileSystem : public rocksdb::FileSystemWrapper {
 public:
  FaultFileSystem(const std::shared_ptr<rocksdb::FileSystem>& base, std::shared_ptr<State> state)
      : FileSystemWrapper(base), state_(std::move(state)) {}

  static const char* kClassName() { return "KvkeepFaultFileSystem"; }
  const char* Name() const override { return kClassName(); }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& fo,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = state_->CheckWrite("create file");
    if (!s.ok()) return s;
    std::unique_ptr<rocksdb::FSWritableFile> file;
    s = FileSystemWrapper::NewWritableFile(f, fo, &file, dbg);
    if (s.ok()) r->reset(new FaultWritableFile(std::move(file), state_));
    return s;
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& fo,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = state_->CheckWrite("reopen file");
    if (!s.ok()) return s;
    std::unique_ptr<rocksdb::FSWritableFile> file;
    s = FileSystemWrapper::ReopenWritableFile(f, fo, &file, dbg);
    if (s.ok()) r->reset(new FaultWritableFile(std::move(file), state_));
    return s;
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old,
                                      const rocksdb::FileOptions& fo,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r,
                                      rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = state_->CheckWrite("reuse file");
    if (!s.ok()) return s;
    std::unique_ptr<rocksdb::FSWritableFile> file;
    s = FileSystemWrapper::ReuseWritableFile(f, old, fo, &file, dbg);
    if (s.ok()) r->reset(new FaultWritableFile(std::move(file), state_));
    return s;
  }
  rocksdb::IOStatus NewRandomAccessFile(const std::string& f, const rocksdb::FileOptions& fo,
                                        std::unique_ptr<rocksdb::FSRandomAccessFile>* r,
                                        rocksdb::IODebugContext* dbg) override {
    std::unique_ptr<rocksdb::FSRandomAccessFile> file;
    rocksdb::IOStatus s = FileSystemWrapper::NewRandomAccessFile(f, fo, &file, dbg);
    if (s.ok()) r->reset(new FaultRandomAccessFile(std::move(file), f, state_));
    return s;
  }

 private:
  std::shared_ptr<State> state_;
};

}  // namespace

FaultEnv::FaultEnv(rocksdb::Env* base) : state_(std::make_shared<State>()) {
  if (base == nullptr) base = rocksdb::Env::Default();
  auto fs = std::make_shared<FaultFileSystem>(base->GetFileSystem(), state_);
  env_ = rocksdb::NewCompositeEnv(fs);
}

FaultEnv::~FaultEnv() = default;

void FaultEnv::SetWriteFault(Fault fault) { state_->write.store(fault, std::memory_order_release); }
void FaultEnv::SetSyncFault(Fault fault) { state_->sync.store(fault, std::memory_order_release); }
void FaultEnv::SetReadCorruption(const std::string& suffix) {
  absl::MutexLock lock(&state_->mu);
  state_->corrupt_suffix = suffix;
}
uint64_t FaultEnv::injected() const { return state_->injected.load(std::memory_order_relaxed); }

}  // namespace kvkeep
