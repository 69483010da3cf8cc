"""A real kvkeepd for the Python tests: its own temp data dir and socket (as tests/daemon_process).

The binary comes from $KVKEEPD (set by CTest to the built kvkeepd)."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import kvkeep


def kvkeepd_path():
    path = os.environ.get("KVKEEPD")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError("set KVKEEPD to the kvkeepd binary (CTest does)")
    return path


class Daemon:
    def __init__(self, extra_flags=()):
        base = os.environ.get("TEST_TMPDIR") or tempfile.gettempdir()
        self.dir = tempfile.mkdtemp(prefix="kvkeep-py-", dir=base)
        self.target = "unix:" + os.path.join(self.dir, "kvkeepd.sock")
        self.log_path = os.path.join(self.dir, "kvkeepd.log")
        self.proc = None
        self.returncode = None
        self.extra_flags = list(extra_flags)

    def start(self):
        args = [kvkeepd_path(), f"--data_dir={self.dir}", "--pool_mib=64", "--arena_mib=1",
                "--keepalive_seconds=1", *self.extra_flags]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()
                self.stop()
                raise RuntimeError(f"kvkeepd exited during start (status {self.returncode}):"
                                   f"\n{log}")
            if os.path.exists(os.path.join(self.dir, "kvkeepd.sock")):
                try:
                    with self.admin() as admin:
                        admin.status()
                    return self
                except (kvkeep.KvkeepError, OSError):
                    pass
            time.sleep(0.05)
        log = self.log()
        self.stop()
        raise RuntimeError(f"kvkeepd did not become ready in 20 s:\n{log}")

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    @property
    def admin_token(self):
        return kvkeep.read_token(os.path.join(self.dir, "admin.token"))

    def admin(self):
        return kvkeep.Admin(self.target, self.admin_token)

    def create_tenant(self, name=None, **kwargs):
        """Creates a tenant; returns (name, token)."""
        name = name or "t-" + uuid.uuid4().hex[:12]
        with self.admin() as admin:
            return name, admin.create_tenant(name, **kwargs).token

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.returncode = self.proc.returncode
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class DaemonTestCase:
    """Mixin for unittest.TestCase: one daemon per test class, a fresh tenant per test
    (self.tenant, self.token, self.client)."""

    daemon = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.daemon = Daemon().start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.tenant, self.token = self.daemon.create_tenant()
        self.client = kvkeep.Client(self.daemon.target, self.token)
        self.addCleanup(self.client.close)

    def attach(self, name="w0", client=None):
        session = (client or self.client).attach(name)
        self.addCleanup(session.close)
        return session

    def small_model(self, session, dtype="float16", name=None, **kw):
        params = dict(layers=2, q_heads=4, kv_heads=2, head_dim=8, tokens_per_page=4,
                      rope_theta=10000.0)
        params.update(kw)
        return session.register_model(name or f"m-{dtype}", dtype=dtype, **params)
