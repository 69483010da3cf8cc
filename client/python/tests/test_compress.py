"""compress returns exactly the tokens kept: the table, the summary and ReadKV agree, and the kept
K/V are the original bytes of the kept positions."""

import unittest

import numpy as np

from daemon import DaemonTestCase

N = 200


class CompressTest(DaemonTestCase, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.session = self.attach()
        self.model = self.small_model(self.session)
        m = self.model
        self.rng = np.random.default_rng(5)
        self.keys = self.rng.standard_normal((m.layers, m.kv_heads, N, m.head_dim)).astype(
            np.float16)
        self.values = self.rng.standard_normal(self.keys.shape).astype(np.float16)

    def prefill(self):
        seq = self.session.create_sequence(self.model)
        seq.allocate(N)
        seq.write_all(self.keys, self.values)
        seq.commit(N)
        return seq

    def stats(self, window=8):
        m = self.model
        return dict(
            window_queries=self.rng.standard_normal((m.layers, m.q_heads, window, m.head_dim)),
            query_sum=self.rng.standard_normal((m.layers, m.q_heads, m.head_dim)),
            query_count=N - 4,
            attention_mass=self.rng.random((m.layers, m.q_heads, N)))

    def check_kept(self, seq, result):
        m = self.model
        total = 0
        for l in range(m.layers):
            for h in range(m.kv_heads):
                keys, values, positions = seq.read(l, h)
                kept = result.positions[(l, h)]
                self.assertTrue(np.all(np.diff(positions) > 0), "kept positions not ascending")
                np.testing.assert_array_equal(positions, kept)
                self.assertEqual(len(positions), result.table.heads[l * m.kv_heads + h].token_count)
                np.testing.assert_array_equal(keys.view(np.uint16),
                                              self.keys[l, h, positions].view(np.uint16))
                np.testing.assert_array_equal(values.view(np.uint16),
                                              self.values[l, h, positions].view(np.uint16))
                # Sinks and the observation window are always kept.
                self.assertTrue(np.all(np.isin(np.arange(4), positions)))
                self.assertTrue(np.all(np.isin(np.arange(N - 8, N), positions)))
                total += len(positions)
        self.assertEqual(total, result.summary.tokens_after)
        self.assertEqual(result.summary.tokens_before, N * m.layers * m.kv_heads)
        np.testing.assert_array_equal(seq.token_counts.sum(), total)

    def test_snapkv_after_put_stats(self):
        seq = self.prefill()
        s = self.stats()
        self.assertEqual(seq.put_stats(window_queries=s["window_queries"]), self.model.layers)
        result = seq.compress(scorer="snapkv", keep_ratio=0.25, window=8)
        self.assertEqual(result.summary.scorer, "snapkv")
        self.assertLess(result.summary.tokens_after, result.summary.tokens_before)
        self.assertEqual(result.summary.tokens_after, N // 4 * self.model.layers * 2)
        self.assertGreater(result.summary.pages_freed, 0)
        self.check_kept(seq, result)

    def test_every_statistic_kind(self):
        s = self.stats()
        for scorer, allocation in [("h2o", "uniform"), ("capkv", "ada"), ("expected", "uniform"),
                                   ("knorm", "pyramid"), ("streaming", "uniform"),
                                   ("laprox", "global")]:
            with self.subTest(scorer=scorer):
                seq = self.prefill()
                seq.put_stats(**s)
                result = seq.compress(scorer=scorer, allocation=allocation, max_tokens=40,
                                      window=8)
                self.check_kept(seq, result)
                seq.drop()

    def test_decode_after_compress(self):
        seq = self.prefill()
        seq.put_stats(window_queries=self.stats()["window_queries"])
        seq.compress(keep_ratio=0.5, window=8)  # snapkv by default
        counts = seq.token_counts
        seq.allocate(1)
        k = np.ones((self.model.layers, self.model.kv_heads, 1, self.model.head_dim), np.float16)
        seq.write_all(k, -k, offset=counts)
        reply = seq.commit(1)
        self.assertEqual(reply.next_position, N + 1)
        keys, _, positions = seq.read(1, 1)
        self.assertEqual(positions[-1], N)
        np.testing.assert_array_equal(keys[-1], np.ones(self.model.head_dim, np.float16))

    def test_commit_with_stats(self):
        seq = self.session.create_sequence(self.model)
        seq.allocate(N)
        seq.write_all(self.keys, self.values)
        s = self.stats()
        seq.commit(N, stats=[{"layer": l, "window_queries": s["window_queries"][l]}
                             for l in range(self.model.layers)])
        self.check_kept(seq, seq.compress(scorer="snapkv", keep_ratio=0.3, window=8))


if __name__ == "__main__":
    unittest.main()
