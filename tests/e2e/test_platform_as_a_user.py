"""Driftline as a new user runs it on streams of their own, with only `driftline` verbs.

Two streams that are not the demo's, made with river's generators and written to CSV files:
"sea" (river's synth.SEA: x1..x3) and "plane" (river's synth.Hyperplane: a..e). `driftline up
--stream sea.json`, `driftline produce sea.csv`, and nothing else: the platform asks for the first
model itself, trains it, promotes it and serves it; `predict`, `drift` and `datasets verify`
answer about it. Then a second stream is added to the running platform; its bad records and its
retrainings leave the first untouched. `driftline down` leaves no process behind.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import pytest
from river.datasets import synth

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from cli_support import Cli, cli_env, one_byte_changed, platform_processes  # noqa: E402
from support import wait_for  # noqa: E402

FIRST_MODEL_ROWS = 1200  # DRIFTLINE_FIRST_MODEL_MIN_ROWS: the platform's setting, not an action


def _numbers(names: list[str], high: float) -> list[dict]:
    return [{"name": n, "type": "number", "required": True, "min": 0, "max": high} for n in names]


SEA = {"stream": "sea", "entity_field": "buoy", "label": {"type": "integer", "required": False, "min": 0, "max": 1},
       "fields": _numbers(["x1", "x2", "x3"], 10)}
PLANE = {"stream": "plane", "model": "plane-model", "entity_field": "sensor",
         "label": {"type": "integer", "required": False, "min": 0, "max": 1},
         "fields": _numbers(["a", "b", "c", "d", "e"], 1)}


def write_csv(path: Path, entity: str, rows) -> Path:
    """A CSV as a user exports one: an entity column, the features, the label; no id, no time."""
    with path.open("w", newline="") as f:
        writer = None
        for i, (x, y) in enumerate(rows):
            row = {entity: f"{entity}-{i % 25}", **{k: round(float(v), 6) for k, v in x.items()}, "label": int(y)}
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
    return path


def sea_rows(n: int):
    for x, y in synth.SEA(variant=0, seed=3).take(n):
        yield {f"x{k + 1}": v for k, v in x.items()}, y


def plane_rows(n: int, seed: int = 5):
    for x, y in synth.Hyperplane(seed=seed, n_features=5).take(n):
        yield dict(zip("abcde", x.values())), y


def production(cli: Cli, model: str) -> int | None:
    done = cli.run("models", "list", model, "--json")
    if done.returncode != 0:
        return None
    rows = json.loads(done.stdout)
    return rows[0]["aliases"].get("production") if rows else None


def dead_letters(cli: Cli) -> dict[str, int]:
    """Dead letters per stream (their driftline.stream header), read as any Kafka consumer would."""
    from confluent_kafka import Consumer, TopicPartition

    topic = f"{cli.env['DRIFTLINE_TOPIC_PREFIX']}driftline.events.dlq"
    consumer = Consumer({"bootstrap.servers": cli.env["DRIFTLINE_KAFKA_BOOTSTRAP"], "group.id": "user-dlq",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        counts: dict[str, int] = {}
        for _ in range(20):
            batch = consumer.consume(100, 0.5)
            for message in batch:
                if message.error() is None:
                    stream = dict(message.headers() or []).get("driftline.stream", b"").decode()
                    counts[stream] = counts.get(stream, 0) + 1
            if not batch and counts:
                break
        return counts
    finally:
        consumer.close()


def serving_pid(cli: Cli, model: str) -> int:
    report = cli.json("status")
    return next(r["pid"] for r in report["services"] if r.get("model") == model and r["service"] == "serving")


@pytest.fixture(scope="module")
def user(kafka_bootstrap, s3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("user")
    (tmp / "sea.json").write_text(json.dumps(SEA))
    cli = Cli(cli_env(tmp, DRIFTLINE_FIRST_MODEL_MIN_ROWS=str(FIRST_MODEL_ROWS)))
    started = cli.run("up", "--stream", str(tmp / "sea.json"), "--any-ports", "--json", timeout=300)
    try:
        assert started.returncode == 0, f"up failed:\n{started.stdout}\n{started.stderr}\n{cli.logs_hint()}"
        cli.tmp = tmp
        yield cli
    finally:
        stopped = cli.run("down", "--json", timeout=120)
        assert stopped.returncode == 0, f"down failed:\n{stopped.stdout}\n{stopped.stderr}"
        deadline = time.monotonic() + 10
        while platform_processes(cli.env) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert platform_processes(cli.env) == [], "driftline down left processes of the platform running"


@pytest.fixture(scope="module")
def sea_served(user):
    """`driftline produce sea.csv` and nothing else, until `models list` shows a production version."""
    csv_path = write_csv(user.tmp / "sea.csv", "buoy", sea_rows(FIRST_MODEL_ROWS + 800))
    produced = user.json("produce", str(csv_path), "--stream", "sea", timeout=300)
    assert produced["sent"] == FIRST_MODEL_ROWS + 800, produced
    version = wait_for(lambda: production(user, "sea"), 240, "the platform to serve a model of its own for sea",
                       every=2.0)
    return version


def test_the_platform_trains_promotes_and_serves_a_model_of_the_users_stream(user, sea_served):
    listed = {r["model"]: r for r in user.json("models", "list")}
    assert listed["sea"]["aliases"]["production"] == sea_served
    lineage = user.json("models", "lineage", "sea", str(sea_served))
    assert lineage["dataset"]["stream"] == "sea"
    assert lineage["request_id"].startswith("first-model-"), lineage  # the platform asked, not the test

    answer = wait_for(lambda: _predicted(user), 60, "serving to answer with the production version")
    assert answer["model_name"] == "sea" and answer["model_version"] == sea_served
    assert answer["label"] in (0, 1) and len(answer["scores"]) == 2


def _predicted(cli: Cli):
    done = cli.run("predict", "sea", "--row", json.dumps({"x1": 1.0, "x2": 2.0, "x3": 9.0}), "--json")
    return json.loads(done.stdout) if done.returncode == 0 else None


def test_drift_reports_statistics_for_the_streams_features(user, sea_served):
    def features():
        reports = user.json("drift", "sea")
        found = [r for r in reports if r["model_version"] == sea_served and r.get("features")]
        return found[0]["features"] if found else None

    reported = wait_for(features, 120, "the monitor's report on the sea model", every=2.0)
    assert {f["feature"] for f in reported} >= {"x1", "x2", "x3"}


def test_its_dataset_verifies_and_a_changed_byte_is_named(user, sea_served, s3):
    lineage = user.json("models", "lineage", "sea", str(sea_served))
    dataset = lineage["dataset"]["id"]
    assert user.json("datasets", "verify", dataset)["ok"]
    shown = user.json("datasets", "show", dataset)
    key = shown["segments"][0]["key"]
    with one_byte_changed(s3.client(), user.env["DRIFTLINE_BUCKET"], key, at=1 / 3):
        failed = user.run("datasets", "verify", dataset)
        assert failed.returncode == 1 and key in failed.stderr and failed.stderr.count("\n") == 1, failed.stderr
    assert user.json("datasets", "verify", dataset)["ok"]


def test_a_second_stream_with_bad_records_and_retrainings_leaves_the_first_untouched(user, sea_served):
    sea_pid = serving_pid(user, "sea")
    sea_versions = user.json("models", "list", "sea")[0]["versions"]
    (user.tmp / "plane.json").write_text(json.dumps(PLANE))
    user.ok("streams", "add", str(user.tmp / "plane.json"), timeout=180)
    assert serving_pid(user, "sea") == sea_pid, "adding a stream restarted the first stream's serving"

    rows = list(plane_rows(FIRST_MODEL_ROWS + 800))
    path = write_csv(user.tmp / "plane.csv", "sensor", rows)
    with path.open("a") as f:  # bad records: out of range, not a number, a missing feature
        f.write("sensor-x,7.5,0.1,0.2,0.3,0.4,1\nsensor-y,oops,0.1,0.2,0.3,0.4,0\nsensor-z,0.1,0.2,,0.4,0.5,1\n")
    user.json("produce", str(path), "--stream", "plane", timeout=300)
    plane_v1 = wait_for(lambda: production(user, "plane-model"), 240, "the platform to serve plane's first model",
                        every=2.0)
    # A retraining of the second stream, as an operator would ask for one.
    retrained = user.json("train", "--stream", "plane", "--wait", timeout=300)
    assert retrained["status"] == "SUCCEEDED", retrained
    assert dead_letters(user) == {"plane": 3}, "only the second stream's three bad records are dead letters"

    assert production(user, "sea") == sea_served, "the second stream's training moved the first's model"
    assert user.json("models", "list", "sea")[0]["versions"] == sea_versions
    assert serving_pid(user, "sea") == sea_pid
    answer = _predicted(user)
    assert answer and answer["model_version"] == sea_served
    plane_answer = user.json("predict", "plane-model", "--row", json.dumps(dict(zip("abcde", [0.1] * 5))))
    assert plane_answer["model_name"] == "plane-model" and plane_answer["model_version"] >= plane_v1
    assert user.json("datasets", "list", "--stream", "sea") and user.json("datasets", "list", "--stream", "plane")
