"""The platform starts itself, on the real broker: the monitor as a real process
(`python -m services.monitor`) with a catalogue of three streams, each with its own model, and a
registry stand-in in which no production alias exists but one. Labelled feature records arrive;
once a stream has `DRIFTLINE_FIRST_MODEL_MIN_ROWS` of them, the monitor publishes ONE
TrainingRequest for that stream's model, and only after the registry (unavailable at first) said
there is no production version; a failed result makes it ask again after as many new rows."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import pytest

from driftline.v1 import features_pb2, registry_pb2_grpc, training_pb2
from services.common.kafka import Consumer, Producer, ensure_topics
from services.common.settings import Topics
from monitor_fakes import stop_cleanly
from registry_stand_in import RegistryStandIn
from support import GrpcThread, ServiceRun, free_port, unique_bucket, unique_prefix, wait_for

MIN_ROWS = 300
T0_MS = 1_700_000_000_000
STREAMS = {"alpha": "alpha-model", "beta": "beta-model", "gamma": "gamma-model"}


class Live:
    def __init__(self, topics: Topics, producer: Producer, requests_in: Consumer, dashboard: str,
                 run: ServiceRun, registry: RegistryStandIn) -> None:
        self.topics, self.producer, self.requests_in = topics, producer, requests_in
        self.dashboard, self.run, self.registry = dashboard, run, registry
        self.requests: list[training_pb2.TrainingRequest] = []
        self.sent: dict[str, int] = {}

    def send(self, stream: str, n: int, labelled: bool = True) -> None:
        start = self.sent.get(stream, 0)
        for i in range(start, start + n):
            record = features_pb2.FeatureRecord(event_id=f"{stream}-{i}", entity_id=f"u{i % 5}",
                                                feature_set=stream, values=[0.1 * (i % 10), 1.0])
            if labelled:
                record.label = i % 2
            record.event_time.FromMilliseconds(T0_MS + 1000 * i)
            self.producer.produce(self.topics.features, record, key=record.entity_id)
        self.producer.flush()
        self.sent[stream] = start + n

    def state(self) -> dict:
        self.run.assert_running()
        with urllib.request.urlopen(self.dashboard + "/api/state", timeout=2) as answer:
            return json.load(answer)

    def rows(self) -> dict[str, tuple[str, int]]:
        return {s["stream"]: (s["state"], s["rows"]) for s in self.state()["streams"]}

    def wait_rows(self, stream: str, rows: int) -> None:
        wait_for(lambda: self.rows().get(stream, ("", -1))[1] == rows, 30,
                 f"the monitor to count {rows} labelled rows of {stream} (now {self.rows()})", every=0.2)

    def drain(self, seconds: float) -> list[training_pb2.TrainingRequest]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.requests += [r.value for r in self.requests_in.poll_batch(training_pb2.TrainingRequest, timeout=0.2)]
        return self.requests

    def metric(self, name: str, **labels: str) -> float:
        text = urllib.request.urlopen(self.dashboard + "/metrics", timeout=2).read().decode()
        wanted = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        for line in text.splitlines():
            if line.startswith(name + wanted):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture(scope="module")
def live(kafka_bootstrap, s3, tmp_path_factory):
    prefix = unique_prefix()
    topics = Topics(prefix)
    ensure_topics(kafka_bootstrap, topics.all())
    folder = tmp_path_factory.mktemp("streams")
    for stream, model in STREAMS.items():
        (folder / f"{stream}.json").write_text(json.dumps(
            {"stream": stream, "model": model, "label": {"type": "integer"},
             "fields": [{"name": "x", "type": "number"}, {"name": "y", "type": "number"}]}))
    registry_servicer = RegistryStandIn()
    registry_servicer.aliases[("gamma-model", "production")] = 2  # gamma serves already
    registry_servicer.unavailable = True  # and the registry is not up yet
    registry = GrpcThread(registry_servicer, registry_pb2_grpc.add_RegistryServicer_to_server)
    grpc_port, dashboard_port = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("monitor-first-model") / "monitor.log"
    env = {"DRIFTLINE_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFTLINE_TOPIC_PREFIX": prefix,
           "DRIFTLINE_BUCKET": unique_bucket(), "DRIFTLINE_REGISTRY_ADDRESS": registry.address,
           "DRIFTLINE_GRPC_PORT": str(grpc_port), "DRIFTLINE_DASHBOARD_PORT": str(dashboard_port),
           "DRIFTLINE_STREAMS_DIR": str(folder), "DRIFTLINE_STREAM": "alpha",
           "DRIFTLINE_FIRST_MODEL_MIN_ROWS": str(MIN_ROWS), "DRIFTLINE_FIRST_MODEL_CHECK_S": "1",
           "DRIFTLINE_CALIBRATION_STREAMS": "64"}
    run = ServiceRun("monitor", env, log_path)
    producer = Producer(kafka_bootstrap)
    requests_in = Consumer(kafka_bootstrap, f"test-{uuid.uuid4().hex}", [topics.training_requests])
    try:
        run.wait_serving(f"127.0.0.1:{grpc_port}", timeout=60)
        yield Live(topics, producer, requests_in, f"http://127.0.0.1:{dashboard_port}", run, registry_servicer)
    finally:
        requests_in.close()
        stop_cleanly(run, registry)
    assert "Traceback" not in run.log_text(), run.log_tail()


def test_the_first_request_goes_out_once_the_labelled_rows_are_in_for_the_right_model_and_stream(live):
    live.send("alpha", 200, labelled=False)  # unlabelled rows are no training data
    live.send("alpha", MIN_ROWS - 1)
    live.send("beta", MIN_ROWS // 2)
    live.send("gamma", 2 * MIN_ROWS)  # its model is in production: never counted towards a first model
    live.wait_rows("alpha", MIN_ROWS - 1)
    live.wait_rows("beta", MIN_ROWS // 2)
    assert live.drain(1.5) == []

    # Enough rows, but the registry has not answered yet: no "no production version", no request.
    live.send("alpha", 1)
    live.wait_rows("alpha", MIN_ROWS)
    wait_for(lambda: len(live.registry.alias_lookups) >= 2, 30, "the monitor to try the registry")
    assert live.drain(2) == []
    assert "cannot ask the registry" in live.run.log_text()

    live.registry.unavailable = False  # the registry is up
    wait_for(lambda: live.drain(0.3), 30, "the first-model request")
    (request,) = live.drain(2)
    assert (request.model_name, request.stream, request.min_rows) == ("alpha-model", "alpha", MIN_ROWS)
    # The window starts at the first labelled row (the unlabelled ones came before it).
    assert request.window_start.ToMilliseconds() == T0_MS + 1000 * 200
    assert request.reason.startswith("first model") and dict(request.params) == {}
    assert live.rows()["gamma"][0] == "production v2" and live.rows()["beta"][0] == "counting labelled rows"

    # More rows: the request is outstanding, nothing more is asked.
    live.send("alpha", 3 * MIN_ROWS)
    live.wait_rows("alpha", 4 * MIN_ROWS)
    assert len(live.drain(2)) == 1
    assert live.metric("driftline_monitor_first_model_requests_total", model="alpha-model", stream="alpha") == 1
    (marker,) = [m for m in live.state()["markers"] if m.get("signal") == "first_model"]
    assert marker["request_id"] == request.request_id and marker["stream"] == "alpha"


def test_a_failed_first_model_asks_again_after_as_many_new_labelled_rows(live):
    (request,) = live.drain(0.5)
    failed = training_pb2.TrainingResult(request_id=request.request_id, model_name="alpha-model",
                                         status=training_pb2.TrainingResult.FAILED, error="no GPU today")
    live.producer.produce(live.topics.training_results, failed, key="alpha-model")
    live.producer.flush()
    wait_for(lambda: live.rows()["alpha"] == ("counting labelled rows", 0), 30, "the failed result to re-arm alpha")
    live.send("alpha", MIN_ROWS - 1)
    live.wait_rows("alpha", MIN_ROWS - 1)
    assert len(live.drain(1.5)) == 1
    live.send("alpha", 1)
    wait_for(lambda: len(live.drain(0.3)) > 1, 30, "the second first-model request")
    again = live.drain(1.5)[1:]
    assert [(r.model_name, r.stream) for r in again] == [("alpha-model", "alpha")]
    assert again[0].request_id != request.request_id and "attempt 2" in again[0].reason
    assert again[0].window_start == request.window_start  # every row counted, from the first one
