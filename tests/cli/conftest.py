"""The `driftline` command as a user runs it: the console script in a subprocess, against a
platform it started itself with `driftline up` (once per session) on the session's Kafka and S3,
with a topic prefix, a bucket and a DRIFTLINE_HOME of its own. Its streams folder holds the
default stream and two more (cli_support.SEA, HYPERPLANE), so `up` starts three serving processes."""

from __future__ import annotations

import json
import time

import pytest

from cli_support import HYPERPLANE, SEA, Cli, cli_env, platform_processes


@pytest.fixture(scope="session")
def platform(kafka_bootstrap, s3, tmp_path_factory):
    """`driftline up` once; at the end `driftline down`, and no process of the platform is left."""
    cli = Cli(cli_env(tmp_path_factory.mktemp("cli")))
    folder = cli.home / "streams"  # what `up` serves, next to the bundled streams it adds
    folder.mkdir(parents=True)
    for schema in (SEA, HYPERPLANE):
        (folder / f"{schema['stream']}.json").write_text(json.dumps(schema))
    started = cli.run("up", "--any-ports", "--json", timeout=300)
    try:
        assert started.returncode == 0, f"up failed:\n{started.stdout}\n{started.stderr}\n{cli.logs_hint()}"
        cli.up = json.loads(started.stdout)
        yield cli
    finally:
        stopped = cli.run("down", "--json", timeout=120)
        assert stopped.returncode == 0, f"down failed:\n{stopped.stdout}\n{stopped.stderr}"
        deadline = time.monotonic() + 10  # init reaps the orphaned supervisor when it gets to it
        while platform_processes(cli.env) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert platform_processes(cli.env) == []
        # A stopped platform says so: the first service it cannot reach, in one line.
        after = cli.run("status", timeout=30)
        assert after.returncode == 3 and after.stderr.startswith("driftline: registry at "), after.stderr
