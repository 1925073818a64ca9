"""Starts the six Driftline services as real processes (`python -m
services.<name>`), waits until each answers its gRPC health check, and stops
them all with SIGTERM — the way an orchestrator would, on one machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Start order: a service's dependencies come before it.
SERVICES = ("registry", "ingest", "feature", "serving", "monitor", "trainer")
WITH_GRPC = {"registry", "ingest", "feature", "serving", "monitor"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServiceHandle:
    name: str
    process: subprocess.Popen
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class LoopProcesses:
    """The six services of one loop, isolated by a topic prefix and a bucket."""

    base_env: dict[str, str]
    log_dir: Path
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    handles: dict[str, ServiceHandle] = field(default_factory=dict)

    def start(self, services=SERVICES, timeout: float = 120.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in SERVICES}
        addresses = {
            "DRIFTLINE_REGISTRY_ADDRESS": f"127.0.0.1:{ports['registry']}",
            "DRIFTLINE_FEATURE_ADDRESS": f"127.0.0.1:{ports['feature']}",
            "DRIFTLINE_SERVING_ADDRESS": f"127.0.0.1:{ports['serving']}",
        }
        for name in services:
            metrics_port = free_port()
            env = {**os.environ, **self.base_env, **addresses,
                   "DRIFTLINE_GRPC_PORT": str(ports[name]),
                   "DRIFTLINE_METRICS_PORT": str(metrics_port),
                   **self.extra_env.get(name, {})}
            log_path = self.log_dir / f"{name}.log"
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"], env=env, stdin=subprocess.DEVNULL,
                stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
            self.handles[name] = ServiceHandle(name, process, ports[name], metrics_port, log_path)
        deadline = time.monotonic() + timeout
        for name in services:
            self.wait_ready(name, deadline)

    def wait_ready(self, name: str, deadline: float) -> None:
        handle = self.handles[name]
        while True:
            if handle.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {handle.process.returncode}:\n{handle.log_tail()}")
            if name not in WITH_GRPC or serving(handle.address):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not healthy in time:\n{handle.log_tail()}")
            time.sleep(0.2)

    def health(self) -> dict[str, str]:
        status = {}
        for name, handle in self.handles.items():
            if handle.process.poll() is not None:
                status[name] = f"exited ({handle.process.returncode})"
            elif name in WITH_GRPC:
                status[name] = "SERVING" if serving(handle.address) else "NOT SERVING"
            else:
                status[name] = "running"
        return status

    def stop(self, timeout: float = 20.0) -> dict[str, int]:
        """SIGTERM to all, then waits; a process still alive after `timeout` is killed."""
        for handle in reversed(self.handles.values()):
            if handle.process.poll() is None:
                handle.process.send_signal(signal.SIGTERM)
        codes = {}
        deadline = time.monotonic() + timeout
        for name, handle in self.handles.items():
            try:
                codes[name] = handle.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(handle.process.pid, signal.SIGKILL)
                codes[name] = handle.process.wait()
        return codes


def serving(address: str, timeout: float = 1.0) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
