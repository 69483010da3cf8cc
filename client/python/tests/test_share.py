"""Shared prefixes from Python: two tenants of one sharing group share pages, an outsider finds
nothing, shared pages are mapped read-only."""

import os
import unittest

import numpy as np

import kvkeep
from daemon import DaemonTestCase


@unittest.skipUnless(os.path.isdir("/dev/shm"), "needs /dev/shm")
class ShareTest(DaemonTestCase, unittest.TestCase):
    def test_two_tenants_share_pages_outsider_finds_nothing(self):
        _, token_a = self.daemon.create_tenant(sharing_group="py-team")
        _, token_b = self.daemon.create_tenant(sharing_group="py-team")
        _, token_c = self.daemon.create_tenant()  # no group
        clients = [kvkeep.Client(self.daemon.target, t) for t in (token_a, token_b, token_c)]
        for c in clients:
            self.addCleanup(c.close)
        a, b, c = (self.attach(f"w{i}", client) for i, client in enumerate(clients))
        models = [self.small_model(s, name="shared-model") for s in (a, b, c)]
        prompt = [11 * i + 3 for i in range(10)]  # two full pages of 4 tokens, and a partial one

        seq_a = a.create_sequence(models[0])
        seq_a.allocate(10)
        rng = np.random.default_rng(3)
        data = {}
        for l in range(2):
            for h in range(2):
                k = rng.standard_normal((10, 8)).astype(np.float16)
                v = rng.standard_normal((10, 8)).astype(np.float16)
                seq_a.write_in_place(l, h, k, v)
                data[(l, h)] = (k, v)
        seq_a.commit(10)
        reply = seq_a.publish_prefix(prompt)
        self.assertEqual(reply.published_pages, 2)
        self.assertEqual(seq_a.shared_tokens, 8)

        seq_b = b.create_sequence(models[1], prefix_token_ids=prompt)
        self.assertEqual(seq_b.shared_tokens, 8)
        self.assertEqual(seq_b.token_count, 8)
        for l in range(2):
            for h in range(2):
                self.assertEqual(seq_b._pages[(l, h)], reply.table.heads[l * 2 + h].pages[:2])
                rk, rv = seq_b.read_in_place(l, h)  # through B's read-only mapping
                np.testing.assert_array_equal(rk, data[(l, h)][0][:8])
                np.testing.assert_array_equal(rv, data[(l, h)][1][:8])
        with self.assertRaises(PermissionError):
            seq_b.write_in_place(0, 0, data[(0, 0)][0][:1], data[(0, 0)][1][:1])
        arena = seq_b._pages[(0, 0)][0] >> 32
        self.assertTrue(b.map_arena(arena).read_only)
        with self.assertRaises(kvkeep.KvkeepError) as err:
            seq_b.write(0, 0, data[(0, 0)][0][:1], data[(0, 0)][1][:1])
        self.assertEqual(err.exception.code, "PERMISSION_DENIED")

        seq_c = c.create_sequence(models[2], prefix_token_ids=prompt)
        self.assertEqual(seq_c.shared_tokens, 0)
        self.assertEqual(c.lookup_prefix(models[2], prompt).matched_pages, 0)
        self.assertEqual(b.lookup_prefix(models[1], prompt).matched_pages, 2)

        with self.daemon.admin() as admin:
            status = admin.status()
            self.assertEqual(status.shared_bytes_referenced,
                             sum(t.shared_charge_bytes for t in status.tenant_usage))
        seq_a.drop()
        seq_b.drop()
        with self.daemon.admin() as admin:
            status = admin.status()
            self.assertEqual(status.shared_pages_referenced, 0)
            self.assertEqual(sum(t.shared_charge_bytes for t in status.tenant_usage), 0)


if __name__ == "__main__":
    unittest.main()
