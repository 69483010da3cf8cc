#include "service/engine/metadata_charge.h"

#include <utility>
#include <vector>

namespace kvkeep {

uint64_t EmptySequenceBytes(const Model& model) {
  // The id and tenant strings: 16 bytes of id, at most 63 of tenant name, each with its heap
  // block rounded up.
  constexpr uint64_t kStrings = 2 * 64;
  return sizeof(Sequence) + kStrings +
         uint64_t{model.head_tables()} * sizeof(SequenceTable::Head);
}

uint64_t SequenceHeapBytes(const Sequence& seq) {
  return EmptySequenceBytes(*seq.model) + seq.table.HeldBytes() + seq.stats.HeldBytes();
}

uint64_t ModelHeapBytes(const Model& model) {
  return sizeof(Model) + model.HeldBytes();
}

uint64_t MaxStatsGrowthBytes(const Model& model, const SequenceStats& stats,
                             const v1::LayerStats& s) {
  uint64_t bytes = s.ByteSizeLong();
  // Attention mass is stored as one vector per query head.
  bytes += uint64_t{model.q_heads()} * sizeof(std::vector<float>);
  if (stats.layers.empty()) bytes += uint64_t{model.layers()} * sizeof(LayerStatistics);
  return bytes;
}

void RechargeMetadata(Ledger& ledger, Sequence& seq) {
  const uint64_t now = SequenceHeapBytes(seq);
  ledger.AdjustMetadata(seq.tenant, seq.metadata_bytes, now);
  seq.metadata_bytes = now;
}

void ShrinkAndRecharge(Ledger& ledger, Sequence& seq) {
  seq.table.ShrinkToFit();
  seq.stats.ShrinkToFit();
  RechargeMetadata(ledger, seq);
}

}  // namespace kvkeep
