"""examples/generate.py runs end to end against a test daemon (tiny sizes) and prints its table."""

import os
import subprocess
import sys
import unittest

from daemon import Daemon

EXAMPLE = os.path.join(os.environ.get("KVKEEP_EXAMPLES") or
                       os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"),
                       "generate.py")
POLICIES = ("snapkv", "capkv", "capkv-dot", "expected", "h2o", "laprox", "streaming", "knorm")


class ExampleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon().start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def test_generate_prints_the_drift_table(self):
        result = subprocess.run(
            [sys.executable, EXAMPLE, "--target", self.daemon.target,
             "--admin-token-file", os.path.join(self.daemon.dir, "admin.token"),
             "--prompt-len", "128", "--steps", "4", "--layers", "2"],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        header = [i for i, line in enumerate(lines) if line.startswith("policy")]
        self.assertEqual(len(header), 1, result.stdout)
        for column in ("kept", "hidden rel.err", "logits rel.err", "top-1 agree", "KL(ref||p)"):
            self.assertIn(column, lines[header[0]])
        rows = {line.split()[0]: line.split() for line in lines[header[0] + 2:] if line.strip()
                and not line.startswith("tokens:")}
        self.assertEqual(set(rows), {"(full)", *POLICIES}, result.stdout)
        for policy in POLICIES:
            kl = float(rows[policy][6])
            self.assertGreaterEqual(kl, 0.0)
        # Its tenant is gone again.
        with self.daemon.admin() as admin:
            self.assertEqual([t.name for t in admin.list_tenants()
                              if t.name.startswith("generate-")], [])
            self.assertEqual(admin.status().sequences, 0)

    def test_tenant_token_mode_and_errors(self):
        _, token = self.daemon.create_tenant()
        result = subprocess.run(
            [sys.executable, EXAMPLE, "--target", self.daemon.target, "--token", token,
             "--prompt-len", "96", "--steps", "2", "--layers", "1", "--policies", "knorm"],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("knorm", result.stdout)
        result = subprocess.run(
            [sys.executable, EXAMPLE, "--target", self.daemon.target, "--token", "x" * 20,
             "--prompt-len", "96", "--steps", "2"],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 1)
        self.assertIn("UNAUTHENTICATED", result.stderr)


if __name__ == "__main__":
    unittest.main()
