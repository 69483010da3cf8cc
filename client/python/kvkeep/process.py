"""Process-wide settings for a worker that moves K/V bytes through kvkeep (docs/api.md "Worker
process settings").

gRPC receives every ReadKV message into buffers it allocates with malloc and frees once the
message is decoded. With glibc's defaults a free that leaves more than a few hundred KiB at the
top of a heap gives the memory back to the kernel, and the next message faults every page in
again. A worker reading back to back went from 0.18-0.27 to 0.64-0.90 GB/s with these settings
(32 MiB reads, this project's 2-core VM; docs/benchmarks.md "Reads back to back"). The client never
makes these settings itself: they are process-wide and keep up to `retain_bytes` of freed heap
mapped.

    import kvkeep
    kvkeep.tune_worker_process()   # once, early

The same without code, for any process: start it with
GLIBC_TUNABLES=glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=33554432
"""

import ctypes
import ctypes.util

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest allocation glibc can be told to serve from the heap (its M_MMAP_THRESHOLD maximum).
HEAP_SERVED_BELOW_BYTES = 32 << 20
WORKER_RETAIN_BYTES = 256 << 20


def tune_worker_process(retain_bytes=WORKER_RETAIN_BYTES):
    """Keeps up to `retain_bytes` of freed heap for reuse and serves allocations below 32 MiB from
    the heap, as kvkeepd does (its --malloc_retain_mib). Raises ValueError for a retention over the
    2 GiB glibc takes (or a negative one), OSError where the C library has no glibc mallopt or it
    refuses."""
    if not 0 < retain_bytes <= 2**31 - 1:
        raise ValueError(f"retain_bytes must be in (0, 2 GiB), not {retain_bytes}")
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        raise OSError("no mallopt in this process's C library (glibc's allocator tuning); "
                      "nothing was changed")
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Setting either turns glibc's dynamic thresholds off, so both are set.
    if mallopt(_M_MMAP_THRESHOLD, HEAP_SERVED_BELOW_BYTES) != 1 or \
            mallopt(_M_TRIM_THRESHOLD, int(retain_bytes)) != 1:
        raise OSError("mallopt refused M_MMAP_THRESHOLD / M_TRIM_THRESHOLD")
