"""The worker's end of kvkeepd's arena channel: arenas arrive as file descriptors (SCM_RIGHTS)
over a SOCK_SEQPACKET Unix socket next to the gRPC one ("<socket>.arenas"), never by name. The
connection attaches once with the Session's one-time ticket (SessionStarted.attach_ticket); then
each request for an arena id is answered with its export and one fd (the tenant's own arenas
read-write, its sharing group's read-only)."""

import array
import os
import socket
import threading

from kvkeep._proto import kvcache_pb2
from kvkeep.errors import KvkeepError

MAX_MESSAGE_BYTES = 4096


def side_socket_for(target, advertised, suffix):
    """Where to connect to a side channel of the daemon: next to a unix: target (the path as this
    process sees it, plus `suffix`), else the path the daemon advertised."""
    if target.startswith("unix:"):
        path = target[len("unix:"):]
        while path.startswith("//"):
            path = path[1:]
        return path + suffix
    return advertised


def arena_socket_for(target, advertised):
    return side_socket_for(target, advertised, ".arenas")


class ArenaChannel:
    """One attached connection. `fetch(arena_id)` -> (ArenaExport, fd); the caller owns the fd."""

    def __init__(self, path, ticket, timeout=10.0):
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as err:
            self._sock.close()
            raise KvkeepError(f"cannot connect to the arena channel {path}: {err}") from err
        reply, fds = self._round_trip(kvcache_pb2.ArenaChannelRequest(attach=ticket))
        self.session_id = reply.session_id

    def _round_trip(self, request):
        self._sock.send(request.SerializeToString())
        data, ancdata, flags, _ = self._sock.recvmsg(
            MAX_MESSAGE_BYTES + 1, socket.CMSG_SPACE(4 * array.array("i").itemsize))
        fds = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[:len(payload) - len(payload) % got.itemsize])
                fds.extend(got)
        if not data:
            for fd in fds:
                os.close(fd)
            raise KvkeepError("the daemon closed the arena channel (the session ended?)")
        reply = kvcache_pb2.ArenaChannelReply()
        try:
            reply.ParseFromString(data)
        except Exception as err:  # noqa: BLE001 - a malformed reply is the daemon's fault
            for fd in fds:
                os.close(fd)
            raise KvkeepError(f"malformed arena channel reply: {err}") from err
        if reply.code != 0 or len(fds) != (1 if reply.HasField("arena") else 0):
            for fd in fds:
                os.close(fd)
            raise KvkeepError(f"arena channel refused (code {reply.code}): {reply.message}")
        return reply, fds

    def fetch(self, arena_id):
        with self._lock:
            reply, fds = self._round_trip(kvcache_pb2.ArenaChannelRequest(arena_id=arena_id))
        if not fds:
            raise KvkeepError(f"arena channel sent no file descriptor for arena {arena_id}")
        return reply.arena, fds[0]

    def close(self):
        self._sock.close()
