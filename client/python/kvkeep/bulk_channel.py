"""The worker's end of kvkeepd's bulk channel (docs/api.md §5.2): WriteKV / ReadKV chunks as raw
frames on a Unix stream socket next to the gRPC one ("<socket>.bulk"). A frame is a 4-byte
little-endian length, a BulkRequest / BulkReply message, then its chunks' key and value bytes in
order. The connection attaches once with the Session's one-time ticket
(SessionStarted.bulk_ticket); Session.write_kv / read_kv use it when it is attached and free."""

import socket
import struct
import threading

import grpc

from kvkeep._proto import kvcache_pb2
from kvkeep.arena_channel import side_socket_for
from kvkeep.errors import _BY_CODE, KvkeepError, Unavailable

MAX_MESSAGE_BYTES = 4 << 20   # a reply frame's message
MAX_REQUEST_MESSAGE_BYTES = 1 << 20  # a request frame's message (the daemon refuses more)
MAX_PAYLOAD_BYTES = 16 << 20  # raw bytes after one write frame
_SEND_BUFFER = 4 << 20        # as the C++ client (capped by net.core.wmem_max)


def bulk_socket_for(target, advertised):
    return side_socket_for(target, advertised, ".bulk")


def _status_error(code, message):
    status = grpc.StatusCode.UNKNOWN
    for c in grpc.StatusCode:
        if c.value[0] == code:
            status = c
    return _BY_CODE.get(status, KvkeepError)(message, status)


class BulkChannel:
    """One attached connection; one call at a time (`try_acquire` / `release` around a call).
    After a transport failure `broken` is True and the connection is not used again."""

    def __init__(self, path, ticket, timeout=60.0):
        self._lock = threading.Lock()
        self.broken = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
            self._sock.connect(path)
        except OSError as err:
            self._sock.close()
            raise Unavailable(f"cannot connect to the bulk channel {path}: {err}") from err
        self._send(kvcache_pb2.BulkRequest(attach=ticket))
        reply = self._recv_reply()
        if reply.code != 0:
            self.close()
            raise _status_error(reply.code, reply.message)
        self.session_id = reply.session_id

    def close(self):
        self.broken = True
        self._sock.close()

    def try_acquire(self):
        return not self.broken and self._lock.acquire(blocking=False)

    def release(self):
        self._lock.release()

    # -- frames ---------------------------------------------------------------------------
    def _transport(self, fn, *args):
        try:
            return fn(*args)
        except (OSError, EOFError) as err:
            self.broken = True
            raise Unavailable(f"bulk channel: {err}") from err

    def _send(self, message, payload=()):
        body = message.SerializeToString()
        buffers = [struct.pack("<I", len(body)) + body, *payload]
        self._transport(self._sendall, buffers)

    def _sendall(self, buffers):
        views = [memoryview(b).cast("B") for b in buffers if len(b)]
        while views:
            sent = self._sock.sendmsg(views[:512])
            while sent and views:
                if sent >= len(views[0]):
                    sent -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    def _recv_into(self, view):
        while len(view):
            n = self._sock.recv_into(view)
            if n == 0:
                raise EOFError("the daemon closed the bulk channel")
            view = view[n:]

    def _recv_reply(self):
        def recv():
            head = bytearray(4)
            self._recv_into(memoryview(head))
            (size,) = struct.unpack("<I", head)
            if size > MAX_MESSAGE_BYTES:
                raise EOFError(f"bulk frame of {size} bytes over the limit")
            body = bytearray(size)
            self._recv_into(memoryview(body))
            return kvcache_pb2.BulkReply.FromString(bytes(body))
        return self._transport(recv)

    # -- calls ----------------------------------------------------------------------------
    def write(self, chunks):
        """WriteKV of KvChunk messages (keys and values in the messages); the WriteSummary."""
        frame, payload, size, head = kvcache_pb2.BulkRequest(), [], 0, 0
        for chunk in chunks:
            n = len(chunk.keys) + len(chunk.values)
            if n > MAX_PAYLOAD_BYTES:
                raise ValueError(f"a chunk of {n} bytes is over the bulk frame's {MAX_PAYLOAD_BYTES}")
            if payload and (size + n > MAX_PAYLOAD_BYTES or head > MAX_REQUEST_MESSAGE_BYTES // 2):
                self._send(frame, payload)
                frame, payload, size, head = kvcache_pb2.BulkRequest(), [], 0, 0
            header = frame.write.chunks.add()
            header.header.CopyFrom(chunk)
            header.header.ClearField("keys")
            header.header.ClearField("values")
            header.key_bytes, header.value_bytes = len(chunk.keys), len(chunk.values)
            payload += [chunk.keys, chunk.values]
            size += n
            head += header.ByteSize() + 8
        if payload:
            self._send(frame, payload)
        self._send(kvcache_pb2.BulkRequest(end_writes=True))
        reply = self._recv_reply()
        if reply.code != 0:
            raise _status_error(reply.code, reply.message)
        return reply.written

    def read(self, request):
        """ReadKV: (header, keys, values) per chunk, in order; keys and values are memoryviews
        of one buffer per frame (header: a KvChunk without its bytes)."""
        self._send(kvcache_pb2.BulkRequest(read=request))
        out = []
        while True:
            reply = self._recv_reply()
            if reply.end:
                if reply.code != 0:
                    raise _status_error(reply.code, reply.message)
                return out
            total = sum(c.key_bytes + c.value_bytes for c in reply.chunks)
            if total > 4 * MAX_PAYLOAD_BYTES:
                self.broken = True
                raise Unavailable("a bulk read reply announces more bytes than allowed")
            buffer = memoryview(bytearray(total))
            self._transport(self._recv_into, buffer)
            at = 0
            for c in reply.chunks:
                keys = buffer[at:at + c.key_bytes]
                values = buffer[at + c.key_bytes:at + c.key_bytes + c.value_bytes]
                out.append((c.header, keys, values))
                at += c.key_bytes + c.value_bytes
