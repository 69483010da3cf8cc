// What a tenant's sequences and models cost the daemon's heap, for the ledger's metadata charge
// (Ledger::ChargeMetadata). Page bytes are charged as pages; this is everything else a tenant
// makes the daemon hold: page tables (page ids, token positions), query statistics, model
// layouts and W_O Grams.
//
// The figures are the bytes of the containers the daemon allocates (sizeof of the structs plus
// vector capacities), measured on the live objects, so any kind of statistics added to
// SequenceStats::HeldBytes() is charged without further code here.
//
//   RETURN_IF_ERROR(ledger.ChargeMetadata(tenant, EmptySequenceBytes(model)));  // before creating
//   ... change the sequence ...
//   RechargeMetadata(ledger, seq);                              // after, under seq.mu
//
// A sequence that shrinks without a call of its owner (pressure relief drops, compresses or
// spills it) is re-charged at once by the one who shrank it: ShrinkAndRecharge (drop, compress),
// Spiller::Spill (its table's vectors are freed).
//
// Pure functions (RechargeMetadata and ShrinkAndRecharge write the sequence: the caller holds
// seq.mu, and takes Ledger::mu_ after it, as the lock order wants).
#ifndef KVKEEP_SERVICE_ENGINE_METADATA_CHARGE_H_
#define KVKEEP_SERVICE_ENGINE_METADATA_CHARGE_H_

#include <cstdint>

#include "kvkeep/v1/common.pb.h"
#include "service/engine/ledger.h"
#include "service/engine/model_layout.h"
#include "service/engine/sequence.h"
#include "service/engine/sequence_stats.h"

namespace kvkeep {

// Heap of a sequence of `model` with an empty page table and no statistics (what CreateSequence
// charges before it creates anything): the Sequence itself and one SequenceTable::Head per head.
uint64_t EmptySequenceBytes(const Model& model);

// Heap the sequence holds now: EmptySequenceBytes + its table's and its statistics' HeldBytes.
uint64_t SequenceHeapBytes(const Sequence& seq) ABSL_SHARED_LOCKS_REQUIRED(seq.mu);

// Heap a registered model holds: its layout, head tables and W_O Grams.
uint64_t ModelHeapBytes(const Model& model);

// The most storing `s` can add to `stats` (an upper bound for admission before ApplyLayerStats):
// its wire bytes (packed floats and doubles are stored at their wire size or smaller) plus the
// per-layer structures the first statistics of a sequence create.
uint64_t MaxStatsGrowthBytes(const Model& model, const SequenceStats& stats,
                             const v1::LayerStats& s);

// Brings the ledger's metadata charge of `seq` to SequenceHeapBytes(seq) (never refused: the
// admission happened before the change, with ChargeMetadata).
void RechargeMetadata(Ledger& ledger, Sequence& seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq.mu);

// After pages and tokens left `seq` without a call of its owner (pressure relief dropped or
// compressed them): gives its table's and statistics' unused vector capacity back to the heap,
// then RechargeMetadata, so its tenant is charged at once what the shrunk sequence holds.
void ShrinkAndRecharge(Ledger& ledger, Sequence& seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq.mu);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_METADATA_CHARGE_H_
