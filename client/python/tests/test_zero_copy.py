"""Zero copy: host arenas mapped from Python (fds received over the arena channel) hold the same
bytes as the bytes path."""

import os
import unittest

import numpy as np

from daemon import DaemonTestCase


class ZeroCopyTest(DaemonTestCase, unittest.TestCase):
    def test_arenas_come_as_fds_and_the_ticket_works_once(self):
        from kvkeep._proto import common_pb2
        from kvkeep.arena_channel import ArenaChannel, arena_socket_for
        from kvkeep.errors import KvkeepError
        with self.client.attach("fd") as session:
            model = self.small_model(session, dtype="float32")
            seq = session.create_sequence(model)
            seq.allocate(4)
            self.assertIsNone(session.arena_channel_error)
            exports = session.arenas()
            self.assertTrue(exports)
            for arena_id, export in exports.items():
                self.assertEqual(export.kind, common_pb2.HOST_MEMFD)
                self.assertEqual(export.handle, b"")
                self.assertEqual(session.map_arena(arena_id).size, export.size_bytes)
            # The session's ticket was used by the session itself: a replay is refused.
            path = arena_socket_for(self.client.target, session._arena_socket)
            with self.assertRaisesRegex(KvkeepError, "refused"):
                ArenaChannel(path, session._ticket)


    def test_write_in_place_read_over_grpc(self):
        with self.client.attach("zc") as session:
            model = self.small_model(session, dtype="float32")
            seq = session.create_sequence(model)
            n = 23
            delta = seq.allocate(n)
            self.assertTrue(session.arenas())
            rng = np.random.default_rng(1)
            data = {}
            for l in range(model.layers):
                for h in range(model.kv_heads):
                    k = rng.standard_normal((n, model.head_dim)).astype(np.float32)
                    v = rng.standard_normal((n, model.head_dim)).astype(np.float32)
                    seq.write_in_place(l, h, k[:10], v[:10])
                    seq.write_in_place(l, h, k[10:], v[10:], offset=10)
                    data[(l, h)] = (k, v)
            seq.commit(n)
            for (l, h), (k, v) in data.items():
                rk, rv, _ = seq.read(l, h)
                np.testing.assert_array_equal(rk, k)
                np.testing.assert_array_equal(rv, v)
            self.assertGreater(len(delta.heads), 0)

    def test_write_over_grpc_read_in_place(self):
        with self.client.attach("zc2") as session:
            model = self.small_model(session, dtype="bfloat16")
            seq = session.create_sequence(model)
            n = 9
            seq.allocate(n)
            k = np.arange(n * 8, dtype=np.uint16).reshape(n, 8)
            seq.write(1, 0, k, k + 1)
            seq.commit(n)
            rk, rv = seq.read_in_place(1, 0)
            np.testing.assert_array_equal(rk, k)
            np.testing.assert_array_equal(rv, k + 1)
            with self.assertRaises(IndexError):
                seq.write_in_place(0, 0, k, k, offset=model.tokens_per_page * 100)


if __name__ == "__main__":
    unittest.main()


class CudaArenaTest(unittest.TestCase):
    """Python maps only host arenas (HOST_MEMFD, HOST_SHM); CUDA exports (kvkeepd --backend=cuda:
    CUDA_VMM_FD or CUDA_IPC) are refused clearly, pointing at the bytes path."""

    def test_cuda_ipc_export_is_refused_naming_the_bytes_path(self):
        from kvkeep._proto import common_pb2
        from kvkeep.shm import ArenaMapping
        export = common_pb2.ArenaExport(arena_id=3, kind=common_pb2.CUDA_IPC, handle=b"\x01" * 64,
                                        size_bytes=1 << 20, device_ordinal=0,
                                        device_uuid="GPU-00000000-1111-2222-3333-444444444444")
        with self.assertRaisesRegex(NotImplementedError, r"CUDA_IPC.*bytes path"):
            ArenaMapping(export)

    def test_cuda_vmm_fd_export_is_refused_and_its_fd_closed(self):
        """A CUDA_VMM_FD arena (cuMemCreate, its fd from the arena channel) is device memory too:
        Python does not map it (no CUDA binding here) and closes the fd it was handed."""
        import os
        from kvkeep._proto import common_pb2
        from kvkeep.shm import ArenaMapping
        export = common_pb2.ArenaExport(arena_id=4, kind=common_pb2.CUDA_VMM_FD,
                                        size_bytes=1 << 21, device_ordinal=0,
                                        device_uuid="GPU-00000000-1111-2222-3333-444444444444")
        read_end, write_end = os.pipe()
        os.close(write_end)
        with self.assertRaisesRegex(NotImplementedError, r"CUDA_VMM_FD.*bytes path"):
            ArenaMapping(export, read_end)
        with self.assertRaises(OSError):
            os.fstat(read_end)
        with self.assertRaisesRegex(NotImplementedError, r"CUDA_VMM_FD.*bytes path"):
            ArenaMapping(export)
