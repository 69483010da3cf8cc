// TCP listeners need TLS: the real daemon with a certificate made for the test, clients with and
// without the right CA, and mutual TLS with client certificates.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"

namespace kvkeep::testing {
namespace {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::system("command -v openssl > /dev/null") != 0) GTEST_SKIP() << "openssl not found";
    dir_ = daemon_.dir();
    // A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
    const std::string script = absl::StrCat(
        "cd ", dir_, " && ",
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=kvkeep-test-ca "
        "-keyout ca.key -out ca.pem 2>/dev/null && ",
        "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key "
        "-out server.csr 2>/dev/null && ",
        "printf 'subjectAltName=IP:127.0.0.1' > san.ext && ",
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
        "-extfile san.ext -out server.pem 2>/dev/null && ",
        "openssl req -newkey rsa:2048 -nodes -subj /CN=worker -keyout client.key "
        "-out client.csr 2>/dev/null && ",
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
        "-out client.pem 2>/dev/null");
    ASSERT_EQ(std::system(script.c_str()), 0) << "could not make test certificates";
    port_ = FreePort();
  }

  absl::Status Ping(std::shared_ptr<grpc::ChannelCredentials> creds) {
    ChannelOptions options;
    options.target = absl::StrCat("127.0.0.1:", port_);
    options.credentials = std::move(creds);
    auto admin = AdminClient::Connect(options, daemon_.admin_token());
    return admin->GetStatus().status();
  }

  grpc::SslCredentialsOptions Trusting() {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = Read(dir_ + "/ca.pem");
    return o;
  }

  DaemonProcess daemon_;
  std::string dir_;
  int port_ = 0;
};

TEST_F(TlsTest, TcpServesTlsOnlyToClientsThatTrustItsCertificate) {
  ASSERT_OK(daemon_.Start({absl::StrCat("--tcp=127.0.0.1:", port_),
                           "--tls_cert=" + dir_ + "/server.pem",
                           "--tls_key=" + dir_ + "/server.key"}));
  EXPECT_OK(Ping(grpc::SslCredentials(Trusting())));
  // Plain text and an unknown CA are refused.
  EXPECT_THAT(Ping(grpc::InsecureChannelCredentials()), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(Ping(grpc::SslCredentials(grpc::SslCredentialsOptions())),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(TlsTest, ClientCertificatesAreRequiredWhenAClientCaIsGiven) {
  ASSERT_OK(daemon_.Start({absl::StrCat("--tcp=127.0.0.1:", port_),
                           "--tls_cert=" + dir_ + "/server.pem",
                           "--tls_key=" + dir_ + "/server.key",
                           "--tls_client_ca=" + dir_ + "/ca.pem"}));
  EXPECT_THAT(Ping(grpc::SslCredentials(Trusting())), StatusIs(absl::StatusCode::kUnavailable));
  grpc::SslCredentialsOptions mutual = Trusting();
  mutual.pem_private_key = Read(dir_ + "/client.key");
  mutual.pem_cert_chain = Read(dir_ + "/client.pem");
  EXPECT_OK(Ping(grpc::SslCredentials(mutual)));
}

TEST_F(TlsTest, PlainTcpIsRefusedAtStart) {
  EXPECT_THAT(daemon_.Start({absl::StrCat("--tcp=127.0.0.1:", port_)}),
              StatusIs(absl::StatusCode::kInternal, "TCP needs TLS"));
}

}  // namespace
}  // namespace kvkeep::testing
