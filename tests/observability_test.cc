// Observability of the real kvkeepd process: GET /metrics over HTTP (families, values that move
// with RPCs, `promtool check metrics`), gRPC health checking and server reflection.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <future>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/call_context.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"
#include "tests/local_http.h"

namespace kvkeep::testing {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

// Series (name with labels, as written) -> value, from a text exposition.
std::map<std::string, double> ParseExposition(const std::string& text) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line.front() == '#') continue;
    const size_t sp = line.rfind(' ');
    double v = 0;
    const absl::string_view value = line.substr(sp + 1);
    if (value == "+Inf") {
      v = std::numeric_limits<double>::infinity();
    } else {
      EXPECT_TRUE(absl::SimpleAtod(value, &v)) << line;
    }
    out[std::string(line.substr(0, sp))] = v;
  }
  return out;
}

// The promtool binary, or empty.
std::string FindPromtool() {
  if (const char* env = std::getenv("PROMTOOL"); env != nullptr && access(env, X_OK) == 0) {
    return env;
  }
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':')) {
    std::string candidate = absl::StrCat(dir, "/promtool");
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// Minimal protobuf wire reading for the hand-made health and reflection messages.
bool ReadVarint(absl::string_view* in, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64 && !in->empty(); shift += 7) {
    const uint8_t b = static_cast<uint8_t>(in->front());
    in->remove_prefix(1);
    *v |= uint64_t{b & 0x7fu} << shift;
    if ((b & 0x80) == 0) return true;
  }
  return false;
}

// Every (field number, wire type 0 value or wire type 2 bytes) of one message.
struct Field {
  uint32_t number = 0;
  uint64_t varint = 0;
  std::string bytes;
};
std::vector<Field> ParseFields(absl::string_view in) {
  std::vector<Field> out;
  while (!in.empty()) {
    uint64_t tag = 0;
    if (!ReadVarint(&in, &tag)) break;
    Field f;
    f.number = static_cast<uint32_t>(tag >> 3);
    if ((tag & 7) == 0) {
      if (!ReadVarint(&in, &f.varint)) break;
    } else if ((tag & 7) == 2) {
      uint64_t len = 0;
      if (!ReadVarint(&in, &len) || len > in.size()) break;
      f.bytes = std::string(in.substr(0, len));
      in.remove_prefix(len);
    } else {
      break;  // not used by these messages
    }
    out.push_back(std::move(f));
  }
  return out;
}

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  (void)buffer.Dump(&slices);
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// One request, one response on a bidi stream, raw bytes.
class OneShotBidi : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  OneShotBidi(grpc::GenericStub* stub, const std::string& method, const std::string& request)
      : request_(ToBuffer(request)) {
    context_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    stub->PrepareBidiStreamingCall(&context_, method, grpc::StubOptions(), this);
    StartWriteLast(&request_, grpc::WriteOptions());
    StartRead(&response_);
    StartCall();
  }
  void OnReadDone(bool ok) override { got_ = ok; }
  void OnDone(const grpc::Status& status) override { done_.set_value(status); }

  // The call's status and its one response.
  std::pair<grpc::Status, std::string> Wait() {
    grpc::Status status = done_.get_future().get();
    return {status, got_ ? FromBuffer(response_) : ""};
  }

 private:
  grpc::ClientContext context_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  bool got_ = false;
  std::promise<grpc::Status> done_;
};

class ObservabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = FreePort();
      ASSERT_GT(port_, 0);
      absl::Status started =
          daemon_.Start({absl::StrCat("--metrics_address=127.0.0.1:", port_)});
      if (started.ok()) return;
      // Someone took the port between FreePort and the daemon's bind: try another.
      std::fprintf(stderr, "start on metrics port %d failed (%s); retrying\n", port_,
                   std::string(started.message()).c_str());
    }
    FAIL() << "kvkeepd did not start with a metrics port";
  }

  std::string Scrape() {
    const std::string response = HttpGet(port_, "/metrics");
    EXPECT_THAT(response, ::testing::StartsWith("HTTP/1.1 200 OK\r\n"));
    EXPECT_THAT(response, HasSubstr("Content-Type: text/plain; version=0.0.4"));
    const size_t at = response.find("\r\n\r\n");
    return at == std::string::npos ? "" : response.substr(at + 4);
  }

  std::map<std::string, double> ScrapeValues() { return ParseExposition(Scrape()); }

  std::unique_ptr<grpc::GenericStub> GenericStub() {
    return std::make_unique<grpc::GenericStub>(MakeChannel(daemon_.channel()));
  }

  DaemonProcess daemon_;
  int port_ = 0;
};

// kvkeep::Client sends a sequence's first allocation as AllocatePagesStream (api.md §6.3); the
// allocations in these tests are all first ones.
constexpr char kAllocOk[] =
    "kvkeep_grpc_server_handled_total{grpc_service=\"kvkeep.v1.KvCache\","
    "grpc_method=\"AllocatePagesStream\",grpc_type=\"server_stream\",grpc_code=\"OK\"}";
constexpr char kAllocExhausted[] =
    "kvkeep_grpc_server_handled_total{grpc_service=\"kvkeep.v1.KvCache\","
    "grpc_method=\"AllocatePagesStream\",grpc_type=\"server_stream\","
    "grpc_code=\"RESOURCE_EXHAUSTED\"}";

TEST_F(ObservabilityTest, MetricsEndpointServesTheKeyFamilies) {
  const std::string text = Scrape();
  for (const char* family :
       {"kvkeep_build_info", "kvkeep_uptime_seconds", "kvkeep_pool_capacity_bytes",
        "kvkeep_pool_arena_bytes", "kvkeep_pool_used_bytes", "kvkeep_pages_in_use",
        "kvkeep_pool_largest_free_run_pages", "kvkeep_stored_bytes", "kvkeep_tenants",
        "kvkeep_sessions", "kvkeep_sequences", "kvkeep_spills_total", "kvkeep_restores_total",
        "kvkeep_spill_errors_total", "kvkeep_page_allocations_total",
        "kvkeep_page_allocation_failures_total", "kvkeep_grpc_server_handled_total",
        "kvkeep_grpc_server_handling_seconds", "kvkeep_compressions_total",
        "kvkeep_tenant_pages_in_use", "kvkeep_tenant_stored_bytes", "kvkeep_pool_pinned_pages",
        "kvkeep_pool_retired_pages", "kvkeep_read_streams_open"}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat("# TYPE ", family, " "))) << family;
  }
  auto values = ParseExposition(text);
  ASSERT_OK_AND_ASSIGN(v1::DaemonStatus status, daemon_.Admin()->GetStatus());
  EXPECT_EQ(values["kvkeep_pool_capacity_bytes"], static_cast<double>(status.pool_capacity_bytes()));
  EXPECT_EQ(values["kvkeep_pages_in_use"], 0);
  int build_info = 0;
  for (const auto& [series, value] : values) {
    if (absl::StartsWith(series, "kvkeep_build_info{version=\"") &&
        absl::EndsWith(series, ",backend=\"cpu\"}") && value == 1) {
      ++build_info;
    }
  }
  EXPECT_EQ(build_info, 1);
  // Anything but /metrics is 404; the daemon keeps serving.
  EXPECT_THAT(HttpGet(port_, "/"), ::testing::StartsWith("HTTP/1.1 404 "));
  EXPECT_THAT(HttpGet(port_, "/metrics"), ::testing::StartsWith("HTTP/1.1 200 "));
}

TEST_F(ObservabilityTest, ValuesMoveWithRpcs) {
  auto before = ScrapeValues();
  EXPECT_EQ(before[kAllocOk], 0);

  ASSERT_OK_AND_ASSIGN(std::string token, daemon_.CreateTenant("obs"));
  ASSERT_OK_AND_ASSIGN(auto client, Client::Attach(daemon_.channel(), token, "worker-0"));
  ASSERT_OK(client->RegisterModel(TestLayout()));
  ASSERT_OK_AND_ASSIGN(std::string seq, client->CreateSequence("test-model"));
  ASSERT_OK_AND_ASSIGN(v1::PageTableDelta delta, client->Allocate(seq, 64));
  uint64_t pages = 0;
  for (const auto& head : delta.heads()) pages += head.pages_size();
  ASSERT_GT(pages, 0u);

  auto after = ScrapeValues();
  EXPECT_EQ(after["kvkeep_pages_in_use"], static_cast<double>(pages));
  EXPECT_GT(after["kvkeep_pool_used_bytes"], 0);
  EXPECT_EQ(after["kvkeep_stored_bytes{tier=\"device\"}"], after["kvkeep_pool_used_bytes"]);
  EXPECT_EQ(after["kvkeep_tenant_pages_in_use{tenant=\"obs\"}"], static_cast<double>(pages));
  EXPECT_EQ(after["kvkeep_tenant_sessions{tenant=\"obs\"}"], 1);
  EXPECT_EQ(after["kvkeep_sessions"], 1);
  EXPECT_EQ(after["kvkeep_sequences"], 1);
  EXPECT_EQ(after["kvkeep_tenants"], 1);
  EXPECT_EQ(after[kAllocOk], 1);
  EXPECT_EQ(after["kvkeep_page_allocations_total"], 1);
  EXPECT_EQ(after["kvkeep_pages_allocated_total"], static_cast<double>(pages));
  EXPECT_GT(after["kvkeep_pool_largest_free_run_pages"], 0);
  // A sequence's first allocation travels as AllocatePagesStream (client.h), later ones unary.
  EXPECT_GE(after["kvkeep_grpc_server_handling_seconds_count{grpc_service=\"kvkeep.v1.KvCache\","
                  "grpc_method=\"AllocatePages\",grpc_type=\"unary\"}"] +
                after["kvkeep_grpc_server_handling_seconds_count{grpc_service=\"kvkeep.v1.KvCache\","
                      "grpc_method=\"AllocatePagesStream\",grpc_type=\"server_stream\"}"],
            1);
  EXPECT_GE(after["kvkeep_grpc_server_started_total{grpc_service=\"kvkeep.v1.Admin\","
                  "grpc_method=\"CreateTenant\",grpc_type=\"unary\"}"],
            1);
  EXPECT_GT(after["kvkeep_uptime_seconds"], 0);

  // A tenant over its hard maximum: a failure with its reason and code.
  ASSERT_OK_AND_ASSIGN(std::string small_token, daemon_.CreateTenant("small", 0, 64));
  ASSERT_OK_AND_ASSIGN(auto small, Client::Attach(daemon_.channel(), small_token, "worker-1"));
  ASSERT_OK(small->RegisterModel(TestLayout()));
  ASSERT_OK_AND_ASSIGN(std::string small_seq, small->CreateSequence("test-model"));
  EXPECT_EQ(small->Allocate(small_seq, 64).status().code(), absl::StatusCode::kResourceExhausted);
  // A compression that evicts tokens.
  std::string zeros(64 * 8 * 2, '\0');
  for (uint32_t layer = 0; layer < 2; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      ASSERT_OK(client->WriteInPlace(seq, layer, head, 0, 64, zeros.data(), zeros.data()));
    }
  }
  ASSERT_OK(client->Commit(seq, 64));
  v1::Policy policy;
  policy.set_scorer("knorm");
  policy.set_sinks(1);
  policy.set_window(1);
  policy.set_keep_ratio(0.25);
  ASSERT_OK_AND_ASSIGN(v1::CompressReply compressed, client->Compress(seq, policy));

  auto later = ScrapeValues();
  EXPECT_EQ(later["kvkeep_page_allocation_failures_total{reason=\"tenant_max\"}"], 1);
  EXPECT_EQ(later[kAllocExhausted], 1);
  EXPECT_EQ(later[kAllocOk], 1);
  EXPECT_EQ(later["kvkeep_compressions_total{trigger=\"request\"}"], 1);
  EXPECT_EQ(later["kvkeep_evicted_tokens_total{trigger=\"request\"}"],
            static_cast<double>(compressed.summary().tokens_before() -
                                compressed.summary().tokens_after()));
  EXPECT_EQ(later["kvkeep_compression_freed_pages_total{trigger=\"request\"}"],
            static_cast<double>(compressed.summary().pages_freed()));
  EXPECT_EQ(later["kvkeep_compression_duration_seconds_count{trigger=\"request\"}"], 1);
  EXPECT_EQ(later["kvkeep_pages_in_use"],
            static_cast<double>(pages - compressed.summary().pages_freed()));
  EXPECT_EQ(later["kvkeep_tenants"], 2);

  // The session ends: its sequence goes, and so do its pages.
  client.reset();
  small.reset();
  for (int i = 0; i < 100; ++i) {
    later = ScrapeValues();
    if (later["kvkeep_sessions"] == 0 && later["kvkeep_pages_in_use"] == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(later["kvkeep_sessions"], 0);
  EXPECT_EQ(later["kvkeep_pages_in_use"], 0);
  EXPECT_EQ(later["kvkeep_grpc_server_handled_total{grpc_service=\"kvkeep.v1.KvCache\","
                  "grpc_method=\"Session\",grpc_type=\"server_stream\",grpc_code=\"OK\"}"] +
                later["kvkeep_grpc_server_handled_total{grpc_service=\"kvkeep.v1.KvCache\","
                      "grpc_method=\"Session\",grpc_type=\"server_stream\",grpc_code="
                      "\"CANCELLED\"}"],
            2);
}

TEST_F(ObservabilityTest, ExpositionPassesPromtool) {
  // Some state first so that every family has samples.
  ASSERT_OK_AND_ASSIGN(std::string token, daemon_.CreateTenant("lint"));
  ASSERT_OK_AND_ASSIGN(auto client, Client::Attach(daemon_.channel(), token, "worker-0"));
  ASSERT_OK(client->RegisterModel(TestLayout()));
  ASSERT_OK_AND_ASSIGN(std::string seq, client->CreateSequence("test-model"));
  ASSERT_OK(client->Allocate(seq, 8).status());
  const std::string text = Scrape();
  ASSERT_FALSE(text.empty());

  const std::string promtool = FindPromtool();
  if (promtool.empty()) {
    GTEST_SKIP() << "promtool not found on PATH (Debian package `prometheus`): the exposition "
                    "was not validated by promtool";
  }
  const std::string file = daemon_.dir() + "/metrics.txt";
  {
    std::ofstream out(file);
    out << text;
  }
  const std::string report = daemon_.dir() + "/promtool.txt";
  const std::string command =
      absl::StrCat(promtool, " check metrics < ", file, " > ", report, " 2>&1");
  const int rc = std::system(command.c_str());
  std::ifstream in(report);
  const std::string output((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0)
      << "promtool check metrics failed:\n" << output << "\n--- exposition ---\n" << text;
  EXPECT_EQ(output, "") << "promtool lint findings";
}

TEST_F(ObservabilityTest, HealthCheckAnswersServing) {
  auto stub = GenericStub();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  // grpc.health.v1.HealthCheckRequest{service: ""} is the empty message.
  const grpc::ByteBuffer request = ToBuffer("");
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub->UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                  &response, [&](grpc::Status s) { done.set_value(s); });
  const grpc::Status status = done.get_future().get();
  ASSERT_TRUE(status.ok()) << status.error_message();
  // HealthCheckResponse{status: SERVING (1)}.
  const std::vector<Field> fields = ParseFields(FromBuffer(response));
  ASSERT_EQ(fields.size(), 1u);
  EXPECT_EQ(fields[0].number, 1u);
  EXPECT_EQ(fields[0].varint, 1u);

  // The health call went through the metrics interceptor like any other.
  auto values = ScrapeValues();
  EXPECT_EQ(values["kvkeep_grpc_server_handled_total{grpc_service=\"grpc.health.v1.Health\","
                   "grpc_method=\"Check\",grpc_type=\"unary\",grpc_code=\"OK\"}"],
            1);
}

TEST_F(ObservabilityTest, ReflectionListsTheServices) {
  auto stub = GenericStub();
  // ServerReflectionRequest{list_services (7): "*"}.
  OneShotBidi call(stub.get(), "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                   std::string("\x3a\x01*", 3));
  auto [status, response] = call.Wait();
  ASSERT_TRUE(status.ok()) << status.error_message();
  // ServerReflectionResponse.list_services_response (6) -> ListServiceResponse.service (1) ->
  // ServiceResponse.name (1).
  std::vector<std::string> services;
  for (const Field& f : ParseFields(response)) {
    if (f.number != 6) continue;
    for (const Field& s : ParseFields(f.bytes)) {
      if (s.number != 1) continue;
      for (const Field& n : ParseFields(s.bytes)) {
        if (n.number == 1) services.push_back(n.bytes);
      }
    }
  }
  EXPECT_THAT(services, Contains("kvkeep.v1.KvCache"));
  EXPECT_THAT(services, Contains("kvkeep.v1.Admin"));
  EXPECT_THAT(services, Contains("grpc.health.v1.Health"));
}

TEST_F(ObservabilityTest, SigtermStopsTheMetricsServerCleanly) {
  ASSERT_THAT(HttpGet(port_, "/metrics"), ::testing::StartsWith("HTTP/1.1 200 "));
  const int status = daemon_.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(HttpGet(port_, "/metrics"), "");  // nothing listens any more
}

}  // namespace
}  // namespace kvkeep::testing
