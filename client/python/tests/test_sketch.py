"""Query sketches (kvkeep.sketch): the numpy k-means (splitmix64 as the C++ side, deterministic
under a seed, k-means++ then Lloyd, fold), and LayerStats.sketch through a real daemon: accepted
with commit and put_stats (the daemon counts its bytes), bad sketches refused with INVALID_ARGUMENT
naming the field and changing nothing."""

import unittest

import numpy as np

import kvkeep
from kvkeep import sketch as ks
from daemon import DaemonTestCase


class SketchMathTest(unittest.TestCase):
    def test_splitmix64_reference_values(self):
        # The published splitmix64 outputs for seed 0.
        rng = ks._SplitMix64(0)
        self.assertEqual(rng.next(), 0xE220A8397B1DCDAF)
        self.assertEqual(rng.next(), 0x6E789E6AA1B965F4)
        self.assertEqual(rng.next(), 0x06C45D188009454F)

    def test_finds_separated_clusters_deterministically(self):
        rng = np.random.default_rng(3)
        centers = rng.standard_normal((4, 8)) * 20
        labels = rng.integers(0, 4, 300)
        q = (centers[labels] + rng.standard_normal((300, 8)) * 0.1).astype(np.float32)
        c1, w1 = ks.build_head_sketch(q, k=4, iterations=5, seed=11)
        c2, w2 = ks.build_head_sketch(q, k=4, iterations=5, seed=11)
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(w1, w2)
        self.assertEqual(w1.sum(), 300)
        self.assertTrue(np.all(w1 > 0))
        # Every true centre has a centroid next to it, weighted by its cluster's size.
        for j in range(4):
            d = np.linalg.norm(c1 - centers[j], axis=1)
            self.assertLess(d.min(), 0.1)
            self.assertEqual(w1[np.argmin(d)], np.sum(labels == j))

    def test_few_queries_are_their_own_centroids_and_fold(self):
        q = np.arange(12, dtype=np.float32).reshape(3, 4)
        c, w = ks.build_head_sketch(q, k=4)
        np.testing.assert_array_equal(c, q)
        np.testing.assert_array_equal(w, [1, 1, 1])
        c, w = ks.fold_query(c, w, np.full(4, 100, np.float32), max_k=4)  # a 4th slot
        self.assertEqual(len(w), 4)
        c, w = ks.fold_query(c, w, np.array([0, 1, 2, 5], np.float32), max_k=4)  # near row 0
        np.testing.assert_allclose(c[0], [0, 1, 2, 4], rtol=0, atol=1e-6)
        self.assertEqual(w[0], 2)

    def test_layer_sketch_shapes_and_message(self):
        rng = np.random.default_rng(1)
        q = rng.standard_normal((3, 40, 8)).astype(np.float32)
        s = kvkeep.QuerySketch.build(layer=1, queries=q, first_position=10, k=5, seed=2)
        s.fold(rng.standard_normal((3, 8)), position=50)
        msg = s.layer_stats()
        self.assertEqual(msg.layer, 1)
        self.assertEqual(msg.sketch.k, 5)
        self.assertEqual(msg.sketch.head_dim, 8)
        self.assertEqual(list(msg.sketch.head_counts), [len(w) for _, w in s.heads])
        self.assertEqual(len(msg.sketch.centroids), sum(msg.sketch.head_counts) * 8)
        self.assertEqual((msg.sketch.first_position, msg.sketch.last_position,
                          msg.sketch.query_count), (10, 50, 41))
        for h, (_, w) in enumerate(s.heads):
            self.assertEqual(w.sum(), 41, f"head {h}")
        with self.assertRaises(ValueError):
            s.fold(np.zeros((3, 8)), position=50)  # not after the last position


class SketchDaemonTest(DaemonTestCase, unittest.TestCase):
    N = 24

    def setUp(self):
        super().setUp()
        self.session = self.attach()
        self.model = self.small_model(self.session)
        m = self.model
        self.rng = np.random.default_rng(9)
        self.seq = self.session.create_sequence(m)
        self.seq.allocate(self.N)
        shape = (m.layers, m.kv_heads, self.N, m.head_dim)
        self.seq.write_all(self.rng.standard_normal(shape).astype(np.float16),
                           self.rng.standard_normal(shape).astype(np.float16))

    def sketch(self, layer, n=None, k=6):
        m = self.model
        n = n or self.N
        q = self.rng.standard_normal((m.q_heads, n, m.head_dim))
        return kvkeep.QuerySketch.build(layer, q, k=k, seed=layer)

    def stats_bytes(self):
        with self.daemon.admin() as admin:
            return admin.get_sequence(self.tenant, self.seq.id).stats_bytes

    def test_sent_with_commit_and_put_stats_and_counted(self):
        self.seq.commit(self.N, stats=[self.sketch(0).layer_stats()])
        after_commit = self.stats_bytes()
        m = self.model
        self.assertGreaterEqual(after_commit, m.q_heads * 6 * (m.head_dim + 1) * 4)
        s1 = self.sketch(1)
        s1.fold(self.rng.standard_normal((m.q_heads, m.head_dim)), position=self.N)
        with self.assertRaises(kvkeep.InvalidArgument) as cm:  # position N is not committed yet
            self.seq.put_stats([s1.layer_stats()])
        self.assertIn("last_position", cm.exception.message)
        self.seq.put_stats([self.sketch(1).layer_stats()])
        self.assertGreater(self.stats_bytes(), after_commit)

    def test_bad_sketches_are_refused_and_change_nothing(self):
        self.seq.commit(self.N, stats=[self.sketch(0).layer_stats()])
        before = self.stats_bytes()

        def spoiled(spoil):
            msg = self.sketch(0, k=6).layer_stats()
            spoil(msg.sketch)
            return msg

        def nan(s):
            s.centroids[3] = float("nan")

        def zero_weight(s):
            s.weights[0] = 0.0

        def k_too_large(s):
            s.k = 257

        def wrong_head_dim(s):
            s.head_dim = self.model.head_dim * 2

        for name, spoil, words in [("nan", nan, "centroids holds a non-finite value"),
                                   ("zero weight", zero_weight, "weights[0] = 0"),
                                   ("k too large", k_too_large, "k = 257"),
                                   ("head_dim", wrong_head_dim, "head_dim = 16")]:
            with self.subTest(name):
                with self.assertRaises(kvkeep.InvalidArgument) as cm:
                    self.seq.put_stats([spoiled(spoil)])
                self.assertIn("LayerStats.sketch." + words, cm.exception.message)
                self.assertEqual(self.stats_bytes(), before)
        # Refused with a commit: the tokens are not committed either.
        more = self.seq.allocate(2)
        del more
        with self.assertRaises(kvkeep.InvalidArgument):
            self.seq.commit(2, stats=[spoiled(zero_weight)])
        self.assertEqual(self.seq.table().next_position, self.N)

    def test_compress_with_qsketch(self):
        m = self.model
        self.seq.commit(self.N)
        with self.assertRaises(kvkeep.FailedPrecondition) as cm:
            self.seq.compress(scorer="qsketch", keep_ratio=0.5, sinks=2, window=2)
        self.assertIn("LayerStats.sketch", cm.exception.message)
        self.seq.put_stats([self.sketch(l).layer_stats() for l in range(m.layers)])
        keys_before = {(l, h): self.seq.read(l, h)[0] for l in range(m.layers)
                       for h in range(m.kv_heads)}
        result = self.seq.compress(scorer="qsketch", keep_ratio=0.5, sinks=2, window=2)
        self.assertEqual(result.summary.scorer, "qsketch")
        self.assertEqual(result.summary.tokens_before, self.N * m.layers * m.kv_heads)
        self.assertLess(result.summary.tokens_after, result.summary.tokens_before)
        for (l, h), kept in result.positions.items():
            keys, _, positions = self.seq.read(l, h)
            np.testing.assert_array_equal(positions, kept)
            np.testing.assert_array_equal(keys.view(np.uint16),
                                          keys_before[(l, h)][kept].view(np.uint16))
            self.assertTrue(np.all(np.isin([0, 1, self.N - 2, self.N - 1], kept)))


if __name__ == "__main__":
    unittest.main()
