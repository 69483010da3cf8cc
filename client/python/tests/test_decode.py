"""Sequence._decode_chunks: ReadKV chunks of any order become one array per head, bit-exact, and a
reply whose bytes do not make whole tokens is DataLoss (no daemon needed: chunks built here)."""

import types
import unittest

import numpy as np

import kvkeep
from kvkeep._proto import kvcache_pb2


def chunk(layer, head, offset, keys, values, positions):
    return kvcache_pb2.KvChunk(layer=layer, kv_head=head, token_offset=offset,
                               token_count=len(positions), keys=keys.tobytes(),
                               values=values.tobytes(), positions=positions)


class DecodeChunksTest(unittest.TestCase):
    def setUp(self):
        self.seq = types.SimpleNamespace(
            model=types.SimpleNamespace(storage_dtype=np.float16, head_dim=4))

    def decode(self, chunks):
        return kvkeep.Sequence._decode_chunks(self.seq, chunks)

    def test_chunks_out_of_order_make_one_array_per_head(self):
        rng = np.random.default_rng(5)
        k = rng.integers(0, 1 << 16, (10, 4), dtype=np.uint16).view(np.float16)
        v = rng.integers(0, 1 << 16, (10, 4), dtype=np.uint16).view(np.float16)
        pos = list(range(100, 110))
        chunks = [chunk(1, 0, 6, k[6:], v[6:], pos[6:]), chunk(0, 1, 0, k[:2], v[:2], pos[:2]),
                  chunk(1, 0, 0, k[:6], v[:6], pos[:6])]
        heads = self.decode(chunks)
        self.assertEqual(sorted(heads), [(0, 1), (1, 0)])
        keys, values, positions = heads[(1, 0)]
        self.assertEqual(keys.dtype, np.float16)
        np.testing.assert_array_equal(keys.view(np.uint16), k.view(np.uint16))
        np.testing.assert_array_equal(values.view(np.uint16), v.view(np.uint16))
        np.testing.assert_array_equal(positions, np.array(pos, np.int32))
        # Writable arrays of their own, not read-only views of the messages' bytes.
        self.assertTrue(keys.flags.writeable and values.flags.writeable)
        np.testing.assert_array_equal(heads[(0, 1)][0].view(np.uint16), k[:2].view(np.uint16))

    def test_bytes_that_are_not_whole_tokens_are_data_loss(self):
        k = np.zeros((2, 4), np.float16)
        bad = kvcache_pb2.KvChunk(layer=0, kv_head=0, token_count=2, keys=k.tobytes()[:-2],
                                  values=k.tobytes()[:-2], positions=[0, 1])
        with self.assertRaises(kvkeep.DataLoss) as caught:
            self.decode([bad])
        self.assertIn("whole tokens", caught.exception.message)
        uneven = kvcache_pb2.KvChunk(layer=0, kv_head=0, token_count=2, keys=k.tobytes(),
                                     values=k.tobytes()[:8], positions=[0, 1])
        with self.assertRaises(kvkeep.DataLoss):
            self.decode([uneven])


if __name__ == "__main__":
    unittest.main()
