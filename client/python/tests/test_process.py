"""kvkeep.tune_worker_process: freed heap is kept, so bursts of message-sized buffers stop
faulting their pages back in (here 8,300 minor faults over 40 bursts untuned, 0 tuned). Each check
runs in a child interpreter (mallopt is process-wide)."""

import subprocess
import sys
import textwrap
import unittest

import kvkeep

# Minor faults of 40 bursts of 64 buffers of 64 KiB (4 MiB: what a gRPC stream with a 4 MiB
# window holds in flight), each written and freed; before and after tuning.
CHILD = textwrap.dedent("""
    import resource, sys
    import kvkeep

    def faults(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for r in range(rounds):
            blocks = [bytearray(b"x" * (64 << 10)) for _ in range(64)]
            del blocks
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults(2)
    untuned = faults(40)
    kvkeep.tune_worker_process()
    faults(2)
    tuned = faults(40)
    print(untuned, tuned)
""")


class TuneWorkerProcessTest(unittest.TestCase):
    def test_retained_heap_stops_refaulting(self):
        out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                             check=True).stdout.split()
        untuned, tuned = int(out[0]), int(out[1])
        # The premise: glibc's defaults give memory of every burst back (~200 faults a burst
        # measured here: what Python's own allocations leave at the top of the heap varies).
        self.assertGreater(untuned, 40 * 64, f"defaults did not refault: {untuned}")
        self.assertLess(tuned * 10, untuned, f"tuned {tuned} vs untuned {untuned}")

    def test_bad_retention_is_refused(self):
        for bad in (0, -1, 2**31):
            with self.assertRaises(ValueError):
                kvkeep.tune_worker_process(bad)


if __name__ == "__main__":
    unittest.main()
