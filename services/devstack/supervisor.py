"""Starts the six Driftline services as real processes (`python -m
services.<name>`), waits until each answers its gRPC health check, and stops
them all with SIGTERM — the way an orchestrator would, on one machine.

`LoopProcesses` runs one loop for as long as its caller (the demo, the end-to-end test);
`Supervisor` keeps services running for as long as a platform is up (`driftline up`): a
process that exits is started again after an exponentially growing delay, every restart is
logged and counted, and processes can be added to (or taken from) a running supervisor without
touching the others.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import channels
from services.common.settings import CommonSettings
from services.common.threads import Backoff

from .process import _alive, _cmdline, _port_in_use

# Start order: a service's dependencies come before it.
SERVICES = ("registry", "ingest", "feature", "serving", "monitor", "trainer")
WITH_GRPC = {"registry", "ingest", "feature", "serving", "monitor"}


# Ports are picked below the kernel's ephemeral range, where every outgoing connection on the
# machine takes its local port: a port found by binding 0 is in that range, and a Kafka client's
# connection once took one in the seconds before the service it was picked for bound it.
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PICKED = 10000
_handed_out: set[int] = set()
_pick_lock = threading.Lock()


def free_port() -> int:
    """A port free now, outside the ephemeral range where it can be, and not handed out before by
    this process (a port handed out but not yet bound would look free again)."""
    try:
        ephemeral_low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 0
    with _pick_lock:
        for _ in range(200 if ephemeral_low > _LOWEST_PICKED + 1000 else 0):
            port = random.randrange(_LOWEST_PICKED, ephemeral_low)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        _handed_out.add(port)
        return port


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A free port whose successor is free too: the local stack's Kafka takes port + 1 for its
    controller and MinIO port + 1 for its console (DRIFTLINE_DEVSTACK_KAFKA_PORT / _S3_PORT)."""
    while True:
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def port_or_free(preferred: int) -> int:
    """`preferred` when nothing listens there, else any free port."""
    return free_port() if not preferred or _port_in_use(preferred) else preferred


def alive(pid: int | None) -> bool:
    """Whether the process `pid` exists and is not a zombie."""
    return bool(pid) and _alive(pid)


def command_line(pid: int) -> str:
    """The process's command line, space-separated ('' when there is no such process)."""
    return _cmdline(pid) if alive(pid) else ""


def spawn(name: str, env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    """`python -m services.<name>` in its own session, its output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=dict(env),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


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
    # The settings the health probes dial with (a secure loop's CA, client certificate); None: this
    # process's environment.
    probe: CommonSettings | None = None

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
            log_path.unlink(missing_ok=True)
            process = spawn(name, env, log_path)
            self.handles[name] = ServiceHandle(name, process, ports[name], metrics_port, log_path)
        deadline = time.monotonic() + timeout
        for name in services:
            self.wait_ready(name, deadline)

    def wait_ready(self, name: str, deadline: float) -> None:
        handle = self.handles[name]
        while True:
            if handle.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {handle.process.returncode}:\n{handle.log_tail()}")
            if name not in WITH_GRPC or serving(handle.address, settings=self.probe):
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
                status[name] = "SERVING" if serving(handle.address, settings=self.probe) else "NOT SERVING"
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


def serving(address: str, timeout: float = 1.0, settings: CommonSettings | None = None) -> bool:
    try:
        with channels.channel(address, settings) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


# -- a platform's services, kept running ------------------------------------------------------


HEALTHY_RUN_S = 60.0  # a run this long counts as healthy: the next restart's delay starts again at the first


def restart_backoff() -> Backoff:
    """The delays before restart 1, 2, … of one process: doubling from 0.5 s, at most 30 s.

    >>> backoff = restart_backoff()
    >>> [backoff.next() for _ in range(9)]
    [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    """
    return Backoff(first_s=0.5, most_s=30.0)


@dataclass(frozen=True)
class Program:
    """What a Supervisor runs under one name: `python -m services.<service>` with `env`, its
    output appended to `log_path`. Several names may run one service (one serving process per
    model: "serving:sea", "serving:hyperplane")."""

    service: str
    env: Mapping[str, str]
    log_path: Path


@dataclass
class Supervised:
    """One process under a Supervisor: how to start it and what happened to it so far."""

    name: str
    program: Program
    process: subprocess.Popen | None = None
    started_at: float = 0.0          # time.time() of the current run
    restarts: int = 0                # starts after the first
    backoff: Backoff = field(default_factory=restart_backoff)  # over consecutive short runs
    last_exit: int | None = None
    restart_at: float | None = None  # time.monotonic() of the pending restart

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def state(self) -> str:
        if self.process is not None and self.process.poll() is None:
            return "running"
        return "restarting" if self.restart_at is not None else "stopped"

    def snapshot(self) -> dict:
        return {"service": self.program.service, "pid": self.pid, "state": self.state(), "restarts": self.restarts,
                "last_exit": self.last_exit, "started_at": self.started_at, "log": str(self.program.log_path)}


class Supervisor:
    """Starts processes, restarts the ones that exit (with `restart_backoff`), stops them all on request.

    `programs` maps a name to a `Program`, or to an environment alone (the name is then the
    service, its log `log_dir/<name>.log`). `reconcile` starts the names that are new and stops
    the ones that are gone, leaving every other process as it is. `on_change` gets `snapshot()`
    after every start, exit, restart and stop; `say` gets one line per event (the supervisor's
    log). `run()` blocks until `stop_event` is set, then stops everything.
    """

    def __init__(self, programs: Mapping[str, Program | Mapping[str, str]], log_dir: Path, *,
                 on_change: Callable[[dict], None] = lambda snapshot: None,
                 say: Callable[[str], None] = print, poll_s: float = 0.2) -> None:
        self.log_dir = Path(log_dir)
        self.services = {name: Supervised(name, self._program(name, p)) for name, p in programs.items()}
        self.on_change = on_change
        self.say = say
        self.poll_s = poll_s
        self.stop_event = threading.Event()
        # Set (from a signal handler, say) to have `run` call its `reload` before the next round;
        # a plain flag, since a handler must not wait for a lock its own thread may hold.
        self.reload_requested = False

    def _program(self, name: str, program: Program | Mapping[str, str]) -> Program:
        if isinstance(program, Program):
            return program
        return Program(name, dict(program), self.log_dir / f"{name}.log")

    def snapshot(self) -> dict:
        return {name: s.snapshot() for name, s in self.services.items()}

    def _start(self, service: Supervised) -> None:
        service.process = spawn(service.program.service, service.program.env, service.program.log_path)
        service.started_at = time.time()
        service.restart_at = None
        self.say(f"{service.name}: started (pid {service.process.pid})")

    def start_all(self) -> None:
        for service in self.services.values():
            self._start(service)
        self.on_change(self.snapshot())

    def reconcile(self, programs: Mapping[str, Program | Mapping[str, str]]) -> tuple[list[str], list[str]]:
        """Runs exactly `programs`: starts the names not running yet, stops those not named any
        more; a process already running under a name is left alone. Returns (started, stopped)."""
        gone = [name for name in self.services if name not in programs]
        new = [name for name in programs if name not in self.services]
        if gone:
            self._terminate([self.services[name] for name in gone])
            for name in gone:
                del self.services[name]
        for name in new:
            self.services[name] = Supervised(name, self._program(name, programs[name]))
            self._start(self.services[name])
        if gone or new:
            self.on_change(self.snapshot())
        return new, gone

    def check(self) -> None:
        """One round: notes exits, schedules restarts, starts the ones that are due."""
        changed = False
        now = time.monotonic()
        for service in self.services.values():
            if service.restart_at is None and service.process is not None:
                code = service.process.poll()
                if code is None:
                    continue
                ran = time.time() - service.started_at
                service.last_exit = code
                if ran >= HEALTHY_RUN_S:
                    service.backoff.reset()
                delay = service.backoff.next()
                service.restart_at = now + delay
                self.say(f"{service.name}: exited with {code} after {ran:.1f}s; restart "
                         f"{service.restarts + 1} in {delay:g}s")
                changed = True
            elif service.restart_at is not None and now >= service.restart_at:
                service.restarts += 1
                self._start(service)
                changed = True
        if changed:
            self.on_change(self.snapshot())

    def run(self, reload: Callable[[], Mapping[str, Program | Mapping[str, str]]] | None = None) -> None:
        """Supervises until `stop_event`; when `reload_requested`, reconciles with what `reload()` returns."""
        self.start_all()
        while not self.stop_event.wait(self.poll_s):
            if self.reload_requested:
                self.reload_requested = False
                if reload is not None:
                    try:
                        programs = reload()
                    except Exception as exc:  # a bad description must not take the running ones down
                        self.say(f"supervisor: reload failed, nothing changed: {type(exc).__name__}: {exc}")
                    else:
                        started, stopped = self.reconcile(programs)
                        self.say(f"supervisor: reloaded ({len(started)} started, {len(stopped)} stopped)")
            self.check()
        self.stop()

    def _terminate(self, services: list[Supervised], timeout: float = 20.0) -> None:
        """SIGTERM to each of `services` that runs, in the order given; SIGKILL to those still up after `timeout`."""
        for service in services:
            service.restart_at = None
        running = [s for s in services if s.process and s.process.poll() is None]
        for service in running:
            service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for service in running:
            try:
                service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()
                self.say(f"{service.name}: killed after SIGTERM timed out")
            service.last_exit = service.process.returncode
            self.say(f"{service.name}: stopped ({service.last_exit})")

    def stop(self, timeout: float = 20.0) -> dict[str, int | None]:
        """SIGTERM to every process (last started first), SIGKILL to those still up after `timeout`."""
        self._terminate(list(reversed(self.services.values())), timeout)
        self.on_change(self.snapshot())
        return {name: s.last_exit for name, s in self.services.items()}
