#include "service/observability/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "grpcpp/support/status.h"
#include "gtest/gtest.h"
#include "service/observability/metrics_http.h"

namespace kvkeep {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// Sends `request` raw to 127.0.0.1:port and returns everything the server answers until it
// closes. Empty on connect failure.
std::string RawHttp(int port, const std::string& request, bool half_close = true) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  if (half_close) shutdown(fd, SHUT_WR);
  std::string out;
  char buf[4096];
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

std::string Body(const std::string& response) {
  const size_t at = response.find("\r\n\r\n");
  return at == std::string::npos ? "" : response.substr(at + 4);
}

TEST(MetricsText, EscapesLabelValuesAndHelp) {
  EXPECT_EQ(EscapeLabelValue("plain-name"), "plain-name");
  EXPECT_EQ(EscapeLabelValue("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
  EXPECT_EQ(EscapeHelp("x \\ \"y\"\nz"), "x \\\\ \"y\"\\nz");  // quotes stay in HELP
}

TEST(MetricsText, FormatsValues) {
  EXPECT_EQ(FormatMetricValue(0), "0");
  EXPECT_EQ(FormatMetricValue(1234567890123.0), "1234567890123");
  EXPECT_EQ(FormatMetricValue(0.25), "0.25");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatMetricValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatMetricValue(std::nan("")), "NaN");
  EXPECT_EQ(FormatMetricValue(1.8446744073709552e19), "1.8446744073709552e+19");
}

TEST(MetricsText, WriterEmitsHelpTypeAndEscapedLabels) {
  ExpositionWriter w;
  w.Family("kvkeep_x_total", "counter", "Help\nline");
  w.Sample("kvkeep_x_total", {{"tenant", "we\"ird"}, {"tier", "device"}}, 3);
  w.Sample("kvkeep_x_total", {}, 4);
  EXPECT_EQ(w.Take(),
            "# HELP kvkeep_x_total Help\\nline\n# TYPE kvkeep_x_total counter\n"
            "kvkeep_x_total{tenant=\"we\\\"ird\",tier=\"device\"} 3\nkvkeep_x_total 4\n");
}

TEST(MetricsHistogram, CumulativeBucketsSumAndCount) {
  Histogram h({0.1, 1});
  h.Observe(0.05);
  h.Observe(0.1);  // le is inclusive
  h.Observe(0.5);
  h.Observe(7);
  ExpositionWriter w;
  h.Write(&w, "kvkeep_t_seconds", {{"m", "a"}});
  const std::string text = w.Take();
  EXPECT_THAT(text, HasSubstr("kvkeep_t_seconds_bucket{m=\"a\",le=\"0.1\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("kvkeep_t_seconds_bucket{m=\"a\",le=\"1\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("kvkeep_t_seconds_bucket{m=\"a\",le=\"+Inf\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("kvkeep_t_seconds_count{m=\"a\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("kvkeep_t_seconds_sum{m=\"a\"} 7.65"));
}

TEST(Metrics, ClassifiesAllocationFailures) {
  auto reason = [](const absl::Status& status) {
    return std::string(
        Metrics::AllocationFailureReason(Metrics::ClassifyAllocationFailure(status)));
  };
  // By the typed reason, never the text: a message that reads like another reason is ignored.
  EXPECT_EQ(reason(WithReason(absl::ResourceExhaustedError("pool exhausted"),
                              FailureReason::kTenantMax)),
            "tenant_max");
  EXPECT_EQ(reason(WithReason(absl::ResourceExhaustedError("quota exceeded"),
                              FailureReason::kPoolShort)),
            "pool_reserved");
  EXPECT_EQ(reason(WithReason(absl::ResourceExhaustedError("x"),
                              FailureReason::kBackendExhausted)),
            "pool_capacity");
  EXPECT_EQ(reason(absl::ResourceExhaustedError("tenant a quota exceeded")), "pool_capacity");
  EXPECT_EQ(reason(absl::InvalidArgumentError("tokens must be > 0")), "invalid_argument");
  EXPECT_EQ(reason(absl::NotFoundError("no sequence")), "not_found");
  EXPECT_EQ(reason(absl::UnauthenticatedError("")), "unauthenticated");
  EXPECT_EQ(reason(absl::InternalError("")), "other");
  // The RPC layer's carrier: the reason in the error details.
  const grpc::Status sent(grpc::StatusCode::RESOURCE_EXHAUSTED, "m",
                          ReasonDetails(FailureReason::kTenantMax));
  EXPECT_EQ(ReasonOf(Metrics::SentStatus(sent)), FailureReason::kTenantMax);
  EXPECT_EQ(Metrics::SentStatus(sent).message(), "m");
  EXPECT_EQ(ReasonOf(Metrics::SentStatus(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                                      "m", "unrelated"))),
            FailureReason::kNone);
}

TEST(Metrics, MethodSlotsAreBounded) {
  Metrics metrics;
  Metrics::Method* a = metrics.MethodFor("/kvkeep.v1.KvCache/Ping", Metrics::CallType::kUnary);
  EXPECT_EQ(a, metrics.MethodFor("/kvkeep.v1.KvCache/Ping", Metrics::CallType::kUnary));
  EXPECT_EQ(a->service, "kvkeep.v1.KvCache");
  EXPECT_EQ(a->name, "Ping");
  for (int i = 0; i < Metrics::kMaxMethods + 10; ++i) {
    metrics.MethodFor(absl::StrCat("/x.Y/M", i), Metrics::CallType::kUnary)->started++;
  }
  ExpositionWriter w;
  metrics.Write(&w);
  const std::string text = w.Take();
  EXPECT_THAT(text, HasSubstr("grpc_service=\"_other\",grpc_method=\"_other\""));
  int started_lines = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, "kvkeep_grpc_server_started_total{")) ++started_lines;
  }
  EXPECT_EQ(started_lines, Metrics::kMaxMethods + 1);
}

v1::DaemonStatus StatusWithTenants(int n) {
  v1::DaemonStatus s;
  s.set_version("0.1.0");
  s.set_backend("cpu");
  s.set_pool_capacity_bytes(1 << 20);
  s.set_pages_in_use(7);
  for (int i = 0; i < n; ++i) {
    v1::TenantInfo* t = s.add_tenant_usage();
    t->set_name(absl::StrCat("t", 1000 + i));
    t->set_used_bytes(static_cast<uint64_t>(i) * 100);  // t1000 smallest
    t->set_used_pages(static_cast<uint64_t>(i));
    t->set_sequences(1);
  }
  return s;
}

TEST(RenderMetrics, KeyFamiliesPresentWithHelpAndType) {
  Metrics metrics;
  PoolStats pool;
  pool.largest_free_run_pages = 42;
  pool.pinned_pages = 5;
  pool.retired_pages = 3;
  const std::string text = RenderMetrics(StatusWithTenants(2), pool, metrics);
  for (const char* family :
       {"kvkeep_build_info", "kvkeep_uptime_seconds", "kvkeep_pool_capacity_bytes",
        "kvkeep_pages_in_use", "kvkeep_pool_largest_free_run_pages", "kvkeep_stored_bytes",
        "kvkeep_tenant_pages_in_use", "kvkeep_tenant_stored_bytes", "kvkeep_spills_total",
        "kvkeep_page_allocation_failures_total", "kvkeep_grpc_server_handled_total",
        "kvkeep_grpc_server_handling_seconds", "kvkeep_compressions_total",
        "kvkeep_restore_duration_seconds"}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat("# HELP ", family, " "))) << family;
    EXPECT_THAT(text, HasSubstr(absl::StrCat("# TYPE ", family, " "))) << family;
  }
  EXPECT_THAT(text, HasSubstr("kvkeep_pool_largest_free_run_pages 42\n"));
  EXPECT_THAT(text, HasSubstr("kvkeep_pool_pinned_pages 5\n"));
  EXPECT_THAT(text, HasSubstr("kvkeep_pool_retired_pages 3\n"));
  EXPECT_THAT(text, HasSubstr("kvkeep_pages_in_use 7\n"));
  EXPECT_THAT(text, HasSubstr("kvkeep_build_info{version=\"0.1.0\",backend=\"cpu\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("kvkeep_tenant_pages_in_use{tenant=\"t1001\"} 1\n"));
  EXPECT_THAT(text, Not(HasSubstr("{tenant=\"_other\"}")));
  EXPECT_THAT(text, HasSubstr("kvkeep_metrics_tenants_aggregated 0\n"));
}

TEST(RenderMetrics, TenantSeriesAreCappedAndTheRestSummedAsOther) {
  Metrics metrics(MetricsOptions{.max_tenant_series = 3});
  const std::string text = RenderMetrics(StatusWithTenants(6), PoolStats{}, metrics);
  // The three largest (t1005, t1004, t1003) keep their series; t1000..t1002 are summed.
  EXPECT_THAT(text, HasSubstr("kvkeep_tenant_pages_in_use{tenant=\"t1005\"} 5\n"));
  EXPECT_THAT(text, HasSubstr("kvkeep_tenant_pages_in_use{tenant=\"t1003\"} 3\n"));
  EXPECT_THAT(text, Not(HasSubstr("tenant=\"t1002\"")));
  EXPECT_THAT(text, HasSubstr("kvkeep_tenant_pages_in_use{tenant=\"_other\"} 3\n"));  // 0+1+2
  EXPECT_THAT(text, HasSubstr("kvkeep_tenant_sequences{tenant=\"_other\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("kvkeep_metrics_tenants_aggregated 3\n"));
}

TEST(RenderMetrics, EveryFamilyHasOneHelpAndOneType) {
  Metrics metrics;
  metrics.MethodFor("/kvkeep.v1.KvCache/AllocatePages", Metrics::CallType::kUnary)->started++;
  const std::string text = RenderMetrics(StatusWithTenants(3), PoolStats{}, metrics);
  std::map<std::string, int> help, type;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, "# HELP ")) {
      help[std::string(line.substr(7, line.find(' ', 7) - 7))]++;
    } else if (absl::StartsWith(line, "# TYPE ")) {
      type[std::string(line.substr(7, line.find(' ', 7) - 7))]++;
    } else if (!line.empty()) {
      EXPECT_TRUE(absl::StartsWith(line, "kvkeep_")) << line;
    }
  }
  EXPECT_EQ(help.size(), type.size());
  for (const auto& [name, n] : help) EXPECT_EQ(n, 1) << name;
  for (const auto& [name, n] : type) EXPECT_EQ(n, 1) << name;
}

TEST(MetricsHttpServer, ServesMetricsAnd404AndErrors) {
  std::atomic<int> renders{0};
  auto http = MetricsHttpServer::Start("127.0.0.1:0", [&] {
    ++renders;
    return std::string("kvkeep_up 1\n");
  });
  ASSERT_TRUE(http.ok()) << http.status();
  const int port = (*http)->port();
  ASSERT_GT(port, 0);
  EXPECT_EQ((*http)->address(), absl::StrCat("127.0.0.1:", port));

  std::string r = RawHttp(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(r, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(r, HasSubstr("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
  EXPECT_THAT(r, HasSubstr("Content-Length: 12\r\n"));
  EXPECT_EQ(Body(r), "kvkeep_up 1\n");

  r = RawHttp(port, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
  EXPECT_EQ(Body(r), "kvkeep_up 1\n");
  r = RawHttp(port, "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_THAT(r, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_EQ(Body(r), "");
  EXPECT_EQ(renders.load(), 3);

  EXPECT_THAT(RawHttp(port, "GET / HTTP/1.1\r\n\r\n"), StartsWith("HTTP/1.1 404 "));
  EXPECT_THAT(RawHttp(port, "GET /metricsx HTTP/1.1\r\n\r\n"), StartsWith("HTTP/1.1 404 "));
  EXPECT_THAT(RawHttp(port, "POST /metrics HTTP/1.1\r\n\r\n"), StartsWith("HTTP/1.1 405 "));
  EXPECT_THAT(RawHttp(port, "garbage\r\n\r\n"), StartsWith("HTTP/1.1 400 "));
  EXPECT_THAT(RawHttp(port, "GET /metrics HTTP/1.1\r\nX: " +
                                std::string(MetricsHttpServer::kMaxRequestBytes, 'a') + "\r\n\r\n"),
              StartsWith("HTTP/1.1 431 "));
  // A client that closes without a full request gets nothing, and the server goes on.
  EXPECT_EQ(RawHttp(port, "GET /metr"), "");
  EXPECT_EQ(renders.load(), 3);
  EXPECT_EQ(Body(RawHttp(port, "GET /metrics HTTP/1.1\r\n\r\n")), "kvkeep_up 1\n");
}

TEST(MetricsHttpServer, ConcurrentScrapesAreAllAnswered) {
  auto http = MetricsHttpServer::Start("127.0.0.1:0", [] { return std::string(100000, 'x'); });
  ASSERT_TRUE(http.ok()) << http.status();
  const int port = (*http)->port();
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      if (Body(RawHttp(port, "GET /metrics HTTP/1.1\r\n\r\n")).size() == 100000) ++good;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 8);
}

TEST(MetricsHttpServer, StopsPromptlyWithAnIdleClientConnected) {
  auto http = MetricsHttpServer::Start("127.0.0.1:0", [] { return std::string("x"); });
  ASSERT_TRUE(http.ok()) << http.status();
  const int port = (*http)->port();
  // A client that connects and sends nothing holds the serving thread until Stop.
  std::thread idle([port] { RawHttp(port, "", /*half_close=*/false); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto start = std::chrono::steady_clock::now();
  http->reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  idle.join();
}

TEST(MetricsHttpServer, RejectsBadAddressesAndBusyPorts) {
  auto render = [] { return std::string(); };
  EXPECT_EQ(MetricsHttpServer::Start("127.0.0.1", render).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MetricsHttpServer::Start("127.0.0.1:99999", render).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MetricsHttpServer::Start("[::1:80", render).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto first = MetricsHttpServer::Start("127.0.0.1:0", render);
  ASSERT_TRUE(first.ok());
  auto second = MetricsHttpServer::Start(absl::StrCat("127.0.0.1:", (*first)->port()), render);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace kvkeep
