"""A Kafka broker of the test's own, which the test may kill and start again (the shared broker of
the session is never touched): the local stack's Kafka (services/devstack/kafka.py, the same jars
and settings) on two free ports, with its data in a temporary directory that outlives a restart."""

from __future__ import annotations

import os
import signal
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from services.devstack import kafka
from services.devstack.process import ManagedProcess

_ENV = ("DRIFTLINE_STATE_DIR", "DRIFTLINE_DEVSTACK_KAFKA_PORT")


def _free_port_pair() -> int:
    """A port p with p and p + 1 both free (the broker's listener and its controller's)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


class PrivateBroker:
    """`start()`, `kill()` (SIGKILL, as a crash) and `bootstrap`; the data survives a kill."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = _free_port_pair()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.pid: int | None = None
        with self._environment():
            self._process: ManagedProcess = kafka.component()

    @contextmanager
    def _environment(self):
        # devstack reads its state directory and port from the environment whenever it needs them.
        before = {name: os.environ.get(name) for name in _ENV}
        os.environ.update({"DRIFTLINE_STATE_DIR": str(self.state_dir), "DRIFTLINE_DEVSTACK_KAFKA_PORT": str(self.port)})
        try:
            yield
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def start(self) -> None:
        with self._environment():
            self._process.setup(lambda message: None)
            self.pid = self._process.start()
            self._process.wait_ready(self.pid, timeout=120)

    def kill(self) -> None:
        """SIGKILL of the broker's process group (it was started in a session of its own)."""
        if self.pid is not None:
            os.killpg(self.pid, signal.SIGKILL)
            with self._environment():
                deadline = time.monotonic() + 30
                while self._process.pid() is not None:  # reaps it once gone
                    assert time.monotonic() < deadline, "the broker survived SIGKILL"
                    time.sleep(0.05)
                self._process.after_stop(True)  # a killed JVM's class-data archive is half written
            self.pid = None

    def stop(self) -> None:
        if self.pid is not None:
            with self._environment():
                self._process.terminate()
                self._process.wait_stopped(self.pid)
            self.pid = None
