// How kvkeepctl reads sizes and prints replies: SIZE arguments ("512MiB", "4G"), byte counts for
// people ("1.5 GiB"), aligned tables, and replies as JSON (--json).
//
//   uint64_t quota = 0;
//   if (!ctl::ParseSize("8GiB", &quota)) ...;
//   ctl::PrintTable({{"TENANT", "USED"}, {"team-a", ctl::HumanBytes(used)}});
//
// Stateless; every function writes only to stdout.
#ifndef KVKEEP_CLIENT_KVKEEPCTL_FORMAT_H_
#define KVKEEP_CLIENT_KVKEEPCTL_FORMAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "google/protobuf/message.h"

namespace kvkeep::ctl {

// Bytes, or a number with KiB, MiB, GiB, TiB (or K, M, G, T, B; powers of 1024; any case).
// False (and *out unchanged) when `text` is not such a size or it overflows 64 bits.
bool ParseSize(const std::string& text, uint64_t* out);
// "512 B", "1.5 KiB" ... "2.0 TiB" (one decimal above bytes).
std::string HumanBytes(uint64_t bytes);
// Prints rows as columns aligned to the widest cell, two spaces apart.
void PrintTable(const std::vector<std::vector<std::string>>& rows);
// Prints `message` as indented JSON, every field included (names lowerCamelCase).
void PrintJson(const google::protobuf::Message& message);

}  // namespace kvkeep::ctl

#endif  // KVKEEP_CLIENT_KVKEEPCTL_FORMAT_H_
