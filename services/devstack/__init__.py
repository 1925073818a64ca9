"""The local stack: real Kafka (KRaft) and a real S3 server (MinIO) as plain processes.

For machines without a Docker engine. `python -m services.devstack up|status|down`, or:

    from services import devstack
    endpoints = devstack.up()      # idempotent; first run downloads/builds into the cache dir
    devstack.status()              # {"kafka": {"state": "healthy", "pid": ..., ...}, "s3": ...}
    devstack.down()

Env: DRIFTLINE_STATE_DIR (logs, pids, data; default <repo>/.devstack), DRIFTLINE_CACHE_DIR
(jars, binaries; default ~/.cache/driftline), DRIFTLINE_DEVSTACK_KAFKA_PORT (9092; the
controller takes the next port), DRIFTLINE_DEVSTACK_S3_PORT (9000; the console the next),
DRIFTLINE_S3_ACCESS_KEY / DRIFTLINE_S3_SECRET_KEY, DRIFTLINE_DEVSTACK_SECURE (SASL_SSL with ACLs
on Kafka and https on S3 from the stack's own CA; `Endpoints.env(principal)` logs a process in).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

from . import config, kafka, s3, tools
from .process import DevstackError, ManagedProcess

__all__ = ["DevstackError", "Endpoints", "down", "endpoints", "install", "status", "up"]


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str  # host:port
    s3_endpoint: str  # host:port, plain http unless `secure` (DRIFTLINE_S3_SECURE)
    s3_access_key: str
    s3_secret_key: str
    # The secure stack (DRIFTLINE_DEVSTACK_SECURE): SASL_SSL with ACLs on Kafka, https on S3.
    secure: bool = False
    s3_ca_file: str = ""

    @property
    def s3_url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.s3_endpoint}"

    def env(self, principal: str = "operator") -> dict[str, str]:
        """The DRIFTLINE_* variables of a process that is `principal` (a service's name, or
        "operator") on this stack: addresses, and on a secure stack its own Kafka login and the CA."""
        found = {**kafka.broker().env(principal), "DRIFTLINE_S3_ENDPOINT": self.s3_endpoint,
                 "DRIFTLINE_S3_ACCESS_KEY": self.s3_access_key, "DRIFTLINE_S3_SECRET_KEY": self.s3_secret_key,
                 "DRIFTLINE_S3_SECURE": "true" if self.secure else "false"}
        if self.s3_ca_file:
            found["DRIFTLINE_S3_CA_FILE"] = self.s3_ca_file
        return found


def endpoints() -> Endpoints:
    access, secret = config.s3_credentials()
    return Endpoints(kafka.bootstrap(), s3.endpoint(), access, secret, config.secure(), s3.ca_file())


def _components() -> list[ManagedProcess]:
    # Kafka first: its JVM starts while MinIO is still being built on a first run.
    return [kafka.component(), s3.component()]


def _printer(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: print(msg, flush=True))


@contextlib.contextmanager
def _locked(say) -> Iterator[None]:
    """One up/down at a time per state dir (two pytest runs may start together)."""
    state = config.state_dir()
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "devstack.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another devstack command on {state}…")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _line(proc: ManagedProcess, pid: int | None, state: str, note: str = "") -> str:
    pid_text = f"pid {pid}" if pid else "-"
    return f"{proc.name:<6} {proc.address:<16} {state:<9} {pid_text:<10} {note}".rstrip()


def install(quiet: bool = False) -> None:
    """Download Kafka's jars and build the S3 server into the cache, without starting anything.

    `make test` runs this before pytest, so a first run's minutes of building are not
    charged to the first test's time limit.
    """
    say = _printer(quiet)
    if not os.environ.get("DRIFTLINE_KAFKA_BOOTSTRAP"):
        kafka.install(say)
    if not os.environ.get("DRIFTLINE_S3_ENDPOINT"):
        s3.install(say)
    tools.install(say)  # kustomize, for tests/deploy/test_k8s.py


def up(quiet: bool = False) -> Endpoints:
    """Start whatever is not running, wait until everything answers; a no-op when all is up."""
    say = _printer(quiet)
    with _locked(say):
        procs = _components()
        running = {p.name: p.pid() for p in procs}
        to_start = [p for p in procs if running[p.name] is None]
        for p in to_start:  # before starting anything, so a conflict leaves nothing half-up
            p.check_ports_free()

        started: dict[str, tuple[int, float]] = {}
        try:
            for p in to_start:
                p.setup(say)
                started[p.name] = (p.start(), time.monotonic())
            for p in procs:
                if p.name in started:
                    pid, t0 = started[p.name]
                    p.wait_ready(pid)
                    say(_line(p, pid, "healthy", f"started in {time.monotonic() - t0:.1f}s"))
                else:
                    pid = running[p.name]
                    # Running but maybe still starting (or hung): give it the startup allowance.
                    if not p.healthy():
                        p.wait_ready(pid)
                    say(_line(p, pid, "healthy", "already running, nothing to do"))
            if config.secure():  # every principal's SCRAM user and ACLs (idempotent)
                kafka.broker().provision()
        except BaseException:
            # Leave nothing half-up: what this call started, it stops.
            for p in procs:
                if p.name in started and p.terminate() is not None:
                    p.wait_stopped(started[p.name][0])
            raise
    return endpoints()


def status() -> dict[str, dict]:
    """{component: {"state": healthy|unhealthy|down, "pid", "address", "log"}}."""
    return {p.name: p.status() for p in _components()}


def down(quiet: bool = False, wipe: bool = False, only: Iterable[str] | None = None) -> None:
    """Stop everything (SIGTERM, then SIGKILL after a grace period); `wipe` also deletes data.

    `only` names the components to stop ("kafka", "s3"), for a caller that started just those.
    """
    say = _printer(quiet)
    with _locked(say):
        procs = [p for p in _components() if only is None or p.name in only]
        pids = {p.name: p.terminate() for p in procs}  # signal all first: they stop in parallel
        for p in procs:
            pid = pids[p.name]
            if pid is None:
                say(_line(p, None, "down", "was not running"))
                continue
            t0 = time.monotonic()
            killed = p.wait_stopped(pid)
            how = "killed after SIGTERM timed out" if killed else "stopped"
            say(_line(p, pid, "down", f"{how} in {time.monotonic() - t0:.1f}s"))
        if wipe:
            for p in procs:
                shutil.rmtree(p.home, ignore_errors=True)
            say(f"wiped data under {config.state_dir()}")


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m services.devstack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    doctor_parser = sub.add_parser("doctor", help="check this machine's prerequisites; say what to install")
    doctor_parser.add_argument("--demo", action="store_true", help="only what `make demo` needs (no test tools)")
    sub.add_parser("install", help="only download and build what the stack runs (cached; no-op when done)")
    sub.add_parser("up", help="start Kafka and the S3 server (no-op if running)")
    sub.add_parser("status", help="report each component; exit code 3 if any is not healthy")
    down_parser = sub.add_parser("down", help="stop everything")
    down_parser.add_argument("--wipe", action="store_true", help="also delete Kafka and S3 data")
    args = parser.parse_args(argv)
    try:
        if args.command == "doctor":
            from .prerequisites import check

            return check(for_tests=not args.demo)
        if args.command == "install":
            install()
        elif args.command == "up":
            up()
        elif args.command == "down":
            down(wipe=args.wipe)
        else:
            report = status()
            for p in _components():
                st = report[p.name]
                where = st["log"] if st["state"] != "healthy" else ""
                print(_line(p, st["pid"], st["state"], where))
            return 0 if all(st["state"] == "healthy" for st in report.values()) else 3
    except DevstackError as e:
        print(f"devstack: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
