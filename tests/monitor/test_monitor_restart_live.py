"""The monitor as a real process (`python -m services.monitor`) on the real broker and object
store, killed with SIGKILL and started again: its labelled-sample count is the number of distinct
labelled predictions sent (repeated logs and labels included), and a drift that already asked for
training asks no second time. A poison record on each of its inputs goes to its dead-letter topic
with its reason and origin, and the records behind it are counted; so does a record whose handling
raises every time (an in-process ConsumerWorker on the real broker)."""

from __future__ import annotations

import signal
import time
import uuid
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from driftline.v1 import events_pb2, monitor_pb2, monitor_pb2_grpc, registry_pb2, registry_pb2_grpc, training_pb2
from services.common.deadletter import DeadLetterQueue
from services.common.kafka import Consumer, Producer, ensure_topics, header
from services.common.runtime import ConsumerWorker
from services.monitor.checkpoint import resume_at
from services.monitor.psi import reference_bins
from services.monitor.server import drift_monitor
from services.monitor.settings import MonitorSettings
from monitor_fakes import stop_cleanly
from registry_stand_in import RegistryStandIn, isolated
from support import GrpcThread, ServiceRun, free_port, wait_for
from test_monitor import FEATURES, STREAM, _feature_record, _prediction_log, samples
from test_monitor_stream_drift import _References

MODEL = "drifting"
POISON = b"\x0a\xff"  # field 1, length-delimited, its length cut short: no message of any type


@dataclass
class Loop:
    """The monitor process (started again as often as asked) and what the test sends it."""
    own: object
    env: dict[str, str]
    port: int
    log_dir: object
    producer: Producer
    runs: list[ServiceRun] = field(default_factory=list)

    @property
    def run(self) -> ServiceRun:
        return self.runs[-1]

    def start(self) -> None:
        self.runs.append(ServiceRun("monitor", self.env, self.log_dir / f"monitor-{len(self.runs)}.log"))
        self.run.wait_serving(f"127.0.0.1:{self.port}", timeout=60)

    def kill(self) -> None:
        self.run.process.send_signal(signal.SIGKILL)
        self.run.process.wait(10)

    def report(self) -> monitor_pb2.DriftReport | None:
        self.run.assert_running()
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                found = monitor_pb2_grpc.MonitorStub(channel).GetDriftReport(
                    monitor_pb2.GetDriftReportRequest(model_name=MODEL), timeout=2)
            except grpc.RpcError:
                return None
        return found.reports[0] if found.reports else None

    def samples(self) -> int:
        report = self.report()
        return report.samples if report else -1

    def send(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, value in messages:
            self.producer.produce_raw(topic, value, key=MODEL)
        self.producer.flush()


def _chunks(made, topics) -> list[list[tuple[str, bytes]]]:
    """Per 50 samples: their prediction log and their feature records (labelled), as bytes kept to
    be sent again unchanged."""
    return [[(topics.predictions, _prediction_log(MODEL, 1, made[i:i + 50]).SerializeToString()),
             *((topics.features, _feature_record(s).SerializeToString()) for s in made[i:i + 50])]
            for i in range(0, len(made), 50)]


@pytest.fixture
def loop(kafka_bootstrap, s3, tmp_path):
    own = isolated(kafka_bootstrap, s3)
    registry_servicer = RegistryStandIn()
    registry_servicer.with_reference(own.store, MODEL, 1, FEATURES, np.random.default_rng(0).uniform(0, 1, (2000, 3)),
                                     reference_bins([0.2] * 500 + [0.8] * 500, bins=2))
    registry = GrpcThread(registry_servicer, registry_pb2_grpc.add_RegistryServicer_to_server)
    port = free_port()
    env = {"DRIFTLINE_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFTLINE_TOPIC_PREFIX": own.prefix,
           "DRIFTLINE_BUCKET": own.bucket, "DRIFTLINE_REGISTRY_ADDRESS": registry.address,
           "DRIFTLINE_GRPC_PORT": str(port), "DRIFTLINE_STREAM": STREAM, "DRIFTLINE_DASHBOARD_PORT": "0",
           "DRIFTLINE_INSTANCE_ID": "monitor", "DRIFTLINE_KAFKA_SESSION_TIMEOUT_MS": "6000",
           "DRIFTLINE_SNAPSHOT_EVERY_S": "1", "DRIFTLINE_POLICY_MIN_SAMPLES": "300",
           "DRIFTLINE_ERROR_REFERENCE_SAMPLES": "300", "DRIFTLINE_PSI_WINDOW": "400", "DRIFTLINE_WINDOW_STEP": "100",
           "DRIFTLINE_CALIBRATION_STREAMS": "32", "DRIFTLINE_REPORT_EVERY_S": "0.5"}
    producer = Producer(kafka_bootstrap)
    made = Loop(own, env, port, tmp_path, producer)
    try:
        made.start()
        yield made
    finally:
        if made.runs:
            stop_cleanly(made.run, registry)
        else:
            registry.stop()


def test_a_monitor_killed_before_its_first_snapshot_leaves_its_successor_every_sample(loop, s3):
    """No snapshot ever written (a long interval, no training request): the first monitor counts
    the samples and is killed; the next one finds no snapshot and must count them all again, not
    start at offsets the first one committed past the state it took with it."""
    loop.kill()
    loop.env = {**loop.env, "DRIFTLINE_SNAPSHOT_EVERY_S": "3600"}
    for key in s3.client().list_objects(loop.own.bucket, prefix="monitor/state/", recursive=True):
        s3.client().remove_object(loop.own.bucket, key.object_name)  # the fixture's monitor may have written one
    chunks = _chunks(samples(MODEL, 1000, 1000, 0.9, 0.9, False, seed=11), loop.own.topics)
    loop.start()
    for chunk in chunks[:10]:
        loop.send(chunk)
    wait_for(lambda: loop.samples() == 500, 60, "the first monitor to count 500 samples")
    loop.kill()
    loop.start()
    for chunk in chunks[10:]:
        loop.send(chunk)
    wait_for(lambda: loop.samples() == 1000, 60, "the second monitor to count all 1000")
    time.sleep(1.0)
    assert loop.samples() == 1000


def test_after_sigkills_the_counts_are_the_distinct_labelled_predictions_and_a_drift_asks_once(loop, kafka_bootstrap):
    topics = loop.own.topics
    requests_in = Consumer(kafka_bootstrap, f"test-{uuid.uuid4().hex}", [topics.training_requests])
    chunks = _chunks(samples(MODEL, 1500, 600, 0.9, 0.2, False, seed=7), topics)
    try:
        requests: list[training_pb2.TrainingRequest] = []

        def asked() -> list:
            requests.extend(r.value for r in requests_in.poll_batch(training_pb2.TrainingRequest, timeout=0.2))
            return requests

        for chunk in chunks[:18]:  # the drift, and far enough into it to ask
            loop.send(chunk)
        wait_for(asked, 60, "the drift's training request")
        loop.kill()  # at once: the snapshot after the request may or may not be written yet
        loop.start()
        for chunk in chunks[18:24]:
            loop.send(chunk)
        loop.send(chunks[17] + chunks[20][:30])  # logs and labelled events delivered again
        loop.kill()  # in the middle of the stream, a second time
        loop.start()
        for chunk in chunks[24:]:
            loop.send(chunk)
        distinct = 50 * len(chunks)
        wait_for(lambda: loop.samples() == distinct, 60, f"{distinct} labelled samples (now {loop.samples()})")
        # One more event after everything else: once it is counted, all before it was too.
        (last,) = samples("last", 1, 1, 0.9, 0.9, False, seed=8)
        loop.send([(topics.features, _feature_record(last).SerializeToString()),
                   (topics.predictions, _prediction_log(MODEL, 1, [last]).SerializeToString())])
        wait_for(lambda: loop.samples() == distinct + 1, 60, "the last labelled sample")
        time.sleep(1.0)  # any request a replay would make is published by now
        assert {r.request_id for r in asked()} == {requests[0].request_id}
        assert loop.samples() == distinct + 1
        assert "monitor state restored" in loop.runs[1].log_text() + loop.runs[2].log_text()
        for run in loop.runs:
            assert "Traceback" not in run.log_text(), run.log_tail()
    finally:
        requests_in.close()


def _dead_letters(kafka_bootstrap: str, topic: str, n: int) -> list:
    found = []
    # The topic is made by the first dead letter: a consumer subscribed before that would fail
    # with UNKNOWN_TOPIC_OR_PART.
    ensure_topics(kafka_bootstrap, [topic])
    with_dlq = Consumer(kafka_bootstrap, f"test-{uuid.uuid4().hex}", [topic])
    try:
        deadline = time.monotonic() + 60
        while len(found) < n and time.monotonic() < deadline:
            found += with_dlq.poll_messages(timeout=0.5)
        return found
    finally:
        with_dlq.close()


def test_a_poison_record_on_each_input_is_dead_lettered_and_the_records_behind_it_count(loop, kafka_bootstrap):
    topics = loop.own.topics
    inputs = [topics.features, topics.labels, topics.predictions, topics.training_results, topics.registry_events]
    loop.send([(topic, POISON) for topic in inputs])
    made = samples(MODEL, 100, 100, 0.9, 0.9, False, seed=3)
    # Behind the poison: 50 events labelled with the event, 50 whose label comes later on driftline.labels.
    loop.send(_chunks(made[:50], topics)[0])
    loop.send([(topics.predictions, _prediction_log(MODEL, 1, made[50:]).SerializeToString())])
    wait_for(lambda: (r := loop.report()) and r.predicted_rows == 100, 60, "the predictions")
    loop.send([(topics.labels, events_pb2.Label(event_id=s.event_id, label=s.label).SerializeToString())
               for s in made[50:]])
    moved = registry_pb2.RegistryEvent(kind=registry_pb2.RegistryEvent.ALIAS_MOVED, model_name=MODEL,
                                       alias="production", model_version=registry_pb2.ModelVersion(version=1))
    loop.send([(topics.registry_events, moved.SerializeToString())])
    wait_for(lambda: (r := loop.report()) and r.samples == 100 and r.production, 60, "the records behind the poison")

    letters = _dead_letters(kafka_bootstrap, topics.dead_letters("monitor"), len(inputs))
    assert sorted(header(m.headers(), "driftline.errors.topic") for m in letters) == sorted(inputs)
    for letter in letters:
        assert letter.value() == POISON
        assert header(letter.headers(), "driftline.errors.stage") == "decode"
        assert header(letter.headers(), "driftline.errors.service") == "monitor"
        assert header(letter.headers(), "driftline.errors.offset") == "0"
        assert header(letter.headers(), "driftline.errors.reason").startswith("not a driftline.v1.")


def test_a_record_whose_handling_raises_every_time_is_dead_lettered_and_the_batch_counts_once(kafka_bootstrap, s3):
    own = isolated(kafka_bootstrap, s3)
    topics = own.topics
    settings = MonitorSettings(kafka_bootstrap=kafka_bootstrap, topic_prefix=own.prefix, stream=STREAM,
                               policy_min_samples=10**9, error_reference_samples=300, psi_window=400,
                               window_step=100, calibration_streams=32, first_model_min_rows=0, max_attempts=2)
    producer = Producer(kafka_bootstrap)
    dead_letters = DeadLetterQueue(producer, topics.dead_letters("monitor"), "monitor")
    monitor = drift_monitor(settings, producer, _References(), dead_letters=dead_letters)
    results = topics.training_results
    message_type, on_result = monitor._handlers[results]

    def raises_on_one(result, at) -> None:  # a handler fault that no retry cures, for one record
        if result.request_id == "poison":
            raise RuntimeError("this result cannot be handled")
        on_result(result, at)

    monitor._handlers[results] = (message_type, raises_on_one)
    made = samples(MODEL, 200, 200, 0.9, 0.9, False, seed=4)
    chunks = _chunks(made, topics)
    for value in [*chunks[0], *chunks[1], (results, training_pb2.TrainingResult(request_id="poison").SerializeToString()),
                  (results, training_pb2.TrainingResult(request_id="fine").SerializeToString()), *chunks[2], *chunks[3]]:
        producer.produce_raw(value[0], value[1], key=MODEL)
    producer.flush()
    consumer = Consumer(kafka_bootstrap, f"{own.prefix}monitor", monitor.inputs)
    resume_at(consumer, monitor.inputs, monitor.positions, restored=False)
    worker = ConsumerWorker("monitor", consumer, monitor.handle, max_records=1000, dead_letters=dead_letters,
                            max_attempts=settings.max_attempts)
    worker.start()
    try:
        wait_for(lambda: (r := monitor.reports(MODEL, 1)) and r[0].samples == 200, 60, "every labelled sample")
        (letter,) = _dead_letters(kafka_bootstrap, dead_letters.topic, 1)
        assert header(letter.headers(), "driftline.errors.stage") == "handle"
        assert "this result cannot be handled" in header(letter.headers(), "driftline.errors.reason")
        assert header(letter.headers(), "driftline.errors.topic") == results
        assert worker.failures >= 2 * settings.max_attempts  # the batch, then the record alone
        assert monitor.reports(MODEL, 1)[0].samples == 200 and monitor.reports(MODEL, 1)[0].predicted_rows == 200
    finally:
        worker.stop()
