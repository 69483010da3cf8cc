"""What Client and Admin share: the gRPC channel to kvkeepd, the stub over it and the token sent
with every call.

    class Admin(Connection):
        _stub_class = admin_pb2_grpc.AdminStub

        def status(self):
            return self._unary(self._stub.GetStatus, admin_pb2.GetStatusRequest())

Every call goes out with "authorization: Bearer <token>" and gRPC
errors come back as KvkeepError subclasses (kvkeep.errors)."""

import os

import grpc

from kvkeep.errors import translated

DEFAULT_MAX_MESSAGE_BYTES = 4 << 20


def normalize_target(target):
    """gRPC target: 'unix:PATH', 'host:port' or a socket path (made 'unix:ABSPATH')."""
    target = os.fspath(target)
    if target.startswith(("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")):
        return target
    if "/" in target or target.endswith(".sock"):
        return "unix:" + os.path.abspath(target)
    return target


def make_channel(target, max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES, credentials=None,
                 options=()):
    opts = [("grpc.max_send_message_length", int(max_message_bytes)),
            ("grpc.max_receive_message_length", -1)] + list(options)
    target = normalize_target(target)
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=opts)
    return grpc.insecure_channel(target, options=opts)


class Connection:
    """A channel to kvkeepd with a bearer token. `target`: 'unix:/path/kvkeepd.sock', a socket
    path, or 'host:port' (pass `credentials` for TLS). `max_message_bytes` must not exceed the
    daemon's --max_message_mib. Closes its channel on close() or when used as a context manager."""

    _stub_class = None  # the generated stub of the service (set by each subclass)

    def __init__(self, target, token, *, max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES,
                 credentials=None, options=()):
        self.target = normalize_target(target)
        self.max_message_bytes = int(max_message_bytes)
        self._channel = make_channel(self.target, max_message_bytes, credentials, options)
        self._metadata = (("authorization", "Bearer " + token.strip()),)
        self._stub = self._stub_class(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _unary(self, method, request, timeout=None):
        with translated():
            return method(request, metadata=self._metadata, timeout=timeout)

    def _stream_in(self, method, requests, timeout=None):
        with translated():
            return method(iter(requests), metadata=self._metadata, timeout=timeout)

    def _stream_out(self, method, request, timeout=None):
        with translated():
            for reply in method(request, metadata=self._metadata, timeout=timeout):
                yield reply
