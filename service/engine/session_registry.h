// The session registry: workers' sessions and who holds which sequence.
//
// A session belongs to one tenant and one worker name; a newer session of the same worker
// supersedes the older one (its sink gets ABORTED; its sequences and leases move to the new one).
// For every sequence it records the owning session (the creator, until that session ends), the
// sessions holding a lease, whether it is retained past its owner, and its last access. From
// those it decides which sequences are orphans (no owner, no lease, not retained) and must be
// dropped: the caller drops them; the registry never touches a sequence's pages.
//
//   SessionRegistry sessions(/*max_sessions_per_tenant=*/4096);
//   ASSIGN_OR_RETURN(auto attached, sessions.Attach("team-a", "worker-0", sink));
//   RETURN_IF_ERROR(sessions.AddSequence("team-a", "seq-1", attached.session_id, false, now));
//   auto ended = sessions.End(attached.session_id);   // ended->orphans: drop these
//
// It speaks kvkeep's own types (no v1:: protos). Sequences are named by (tenant, sequence id).
//
// Thread-safe: its own mutex protects everything. Sinks are called with it held (SessionSink
// methods only queue). Lock order: CacheEngine::mu_ -> SessionRegistry::mu_ -> Ledger::mu_.
#ifndef KVKEEP_SERVICE_ENGINE_SESSION_REGISTRY_H_
#define KVKEEP_SERVICE_ENGINE_SESSION_REGISTRY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/engine/session_sink.h"
#include "service/pool/page_pool.h"

namespace kvkeep {

class SessionRegistry {
 public:
  explicit SessionRegistry(uint32_t max_sessions_per_tenant);
  SessionRegistry(const SessionRegistry&) = delete;
  SessionRegistry& operator=(const SessionRegistry&) = delete;

  // ---- Sessions ----
  struct Attached {
    std::string session_id;
    std::string superseded_session_id;  // empty when none was superseded
    uint32_t adopted_sequences = 0;
  };
  // Opens a session of `worker` (the caller validated the name and the tenant). Supersedes a
  // live session of the same tenant and worker. RESOURCE_EXHAUSTED (kMetadataLimit) when the
  // tenant has the most sessions allowed and none is superseded.
  absl::StatusOr<Attached> Attach(const std::string& tenant, const std::string& worker,
                                  SessionSink* sink);
  struct Ended {
    std::string tenant;
    std::string worker;
    // Sequences it owned that nobody leases and that are not retained: the caller drops them.
    std::vector<std::string> orphans;
  };
  // Ends a live session: its leases go, its sequences lose their owner. nullopt for an unknown
  // (or already ended) session. Its sink is not called: the caller ends the stream.
  std::optional<Ended> End(const std::string& session_id);
  // Ends every session, each sink with `status` (daemon shutdown).
  std::vector<Ended> EndAll(const absl::Status& status);
  // Ends every session of `tenant`, each sink with `status` (tenant deleted). Returns how many.
  uint32_t EndTenant(const std::string& tenant, const absl::Status& status);

  // OK when `session_id` is empty or a live session of `tenant`; NOT_FOUND otherwise.
  absl::Status CheckIfGiven(const std::string& tenant, const std::string& session_id) const;
  // As CheckIfGiven, but an empty id is INVALID_ARGUMENT.
  absl::Status CheckLive(const std::string& tenant, const std::string& session_id) const;

  uint32_t SessionsOf(const std::string& tenant) const;
  uint32_t SessionCount() const;
  // Tells every session of `tenant` about a new arena.
  void AnnounceArena(const std::string& tenant, const ArenaInfo& arena);

  // ---- Sequences ----
  // A new sequence created by `session_id` (which owns and leases it). Errors as CheckLive.
  absl::Status AddSequence(const std::string& tenant, const std::string& sequence,
                           const std::string& session_id, bool retain, absl::Time now);
  // A sequence found in the spill tier at start: nobody owns it, it is retained.
  void AddRestorable(const std::string& tenant, const std::string& sequence, absl::Time created);
  // Forgets a dropped sequence (its owner's and leaseholders' records too).
  void RemoveSequence(const std::string& tenant, const std::string& sequence);

  // A lease of `session_id` on the sequence. Errors as CheckLive.
  absl::Status Lease(const std::string& tenant, const std::string& sequence,
                     const std::string& session_id, absl::Time now);
  struct Unleased {
    uint32_t leases_left = 0;
    bool orphan = false;  // no owner, no lease, not retained: the caller drops it
  };
  // Gives back the lease of `session_id`. Errors as CheckLive; FAILED_PRECONDITION when it holds
  // none.
  absl::StatusOr<Unleased> Unlease(const std::string& tenant, const std::string& sequence,
                                   const std::string& session_id);
  // A session other than `caller` leasing the sequence ("" when none).
  std::string OtherLeaseHolder(const std::string& tenant, const std::string& sequence,
                               const std::string& caller) const;
  bool Leased(const std::string& tenant, const std::string& sequence) const;

  void Touch(const std::string& tenant, const std::string& sequence, absl::Time now);
  absl::Time LastAccess(const std::string& tenant, const std::string& sequence) const;

  // What an operator sees of a sequence's holders.
  struct Holders {
    uint32_t leases = 0;
    bool retain = false;
    bool has_owner = false;
    absl::Time last_access;
    std::string owner_worker;                 // "" without an owner
    std::vector<std::string> lease_workers;   // sorted
  };
  Holders HoldersOf(const std::string& tenant, const std::string& sequence) const;

 private:
  struct Session {
    std::string id;
    std::string tenant;
    std::string worker;
    SessionSink* sink = nullptr;
    absl::flat_hash_set<std::string> owned;   // sequences it created (and still owns)
    absl::flat_hash_set<std::string> leased;  // sequences it holds a lease on
  };
  struct Hold {
    std::string owner_session;                // empty once its session ended
    absl::flat_hash_set<std::string> leases;  // sessions holding a lease
    bool retain = false;
    absl::Time last_access;
  };
  using SequenceKey = std::pair<std::string, std::string>;  // (tenant, sequence id)

  const Session* FindLocked(const std::string& tenant, const std::string& session_id) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status CheckLiveLocked(const std::string& tenant, const std::string& session_id) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Moves what `old` owns and leases to `fresh`; returns the sequences adopted.
  uint32_t AdoptLocked(Session& old, Session& fresh) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Ended EndLocked(const std::string& session_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string WorkerOfLocked(const std::string& session_id) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  const uint32_t max_sessions_per_tenant_;

  mutable absl::Mutex mu_;
  // Protected by mu_.
  absl::flat_hash_map<std::string, Session> sessions_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, absl::flat_hash_set<std::string>> by_tenant_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<SequenceKey, Hold> holds_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_SESSION_REGISTRY_H_
