"""The admin API, quotas (ResourceExhausted) and decode-time eviction from a tenant policy."""

import unittest

import numpy as np

import kvkeep
from daemon import DaemonTestCase


class AdminTest(DaemonTestCase, unittest.TestCase):
    def test_tenants_status_policy(self):
        with self.daemon.admin() as admin:
            names = [t.name for t in admin.list()]
            self.assertIn(self.tenant, names)
            status = admin.status()
            self.assertEqual(status.backend, "cpu")
            self.assertEqual(status.pool_capacity_bytes, 64 << 20)
            stored = admin.set_policy(self.tenant, scorer="capkv", allocation="ada",
                                      keep_ratio=0.2, window=16)
            self.assertEqual(stored.scorer, "capkv")
            self.assertAlmostEqual(admin.get_policy(self.tenant).keep_ratio, 0.2)
            self.assertTrue(admin.get_policy(self.tenant).HasField("window"))
            with self.assertRaises(kvkeep.InvalidArgument):
                admin.set_policy(self.tenant, scorer="snapkv", keep_ratio=1.5)
            info = admin.set_quota(self.tenant, max_bytes=1 << 20, weight=3)
            self.assertEqual((info.max_bytes, info.weight), (1 << 20, 3))
            name, _ = self.daemon.create_tenant()
            admin.delete_tenant(name)
            with self.assertRaises(kvkeep.NotFound):
                admin.delete_tenant(name)

    def test_client_and_admin_share_the_connection_setup(self):
        # The same target forms, token handling and error translation for both APIs.
        socket_path = self.daemon.target[len("unix:"):]
        for target in (self.daemon.target, socket_path):
            with kvkeep.Admin(target, self.daemon.admin_token + "\n") as admin, \
                    kvkeep.Client(target, " " + self.token + "\n") as client:
                self.assertEqual(admin.target, self.daemon.target)
                self.assertEqual(client.target, self.daemon.target)
                self.assertEqual(admin.max_message_bytes, client.max_message_bytes)
                client.ping()
                self.assertIn(self.tenant, [t.name for t in admin.list_tenants()])
        # Each token works only with its own API.
        with kvkeep.Admin(self.daemon.target, self.token) as as_tenant:
            with self.assertRaises(kvkeep.PermissionDenied) as cm:
                as_tenant.status()
            self.assertEqual(cm.exception.message, "a tenant token cannot call the admin API")
        with kvkeep.Client(self.daemon.target, self.daemon.admin_token) as as_admin:
            with self.assertRaises(kvkeep.PermissionDenied):
                as_admin.ping()

    def test_quota_is_resource_exhausted(self):
        name, token = self.daemon.create_tenant(max_bytes=16 << 10)
        with kvkeep.Client(self.daemon.target, token) as client, client.attach("q") as session:
            model = self.small_model(session)  # 128-byte pages, 4 heads
            seq = session.create_sequence(model)
            seq.allocate(16)  # 4 pages per head: 2 KiB
            with self.assertRaises(kvkeep.ResourceExhausted) as cm:
                seq.allocate(1000)
            self.assertEqual(cm.exception.code, "RESOURCE_EXHAUSTED")
            self.assertIn("quota", cm.exception.message)
            # Nothing was allocated: the earlier room is still all there is.
            with self.daemon.admin() as admin:
                usage = [t for t in admin.list() if t.name == name][0]
                self.assertEqual(usage.used_bytes, 2048)
                self.assertEqual(len(admin.list_sequences(name)), 1)

    def test_decode_time_eviction_follows_the_policy(self):
        with self.daemon.admin() as admin:
            admin.set_policy(self.tenant, scorer="knorm", max_tokens=16, window=4)
        session = self.attach()
        model = self.small_model(session)
        seq = session.create_sequence(model)
        compressed = None
        x = np.ones((model.layers, model.kv_heads, 1, model.head_dim), np.float16)
        for step in range(40):
            counts = seq.token_counts
            seq.allocate(1)
            seq.write_all(x * step, x, offset=counts)
            reply = seq.commit(1)
            if reply.HasField("compressed"):
                compressed = reply.compressed
                break
        self.assertIsNotNone(compressed, "no decode-time compression")
        self.assertEqual(seq.token_counts.max(), 16)
        _, _, positions = seq.read(0, 0)
        self.assertEqual(list(positions), list(compressed.table.heads[0].positions))


if __name__ == "__main__":
    unittest.main()
