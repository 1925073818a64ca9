"""One long-running server process that outlives the command that started it.

`up` and `down` are separate invocations, so a process is found again through its pid file
in the state dir, never through a handle kept in memory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from . import config

Say = Callable[[str], None]


class DevstackError(RuntimeError):
    """The local stack cannot do what was asked; the message says why and what to do."""


# Children started by this interpreter. Polling their Popen reaps them, so a stack started and
# stopped inside one pytest run leaves no zombie behind (and Popen does not warn at exit).
_children: dict[int, subprocess.Popen] = {}


@dataclass
class ManagedProcess:
    name: str
    command: list[str]
    address: str
    ports: list[int]  # every port it binds, checked before start
    # A string in the command line (a path inside the state dir) that tells our process apart
    # from an unrelated one that got the recycled pid, or from a stack of another state dir.
    marker: str
    ready: Callable[[], bool]  # one quick probe; True once the server answers real requests
    home: Path  # its directory in the state dir (config, data); `down --wipe` deletes it
    setup: Callable[[Say], None] = lambda say: None  # downloads, builds, formats: before start
    after_stop: Callable[[bool], None] = lambda killed: None  # told whether SIGKILL was needed
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 120.0
    stop_timeout: float = 30.0

    @property
    def pidfile(self) -> Path:
        return config.state_dir() / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return config.state_dir() / f"{self.name}.log"

    # -- finding it -------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The pid of our running process, or None; a pid file whose process is gone is removed."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            self.pidfile.unlink(missing_ok=True)
            return None
        if _alive(pid) and self.marker in _cmdline(pid):
            return pid
        self.pidfile.unlink(missing_ok=True)
        return None

    def healthy(self) -> bool:
        try:
            return self.ready()
        except Exception:
            return False

    def status(self) -> dict:
        pid = self.pid()
        state = "down" if pid is None else ("healthy" if self.healthy() else "unhealthy")
        return {"state": state, "pid": pid, "address": self.address, "log": str(self.logfile)}

    # -- starting ---------------------------------------------------------------------------

    def check_ports_free(self) -> None:
        for port in self.ports:
            if _port_in_use(port):
                owner = _port_owner(port)
                raise DevstackError(
                    f"{self.name}: port {port} on {config.HOST} is already in use by a process "
                    f"that this devstack did not start (state dir {config.state_dir()})"
                    + (f": {owner}" if owner else "")
                    + ". Stop it, or choose other ports with DRIFTLINE_DEVSTACK_KAFKA_PORT / "
                    "DRIFTLINE_DEVSTACK_S3_PORT."
                )

    def start(self) -> int:
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        if self.logfile.exists():  # keep one previous log: the last crash is often the clue
            self.logfile.replace(self.logfile.with_suffix(".log.prev"))
        with open(self.logfile, "wb") as log:
            proc = subprocess.Popen(
                self.command,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: Ctrl-C in the terminal that ran `up` (or pytest) must not kill the
                # stack, and `down` can signal the whole group.
                start_new_session=True,
                close_fds=True,
            )
        _children[proc.pid] = proc
        self.pidfile.write_text(f"{proc.pid}\n")
        return proc.pid

    def wait_ready(self, pid: int, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while True:
            if not _alive(pid):
                self.pidfile.unlink(missing_ok=True)
                code = _children[pid].returncode if pid in _children else None
                raise DevstackError(
                    f"{self.name} exited during startup"
                    + (f" (exit code {code})" if code is not None else "")
                    + f". Last lines of {self.logfile}:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise DevstackError(
                    f"{self.name} (pid {pid}) did not answer on {self.address} within "
                    f"{timeout or self.start_timeout:.0f}s. Last lines of {self.logfile}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.25)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.logfile, "rb") as f:
                tail = deque(f, maxlen=lines)
        except OSError:
            return "  (no log)"
        return "".join("  " + line.decode(errors="replace") for line in tail).rstrip()

    # -- stopping ---------------------------------------------------------------------------

    def terminate(self) -> int | None:
        """Ask it to stop with SIGTERM: Kafka then shuts down cleanly and skips log recovery."""
        pid = self.pid()
        if pid is not None:
            _signal_group(pid, signal.SIGTERM)
        return pid

    def wait_stopped(self, pid: int) -> bool:
        """Wait for it to exit, SIGKILL after stop_timeout; True if it had to be killed."""
        killed = False
        if not _wait_gone(pid, self.stop_timeout):
            _signal_group(pid, signal.SIGKILL)
            killed = True
            if not _wait_gone(pid, 10):
                raise DevstackError(f"{self.name} (pid {pid}) survived SIGKILL")
        self.pidfile.unlink(missing_ok=True)
        self.after_stop(killed)
        return killed


# -- helpers ---------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A dead process whose parent has not reaped it yet still answers kill(0).
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # no /proc (macOS)
        out = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
        return out.stdout


def _signal_group(pid: int, sig: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    _children.pop(pid, None)
    # Started by an earlier `up`, the process is an orphan and init reaps it. Some inits
    # (containers, VMs) do so only every second or two; wait briefly so that `ps` right
    # after `down` shows no <defunct> entry. Dead either way, so never longer than that.
    grace = time.monotonic() + 3.0
    while Path(f"/proc/{pid}").exists() and time.monotonic() < grace:
        time.sleep(0.1)
    return True


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((config.HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option the servers use, so a port in TIME_WAIT from our last run counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((config.HOST, port))
        except OSError:
            return True
    return False


def _port_owner(port: int) -> str:
    if not shutil.which("ss"):
        return ""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True)
    return " ".join(out.stdout.split())


def run_streaming(
    command: list[str],
    label: str,
    say: Say,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    show: Callable[[str], bool] = lambda line: True,
    progress: Callable[[Iterable[str]], str] | None = None,
    heartbeat: float = 15.0,
) -> None:
    """Run a download/build, echoing the lines `show` picks and a heartbeat while it is quiet."""
    started = time.monotonic()
    seen: list[str] = []
    proc = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    done = threading.Event()

    def beat() -> None:
        while not done.wait(heartbeat):
            extra = f", {progress(seen)}" if progress else ""
            say(f"  {label}: still working… {time.monotonic() - started:.0f}s{extra}")

    threading.Thread(target=beat, daemon=True).start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            seen.append(line)
            if show(line):
                say(f"  {label}: {line}")
        code = proc.wait()
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        tail = "\n".join("  " + line for line in seen[-40:])
        raise DevstackError(f"{label} failed (exit code {code}): {' '.join(command)}\n{tail}")
    say(f"  {label}: done in {time.monotonic() - started:.0f}s")


def go_install(module: str, version: str, target: Path, say: Say, *, what: str, took: str) -> Path:
    """Builds `module@version` with `go install` into target's folder, once; returns the binary.

    Nothing is downloaded but Go modules (the Go module proxy): no release binaries. `what`
    names the tool and its use for a person, `took` how long a first build takes.
    """
    if target.exists():  # go install renames the finished binary into place: no partial files
        return target
    go = shutil.which("go")
    if not go:
        raise DevstackError(f"{what} is built with Go on the first run: install `go`")
    say(f"{what}: building {module.rsplit('/', 1)[-1]} {version} with `go install` into {target.parent} "
        f"(first run only; {took}, Go's own caches make rebuilds fast)")
    target.parent.mkdir(parents=True, exist_ok=True)
    run_streaming(
        # -v lists each package as it compiles: counted for the heartbeat, not printed.
        [go, "install", "-v", f"{module}@{version}"],
        "go", say,
        # A go.mod that asks for a newer Go must fail here, never download a toolchain.
        env={"GOBIN": str(target.parent), "GOTOOLCHAIN": "local"},
        show=lambda line: " " in line and not line.startswith("go: downloading"),  # errors
        progress=lambda lines: (
            f"{sum(line.startswith('go: downloading') for line in lines)} modules downloaded, "
            f"{sum(not ln.startswith('go:') and ' ' not in ln for ln in lines)} packages compiled"
        ),
        heartbeat=15.0,
    )
    if not target.exists():
        raise DevstackError(f"go install finished but {target} is missing")
    return target
