"""The two verbs that stay attached to a terminal: `driftline up --foreground` (follows every
log until Ctrl-C, which stops the platform) and `driftline logs SERVICE -f` (prints the tail,
then what is appended until Ctrl-C). Run as a user runs them: the console script in a
subprocess of its own session, interrupted with SIGINT as a terminal's Ctrl-C would be.

One foreground platform for the module, with a DRIFTLINE_HOME, a topic prefix and a bucket of
its own and JSON logs (so a line can be recognised by what it says); its tests run in file
order and the last one interrupts it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest

from cli_support import DRIFTLINE, Cli, cli_env, platform_processes
from support import wait_for

FOLLOWING = "following the logs; Ctrl-C stops everything"
PROCESSES = ["registry", "ingest", "feature", "serving", "monitor", "trainer"]


def table_rows(lines: list[str]) -> list[list[str]]:
    """The cells of each row of the tables in `lines` (rich's, columns split by │), header rows too."""
    return [[cell.strip() for cell in re.split("[│┃]", line)] for line in lines if "│" in line or "┃" in line]


@dataclass
class Attached:
    """A `driftline …` that keeps running, its stdout and stderr read into lists as they come."""

    process: subprocess.Popen
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, env: dict[str, str], *args: str) -> "Attached":
        process = subprocess.Popen([str(DRIFTLINE), *args], env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)  # its own process group, as a terminal's job
        attached = cls(process)
        for stream, lines in ((process.stdout, attached.stdout), (process.stderr, attached.stderr)):
            threading.Thread(target=lambda s=stream, l=lines: l.extend(iter(s.readline, "")), daemon=True).start()
        return attached

    def wait_for_line(self, condition, timeout: float, what: str, start: int = 0) -> int:
        """The index in stdout of the first line from `start` on that satisfies `condition`."""
        def found():
            for i, line in enumerate(self.stdout[start:], start):
                if condition(line):
                    return i + 1  # truthy even for line 0
            assert self.process.poll() is None, f"exited {self.process.returncode} before {what}:\n{self.transcript()}"
            return None

        return wait_for(found, timeout, f"{what}\n{self.transcript()}", every=0.1) - 1

    def ctrl_c(self, timeout: float) -> int:
        """SIGINT to its process group (what Ctrl-C sends); its exit status."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout)
        finally:
            time.sleep(0.2)  # the reader threads take what was left in the pipes

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def transcript(self) -> str:
        return f"--- stdout ---\n{''.join(self.stdout)[-4000:]}\n--- stderr ---\n{''.join(self.stderr)[-3000:]}"


@pytest.fixture(scope="module")
def foreground(kafka_bootstrap, s3, tmp_path_factory):
    """`driftline up --foreground --any-ports`, attached until every process is reported healthy.
    Afterwards, if no test interrupted it: Ctrl-C, and `driftline down` should that not do."""
    env = cli_env(tmp_path_factory.mktemp("attached"))
    env["DRIFTLINE_LOG_JSON"] = "true"
    cli = Cli(env)
    up = Attached.start(env, "up", "--foreground", "--any-ports", "--timeout", "150")
    cli.attached = up
    try:
        up.wait_for_line(lambda line: line.strip() == FOLLOWING, 170, "up to report every process healthy")
        yield cli
    finally:
        if up.process.poll() is None:
            try:
                up.ctrl_c(60)
            except subprocess.TimeoutExpired:
                up.kill()
        if platform_processes(env):
            cli.run("down", timeout=120)


def test_up_foreground_reports_every_process_healthy_and_status_sees_them_serving(foreground):
    up = foreground.attached
    printed = up.stdout[:up.stdout.index(FOLLOWING + "\n")]
    table = "".join(printed)
    header, *rows = table_rows(printed)
    assert header == ["service", "model", "address", "health", "pid"], table
    assert [row[0] for row in rows] == PROCESSES, table
    rows = {row[0]: dict(zip(header, row)) for row in rows}
    assert all(rows[name]["health"] == "SERVING" and rows[name]["address"].startswith("127.0.0.1:")
               for name in PROCESSES if name != "trainer"), table
    assert rows["serving"]["model"] == "driftline-model", table
    assert rows["trainer"]["health"] == "RUNNING" and rows["trainer"]["address"] == "(no gRPC)", table
    assert all(rows[name]["pid"].isdigit() for name in PROCESSES), table
    assert any(line.startswith("dashboard: http://127.0.0.1:") for line in up.stdout), table
    assert "starting the services (default stream default; serving driftline-model;" in "".join(up.stderr)

    # From a second process, as another terminal would see it.
    report = foreground.json("status")
    assert report["platform"]["state"] == "up"
    assert report["platform"]["supervisor_pid"] == json.loads((foreground.home / "platform.json").read_text())[
        "supervisor"]["pid"]
    assert {r["service"]: r["health"] for r in report["services"]} == {
        **{name: "SERVING" for name in PROCESSES}, "trainer": "RUNNING"}
    assert up.process.poll() is None  # still attached


def test_logs_follow_prints_the_tail_then_what_the_registry_logs_afterwards(foreground):
    up = foreground.attached
    assert up.process.poll() is None, "the foreground platform is gone (this test runs before the Ctrl-C one)"
    log = foreground.home / "logs" / "registry.log"
    existing = log.read_text().splitlines()
    assert len(existing) >= 3, f"{log} has fewer than three lines"
    seen_by_up = len(up.stdout)

    follower = Attached.start(foreground.env, "logs", "registry", "-f", "-n", "3")
    try:
        # The tail: the last three lines of the log as the follower started (it may have grown since).
        follower.wait_for_line(bool, 15, "the follower to print the log's tail", start=2)
        tail = [line.rstrip("\n") for line in follower.stdout[:3]]
        now = log.read_text().splitlines()
        assert any(now[i:i + 3] == tail for i in range(len(existing) - 3, len(now) - 2)), (tail, existing[-3:])

        # A call the registry refuses is logged by it ("call failed", with its details): appended
        # to registry.log while the follower runs.
        model = f"no-such-model-{uuid.uuid4().hex[:8]}"
        refused = foreground.run("models", "show", model, "1", timeout=30)
        assert refused.returncode == 1 and model in refused.stderr, refused.stderr
        new = follower.wait_for_line(lambda line: model in line, 5, "the follower to print the registry's new line",
                                     start=3)
        entry = json.loads(follower.stdout[new])
        assert entry["service"] == "registry" and entry["msg"] == "call failed" and entry["code"] == "NOT_FOUND"
        assert follower.stdout[new].rstrip("\n") in log.read_text().splitlines()

        status = follower.ctrl_c(10)
    finally:
        follower.kill()
    assert status == 0, follower.transcript()
    assert follower.stderr == [], follower.transcript()  # no traceback, not even "interrupted"
    # The foreground `up` follows the same log: the line is in its output too, by process name.
    up.wait_for_line(lambda line: line.startswith("registry   | ") and model in line, 5,
                     "up --foreground to print the registry's new line", start=seen_by_up)


def test_ctrl_c_stops_the_foreground_platform_and_leaves_no_process(foreground):
    up = foreground.attached
    assert up.process.poll() is None, "the foreground platform is gone before Ctrl-C"
    assert platform_processes(foreground.env)
    before = len(up.stdout)
    status = up.ctrl_c(90)
    assert status == 0, up.transcript()
    assert "stopping…" in "".join(up.stderr), up.transcript()
    assert "Traceback" not in "".join(up.stderr), up.transcript()
    # What stopped, one row each: the supervisor, then every process it ran.
    header, *rows = table_rows(up.stdout[before:])
    assert header == ["stopped", "how"], up.transcript()
    assert rows[0] == ["supervisor", "stopped"], up.transcript()
    assert dict(rows[1:]) == {**{name: "stopped" for name in PROCESSES if name != "serving"},
                              "serving:driftline-model": "stopped"}, up.transcript()

    deadline = time.monotonic() + 10  # init reaps the orphaned supervisor when it gets to it
    while platform_processes(foreground.env) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert platform_processes(foreground.env) == []
    assert json.loads((foreground.home / "platform.json").read_text())["state"] == "down"
    after = foreground.run("status", timeout=30)
    assert after.returncode == 3 and after.stderr.startswith("driftline: registry at "), after.stderr
    assert "is unreachable" in after.stderr.splitlines()[0]
