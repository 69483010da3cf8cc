"""Failed calls raise the KvkeepError subclass of their gRPC status, with its name and message."""

import unittest

import numpy as np

import kvkeep
from daemon import DaemonTestCase


class ErrorsTest(DaemonTestCase, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.session = self.attach()
        self.model = self.small_model(self.session)

    def test_unknown_sequence_is_not_found(self):
        with self.assertRaises(kvkeep.NotFound) as cm:
            self.session.sequence("seq-" + "0" * 24, self.model)
        self.assertEqual(cm.exception.code, "NOT_FOUND")
        self.assertTrue(cm.exception.message)
        self.assertIsInstance(cm.exception, kvkeep.KvkeepError)
        seq = self.session.create_sequence(self.model)
        seq.drop()
        with self.assertRaises(kvkeep.NotFound):
            seq.allocate(4)
        with self.assertRaises(kvkeep.NotFound):
            seq.read(0, 0)

    def test_unknown_model_is_not_found(self):
        with self.assertRaises(kvkeep.NotFound):
            self.session.create_sequence(kvkeep.Model("nope", 1, 1, 1, 8, "float16", 4))

    def test_wrong_token_is_unauthenticated(self):
        bad = kvkeep.Client(self.daemon.target, "not-a-token-of-anyone")
        self.addCleanup(bad.close)
        with self.assertRaises(kvkeep.Unauthenticated) as cm:
            bad.attach("w")
        self.assertEqual(cm.exception.code, "UNAUTHENTICATED")
        with self.assertRaises(kvkeep.Unauthenticated):
            bad.ping()
        with self.assertRaises(kvkeep.Unauthenticated):
            with kvkeep.Admin(self.daemon.target, "not-a-token-of-anyone") as admin:
                admin.status()

    def test_tokens_on_the_wrong_api_are_permission_denied(self):
        as_admin = kvkeep.Client(self.daemon.target, self.daemon.admin_token)
        self.addCleanup(as_admin.close)
        with self.assertRaises(kvkeep.PermissionDenied):
            as_admin.ping()
        with kvkeep.Admin(self.daemon.target, self.token) as admin:
            with self.assertRaises(kvkeep.PermissionDenied):
                admin.list_tenants()

    def test_bad_sizes_are_invalid_argument(self):
        seq = self.session.create_sequence(self.model)
        seq.allocate(8)
        wrong_dim = np.zeros((8, self.model.head_dim + 2), np.float16)
        with self.assertRaises(kvkeep.InvalidArgument) as cm:
            seq.write(0, 0, wrong_dim, wrong_dim)
        self.assertEqual(cm.exception.code, "INVALID_ARGUMENT")
        with self.assertRaises(kvkeep.InvalidArgument):
            seq.allocate(0)
        ok = np.zeros((8, self.model.head_dim), np.float16)
        with self.assertRaises(kvkeep.InvalidArgument):
            seq.write(self.model.layers, 0, ok, ok)  # layer outside the model
        seq.write(0, 0, ok, ok)
        seq.commit(8)
        with self.assertRaises(kvkeep.InvalidArgument):  # window queries of the wrong shape
            seq.put_stats([kvkeep.layer_stats(0, window_queries=np.zeros((1, 4, 8)))])
        with self.assertRaises(kvkeep.InvalidArgument):
            seq.compress(scorer="no-such-scorer", keep_ratio=0.5)
        with self.assertRaises(kvkeep.InvalidArgument):
            self.session.register_model("odd", layers=1, q_heads=4, kv_heads=3, head_dim=8)

    def test_slots_beyond_the_allocation_are_out_of_range(self):
        seq = self.session.create_sequence(self.model)
        seq.allocate(4)
        x = np.zeros((4, self.model.head_dim), np.float16)
        with self.assertRaises(kvkeep.OutOfRange):
            seq.write(0, 0, x, x, offset=4)

    def test_missing_room_or_statistics_is_failed_precondition(self):
        seq = self.session.create_sequence(self.model)
        with self.assertRaises(kvkeep.FailedPrecondition):
            seq.commit(4)  # nothing allocated
        seq.allocate(64)
        seq.commit(64)
        with self.assertRaises(kvkeep.FailedPrecondition) as cm:
            seq.compress(scorer="snapkv", keep_ratio=0.5)
        self.assertIn("window", cm.exception.message)

    def test_another_tenants_sequence_is_not_found(self):
        seq = self.session.create_sequence(self.model)
        seq.allocate(4)
        seq.commit(4)
        _, other_token = self.daemon.create_tenant()
        with kvkeep.Client(self.daemon.target, other_token) as other, \
                other.attach("intruder") as intruder:
            model = self.small_model(intruder)
            with self.assertRaises(kvkeep.NotFound):
                intruder.sequence(seq.id, model)
            foreign = kvkeep.Sequence.__new__(kvkeep.Sequence)
            foreign.__dict__.update(seq.__dict__, session=intruder)
            with self.assertRaises(kvkeep.NotFound):
                foreign.read(0, 0)
            with self.assertRaises(kvkeep.NotFound):
                foreign.drop()
        # Still there for its owner.
        self.assertEqual(seq.read(0, 0)[0].shape, (4, self.model.head_dim))

    def test_conflicts_are_already_exists(self):
        with self.assertRaises(kvkeep.AlreadyExists):
            self.daemon.create_tenant(self.tenant)
        with self.assertRaises(kvkeep.AlreadyExists):
            self.small_model(self.session, head_dim=16)  # same name, other layout

    def test_superseded_session_ends_aborted(self):
        old = self.client.attach("dup")
        new = self.client.attach("dup")
        self.addCleanup(new.close)
        old._thread.join(5)
        self.assertFalse(old.alive)
        self.assertIsInstance(old.error, kvkeep.Aborted)
        self.assertEqual(new.superseded_session_id, old.session_id)
        old.close()


if __name__ == "__main__":
    unittest.main()
