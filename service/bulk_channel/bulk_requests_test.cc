#include "service/bulk_channel/bulk_requests.h"

#include "common/bulk_frame.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using absl::StatusCode;

v1::BulkRequest Write(uint64_t key_bytes, uint64_t value_bytes, int chunks = 1) {
  v1::BulkRequest r;
  for (int i = 0; i < chunks; ++i) {
    v1::BulkChunk* c = r.mutable_write()->add_chunks();
    c->mutable_header()->set_sequence_id("s");
    c->mutable_header()->set_token_count(1);
    c->set_key_bytes(key_bytes);
    c->set_value_bytes(value_bytes);
  }
  return r;
}

TEST(BulkRequestsTest, AttachComesFirstAndOnlyOnce) {
  v1::BulkRequest attach;
  attach.set_attach(std::string(kBulkTicketBytes, 't'));
  EXPECT_OK(CheckBulkRequest(attach, /*attached=*/false));
  EXPECT_THAT(CheckBulkRequest(attach, true), StatusIs(StatusCode::kInvalidArgument,
                                                       "already attached"));
  attach.set_attach("short");
  EXPECT_THAT(CheckBulkRequest(attach, false),
              StatusIs(StatusCode::kInvalidArgument, "32 bytes, not 5"));
  EXPECT_THAT(CheckBulkRequest(Write(16, 16), false),
              StatusIs(StatusCode::kInvalidArgument, "first bulk request"));
  EXPECT_THAT(CheckBulkRequest(v1::BulkRequest(), true),
              StatusIs(StatusCode::kInvalidArgument, "sets none"));
}

TEST(BulkRequestsTest, WritesAreBoundedAndSkippableWithinTheBound) {
  EXPECT_OK(CheckBulkRequest(Write(16, 16, 3), true));
  EXPECT_EQ(BulkWritePayload(Write(16, 16, 3).write()), 96u);
  // At the limit, then one byte past it, in one chunk and spread over many.
  EXPECT_OK(CheckBulkRequest(Write(kBulkMaxPayloadBytes / 2, kBulkMaxPayloadBytes / 2), true));
  const v1::BulkRequest over = Write(kBulkMaxPayloadBytes / 2, kBulkMaxPayloadBytes / 2 + 1);
  EXPECT_THAT(CheckBulkRequest(over, true),
              StatusIs(StatusCode::kInvalidArgument, "at most"));
  EXPECT_FALSE(BulkRequestSkippable(over));
  EXPECT_EQ(BulkWritePayload(over.write()), 0u);
  const v1::BulkRequest spread = Write(kBulkMaxPayloadBytes / 8, kBulkMaxPayloadBytes / 8, 5);
  EXPECT_THAT(CheckBulkRequest(spread, true), StatusIs(StatusCode::kInvalidArgument));
  // Sizes that would overflow a sum are refused, not wrapped.
  const v1::BulkRequest wraps = Write(~uint64_t{0}, 2);
  EXPECT_THAT(CheckBulkRequest(wraps, true), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_FALSE(BulkRequestSkippable(wraps));
  // A write without chunks is refused but skippable (nothing follows it).
  v1::BulkRequest empty;
  empty.mutable_write();
  EXPECT_THAT(CheckBulkRequest(empty, true),
              StatusIs(StatusCode::kInvalidArgument, "at least one chunk"));
  EXPECT_TRUE(BulkRequestSkippable(empty));
  v1::BulkRequest end;
  end.set_end_writes(true);
  EXPECT_OK(CheckBulkRequest(end, true));
  EXPECT_FALSE(BulkRequestSkippable(end));
}

}  // namespace
}  // namespace kvkeep
