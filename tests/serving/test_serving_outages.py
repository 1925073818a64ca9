"""Serving through outages of what it depends on: its broker killed and started again (a private
broker, tests/serving/private_kafka.py), with real Predict calls answered all the while and every
prediction log accounted for by request id afterwards: delivered, or dropped and counted."""

from __future__ import annotations

import time
import uuid

import pytest

from driftline.v1 import registry_pb2_grpc, serving_pb2
from services.common.kafka import Consumer, Producer
from private_kafka import PrivateBroker
from serving_stack import Registry, Stack, predict, store_and_topics
from support import GrpcThread, wait_for

ROWS = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]
# Long enough that logs fail delivery and are spooled (the logger gives up on a record after 1 s).
OUTAGE_S = 4.0
FAST_SPOOLING = {"prediction_log_delivery_timeout_ms": "1000"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = PrivateBroker(tmp_path_factory.mktemp("private-kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def outage_stack(broker, s3, topic_prefix, bucket_name, tmp_path):
    if broker.pid is None:  # a test before this one failed with the broker down
        broker.start()
    store, topics = store_and_topics(broker.bootstrap, s3, topic_prefix, bucket_name)
    registry = GrpcThread(Registry(), registry_pb2_grpc.add_RegistryServicer_to_server)
    try:
        stack = Stack(broker.bootstrap, topics, store, registry, Producer(broker.bootstrap), tmp_path)
        stack.publish(1)
        stack.move("production", 1)
        yield stack
    finally:
        registry.stop()


def answer_for(predictor, seconds: float) -> list[str]:
    """Predict calls, one after another, for `seconds`; the request ids answered (a failed call fails the test)."""
    answered = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answered.append(predict(predictor, ROWS).request_id)
        time.sleep(0.02)
    return answered


def logged_request_ids(stack: Stack, wanted: set[str], count: int | None = None, timeout: float = 60) -> list[str]:
    """Every prediction log's request id on the topic (repeats kept), once `count` of the `wanted`
    ones (all of them, by default) have arrived."""
    count = len(wanted) if count is None else count
    consumer = Consumer(stack.bootstrap, f"test-{uuid.uuid4().hex}", [stack.topics.predictions])
    seen: list[str] = []
    try:
        def arrived() -> bool:
            seen.extend(r.value.request_id for r in consumer.poll_batch(serving_pb2.PredictionLog, timeout=0.5))
            return len(wanted & set(seen)) >= count

        wait_for(arrived, timeout, f"{count} of {len(wanted)} prediction logs")
    finally:
        consumer.close()
    return seen


def acknowledged(stack: Stack) -> None:
    """Waits until the broker has acknowledged every log so far, so none is in the producer's memory."""
    wait_for(lambda: logs_metric(stack, "produced") == logs_metric(stack, "queued"), 30, "every log acknowledged")


def spool_segments(stack: Stack) -> list:
    return sorted((stack.tmp / "spool").rglob("*.seg"))


def logs_metric(stack: Stack, outcome: str) -> float:
    return stack.metric("driftline_serving_prediction_logs_total", outcome=outcome)


def test_prediction_logs_survive_a_broker_outage_and_arrive_once_it_is_back(broker, outage_stack):
    with outage_stack.serving(**FAST_SPOOLING) as s:
        predictor, _ = s.stubs()
        s.wait_version(predictor, 1)
        before = answer_for(predictor, 1.0)
        broker.kill()
        during = answer_for(predictor, OUTAGE_S)  # serving keeps answering: no call fails
        wait_for(lambda: logs_metric(s, "spooled") > 0, 30, "logs to be spooled while the broker is down")
        assert spool_segments(s)
        broker.start()
        after = answer_for(predictor, 1.0)

        answered = before + during + after
        seen = logged_request_ids(s, set(answered))
        assert len(set(answered)) == len(answered)
        assert set(answered) <= set(seen)  # none lost; a repeat (replayed twice) is allowed, removable by id
        wait_for(lambda: not spool_segments(s), 30, "the spool to be deleted once replayed")
        assert logs_metric(s, "replayed") > 0
        assert s.metric("driftline_serving_prediction_logs_dropped_total", reason="spool_full") == 0


def test_a_restarted_serving_replays_what_the_killed_one_left_in_its_spool(broker, outage_stack):
    with outage_stack.serving(**FAST_SPOOLING) as s:
        predictor, _ = s.stubs()
        s.wait_version(predictor, 1)
        acknowledged(s)
        broker.kill()
        during = answer_for(predictor, OUTAGE_S)
        # Every log of the outage is on disk (none left in the producer's memory): then a crash loses none.
        wait_for(lambda: logs_metric(s, "spooled") == len(during), 30, "every log of the outage to be spooled")
        s.kill()
    broker.start()
    with outage_stack.serving(**FAST_SPOOLING) as s:
        predictor, _ = s.stubs()
        s.wait_version(predictor, 1)
        after = answer_for(predictor, 0.5)
        seen = logged_request_ids(s, set(during + after))
        assert set(during + after) <= set(seen)
        wait_for(lambda: not spool_segments(s), 30, "the spool to be deleted once replayed")


def test_past_its_quota_the_spool_drops_and_counts_each_log_it_refused(broker, outage_stack):
    # Room for a few logs of these two rows (≈ 130 bytes each) and no more.
    with outage_stack.serving(prediction_spool_max_bytes="700", **FAST_SPOOLING) as s:
        predictor, _ = s.stubs()
        s.wait_version(predictor, 1)
        before = answer_for(predictor, 0.5)
        # All acknowledged before the kill, so no log is both refused by the broker and in its log.
        acknowledged(s)
        broker.kill()
        during = answer_for(predictor, OUTAGE_S)
        dropped = lambda: s.metric("driftline_serving_prediction_logs_dropped_total", reason="spool_full")  # noqa: E731
        wait_for(lambda: logs_metric(s, "spooled") + dropped() == len(during), 30, "each log spooled or dropped")
        assert dropped() > 0
        broker.start()
        wait_for(lambda: not spool_segments(s), 30, "the spool to be replayed")
        # Every log of the outage is delivered, or counted as dropped: exactly.
        seen = logged_request_ids(s, set(before + during), len(before) + len(during) - int(dropped()))
        assert set(before) <= set(seen) and len(set(during) & set(seen)) == len(during) - dropped()
        assert logs_metric(s, "dropped") == dropped()
