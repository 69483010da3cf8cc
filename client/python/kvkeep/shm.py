"""Zero-copy access to host arenas, like the C++ client's ArenaMapping: HOST_MEMFD arenas from an
fd received over the arena channel (kvkeep.arena_channel), HOST_SHM arenas of older daemons by
their /dev/shm name."""

import mmap
import os

import numpy as np

from kvkeep._proto import common_pb2

SHM_DIR = "/dev/shm"


class ArenaMapping:
    """One mapped arena. `view(offset, nbytes)` is a uint8 numpy view into it."""

    def __init__(self, export, fd=None):
        """`fd`: the arena's file descriptor from the arena channel (HOST_MEMFD; closed here)."""
        # A sharing group's arena (shared prefix pages) is mapped read-only: its views are not
        # writeable (its fd is O_RDONLY anyway).
        self.read_only = bool(getattr(export, "read_only", False))
        if export.kind == common_pb2.HOST_MEMFD and fd is not None:
            pass
        elif export.kind == common_pb2.HOST_SHM:
            name = export.handle.decode() if isinstance(export.handle, bytes) else export.handle
            path = os.path.join(SHM_DIR, name.lstrip("/"))
            fd = os.open(path, (os.O_RDONLY if self.read_only else os.O_RDWR) | os.O_CLOEXEC)
        else:
            if fd is not None:
                os.close(fd)
            # CUDA arenas (CUDA_VMM_FD, CUDA_IPC) are device memory: this package has no CUDA
            # binding, so they are read and written over the bytes path.
            raise NotImplementedError(
                f"cannot map arena kind {common_pb2.ArenaKind.Name(export.kind)} from Python "
                "(HOST_MEMFD with its fd, or HOST_SHM); use the bytes path (write/read)")
        try:
            size = os.fstat(fd).st_size
            if size != export.size_bytes:
                raise OSError(f"arena {export.arena_id} has {size} bytes, the export says "
                              f"{export.size_bytes}")
            prot = mmap.PROT_READ if self.read_only else mmap.PROT_READ | mmap.PROT_WRITE
            self._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        finally:
            os.close(fd)
        self.export = export
        self.arena_id = export.arena_id
        self.size = size

    def view(self, offset, nbytes):
        if offset < 0 or offset + nbytes > self.size:
            raise IndexError(f"bytes [{offset}, {offset + nbytes}) outside arena {self.arena_id} "
                             f"of {self.size} bytes")
        return np.frombuffer(self._mmap, dtype=np.uint8, count=nbytes, offset=offset)

    def close(self):
        try:
            self._mmap.close()
        except BufferError:
            pass  # a caller still holds a view; the mapping goes with the last reference
