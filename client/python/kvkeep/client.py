"""The worker API: Client -> Session (the Session stream, kept open by a background thread) ->
Sequence (allocate / write / commit / put_stats / compress / read / drop), over numpy arrays."""

import collections
import dataclasses
import threading

import grpc
import numpy as np

from kvkeep import dtypes
from kvkeep._proto import (common_pb2, kv_batch_pb2, kv_batch_pb2_grpc, kvcache_pb2,
                           kvcache_pb2_grpc)
from kvkeep.connection import (  # noqa: F401  (make_channel, normalize_target: public here too)
    DEFAULT_MAX_MESSAGE_BYTES, Connection, make_channel, normalize_target)
from kvkeep.errors import DataLoss, DeadlineExceeded, KvkeepError, Unavailable, from_rpc_error
from kvkeep.arena_channel import ArenaChannel, arena_socket_for
from kvkeep.bulk_channel import BulkChannel, bulk_socket_for
from kvkeep.shm import ArenaMapping
from kvkeep.stats import as_layer_stats, stats_per_layer

_WRITE_FRAMING = 4096  # room for a chunk's non-data fields, as the C++ client's WriteHead


def _merge_heads(heads, into):
    """Appends streamed HeadTables to `into`, joining `continued` pieces (docs/api.md §6.2)."""
    for head in heads:
        if not head.continued:
            into.add().CopyFrom(head)
            continue
        if not len(into) or (into[-1].layer, into[-1].kv_head) != (head.layer, head.kv_head):
            raise ValueError(f"head piece ({head.layer}, {head.kv_head}) continues no such head")
        into[-1].pages.extend(head.pages)
        into[-1].positions.extend(head.positions)


def _merge_tables(messages, heads_of):
    """One reply from the messages of a chunked (*Stream) call; `heads_of(msg)` names the heads
    field (msg.heads, or msg.table.heads for CompressReply)."""
    messages = list(messages)
    if not messages:
        raise ValueError("a chunked reply with no message")
    merged = type(messages[0])()
    merged.CopyFrom(messages[0])
    del heads_of(merged)[:]
    for message in messages:
        _merge_heads(heads_of(message), heads_of(merged))
    return merged


def _table_heads(message):
    return message.heads


def _policy(scorer=None, allocation=None, keep_ratio=None, max_tokens=None, sinks=None,
            window=None, pool_kernel=None, ada_alpha=None, seed=None):
    """A Policy with only the fields given (unset ones take the tenant default)."""
    fields = dict(scorer=scorer, allocation=allocation, keep_ratio=keep_ratio,
                  max_tokens=max_tokens, sinks=sinks, window=window, pool_kernel=pool_kernel,
                  ada_alpha=ada_alpha, seed=seed)
    return common_pb2.Policy(**{k: v for k, v in fields.items() if v is not None})


class _Part:
    """One ReadKV chunk for Sequence._decode_chunks: its header's offset and positions, its bytes."""
    __slots__ = ("token_offset", "positions", "keys", "values")

    def __init__(self, header, keys, values):
        self.token_offset, self.positions = header.token_offset, header.positions
        self.keys, self.values = keys, values


@dataclasses.dataclass(frozen=True)
class Model:
    """A registered model layout (what the client needs to turn arrays into page bytes)."""
    name: str
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    dtype: str  # 'float16', 'bfloat16' or 'float32'
    tokens_per_page: int
    rope_theta: float = 0.0
    rotary_dim: int = 0
    interleaved: bool = False
    created: bool = False  # RegisterModel created it (False: it was already registered)
    wo_grams: int = 0

    @property
    def storage_dtype(self):
        return dtypes.storage_dtype(self.dtype)

    @property
    def token_bytes(self):
        return self.head_dim * self.storage_dtype.itemsize

    @property
    def value_offset(self):
        return self.tokens_per_page * self.token_bytes

    @property
    def page_bytes(self):
        return 2 * self.value_offset

    @classmethod
    def from_layout(cls, layout, **extra):
        return cls(name=layout.name, layers=layout.layers, q_heads=layout.q_heads,
                   kv_heads=layout.kv_heads, head_dim=layout.head_dim,
                   dtype=dtypes.dtype_name(layout.dtype), tokens_per_page=layout.tokens_per_page,
                   rope_theta=layout.rope.theta, rotary_dim=layout.rope.rotary_dim,
                   interleaved=layout.rope.interleaved, **extra)

    def layout(self):
        return common_pb2.ModelLayout(
            name=self.name, layers=self.layers, q_heads=self.q_heads, kv_heads=self.kv_heads,
            head_dim=self.head_dim, dtype=dtypes.dtype_enum(self.dtype),
            tokens_per_page=self.tokens_per_page,
            rope=common_pb2.RopeConfig(theta=self.rope_theta, rotary_dim=self.rotary_dim,
                                       interleaved=self.interleaved))


Compressed = collections.namedtuple("Compressed", ["table", "positions", "summary"])
Compressed.__doc__ = """Result of Sequence.compress: `table` (the new PageTable), `positions`
({(layer, kv_head): int32 array of the kept original positions, ascending}) and `summary` (the
EvictionSummary message)."""


def _batches(chunks, budget):
    """KvChunkBatch messages of whole chunks whose encodings sum to at most `budget` (a larger
    chunk goes alone)."""
    batch, size = [], 0
    for chunk in chunks:
        n = chunk.ByteSize() + 6  # the item's tag and length
        if batch and size + n > budget:
            yield kv_batch_pb2.KvChunkBatch(chunks=batch)
            batch, size = [], 0
        batch.append(chunk)
        size += n
    if batch:
        yield kv_batch_pb2.KvChunkBatch(chunks=batch)


class Client(Connection):
    """A connection to kvkeepd with a tenant token. `attach(worker_name)` opens a Session.

    `target`: 'unix:/path/kvkeepd.sock', a socket path, or 'host:port' (pass `credentials` for
    TLS). `max_message_bytes` must not exceed the daemon's --max_message_mib."""

    _stub_class = kvcache_pb2_grpc.KvCacheStub

    # The bytes path packs its chunks several per message (kvkeep.v1.KvBatch) up to this many
    # chunk bytes; 0: one chunk per message (WriteKV / ReadKV). A daemon without KvBatch answers
    # UNIMPLEMENTED: the call is redone with WriteKV / ReadKV, and has_kv_batch becomes False.
    batch_message_bytes = 3 << 20
    has_kv_batch = None  # unknown until a bytes-path call found out

    def _batch_stub(self):
        stub = self.__dict__.get("_kv_batch_stub")
        if stub is None:
            stub = self._kv_batch_stub = kv_batch_pb2_grpc.KvBatchStub(self._channel)
        return stub

    def _batching(self):
        return self.batch_message_bytes > 0 and self.has_kv_batch is not False

    def attach(self, worker_name, timeout=10.0):
        """Opens the Session stream and waits (up to `timeout` s) for the daemon's first event."""
        return Session(self, worker_name, timeout)

    def ping(self, timeout=None):
        self._unary(self._stub.Ping, kvcache_pb2.PingRequest(), timeout=timeout)


class Session:
    """One worker session: alive while its Session stream is open. The daemon releases what the
    session held (and drops its sequences created without `retain`) when it ends. Use as a context
    manager or call close()."""

    def __init__(self, client, worker_name, timeout=10.0):
        self.client = client
        self.worker_name = worker_name
        self.session_id = None
        self.tenant = None
        self.max_message_bytes = None
        self.superseded_session_id = ""
        self.adopted_sequences = 0
        self.drain_reason = None
        self._arenas = {}     # arena_id -> ArenaExport
        self._mapped = {}     # arena_id -> ArenaMapping
        self._models = {}     # name -> Model
        self._arena_channel = None   # ArenaChannel once attached (fd-passed arenas)
        self.arena_channel_error = None  # why it could not be attached, if so
        # The bulk channel (docs/api.md §5.2): write_kv / read_kv (and so every bytes-path call)
        # go over it while it is attached and no other call of this session is using it.
        # False: gRPC only.
        self.use_bulk_channel = True
        self._bulk = None             # BulkChannel once attached
        self.bulk_channel_error = None  # why it could not be attached, if so
        self._bulk_ticket = b""
        self._bulk_socket = ""
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._closing = False
        self._error = None    # KvkeepError once the stream failed
        self._ended = False
        self._ticket = b""
        self._arena_socket = ""
        self._call = client._stub.Session(kvcache_pb2.AttachRequest(worker_name=worker_name),
                                          metadata=client._metadata)
        self._thread = threading.Thread(target=self._event_loop, daemon=True,
                                        name=f"kvkeep-session-{worker_name}")
        self._thread.start()
        if not self._started.wait(timeout):
            self._closing = True
            self._call.cancel()
            self._thread.join()
            raise DeadlineExceeded(f"no SessionStarted from {client.target} within {timeout} s")
        if self.session_id is None:
            self._thread.join()
            raise self._error or KvkeepError("the Session stream ended before it started")
        if self._ticket:
            self._attach_arena_channel()
        if self._bulk_ticket:
            self._attach_bulk_channel()

    def _attach_side_channel(self, channel_class, path, advertised, ticket):
        """(channel, None) attached with the one-time ticket at `path`, else at `advertised`; or
        (None, why)."""
        error = None
        for p in dict.fromkeys(x for x in (path, advertised) if x):
            try:
                return channel_class(p, ticket), None
            except KvkeepError as err:
                error = err
                if "cannot connect" not in str(err):
                    break  # the ticket was used: only an unreachable socket allows a retry
        return None, error

    def _attach_arena_channel(self):
        self._arena_channel, self.arena_channel_error = self._attach_side_channel(
            ArenaChannel, arena_socket_for(self.client.target, self._arena_socket),
            self._arena_socket, self._ticket)

    def _attach_bulk_channel(self):
        self._bulk, self.bulk_channel_error = self._attach_side_channel(
            BulkChannel, bulk_socket_for(self.client.target, self._bulk_socket),
            self._bulk_socket, self._bulk_ticket)

    @property
    def bulk_channel_attached(self):
        """True while the bulk channel is attached and usable."""
        return self._bulk is not None and not self._bulk.broken

    def _with_bulk(self, call):
        """call(bulk) when the bulk channel is attached, usable and free now; else None."""
        bulk = self._bulk
        if not self.use_bulk_channel or bulk is None or not bulk.try_acquire():
            return None
        try:
            return (call(bulk),)
        finally:
            bulk.release()

    # -- the Session stream ---------------------------------------------------------------
    def _event_loop(self):
        try:
            for event in self._call:
                kind = event.WhichOneof("event")
                if kind == "started":
                    s = event.started
                    with self._lock:
                        for arena in s.arenas:
                            self._arenas[arena.arena_id] = arena
                    self.session_id = s.session_id
                    self.tenant = s.tenant
                    self.max_message_bytes = s.max_message_bytes
                    self.superseded_session_id = s.superseded_session_id
                    self.adopted_sequences = s.adopted_sequences
                    self._ticket = s.attach_ticket
                    self._arena_socket = s.arena_socket
                    self._bulk_ticket = s.bulk_ticket
                    self._bulk_socket = s.bulk_socket
                    self._started.set()
                elif kind == "arena_added":
                    with self._lock:
                        self._arenas[event.arena_added.arena_id] = event.arena_added
                elif kind == "drain":
                    self.drain_reason = event.drain.reason
                # unknown events are ignored (the API only grows)
        except grpc.RpcError as err:
            if not (self._closing and err.code() == grpc.StatusCode.CANCELLED):
                self._error = from_rpc_error(err)
        finally:
            self._ended = True
            self._started.set()

    @property
    def alive(self):
        """True while the Session stream is open."""
        return not self._ended

    @property
    def error(self):
        """Why the stream ended (a KvkeepError, e.g. Aborted when superseded), or None."""
        return self._error

    def close(self):
        """Ends the session (cancels the stream) and unmaps the arenas this session mapped."""
        if not self._closing:
            self._closing = True
            self._call.cancel()
        self._thread.join()
        with self._lock:
            mapped, self._mapped = self._mapped, {}
            channel, self._arena_channel = self._arena_channel, None
        for m in mapped.values():
            m.close()
        if channel is not None:
            channel.close()
        if self._bulk is not None:
            self._bulk.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- models and sequences -------------------------------------------------------------
    def register_model(self, name, layers, q_heads, kv_heads, head_dim, dtype="float16",
                       tokens_per_page=16, rope_theta=10000.0, rotary_dim=0, interleaved=False,
                       inv_freq=None, wo_grams=None):
        """Registers (idempotently) a model layout; returns a Model.

        `wo_grams`: optional float32 array [layers, q_heads, head_dim, head_dim] of W_O^h W_O^hᵀ
        (or a dict {(layer, q_head): [head_dim, head_dim]}), used by the laprox scorer."""
        model = Model(name=name, layers=int(layers), q_heads=int(q_heads),
                      kv_heads=int(kv_heads), head_dim=int(head_dim),
                      dtype=dtypes.dtype_name(dtype), tokens_per_page=int(tokens_per_page),
                      rope_theta=float(rope_theta), rotary_dim=int(rotary_dim),
                      interleaved=bool(interleaved))
        layout = model.layout()
        if inv_freq is not None:
            layout.rope.inv_freq.extend(np.asarray(inv_freq, np.float32).ravel().tolist())

        def chunks():
            yield kvcache_pb2.ModelChunk(layout=layout)
            if wo_grams is None:
                return
            items = (wo_grams.items() if isinstance(wo_grams, dict) else
                     (((l, h), wo_grams[l][h]) for l in range(model.layers)
                      for h in range(model.q_heads)))
            for (layer, q_head), gram in items:
                yield kvcache_pb2.ModelChunk(wo_gram=kvcache_pb2.WoGram(
                    layer=layer, q_head=q_head,
                    values=np.asarray(gram, np.float32).ravel().tolist()))

        reply = self.client._stream_in(self.client._stub.RegisterModel, chunks())
        model = dataclasses.replace(model, created=reply.created, wo_grams=reply.wo_grams)
        self._models[name] = model
        return model

    def _model(self, model):
        if isinstance(model, Model):
            return model
        if model in self._models:
            return self._models[model]
        raise KeyError(f"model {model!r} was not registered in this session: call "
                       "register_model (idempotent) first")

    def create_sequence(self, model, retain=False, prefix_token_ids=None):
        """A new sequence of `model` (a Model or a name registered in this session): empty, or,
        with `prefix_token_ids`, starting with the sharing group's shared prefix pages matching
        them (`seq.shared_tokens` says how many tokens; they are committed and read-only)."""
        model = self._model(model)
        request = kvcache_pb2.CreateSequenceRequest(
            session_id=self.session_id, model=model.name, retain=retain,
            prefix_token_ids=list(prefix_token_ids or []))
        if prefix_token_ids:  # shared prefix pages: a table of any size, in chunks
            table = _merge_tables(self.client._stream_out(
                self.client._stub.CreateSequenceStream, request), _table_heads)
        else:
            table = self.client._unary(self.client._stub.CreateSequence, request)
        return Sequence(self, model, table)

    def lookup_prefix(self, model, token_ids):
        """Leading full pages of `token_ids` the tenant's sharing group holds for `model`
        (LookupPrefixReply: matched_pages, matched_tokens)."""
        model = self._model(model)
        return self.client._unary(self.client._stub.LookupPrefix,
                                  kvcache_pb2.LookupPrefixRequest(model=model.name,
                                                                  token_ids=list(token_ids)))

    def sequence(self, sequence_id, model, acquire=False):
        """An existing sequence (e.g. retained by another session). `acquire` takes a lease."""
        model = self._model(model)
        if acquire:
            table = _merge_tables(self.client._stream_out(
                self.client._stub.AcquireStream, kvcache_pb2.AcquireRequest(
                    session_id=self.session_id, sequence_id=sequence_id,
                    with_positions=True)), _table_heads)
        else:
            table = _merge_tables(self.client._stream_out(
                self.client._stub.GetSequenceStream, kvcache_pb2.GetSequenceRequest(
                    sequence_id=sequence_id, with_positions=True)), _table_heads)
        return Sequence(self, model, table)

    def write_kv(self, chunks):
        """Raw WriteKV of KvChunk messages (over the bulk channel when attached and free; else one
        stream, several per message through KvBatch.WriteKVBatch while
        Client.batch_message_bytes > 0). Returns the WriteSummary."""
        chunks = list(chunks)  # kept for a retry over gRPC
        try:
            written = self._with_bulk(lambda bulk: bulk.write(chunks))
            if written is not None:
                return written[0]
        except Unavailable:
            if not (self._bulk and self._bulk.broken):
                raise
            # The connection broke mid-write: the same bytes go again to the same slots.
        c = self.client
        if not c._batching():
            return c._stream_in(c._stub.WriteKV, chunks)
        chunks = list(chunks)  # kept for the retry on an older daemon
        try:
            budget = min(c.batch_message_bytes, self._write_limit())  # below the send limit
            reply = c._stream_in(c._batch_stub().WriteKVBatch, _batches(chunks, budget))
        except KvkeepError as err:
            if err.status_code != grpc.StatusCode.UNIMPLEMENTED:
                raise
            c.has_kv_batch = False  # nothing was applied: the same chunks, one per message
            return c._stream_in(c._stub.WriteKV, chunks)
        c.has_kv_batch = True
        return reply

    def read_kv(self, request):
        """Raw ReadKV: the list of KvChunk messages for a ReadRequest (over the bulk channel when
        attached and free; else several per message through KvBatch.ReadKVBatch while
        Client.batch_message_bytes > 0)."""
        read = self._with_bulk(lambda bulk: bulk.read(request))
        if read is None:
            return self._read_kv_grpc(request)
        out = []
        for header, keys, values in read[0]:
            chunk = kvcache_pb2.KvChunk()
            chunk.CopyFrom(header)
            chunk.keys, chunk.values = bytes(keys), bytes(values)
            out.append(chunk)
        return out

    def read_chunks(self, request):
        """ReadKV as (header, keys, values) per chunk: over the bulk channel the bytes are views of
        the received buffers (no copy), over gRPC the chunk's own fields."""
        read = self._with_bulk(lambda bulk: bulk.read(request))
        if read is not None:
            return read[0]
        return [(chunk, chunk.keys, chunk.values) for chunk in self._read_kv_grpc(request)]

    def _read_kv_grpc(self, request):
        c = self.client
        if not c._batching():
            return list(c._stream_out(c._stub.ReadKV, request))
        out = []
        try:
            batched = kv_batch_pb2.ReadBatchRequest(
                read=request, max_message_bytes=min(c.batch_message_bytes, 2**32 - 1))
            for message in c._stream_out(c._batch_stub().ReadKVBatch, batched):
                out.extend(message.chunks)
        except KvkeepError as err:
            if err.status_code != grpc.StatusCode.UNIMPLEMENTED or out:
                raise
            c.has_kv_batch = False
            return list(c._stream_out(c._stub.ReadKV, request))
        c.has_kv_batch = True
        return out

    # -- arenas (zero copy) -----------------------------------------------------------------
    def arenas(self):
        """The tenant's arena exports known to this session, by id."""
        with self._lock:
            return dict(self._arenas)

    def _note_arenas(self, exports):
        with self._lock:
            for arena in exports:
                self._arenas[arena.arena_id] = arena

    def map_arena(self, arena_id):
        """The ArenaMapping of one of the tenant's host arenas (mapped once per session): HOST_MEMFD
        arenas from their fd over the arena channel."""
        with self._lock:
            mapping = self._mapped.get(arena_id)
            export = self._arenas.get(arena_id)
        if mapping is not None:
            return mapping
        if export is None:
            export = self.client._unary(self.client._stub.GetArena,
                                        kvcache_pb2.GetArenaRequest(arena_id=arena_id))
            self._note_arenas([export])
        if export.kind == common_pb2.HOST_MEMFD:
            if self._arena_channel is None:
                raise KvkeepError(f"arena {arena_id} needs the arena channel: "
                                  f"{self.arena_channel_error or 'the daemon offered none'}")
            export, fd = self._arena_channel.fetch(arena_id)
            mapping = ArenaMapping(export, fd)
        else:
            mapping = ArenaMapping(export)
        with self._lock:
            if arena_id in self._mapped:
                mapping.close()
                return self._mapped[arena_id]
            self._mapped[arena_id] = mapping
        return mapping

    def _write_limit(self):
        limit = self.client.max_message_bytes
        if self.max_message_bytes:
            limit = min(limit, self.max_message_bytes)
        return max(limit - _WRITE_FRAMING, 1)


class Sequence:
    """One sequence of a session. Tracks its page table (per head: pages, committed count,
    capacity, kept positions) from the daemon's replies."""

    def __init__(self, session, model, table):
        self.session = session
        self.model = model
        self.id = table.sequence_id
        self.next_position = 0
        shape = (model.layers, model.kv_heads)
        self._counts = np.zeros(shape, np.int64)
        self._capacity = np.zeros(shape, np.int64)
        self._pages = {}
        self._positions = {}
        self._apply_table(table)

    def __repr__(self):
        return f"Sequence({self.id!r}, model={self.model.name!r}, tokens={self.token_count})"

    # -- table tracking ----------------------------------------------------------------------
    def _apply_table(self, table):
        self.next_position = table.next_position
        self.shared_tokens = table.shared_tokens  # leading tokens in read-only shared pages
        for head in table.heads:
            key = (head.layer, head.kv_head)
            self._counts[key] = head.token_count
            self._capacity[key] = head.capacity
            self._pages[key] = list(head.pages)
            if len(head.positions) == head.token_count:
                self._positions[key] = np.array(head.positions, np.int32)
            else:
                self._positions.pop(key, None)
        self.session._note_arenas(table.arenas)

    @property
    def token_counts(self):
        """Committed tokens per head, int64 array [layers, kv_heads]."""
        return self._counts.copy()

    @property
    def token_count(self):
        """Committed tokens of the longest head."""
        return int(self._counts.max()) if self._counts.size else 0

    def positions(self, layer, kv_head):
        """Original positions of a head's committed tokens (from the last table with them)."""
        key = (layer, kv_head)
        if key not in self._positions:
            self.table(with_positions=True)
        return self._positions[key].copy()

    def _c(self):
        return self.session.client

    # -- RPCs -------------------------------------------------------------------------------
    def table(self, with_positions=True):
        """GetSequence: the current PageTable (also refreshes what this object tracks)."""
        table = _merge_tables(self._c()._stream_out(
            self._c()._stub.GetSequenceStream, kvcache_pb2.GetSequenceRequest(
                sequence_id=self.id, with_positions=with_positions)), _table_heads)
        self._apply_table(table)
        return table

    def allocate(self, tokens):
        """Room for `tokens` more tokens after the committed ones in every head."""
        request = kvcache_pb2.AllocateRequest(session_id=self.session.session_id,
                                              sequence_id=self.id, tokens=int(tokens))
        # At worst a page per token and head, 8 bytes each: past half the limit, in chunks.
        worst = len(self._pages) * ((int(tokens) + 1) * 8 + 32)
        if not self._pages or worst > self.session._write_limit() // 2:
            delta = _merge_tables(self._c()._stream_out(self._c()._stub.AllocatePagesStream,
                                                        request), _table_heads)
        else:
            delta = self._c()._unary(self._c()._stub.AllocatePages, request)
        for head in delta.heads:
            key = (head.layer, head.kv_head)
            self._pages.setdefault(key, []).extend(head.pages)
            self._capacity[key] = head.capacity
        self.session._note_arenas(delta.new_arenas)
        return delta

    def _chunks(self, layer, kv_head, keys, values, offset):
        keys = dtypes.to_storage(keys, self.model.dtype)
        values = dtypes.to_storage(values, self.model.dtype)
        if keys.ndim != 2 or keys.shape != values.shape:
            raise ValueError(f"keys and values must be [tokens, head_dim] of one shape, got "
                             f"{keys.shape} and {values.shape}")
        n = keys.shape[0]
        token_bytes = max(keys.shape[1] * keys.itemsize, 1)
        per_chunk = max(1, self.session._write_limit() // (2 * token_bytes))
        for start in range(0, max(n, 1), per_chunk):
            stop = min(n, start + per_chunk)
            yield kvcache_pb2.KvChunk(
                session_id=self.session.session_id, sequence_id=self.id, layer=int(layer),
                kv_head=int(kv_head), token_offset=int(offset) + start, token_count=stop - start,
                keys=keys[start:stop].tobytes(), values=values[start:stop].tobytes())

    def write(self, layer, kv_head, keys, values, offset=0):
        """Bytes path (WriteKV): keys/values [n, head_dim] of the model dtype (bfloat16 as uint16
        bits; other float arrays are converted) into slots [offset, offset + n) of the head,
        chunked below the message limit. Returns the WriteSummary."""
        return self.session.write_kv(self._chunks(layer, kv_head, keys, values, offset))

    def write_heads(self, items):
        """Like write() for many heads in one WriteKV stream: items of
        (layer, kv_head, keys, values, offset)."""
        def chunks():
            for layer, kv_head, keys, values, offset in items:
                yield from self._chunks(layer, kv_head, keys, values, offset)
        return self.session.write_kv(chunks())

    def write_all(self, keys, values, offset=0):
        """Every head at once: keys/values [layers, kv_heads, n, head_dim]; `offset` an int or an
        int array [layers, kv_heads] (e.g. token_counts after a compression)."""
        offsets = np.broadcast_to(np.asarray(offset), (self.model.layers, self.model.kv_heads))
        return self.write_heads((l, h, keys[l, h], values[l, h], int(offsets[l, h]))
                                for l in range(self.model.layers)
                                for h in range(self.model.kv_heads))

    def commit(self, tokens, positions=None, stats=None):
        """Declares `tokens` more tokens written in every head, optionally with their positions
        (ascending) and query statistics (LayerStats messages or dicts of layer_stats()
        arguments). Returns the CommitReply; when it carries `compressed` (decode-time eviction)
        the tracked table follows it."""
        request = kvcache_pb2.CommitRequest(session_id=self.session.session_id,
                                            sequence_id=self.id, tokens=int(tokens))
        if positions is not None:
            request.positions.extend(np.asarray(positions, np.int64).tolist())
        for item in stats or ():
            request.stats.append(as_layer_stats(item))
        reply = self._c()._unary(self._c()._stub.CommitTokens, request)
        if reply.compressed_table_omitted:  # the compressed table did not fit: read it in chunks
            reply.compressed.table.CopyFrom(self.table(with_positions=True))
        if reply.HasField("compressed"):
            self._apply_table(reply.compressed.table)
        else:
            if positions is not None:
                new = np.asarray(positions, np.int32)
            else:
                new = np.arange(self.next_position, self.next_position + int(tokens),
                                dtype=np.int32)
            for key in list(self._positions):
                self._positions[key] = np.concatenate([self._positions[key], new])
            self._counts += int(tokens)
        self.next_position = reply.next_position
        return reply

    def put_stats(self, stats=None, *, window_queries=None, query_sum=None, query_count=None,
                  query_sq_sum=None, attention_mass=None, layers=None):
        """PutStats, one chunk per layer. Either `stats` (LayerStats messages or dicts), or arrays
        with a leading layer axis: window_queries [layers, q_heads, window, head_dim],
        query_sum / query_sq_sum [layers, q_heads, head_dim] with query_count (int or per layer),
        attention_mass [layers, q_heads, tokens] (or per layer a list of q_heads 1-D arrays).
        `layers`: the layer ids the arrays cover (default all). Returns the layers applied."""
        if stats is None:
            stats = stats_per_layer(self.model.layers, window_queries, query_sum, query_count,
                                    query_sq_sum, attention_mass, layers)
        chunks = (kvcache_pb2.StatsChunk(sequence_id=self.id, stats=as_layer_stats(s))
                  for s in stats)
        return self._c()._stream_in(self._c()._stub.PutStats, chunks).layers

    def compress(self, scorer=None, allocation=None, keep_ratio=None, max_tokens=None,
                 sinks=None, window=None, pool_kernel=None, ada_alpha=None, seed=None,
                 policy=None):
        """Compresses in place. Fields left None take the tenant default (`policy`: a Policy
        message instead). Returns Compressed(table, positions, summary)."""
        if policy is None:
            policy = _policy(scorer, allocation, keep_ratio, max_tokens, sinks, window,
                             pool_kernel, ada_alpha, seed)
        reply = _merge_tables(self._c()._stream_out(
            self._c()._stub.CompressStream, kvcache_pb2.CompressRequest(
                session_id=self.session.session_id, sequence_id=self.id, policy=policy)),
            lambda m: m.table.heads)
        self._apply_table(reply.table)
        kept = {(h.layer, h.kv_head): np.array(h.positions, np.int32) for h in reply.table.heads}
        return Compressed(reply.table, kept, reply.summary)

    def _decode_chunks(self, chunks):
        """{(layer, kv_head): (keys, values, positions)} from ReadKV chunks (KvChunk messages, or
        (header, keys, values) as Session.read_chunks gives): each chunk's bytes copied once,
        straight into arrays sized from the chunks' lengths."""
        dt, d = np.dtype(self.model.storage_dtype), self.model.head_dim
        token_bytes = d * dt.itemsize
        heads = {}
        for c in chunks:
            if not isinstance(c, tuple):
                c = (c, c.keys, c.values)
            heads.setdefault((c[0].layer, c[0].kv_head), []).append(_Part(*c))
        out = {}
        for key, parts in heads.items():
            parts.sort(key=lambda c: c.token_offset)
            total = sum(len(c.keys) for c in parts)
            if total % token_bytes or any(len(c.keys) != len(c.values) for c in parts):
                raise DataLoss(f"ReadKV reply for (layer, kv_head) {key}: key and value bytes do "
                               f"not make whole tokens of {token_bytes} bytes")
            keys = np.empty((total // token_bytes, d), dt)
            values = np.empty_like(keys)
            key_bytes = keys.reshape(-1).view(np.uint8)
            value_bytes = values.reshape(-1).view(np.uint8)
            at = 0
            for c in parts:
                n = len(c.keys)
                key_bytes[at:at + n] = np.frombuffer(c.keys, np.uint8)
                value_bytes[at:at + n] = np.frombuffer(c.values, np.uint8)
                at += n
            positions = np.concatenate([np.asarray(c.positions, np.int32) for c in parts])
            out[key] = (keys, values, positions)
        return out

    def read(self, layer, kv_head, token_begin=0, token_end=0):
        """Bytes path (ReadKV): (keys, values, positions) of a head's committed tokens in
        [token_begin, token_end) (0: to the end); keys/values [n, head_dim] of the storage dtype
        (uint16 bits for bfloat16), positions int32."""
        request = kvcache_pb2.ReadRequest(
            sequence_id=self.id, layer_begin=layer, layer_end=layer + 1, kv_head_begin=kv_head,
            kv_head_end=kv_head + 1, token_begin=token_begin, token_end=token_end)
        heads = self._decode_chunks(self.session.read_chunks(request))
        if (layer, kv_head) not in heads:
            empty = np.zeros((0, self.model.head_dim), self.model.storage_dtype)
            return empty, empty.copy(), np.zeros(0, np.int32)
        return heads[(layer, kv_head)]

    def read_all(self):
        """Every head in one ReadKV stream: {(layer, kv_head): (keys, values, positions)}."""
        heads = self._decode_chunks(self.session.read_chunks(
            kvcache_pb2.ReadRequest(sequence_id=self.id)))
        empty = np.zeros((0, self.model.head_dim), self.model.storage_dtype)
        for l in range(self.model.layers):
            for h in range(self.model.kv_heads):
                heads.setdefault((l, h), (empty, empty.copy(), np.zeros(0, np.int32)))
        return heads

    # -- zero copy (HOST_SHM arenas) -----------------------------------------------------------
    def _slot_runs(self, layer, kv_head, offset, n):
        """(mapping, page byte offset, first slot, token index, count) runs covering the slots."""
        tpp = self.model.tokens_per_page
        pages = self._pages.get((layer, kv_head), [])
        if offset < 0 or offset + n > len(pages) * tpp:
            raise IndexError(f"slots [{offset}, {offset + n}) of head ({layer}, {kv_head}) are "
                             f"beyond its {len(pages) * tpp} allocated slots")
        i = 0
        while i < n:
            slot = offset + i
            page = pages[slot // tpp]
            first = slot % tpp
            count = min(tpp - first, n - i)
            mapping = self.session.map_arena(page >> 32)
            yield mapping, (page & 0xFFFFFFFF) * self.model.page_bytes, first, i, count
            i += count

    def write_in_place(self, layer, kv_head, keys, values, offset=0):
        """Zero copy: writes keys/values [n, head_dim] straight into the mapped pages of the head
        (slots [offset, offset + n), allocated by allocate()). Commit afterwards."""
        keys = dtypes.to_storage(keys, self.model.dtype)
        values = dtypes.to_storage(values, self.model.dtype)
        tb = self.model.token_bytes
        if keys.shape != values.shape or keys.ndim != 2 or keys.shape[1] * keys.itemsize != tb:
            raise ValueError(f"keys and values must be [tokens, {self.model.head_dim}], got "
                             f"{keys.shape} and {values.shape}")
        kb, vb = keys.view(np.uint8).reshape(-1, tb), values.view(np.uint8).reshape(-1, tb)
        if offset < self.shared_tokens:
            raise PermissionError(f"slots [0, {self.shared_tokens}) of {self.id} are shared prefix "
                                  "pages (read-only)")
        for mapping, base, first, i, count in self._slot_runs(layer, kv_head, offset,
                                                              keys.shape[0]):
            mapping.view(base + first * tb, count * tb)[:] = kb[i:i + count].ravel()
            mapping.view(base + self.model.value_offset + first * tb,
                         count * tb)[:] = vb[i:i + count].ravel()

    def publish_prefix(self, token_ids):
        """Shares this sequence's first full pages (`token_ids`: the ids of its first tokens) with
        the tenant's sharing group; the table follows the reply (those pages become read-only).
        Returns the PublishPrefixReply."""
        reply = self.session.client._unary(
            self.session.client._stub.PublishPrefix,
            kvcache_pb2.PublishPrefixRequest(session_id=self.session.session_id,
                                             sequence_id=self.id, token_ids=list(token_ids)))
        self._apply_table(reply.table)
        return reply

    def read_in_place(self, layer, kv_head, offset=0, count=None):
        """Zero copy: copies of keys/values [count, head_dim] read from the mapped pages (default:
        the committed tokens)."""
        if count is None:
            count = int(self._counts[layer, kv_head]) - offset
        tb, dt = self.model.token_bytes, self.model.storage_dtype
        kb = np.empty((count, tb), np.uint8)
        vb = np.empty((count, tb), np.uint8)
        for mapping, base, first, i, n in self._slot_runs(layer, kv_head, offset, count):
            kb[i:i + n] = mapping.view(base + first * tb, n * tb).reshape(n, tb)
            vb[i:i + n] = mapping.view(base + self.model.value_offset + first * tb,
                                       n * tb).reshape(n, tb)
        return (kb.view(dt).reshape(count, self.model.head_dim),
                vb.view(dt).reshape(count, self.model.head_dim))

    # -- lifetime ----------------------------------------------------------------------------
    def acquire(self):
        """Takes a lease for this session (restores a spilled sequence)."""
        table = _merge_tables(self._c()._stream_out(
            self._c()._stub.AcquireStream, kvcache_pb2.AcquireRequest(
                session_id=self.session.session_id, sequence_id=self.id,
                with_positions=True)), _table_heads)
        self._apply_table(table)
        return table

    def release(self):
        """Ends this session's lease; returns the leases left."""
        return self._c()._unary(self._c()._stub.Release, kvcache_pb2.ReleaseRequest(
            session_id=self.session.session_id, sequence_id=self.id)).leases_left

    def drop(self):
        """Frees every page of the sequence; returns the DropReply."""
        return self._c()._unary(self._c()._stub.Drop, kvcache_pb2.DropRequest(
            session_id=self.session.session_id, sequence_id=self.id))

    def spill(self):
        return self._c()._unary(self._c()._stub.Spill, kvcache_pb2.SpillRequest(
            session_id=self.session.session_id, sequence_id=self.id))

    def restore(self):
        table = _merge_tables(self._c()._stream_out(
            self._c()._stub.RestoreStream, kvcache_pb2.RestoreRequest(
                session_id=self.session.session_id, sequence_id=self.id,
                with_positions=True)), _table_heads)
        self._apply_table(table)
        return table
