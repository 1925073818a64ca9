"""Every verb pointed at a platform that is not there: a non-zero exit on its own (each call has a
deadline; the run's 30 s timeout only catches a hang) and one line naming what did not answer,
never a traceback. How fast it gives up is the verbs' deadlines, not asserted here: the machine is
noisy."""

from __future__ import annotations

import pytest

from cli_support import Cli, cli_env
from support import free_port

VERBS = [
    (["status"], "registry"),
    (["models", "list"], "registry"),
    (["models", "show", "m"], "registry"),
    (["models", "lineage", "m", "1"], "registry"),
    (["models", "promote", "m", "1"], "registry"),
    (["models", "rollback", "m"], "registry"),
    (["models", "gate-log", "m"], "registry"),
    (["models", "audit", "m"], "registry"),
    (["predict", "m", "--row", "{}"], "registry"),
    (["drift"], "monitor"),
    (["produce", "{rows}", "--stream", "default"], "ingest"),
    (["train", "--stream", "default"], "kafka"),
    (["datasets", "list"], "s3"),
    (["datasets", "show", "abc"], "s3"),
    (["datasets", "verify", "abc"], "s3"),
]


@pytest.fixture(scope="module")
def nowhere(tmp_path_factory) -> Cli:
    """Every address a port where nothing listens (Kafka and S3 included), no platform state."""
    tmp = tmp_path_factory.mktemp("nowhere")
    (tmp / "rows.jsonl").write_text('{"salary": 1}\n')
    dead = {name: f"127.0.0.1:{free_port()}" for name in ("registry", "ingest", "feature", "serving", "monitor",
                                                         "kafka", "s3")}
    cli = Cli(cli_env(tmp, **{f"DRIFTLINE_{n.upper()}_ADDRESS": a for n, a in dead.items() if n not in ("kafka", "s3")},
                      DRIFTLINE_KAFKA_BOOTSTRAP=dead["kafka"], DRIFTLINE_S3_ENDPOINT=dead["s3"]))
    cli.dead = dead
    cli.rows = tmp / "rows.jsonl"
    return cli


@pytest.mark.parametrize("args, service", VERBS, ids=[" ".join(a) for a, _ in VERBS])
def test_a_verb_at_a_stopped_platform_fails_fast_in_one_line(nowhere, args, service):
    args = [str(nowhere.rows) if a == "{rows}" else a for a in args]
    done = nowhere.run(*args, timeout=30)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"driftline: {service} at {nowhere.dead[service]} is unreachable ("), lines[0]


def test_logs_of_a_platform_never_started_says_so(nowhere):
    done = nowhere.run("logs", "registry")
    assert done.returncode == 1 and done.stderr.startswith("driftline: no log for registry at ")
    assert done.stderr.count("\n") == 1


def test_down_with_nothing_started_is_not_an_error(nowhere):
    assert nowhere.run("down").returncode == 0
