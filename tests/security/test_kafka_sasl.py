"""Kafka over SASL_SSL with ACLs, against a private secure broker of this module (its own ports
and directory; the shared broker on 9092 is never touched): wrong credentials are refused with an
authentication error, a service principal is refused a topic outside its ACLs, and ingest and
feature, each as a real process logged in as its own principal, carry events end to end."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from driftline.v1 import features_pb2, training_pb2
from services.common.kafka import Consumer, DeliveryError, Producer, ensure_topics
from services.common.kafka_acls import PRINCIPALS, acl_table
from services.common.settings import Topics
from services.devstack import kafka as devstack_kafka
from services.devstack.process import port_open
from services.feature.settings import FeatureSettings
from services.ingest.settings import IngestSettings
from services.monitor.settings import MonitorSettings
from services.trainer.settings import TrainerSettings
from private_servers import stop
from support import ServiceRun, free_port, unique_bucket, unique_prefix, wait_for


def _two_free_ports() -> int:
    """A port whose next one is free too (the broker's controller listener takes it)."""
    for _ in range(50):
        port = free_port()
        if not port_open(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory) -> Iterator[devstack_kafka.Broker]:
    broker = devstack_kafka.Broker(tmp_path_factory.mktemp("secure-kafka"), _two_free_ports(), secure=True)
    broker.prepare(lambda message: None)
    with open(broker.home / "kafka.log", "wb") as log:
        process = subprocess.Popen(broker.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready() -> bool:
            assert process.poll() is None, (broker.home / "kafka.log").read_text()[-3000:]
            try:
                return broker.is_ready()
            except KafkaException:
                return False

        wait_for(ready, 120, f"the secure broker on {broker.bootstrap}", every=0.25)
        yield broker
    finally:
        stop(process)


@pytest.fixture
def loop(secure_broker) -> str:
    """A topic prefix of this test, with every principal's ACLs for it."""
    prefix = unique_prefix()
    secure_broker.provision(prefix)
    return prefix


def _errors_of(config: dict, bootstrap: str, timeout: float = 10.0) -> list[KafkaError]:
    """The errors librdkafka reports while an admin client with `config` asks for metadata."""
    errors: list[KafkaError] = []
    admin = AdminClient({"bootstrap.servers": bootstrap, "error_cb": errors.append,
                         "logger": devstack_kafka._silent_logger(), **config})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        admin.poll(2)  # the error callbacks are served by a poll
    return errors


# -- the table ---------------------------------------------------------------------------------


def test_the_acl_table_names_the_groups_and_ids_the_services_use():
    prefix = "p."
    granted = {(g.principal, g.resource, g.name) for g in acl_table(prefix)}
    ingest = IngestSettings(topic_prefix=prefix, instance_id="i")
    feature = FeatureSettings(topic_prefix=prefix, instance_id="f")

    def covered(principal: str, resource: str, name: str) -> bool:
        return any(p == principal and r == resource and name.startswith(n) for p, r, n in granted)

    assert covered("ingest", "group", ingest.group_id) and covered("ingest", "transactional_id", ingest.transactional_id)
    assert covered("ingest", "topic", ingest.ids_topic)
    for group in (feature.app_id, feature.segments_group_id, feature.labels_group_id, f"{feature.changelog_topic}-restore"):
        assert covered("feature", "group", group), group
    assert covered("feature", "transactional_id", feature.transactional_id())
    assert covered("feature", "topic", feature.changelog_topic)
    assert covered("trainer", "group", f"{prefix}{TrainerSettings().consumer_group}")
    assert covered("monitor", "group", f"{prefix}{MonitorSettings().consumer_group}")
    # No principal may write another's topic: each topic has exactly one writer besides the operator.
    writers: dict[str, set[str]] = {}
    for g in acl_table(prefix):
        if g.resource == "topic" and "WRITE" in g.operations and g.principal != "operator":
            writers.setdefault(g.name, set()).add(g.principal)
    assert {t: w for t, w in writers.items() if len(w) > 1} == {}
    assert set(Topics(prefix).all()) <= set(writers) | {Topics(prefix).events_raw, Topics(prefix).labels}


def test_every_principal_has_a_generated_password_kept_private(secure_broker):
    passwords = secure_broker.passwords()
    assert set(passwords) == {"admin", *PRINCIPALS}
    assert len(set(passwords.values())) == len(passwords) and all(len(p) >= 24 for p in passwords.values())
    assert (secure_broker.home / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert secure_broker.properties.stat().st_mode & 0o777 == 0o600


# -- authentication ------------------------------------------------------------------------------


def test_a_client_with_a_wrong_password_is_refused_with_an_authentication_error(secure_broker, loop):
    wrong = secure_broker.client_config("ingest", password="not-" + secure_broker.passwords()["ingest"])
    errors = _errors_of(wrong, secure_broker.bootstrap)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    assert any("SASL authentication error" in e.str() for e in errors), errors
    # The right password on the same client configuration answers.
    assert _errors_of(secure_broker.client_config("ingest"), secure_broker.bootstrap) == []


def test_an_unknown_user_and_a_plaintext_client_are_refused(secure_broker, loop):
    stranger = {**secure_broker.client_config("ingest"), "sasl.username": "mallory"}
    assert any(e.code() == KafkaError._AUTHENTICATION for e in _errors_of(stranger, secure_broker.bootstrap))
    admin = AdminClient({"bootstrap.servers": secure_broker.bootstrap, "logger": devstack_kafka._silent_logger()})
    with pytest.raises(KafkaException):  # no metadata without TLS and SASL
        admin.list_topics(timeout=5)


# -- authorisation -------------------------------------------------------------------------------


def test_a_service_principal_cannot_write_a_topic_outside_its_acls(secure_broker, loop):
    topics = Topics(loop)
    ensure_topics(secure_broker.bootstrap, topics.all(), client_config=secure_broker.client_config())
    registry = Producer(secure_broker.bootstrap, config=secure_broker.client_config("registry"))
    registry.produce(topics.registry_events, training_pb2.TrainingResult(request_id="allowed"))
    registry.flush(30)  # its own topic: accepted
    intruder = Producer(secure_broker.bootstrap, config={**secure_broker.client_config("registry"),
                                                         "message.timeout.ms": 10000})
    intruder.produce(topics.events, training_pb2.TrainingResult(request_id="forged"))
    with pytest.raises(DeliveryError, match="Topic authorization failed"):
        intruder.flush(30)


def test_a_service_principal_cannot_read_another_services_topic_or_join_its_group(secure_broker, loop):
    topics = Topics(loop)
    ensure_topics(secure_broker.bootstrap, [topics.training_requests], client_config=secure_broker.client_config())
    # ingest reading the trainer's requests, in the trainer's group.
    consumer = Consumer(secure_broker.bootstrap, f"{loop}driftline-trainer", [topics.training_requests],
                        config=secure_broker.client_config("ingest"))
    try:
        def refused() -> KafkaError | None:
            try:
                consumer.poll_messages(timeout=0.5)
            except KafkaException as exc:
                return exc.args[0]
            return None

        error = wait_for(refused, 30, "the broker to refuse ingest the trainer's topic")
        assert error.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED), error
    finally:
        consumer.close()


# -- the services with their own credentials ---------------------------------------------------


def test_ingest_and_feature_carry_events_end_to_end_each_as_its_own_principal(secure_broker, loop, s3, tmp_path):
    topics = Topics(loop)
    bucket = unique_bucket()
    s3.store(bucket)
    common = {"DRIFTLINE_TOPIC_PREFIX": loop, "DRIFTLINE_BUCKET": bucket, "DRIFTLINE_METRICS_PORT": "0"}
    count = 20
    with contextlib.ExitStack() as stack:
        runs = {}
        for name in ("ingest", "feature"):
            port = free_port()
            runs[name] = stack.enter_context(ServiceRun(name, {
                **common, **secure_broker.env(name), "DRIFTLINE_GRPC_PORT": str(port),
                "DRIFTLINE_INSTANCE_ID": name}, tmp_path / f"{name}.log"))
            runs[name].wait_serving(f"127.0.0.1:{port}", timeout=120)
        operator = secure_broker.client_config("operator")
        producer = Producer(secure_broker.bootstrap, config=operator)
        for i in range(count):
            event = {"event_id": f"e-{i}", "entity_id": f"c-{i % 3}", "event_time": 1_700_000_000_000 + i,
                     "salary": 50000.0 + i, "commission": 0.0, "age": 30, "elevel": 1, "car": 3, "zipcode": 2,
                     "hvalue": 300000.0, "hyears": 5, "loan": 1000.0, "label": i % 2}
            producer.produce_raw(topics.events_raw, json.dumps(event).encode(), event["entity_id"],
                                 [("content-type", b"application/json")])
        producer.flush(30)
        reader = Consumer(secure_broker.bootstrap, f"{loop}driftline-cli-{uuid.uuid4().hex[:8]}", [topics.features],
                          read_committed=True, config=operator)
        seen: set[str] = set()
        try:
            def all_features() -> bool:
                for runner in runs.values():
                    runner.assert_running()
                for record in reader.poll_batch(features_pb2.FeatureRecord, timeout=0.5):
                    seen.add(record.value.event_id)
                return len(seen) >= count

            wait_for(all_features, 120, f"{count} feature records through ingest and feature")
        finally:
            reader.close()
        assert seen == {f"e-{i}" for i in range(count)}
        for runner in runs.values():
            assert "authorization failed" not in runner.log_text().lower(), runner.log_tail()
