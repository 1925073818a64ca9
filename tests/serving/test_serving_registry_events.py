"""How serving follows the registry when things go wrong: a poison registry event goes to
serving's dead-letter topic and the next ones apply; a repeated event (same event_id) applies
once; while the object store or the registry is away serving keeps answering with the model it
has and installs the new one, retrying, once they are back. The broker, object store and serving
process are real; the registry is the stand-in of serving_stack, the outages a cut TCP proxy."""

from __future__ import annotations

import threading
import uuid

import grpc

from driftline.v1 import registry_pb2
from services.common.deadletter import OFFSET, REASON, SERVICE, STAGE, TOPIC
from services.common.kafka import Consumer, header
from serving_stack import MODEL, predict
from support import wait_for
from tcp_proxy import TcpProxy

ROW = [[1.0, 2.0, 3.0]]


def alias_moved(version: registry_pb2.ModelVersion, alias: str = "production",
                event_id: str | None = None) -> registry_pb2.RegistryEvent:
    return registry_pb2.RegistryEvent(event_id=event_id or uuid.uuid4().hex, kind=registry_pb2.RegistryEvent.ALIAS_MOVED,
                                      model_name=MODEL, model_version=version, alias=alias)


def publish(stack, *values: registry_pb2.RegistryEvent | bytes) -> None:
    for value in values:
        if isinstance(value, bytes):
            stack.producer.produce_raw(stack.topics.registry_events, value, key=MODEL)
        else:
            stack.producer.produce(stack.topics.registry_events, value, key=MODEL)
    stack.producer.flush()


def dead_letters(stack, count: int) -> list:
    consumer = Consumer(stack.bootstrap, f"test-{uuid.uuid4().hex}", [stack.topics.dead_letters("serving")])
    found = []
    try:
        def enough() -> bool:
            found.extend(consumer.poll_messages(timeout=0.5))
            return len(found) >= count

        wait_for(enough, 60, f"{count} dead letters from serving")
        found.extend(consumer.poll_messages(timeout=1.0))  # and no more
    finally:
        consumer.close()
    return found


def failed_loads(stack) -> float:
    return stack.metric("driftline_serving_alias_loads_total", model=MODEL, alias="production", outcome="failed")


class Callers:
    """Predict calls in a loop on a thread, keeping every version answered and every failure."""

    def __init__(self, predictor) -> None:
        self.versions: set[int] = set()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._call, args=(predictor,), daemon=True)
        self._thread.start()

    def _call(self, predictor) -> None:
        while not self._stop.is_set():
            try:
                self.versions.add(predict(predictor, ROW).model_version)
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_a_poison_registry_event_is_dead_lettered_and_the_next_ones_apply(stack):
    for version in (1, 2, 3):
        stack.publish(version)
    stack.move("production", 1)
    stack.registry.servicer.broken.add(2)
    with stack.serving(max_attempts="2") as s:
        predictor, _ = s.stubs()
        s.wait_version(predictor, 1)
        garbage = b"not a registry event"
        # An undecodable record, and a move whose version the registry refuses to look up every time.
        publish(s, garbage, alias_moved(registry_pb2.ModelVersion(name=MODEL, version=2)))
        letters = {header(m.headers(), STAGE): m for m in dead_letters(s, 2)}
        assert set(letters) == {"decode", "handle"}  # one each: none dead-lettered twice
        assert letters["decode"].value() == garbage
        assert "StatusCode.INTERNAL" in header(letters["handle"].headers(), REASON)
        for letter in letters.values():
            assert header(letter.headers(), SERVICE) == "serving"
            assert header(letter.headers(), TOPIC) == s.topics.registry_events
        assert int(header(letters["decode"].headers(), OFFSET)) < int(header(letters["handle"].headers(), OFFSET))
        s.move("production", 3)  # the records behind them are processed
        s.wait_version(predictor, 3)


def test_a_repeated_registry_event_is_applied_once(stack):
    for version in (1, 2, 3, 4):
        stack.publish(version)
    stack.move("production", 1)
    versions = stack.registry.servicer.versions
    with stack.serving(canary_weight="1") as s:
        predictor, _ = s.stubs()
        to_two = alias_moved(versions[2])
        stack.aliases["production"] = 3
        # The move to 2 comes again after the move to 3 (an at-least-once publisher's repeat):
        # followed again, it would move production back to 2.
        publish(s, to_two, alias_moved(versions[3]), to_two)
        stack.aliases["canary"] = 4
        publish(s, alias_moved(versions[4], alias="canary"))
        s.wait_version(predictor, 4, variant="canary")  # every event before it is handled
        assert s.metric("driftline_serving_model_version", model=MODEL) == 3


def test_while_the_object_store_is_away_serving_answers_and_the_swap_retries_until_it_fetches(stack, s3):
    proxy = TcpProxy(s3.endpoint)
    stack.publish(1)
    stack.publish(2)
    stack.move("production", 1)
    with stack.serving(s3_endpoint=proxy.address) as s:
        predictor, _ = s.stubs()
        s.wait_version(predictor, 1)
        callers = Callers(predictor)
        try:
            proxy.cut()
            s.move("production", 2)
            wait_for(lambda: failed_loads(s) >= 2, 60, "the swap to fail and be retried")
            assert callers.versions == {1}
            proxy.restore()
            s.wait_version(predictor, 2, timeout=60)
        finally:
            callers.stop()
            proxy.cut()
        assert callers.failures == []


def test_while_the_registry_is_away_serving_answers_and_follows_an_event_once_it_is_back(stack):
    proxy = TcpProxy(stack.registry.address)
    stack.publish(1)
    stack.publish(2)
    stack.move("production", 1)
    with stack.serving(registry_address=proxy.address) as s:
        predictor, _ = s.stubs()
        s.wait_version(predictor, 1)
        callers = Callers(predictor)
        try:
            proxy.cut()
            stack.aliases["production"] = 2
            # An event without the version's record: serving must ask the registry for it.
            publish(s, alias_moved(registry_pb2.ModelVersion(name=MODEL, version=2)))
            wait_for(lambda: failed_loads(s) >= 2, 60, "the lookup to fail and be retried")
            assert callers.versions == {1}
            proxy.restore()
            s.wait_version(predictor, 2, timeout=60)
        finally:
            callers.stop()
            proxy.cut()
        assert callers.failures == []
