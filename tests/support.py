"""Test plumbing shared by the service tests: free ports, polling, gRPC health,
`python -m services.<name>` child processes, and small real gRPC servers run inside a test.

Imported the way tests import helpers_models: `from support import ...`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.devstack.supervisor import free_port

__all__ = ["ROOT", "GrpcThread", "ServiceRun", "free_port", "unique_bucket", "unique_prefix", "wait_for",
           "wait_serving"]

ROOT = Path(__file__).resolve().parents[1]


def unique_prefix() -> str:
    """A topic prefix (DRIFTLINE_TOPIC_PREFIX) no other test uses, so tests share one broker."""
    return f"t{uuid.uuid4().hex[:12]}."


def unique_bucket() -> str:
    """A valid S3 bucket name (lowercase letters, digits, hyphens; ≤ 63) no other test uses."""
    return f"test-{uuid.uuid4().hex[:20]}"


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.1):
    """Calls `condition` every `every` s until it returns something truthy, and returns that;
    fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_serving(address: str, service: str = "", timeout: float = 60.0,
                 alive: Callable[[], None] = lambda: None) -> None:
    """Waits until the gRPC health check at `address` reports `service` SERVING ("" is the
    server as a whole); `alive` is called before each try, to fail early if the server died."""
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            alive()
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            except grpc.RpcError:
                return False
            return answer.status == health_pb2.HealthCheckResponse.SERVING

        wait_for(serving, timeout, f"{service or 'the server'} at {address} to report SERVING", every=0.2)


class ServiceRun:
    """One `python -m services.<name>` child process, its output appended to `log_path`.

    The environment is the test's, with plain-text logs unless `env` says otherwise, then `env`.
    As a context manager it stops the process on exit and, when the block failed, writes the
    end of the log to stderr (pytest shows it with the failure)."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = Path(log_path)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=ROOT,
                                            env={**os.environ, "DRIFTLINE_LOG_JSON": "false", **env},
                                            stdout=log, stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def assert_running(self) -> None:
        assert self.process.poll() is None, f"{self.name} exited ({self.process.returncode}):\n{self.log_tail()}"

    def wait_serving(self, address: str, service: str = "", timeout: float = 60.0) -> None:
        """Waits until the health check reports `service` SERVING; fails at once if the process exits."""
        wait_serving(address, service, timeout, alive=self.assert_running)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as a deployment would; killed if still running after `timeout` s.
        Returns the exit code (killed: -9)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServiceRun:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            sys.stderr.write(f"--- end of the {self.name} log ({self.log_path}) ---\n{self.log_tail(5000)}\n")
        self.stop()


class GrpcThread:
    """A real grpc.aio server for one servicer on 127.0.0.1 (a free port), on its own event loop
    thread, as a separate service would be: `GrpcThread(servicer, add_XServicer_to_server)`."""

    def __init__(self, servicer, add_to_server) -> None:
        self.servicer = servicer
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = grpc.aio.server()
            add_to_server(servicer, self.server)
            self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
