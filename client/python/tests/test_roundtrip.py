"""write -> commit -> read is bit-exact for every dtype, over one or many WriteKV chunks."""

import time
import unittest

import numpy as np

import kvkeep
from daemon import DaemonTestCase


def random_bits(rng, shape, dtype):
    """Arbitrary bit patterns (NaN payloads, infinities, subnormals included) of `dtype`."""
    itemsize = np.dtype(dtype).itemsize
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


class RoundTripTest(DaemonTestCase, unittest.TestCase):
    def check_dtype(self, dtype, storage):
        rng = np.random.default_rng(7)
        with self.client.attach("rt-" + dtype) as session:
            model = self.small_model(session, dtype=dtype)
            self.assertEqual(model.storage_dtype, np.dtype(storage))
            seq = session.create_sequence(model)
            n = 37  # not a multiple of tokens_per_page
            seq.allocate(n)
            data = {}
            for l in range(model.layers):
                for h in range(model.kv_heads):
                    k = random_bits(rng, (n, model.head_dim), storage)
                    v = random_bits(rng, (n, model.head_dim), storage)
                    summary = seq.write(l, h, k, v)
                    self.assertEqual(summary.tokens, n)
                    data[(l, h)] = (k, v)
            reply = seq.commit(n)
            self.assertEqual(reply.token_count, n)
            self.assertEqual(seq.token_count, n)
            for (l, h), (k, v) in data.items():
                rk, rv, pos = seq.read(l, h)
                self.assertEqual(rk.dtype, np.dtype(storage))
                self.assertEqual(rk.shape, (n, model.head_dim))
                np.testing.assert_array_equal(rk.view(np.uint8), k.view(np.uint8))
                np.testing.assert_array_equal(rv.view(np.uint8), v.view(np.uint8))
                np.testing.assert_array_equal(pos, np.arange(n))
            everything = seq.read_all()
            self.assertEqual(len(everything), model.layers * model.kv_heads)
            for key, (k, v) in data.items():
                np.testing.assert_array_equal(everything[key][0].view(np.uint8), k.view(np.uint8))
            seq.drop()

    def test_float16(self):
        self.check_dtype("float16", np.float16)

    def test_float32(self):
        self.check_dtype("float32", np.float32)

    def test_bfloat16(self):
        self.check_dtype("bfloat16", np.uint16)

    def test_bfloat16_from_floats(self):
        values = np.array([0.0, -0.0, 1.0, -2.5, 3.140625, 1e-3, 65504.0, np.inf, -np.inf],
                          np.float32)
        bits = kvkeep.float32_to_bf16(values)
        self.assertEqual(bits.dtype, np.uint16)
        back = kvkeep.bf16_to_float32(bits)
        np.testing.assert_allclose(back, values, rtol=2 ** -8)
        self.assertTrue(np.isnan(kvkeep.bf16_to_float32(kvkeep.float32_to_bf16(
            np.array([np.nan], np.float32))))[0])
        # Round to nearest even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
        self.assertEqual(kvkeep.float32_to_bf16(np.float32(1 + 2 ** -8)), 0x3F80)
        # A float32 array written to a bf16 model is rounded the same way.
        with self.client.attach("bf") as session:
            model = self.small_model(session, dtype="bfloat16")
            seq = session.create_sequence(model)
            x = np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32)
            seq.allocate(5)
            seq.write(1, 1, x, -x)
            seq.commit(5)
            k, v, _ = seq.read(1, 1)
            np.testing.assert_array_equal(k, kvkeep.float32_to_bf16(x))
            np.testing.assert_array_equal(v, kvkeep.float32_to_bf16(-x))

    def test_many_chunks_offsets_and_positions(self):
        # A small client message limit forces WriteKV to split a head into several chunks.
        client = kvkeep.Client(self.daemon.target, self.token, max_message_bytes=64 * 1024)
        self.addCleanup(client.close)
        with client.attach("chunks") as session:
            model = self.small_model(session, dtype="float16", head_dim=64, name="wide")
            seq = session.create_sequence(model)
            n = 1500  # 1500 * 64 * 2 B = 192 KB of keys per head
            seq.allocate(n)
            rng = np.random.default_rng(11)
            k = random_bits(rng, (n, 64), np.float16)
            v = random_bits(rng, (n, 64), np.float16)
            summary = seq.write(0, 1, k[:1000], v[:1000])
            self.assertGreater(summary.chunks, 1)
            seq.write(0, 1, k[1000:], v[1000:], offset=1000)
            positions = np.arange(n) * 3 + 5
            seq.commit(n, positions=positions)
            self.assertEqual(seq.next_position, positions[-1] + 1)
            rk, rv, pos = seq.read(0, 1)
            np.testing.assert_array_equal(rk.view(np.uint16), k.view(np.uint16))
            np.testing.assert_array_equal(rv.view(np.uint16), v.view(np.uint16))
            np.testing.assert_array_equal(pos, positions)
            # A token range.
            rk, _, pos = seq.read(0, 1, token_begin=100, token_end=110)
            np.testing.assert_array_equal(rk.view(np.uint16), k[100:110].view(np.uint16))
            np.testing.assert_array_equal(pos, positions[100:110])

    def test_batched_and_unbatched_bytes_path_agree(self):
        # Several heads' chunks per message (KvBatch), then one per message (WriteKV / ReadKV).
        rng = np.random.default_rng(5)
        self.addCleanup(setattr, self.client, "batch_message_bytes",
                        self.client.batch_message_bytes)
        with self.client.attach("batches") as session:
            session.use_bulk_channel = False  # the gRPC bytes path is what this test is about
            model = self.small_model(session, dtype="float16")
            results = {}
            for batch_bytes in (1 << 20, 700, 0):  # a budget below one head: one per message
                self.client.batch_message_bytes = batch_bytes
                seq = session.create_sequence(model)
                n = 20
                seq.allocate(n)
                k = random_bits(rng, (model.layers, model.kv_heads, n, model.head_dim), np.float16)
                v = random_bits(rng, (model.layers, model.kv_heads, n, model.head_dim), np.float16)
                summary = seq.write_all(k, v)
                self.assertEqual(summary.chunks, model.layers * model.kv_heads)
                seq.commit(n)
                back = seq.read_all()
                for l in range(model.layers):
                    for h in range(model.kv_heads):
                        np.testing.assert_array_equal(back[(l, h)][0].view(np.uint16),
                                                      k[l, h].view(np.uint16))
                        np.testing.assert_array_equal(back[(l, h)][1].view(np.uint16),
                                                      v[l, h].view(np.uint16))
                results[batch_bytes] = self.client.has_kv_batch
                seq.drop()
            self.assertIs(results[1 << 20], True)  # this daemon serves KvBatch

    def test_session_close_drops_unretained_sequences(self):
        session = self.client.attach("short")
        model = self.small_model(session)
        seq = session.create_sequence(model)
        kept = session.create_sequence(model, retain=True)
        self.assertTrue(session.alive)
        session.close()
        self.assertFalse(session.alive)
        self.assertIsNone(session.error)
        with self.client.attach("later") as later:
            later.register_model(**_layout_args(model))
            deadline = 50
            while deadline:
                try:
                    later.sequence(seq.id, model.name)
                except kvkeep.NotFound:
                    break
                deadline -= 1
                time.sleep(0.05)
            self.assertGreater(deadline, 0, "the session's sequence outlived it")
            self.assertEqual(later.sequence(kept.id, model.name).id, kept.id)
            later.sequence(kept.id, model.name, acquire=True).drop()


def _layout_args(model):
    return dict(name=model.name, layers=model.layers, q_heads=model.q_heads,
                kv_heads=model.kv_heads, head_dim=model.head_dim, dtype=model.dtype,
                tokens_per_page=model.tokens_per_page, rope_theta=model.rope_theta)


if __name__ == "__main__":
    unittest.main()
