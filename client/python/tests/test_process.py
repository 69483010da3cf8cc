"""kvkeep.tune_worker_process: freed heap is kept, so bursts of message-sized buffers stop
faulting their pages back in. Each check runs in a child interpreter (mallopt is process-wide),
from glibc's starting thresholds pinned (its dynamic ones depend on what was freed before)."""

import subprocess
import sys
import textwrap
import unittest

import kvkeep

# Minor faults of 40 bursts of 64 buffers of 64 KiB (4 MiB: what a gRPC stream with a 4 MiB
# window holds in flight), each written and freed; before and after tuning.
# The child loads kvkeep/process.py alone: importing the package starts gRPC's threads, whose
# allocations can land above the bursts and keep glibc from trimming them (a flaky premise).
CHILD = textwrap.dedent("""
    import ctypes, ctypes.util, importlib.util, resource, sys
    spec = importlib.util.spec_from_file_location("kvkeep_process", sys.argv[1])
    process = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(process)

    def faults(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for r in range(rounds):
            blocks = [bytearray(b"x" * (64 << 10)) for _ in range(64)]
            del blocks
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    # glibc's starting thresholds (128 KiB), pinned: its dynamic thresholds move up after any
    # large free, and what the interpreter and its imports freed before this point varies.
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 128 << 10)  # M_TRIM_THRESHOLD
    faults(2)
    untuned = faults(40)
    process.tune_worker_process()
    faults(2)
    tuned = faults(40)
    print(untuned, tuned)
""")


class TuneWorkerProcessTest(unittest.TestCase):
    def test_retained_heap_stops_refaulting(self):
        out = subprocess.run([sys.executable, "-c", CHILD, kvkeep.process.__file__],
                             capture_output=True, text=True, check=True).stdout.split()
        untuned, tuned = int(out[0]), int(out[1])
        # The premise: with glibc's starting thresholds every burst's memory goes back.
        self.assertGreater(untuned, 40 * 64, f"defaults did not refault: {untuned}")
        self.assertLess(tuned * 10, untuned, f"tuned {tuned} vs untuned {untuned}")

    def test_bad_retention_is_refused(self):
        for bad in (0, -1, 2**31):
            with self.assertRaises(ValueError):
                kvkeep.tune_worker_process(bad)


if __name__ == "__main__":
    unittest.main()
