"""The bulk channel from Python (docs/api.md §5.2): the session attaches it by itself, its writes
and reads give what gRPC gives, a failing chunk is reported with its index and leaves the channel
usable, and another tenant's sequence stays out of reach."""

import unittest

import numpy as np

import kvkeep
from kvkeep._proto import kvcache_pb2
from daemon import DaemonTestCase


class BulkChannelTest(DaemonTestCase, unittest.TestCase):
    def test_bytes_over_the_channel_are_the_bytes_over_grpc(self):
        rng = np.random.default_rng(3)
        session = self.attach("bulk")
        self.assertTrue(session.bulk_channel_attached, session.bulk_channel_error)
        model = self.small_model(session)
        seq = session.create_sequence(model)
        n = 41
        seq.allocate(n)
        keys = rng.integers(0, 2**16, (model.layers, model.kv_heads, n, model.head_dim),
                            dtype=np.uint16).view(np.float16)
        values = rng.integers(0, 2**16, keys.shape, dtype=np.uint16).view(np.float16)
        summary = seq.write_all(keys, values)
        self.assertEqual(summary.tokens, model.layers * model.kv_heads * n)
        seq.commit(n)
        over_bulk = seq.read_all()
        raw_bulk = session.read_kv(kvcache_pb2.ReadRequest(sequence_id=seq.id))
        session.use_bulk_channel = False
        over_grpc = seq.read_all()
        raw_grpc = session.read_kv(kvcache_pb2.ReadRequest(sequence_id=seq.id))
        session.use_bulk_channel = True
        for l in range(model.layers):
            for h in range(model.kv_heads):
                k, v, pos = over_bulk[(l, h)]
                np.testing.assert_array_equal(k.view(np.uint16), keys[l, h].view(np.uint16))
                np.testing.assert_array_equal(v.view(np.uint16), values[l, h].view(np.uint16))
                np.testing.assert_array_equal(pos, over_grpc[(l, h)][2])
                np.testing.assert_array_equal(k.view(np.uint16), over_grpc[(l, h)][0].view(np.uint16))
        self.assertEqual([c.SerializeToString() for c in raw_bulk],
                         [c.SerializeToString() for c in raw_grpc])
        self.assertTrue(session.bulk_channel_attached)

    def test_a_failing_chunk_is_reported_and_the_channel_stays_usable(self):
        session = self.attach("bulk-errors")
        model = self.small_model(session)
        seq = session.create_sequence(model)
        seq.allocate(8)
        good = np.ones((4, model.head_dim), np.float16)
        with self.assertRaises(kvkeep.InvalidArgument) as caught:
            seq.write_heads([(0, 0, good, good, 0), (7, 0, good, good, 4), (0, 0, good, good, 4)])
        self.assertIn("chunk 1: layer 7", str(caught.exception))
        self.assertTrue(session.bulk_channel_attached)
        seq.commit(4)
        k, _, _ = seq.read(0, 0)  # chunk 0 stayed written
        np.testing.assert_array_equal(k, good)

        other = kvkeep.Client(self.daemon.target, self.daemon.create_tenant()[1])
        self.addCleanup(other.close)
        intruder = self.attach("intruder", client=other)
        self.assertTrue(intruder.bulk_channel_attached)
        with self.assertRaises(kvkeep.NotFound):
            intruder.read_kv(kvcache_pb2.ReadRequest(sequence_id=seq.id))
        chunk = kvcache_pb2.KvChunk(sequence_id=seq.id, token_count=1,
                                           keys=bytes(16), values=bytes(16))
        with self.assertRaises(kvkeep.NotFound):
            intruder.write_kv([chunk])
        k, _, _ = seq.read(0, 0)
        np.testing.assert_array_equal(k, good)


if __name__ == "__main__":
    unittest.main()
