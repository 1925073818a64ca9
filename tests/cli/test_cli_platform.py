"""Every verb of `driftline` against a platform it started with `driftline up` (see conftest.py)."""

from __future__ import annotations

import csv
import json
import os
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from driftline.v1 import events_pb2
from services.cli.produce import stable_id
from services.common.settings import Topics
from services.demo.stream import DriftingStream

from cli_support import one_byte_changed
from support import ROOT, wait_for

MODEL = "driftline-model"
ROW = {"salary": 50000.0, "commission": 0.0, "age": 30, "elevel": 1, "car": 3, "zipcode": 2, "hvalue": 100000.0,
       "hyears": 10, "loan": 20000.0, "salary_entity_mean": 50000.0}


def rows(n: int, seed: int = 3) -> list[dict]:
    """Labelled rows of the default stream without ids or event times (the command gives them)."""
    events = []
    for event in DriftingStream(drift_at=10**9, seed=seed).take(n):
        event.pop("event_id")
        events.append(event)
    return events


def write_jsonl(path, events) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def read_all(bootstrap: str, topic: str) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "cli-test-reader", "enable.auto.commit": False})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        found = []
        while len(found) < high:
            found += [m for m in consumer.consume(500, 1.0) if m.error() is None]
        return found
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def trained(platform, tmp_path_factory):
    """1500 labelled rows produced from a .jsonl file, then v1 trained on them with `driftline train --wait`."""
    path = tmp_path_factory.mktemp("data") / "rows.jsonl"
    write_jsonl(path, rows(1500))
    sent = platform.json("produce", path, "--stream", "default", timeout=120)
    assert sent["sent"] == 1500 and sent["generated_ids"] == 1500 and sent["generated_times"] == 1500
    result = platform.json("train", "--stream", "default", "--rows", "1000", "--param", "epochs=3", "--wait",
                           "--timeout", "240", timeout=300)
    assert result["status"] == "SUCCEEDED", result
    return result


def test_up_printed_every_address_health_and_the_dashboard(platform):
    services = {row["service"]: row for row in platform.up["services"]}
    assert list(services) == ["registry", "ingest", "feature", "serving", "monitor", "trainer"]
    assert all(row["health"] == "SERVING" and row["address"].startswith("127.0.0.1:")
               for name, row in services.items() if name != "trainer")
    assert services["trainer"]["health"] == "RUNNING"
    assert platform.up["dashboard_url"].startswith("http://127.0.0.1:")
    state = json.loads((platform.home / "platform.json").read_text())
    assert state["state"] == "up" and state["services"]["registry"]["address"] == services["registry"]["address"]


def test_status_reports_health_restarts_lag_aliases_and_alert(platform, trained):
    report = platform.json("status")
    assert report["platform"]["state"] == "up"
    assert {r["service"]: r["health"] for r in report["services"]} == {
        "registry": "SERVING", "ingest": "SERVING", "feature": "SERVING", "serving": "SERVING",
        "monitor": "SERVING", "trainer": "RUNNING"}
    assert all(isinstance(r["restarts"], int) for r in report["services"])
    prefix = platform.env["DRIFTLINE_TOPIC_PREFIX"]
    groups = {r["group"] for r in report["consumer_lag"]}
    assert f"{prefix}driftline-ingest" in groups and f"{prefix}driftline-trainer" in groups
    assert all(r["lag"] is None or r["lag"] >= 0 for r in report["consumer_lag"])
    assert report["models"][MODEL]["production"] == trained["version"]
    assert report["last_alert_error"] is None
    table = platform.ok("status")
    assert "consumer group" in table and "production" in table and "dashboard" in table


def test_streams_add_list_show_and_a_malformed_schema_is_refused_with_place_and_reason(platform, tmp_path):
    schema = json.loads((ROOT / "config" / "streams" / "default.json").read_text())
    schema["stream"] = "clitest"
    del schema["model"]  # so its model is the stream's name
    good = tmp_path / "clitest.json"
    good.write_text(json.dumps(schema))
    added = platform.json("streams", "add", good)
    assert added["stream"] == "clitest" and added["changed"] and added["model"] == "clitest"
    assert added["file"] == str(platform.home / "streams" / "clitest.json")  # the services' DRIFTLINE_STREAMS_DIR
    assert not platform.json("streams", "add", good)["changed"]
    listed = {s["stream"]: s for s in platform.json("streams", "list")}
    # `up` copied the bundled streams into the platform's folder
    assert listed["clitest"]["source"] == listed["default"]["source"] == "platform"
    assert listed["default"]["model"] == MODEL
    shown = platform.json("streams", "show", "clitest")
    assert shown["feature_names"][0] == "salary" and shown["feature_names"][-1] == "salary_entity_mean"
    assert "salary" in platform.ok("streams", "show", "clitest")

    schema["fields"][3]["type"] = "float"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(schema))
    refused = platform.run("streams", "add", bad)
    assert refused.returncode == 1
    assert refused.stderr == (f"driftline: {bad}: $.fields[3]: field 'elevel': type 'float' is not one of "
                              "('number', 'integer', 'string', 'bool')\n")
    broken = tmp_path / "broken.json"
    broken.write_text('{"stream": "x",\n "fields": [}')
    refused = platform.run("streams", "add", broken)
    assert refused.returncode == 1 and refused.stderr.startswith(f"driftline: {broken}:2:13: not valid JSON")

    yaml_file = tmp_path / "yamlstream.yaml"
    yaml_file.write_text("stream: yamlstream\nfields:\n  - {name: x, type: number}\n  - {name: y, min: 3, max: 1}\n")
    refused = platform.run("streams", "add", yaml_file)
    assert refused.returncode == 1 and "$.fields[1]: field 'y': min 3.0 is above max 1.0" in refused.stderr


def test_produce_reads_csv_and_parquet(platform, tmp_path):
    events = rows(20, seed=11)
    csv_path = tmp_path / "rows.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(events[0]))
        writer.writeheader()
        writer.writerows(events)
    parquet_path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows(20, seed=12)), parquet_path)
    for path in (csv_path, parquet_path):
        sent = platform.json("produce", path, "--stream", "default", "--rate", "200")
        assert sent["sent"] == 20 and sent["generated_ids"] == 20
    refused = platform.run("produce", tmp_path / "rows.txt", "--stream", "default")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "not one of .jsonl, .csv, .parquet" in refused.stderr
    unknown = platform.run("produce", csv_path, "--stream", "nosuch")
    assert unknown.returncode == 1 and unknown.stderr.startswith("driftline: unknown stream 'nosuch'")


def test_label_delay_strips_the_label_and_sends_it_later_on_the_labels_topic(platform, tmp_path):
    events = rows(5, seed=21)
    for i, event in enumerate(events):
        event["event_id"] = f"delayed-{i}"
    path = tmp_path / "delayed.jsonl"
    write_jsonl(path, events)
    sent = platform.json("produce", path, "--stream", "default", "--label-delay", "1")
    assert sent["sent"] == 5 and sent["labels"] == 5
    topics = Topics(platform.env["DRIFTLINE_TOPIC_PREFIX"])
    bootstrap = platform.env["DRIFTLINE_KAFKA_BOOTSTRAP"]
    messages = read_all(bootstrap, topics.events_raw)
    assert all(("driftline.stream", b"default") in m.headers() for m in messages)
    raw = {json.loads(m.value())["event_id"]: (json.loads(m.value()), m.timestamp()[1]) for m in messages}
    labels = {}
    for m in read_all(bootstrap, topics.labels):
        label = events_pb2.Label.FromString(m.value())
        labels[label.event_id] = label
    for i, event in enumerate(events):
        body, sent_ms = raw[f"delayed-{i}"]
        assert "label" not in body
        assert labels[f"delayed-{i}"].label == event["label"]
        assert labels[f"delayed-{i}"].labelled_at.ToMilliseconds() >= sent_ms + 900  # S seconds after its event
        assert labels[f"delayed-{i}"].event_time.ToMilliseconds() == body["event_time"]


def test_ids_the_command_gives_are_stable():
    assert stable_id("default", {"a": 1}, 0) == stable_id("default", {"a": 1}, 0) != stable_id("default", {"a": 1}, 1)


def test_models_list_show_lineage_gate_log(platform, trained):
    version = trained["version"]
    listed = platform.json("models", "list")
    assert listed[0]["model"] == MODEL and version in listed[0]["versions"]
    shown = platform.json("models", "show", MODEL, version)
    assert shown["version"] == version and "production" in shown["aliases"]
    assert shown["feature_names"][-1] == "salary_entity_mean"
    lineage = platform.json("models", "lineage", MODEL, version)
    assert lineage["dataset"]["id"] == trained["dataset_id"]
    assert lineage["dataset"]["manifest"]["rows"] >= 1000 and lineage["request_id"].startswith("cli-")
    assert lineage["gate_decisions"][0]["promoted"]
    assert trained["dataset_id"] in platform.ok("models", "lineage", MODEL, version)
    log = platform.json("models", "gate-log", MODEL)
    assert [d["candidate_version"] for d in log] == [version]
    unknown = platform.run("models", "show", "nosuch")
    assert unknown.returncode == 1 and unknown.stderr.startswith("driftline: registry: ") \
        and unknown.stderr.count("\n") == 1


def test_predict_puts_the_row_in_the_models_feature_order(platform, trained):
    answer = platform.json("predict", MODEL, "--row", json.dumps(ROW))
    assert answer["model_version"] == trained["version"] and answer["label"] in (0, 1)
    assert len(answer["scores"]) == 2 and abs(sum(answer["scores"]) - 1) < 1e-4
    missing = platform.run("predict", MODEL, "--row", json.dumps({k: v for k, v in ROW.items() if k != "age"}))
    assert missing.returncode == 1 and missing.stderr == (
        f"driftline: --row does not fit {MODEL} v{trained['version']}: missing age\n")


def test_drift_shows_the_monitors_report(platform, trained):
    reports = platform.json("drift", MODEL)
    assert isinstance(reports, list)
    for report in reports:
        assert report["model_name"] == MODEL and isinstance(report["features"], list)
    platform.ok("drift")


def test_train_prints_a_request_id(platform):
    out = platform.ok("train", "--stream", "default", "--rows", "1000", "--param", "epochs=1")
    assert out.strip().startswith("cli-")


def test_promote_through_the_gate_and_rollback(platform, trained):
    second = platform.json("train", "--stream", "default", "--rows", "1000", "--param", "epochs=3", "--param",
                           "seed=7", "--wait", "--timeout", "240", timeout=300)
    assert second["status"] == "SUCCEEDED" and second["version"] > trained["version"]
    gated = platform.run("models", "promote", MODEL, second["version"], "--alias", "canary", "--json")
    decision = json.loads(gated.stdout)
    assert decision["alias"] == "canary" and gated.returncode == (0 if decision["promoted"] else 1)
    platform.ok("models", "promote", MODEL, second["version"], "--force", "--reason", "test: past the gate")
    assert platform.json("models", "list", MODEL)[0]["aliases"]["production"] == second["version"]
    # Back to the version production held before: v1, or one the platform promoted on its own since
    # (the monitor's retrains, the gate's own promotion of `second` when it beat production).
    back = platform.json("models", "rollback", MODEL)
    assert (back["model"], back["alias"], back["from"]) == (MODEL, "production", second["version"]), back
    assert trained["version"] <= back["to"] < second["version"], back
    assert platform.json("models", "list", MODEL)[0]["aliases"]["production"] == back["to"]


def test_datasets_verify_passes_then_names_the_segment_whose_byte_changed(platform, trained, s3):
    listed = platform.json("datasets", "list", "--stream", "default")
    assert trained["dataset_id"] in [d["id"] for d in listed]
    shown = platform.json("datasets", "show", trained["dataset_id"][:10])
    assert shown["id"] == trained["dataset_id"] and shown["segments"]
    assert platform.json("datasets", "verify", trained["dataset_id"])["ok"]

    key = shown["segments"][-1]["key"]
    with one_byte_changed(s3.client(), platform.env["DRIFTLINE_BUCKET"], key):
        failed = platform.run("datasets", "verify", trained["dataset_id"])
        assert failed.returncode == 1 and failed.stderr.count("\n") == 1
        assert failed.stderr.startswith(f"driftline: dataset {trained['dataset_id'][:12]} does not verify: {key}: sha256 ")


def test_a_killed_service_is_restarted_and_counted(platform):
    supervision = json.loads((platform.home / "supervisor.json").read_text())
    before = supervision["ingest"]
    os.kill(before["pid"], signal.SIGKILL)

    def restarted():
        report = platform.json("status") if platform.run("status").returncode == 0 else None
        row = report and next(r for r in report["services"] if r["service"] == "ingest")
        return row if row and row["restarts"] == before["restarts"] + 1 and row["health"] == "SERVING" else None

    row = wait_for(restarted, 90, "ingest to be restarted", every=1.0)
    assert row["pid"] != before["pid"]
    assert "ingest: exited with -9" in platform.ok("logs", "supervisor", "-n", "0")


def test_logs_prints_a_services_output(platform):
    assert platform.ok("logs", "registry", "-n", "5").strip()
    unknown = platform.run("logs", "nosuch")
    assert unknown.returncode == 1 and unknown.stderr.startswith("driftline: unknown service 'nosuch'")


def test_every_verb_has_help(platform):  # the platform's environment; no verb runs
    verbs = [["up"], ["down"], ["status"], ["logs"], ["produce"], ["train"], ["drift"], ["predict"],
             ["streams", "add"], ["streams", "list"], ["streams", "show"], ["models", "list"], ["models", "show"],
             ["models", "lineage"], ["models", "promote"], ["models", "rollback"], ["models", "gate-log"],
             ["models", "audit"], ["tokens", "create"], ["tokens", "list"], ["tokens", "revoke"],
             ["datasets", "list"], ["datasets", "show"], ["datasets", "verify"]]
    for verb in verbs:
        help_text = platform.ok(*verb, "--help")
        assert "Usage: driftline " + " ".join(verb) in help_text, verb
