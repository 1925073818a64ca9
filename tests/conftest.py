"""Infrastructure for the tests: a real Kafka broker and a real S3 server, never a mock.

Each is found in this order:
1. an address in the environment: DRIFTLINE_KAFKA_BOOTSTRAP; DRIFTLINE_S3_ENDPOINT (host:port)
   with DRIFTLINE_S3_ACCESS_KEY / DRIFTLINE_S3_SECRET_KEY / DRIFTLINE_S3_SECURE;
2. testcontainers, when a Docker engine answers;
3. the local stack (services.devstack), started here if needed and stopped at the end of the
   session only if this session started it.
The session fixtures also export the addresses as DRIFTLINE_* variables, so services that tests
start in-process read the same settings as a deployment would. No test skips for want of
infrastructure: it is started.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest

from services import devstack
from support import unique_bucket, unique_prefix


# A conftest module holds fixtures, not docstring examples. --doctest-modules would import each one
# a second time as a module named "conftest" (the test folders are not packages) and trip over the
# first; pytest still loads every conftest.py as a plugin.
collect_ignore_glob = ["conftest.py", "*/conftest.py"]


@dataclass(frozen=True)
class S3:
    endpoint: str  # host:port, what the minio client takes
    access_key: str
    secret_key: str
    secure: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def store(self, bucket: str):
        """The object store of `bucket` on this server, the bucket created."""
        from services.common.objectstore import MinioObjectStore

        store = MinioObjectStore(self.endpoint, self.access_key, self.secret_key, bucket, self.secure)
        store.ensure_bucket()
        return store

    def client(self):
        from minio import Minio

        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key,
                     secure=self.secure)


_docker_answer: bool | None = None


def _docker_engine_answers() -> bool:
    global _docker_answer
    if _docker_answer is None:
        try:  # with no engine, docker raises already in from_env()
            import docker

            client = docker.from_env(timeout=3)
            try:
                _docker_answer = bool(client.ping())
            finally:
                client.close()
        except Exception:
            _docker_answer = False
    return _docker_answer


@contextlib.contextmanager
def _exported(values: dict[str, str]) -> Iterator[None]:
    """Set DRIFTLINE_* variables for the session and put the previous values back after it."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def local_stack(request) -> Iterator[devstack.Endpoints]:
    """The local stack (Kafka + MinIO as plain processes); what this session starts, it stops."""
    to_start = [name for name, s in devstack.status().items() if s["state"] == "down"]
    if not to_start:
        yield devstack.up(quiet=True)
        return
    # Show progress on the terminal: a first run downloads and builds for minutes.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    guard = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with guard:
        print("\nstarting the local stack (services.devstack)…", flush=True)
        endpoints = devstack.up()
    try:
        yield endpoints
    finally:
        devstack.down(quiet=True, only=to_start)


@pytest.fixture(scope="session")
def kafka_bootstrap(request) -> Iterator[str]:
    bootstrap = os.environ.get("DRIFTLINE_KAFKA_BOOTSTRAP")
    with contextlib.ExitStack() as cleanup:
        if not bootstrap and _docker_engine_answers():
            # testcontainers 4.15's KafkaContainer drives Confluent's images only (its start script
            # runs /etc/confluent/docker/configure); Apache's image is started here the way
            # testcontainers-java's org.testcontainers.kafka.KafkaContainer does: wait for a start
            # script, then write it with the mapped port as the advertised listener.
            from testcontainers.core.container import DockerContainer
            from testcontainers.core.wait_strategies import LogMessageWaitStrategy

            # The Kafka of the local stack (services/devstack/kafka.py) and of docker-compose.yml;
            # tests/deploy/test_compose.py checks that all three have one major version.
            image = "apache/kafka:4.4.0"
            script = "/tmp/driftline-kafka-start.sh"
            container = (
                DockerContainer(image)
                .with_exposed_ports(9092)
                .with_envs(
                    CLUSTER_ID="0h9-Gno8TFWbHi8Mao5LEA",
                    KAFKA_NODE_ID="1",
                    KAFKA_PROCESS_ROLES="broker,controller",
                    # PLAINTEXT: the tests (mapped port); BROKER: inter-broker; CONTROLLER: KRaft.
                    KAFKA_LISTENERS="PLAINTEXT://0.0.0.0:9092,BROKER://0.0.0.0:9093,CONTROLLER://0.0.0.0:9094",
                    KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    KAFKA_INTER_BROKER_LISTENER_NAME="BROKER",
                    KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
                    KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9094",
                    KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
                    KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS="1",
                    # Transactions (ingest's exactly-once) need these on a single broker.
                    KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
                    KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
                    KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
                    KAFKA_AUTO_CREATE_TOPICS_ENABLE="true",
                )
                .with_command(["sh", "-c", f"while [ ! -f {script} ]; do sleep 0.1; done; exec bash {script}"])
            )
            container.start()
            cleanup.callback(container.stop)
            bootstrap = f"{container.get_container_host_ip()}:{container.get_exposed_port(9092)}"
            container.copy_into_container((
                "#!/bin/bash\n"
                f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{bootstrap},BROKER://localhost:9093\n"
                "exec /etc/kafka/docker/run\n").encode(), script, 0o755)
            LogMessageWaitStrategy(r"Kafka Server started").with_startup_timeout(120).wait_until_ready(container)
        if not bootstrap:
            bootstrap = request.getfixturevalue("local_stack").kafka_bootstrap
        cleanup.enter_context(_exported({"DRIFTLINE_KAFKA_BOOTSTRAP": bootstrap}))
        yield bootstrap


@pytest.fixture(scope="session")
def s3(request) -> Iterator[S3]:
    access = os.environ.get("DRIFTLINE_S3_ACCESS_KEY") or devstack.config.DEFAULT_S3_ACCESS_KEY
    secret = os.environ.get("DRIFTLINE_S3_SECRET_KEY") or devstack.config.DEFAULT_S3_SECRET_KEY
    endpoint = os.environ.get("DRIFTLINE_S3_ENDPOINT")
    secure = os.environ.get("DRIFTLINE_S3_SECURE", "false").lower() in ("1", "true", "yes")
    with contextlib.ExitStack() as cleanup:
        if endpoint:
            found = S3(endpoint, access, secret, secure)
        elif _docker_engine_answers():
            from testcontainers.community.minio import MinioContainer

            container = (
                MinioContainer(access_key=access, secret_key=secret)
                # Newer MinIO images read only the ROOT variables.
                .with_env("MINIO_ROOT_USER", access)
                .with_env("MINIO_ROOT_PASSWORD", secret)
            )
            container.start()
            cleanup.callback(container.stop)
            found = S3(container.get_config()["endpoint"], access, secret)
        else:
            stack = request.getfixturevalue("local_stack")
            found = S3(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
        cleanup.enter_context(_exported({
            "DRIFTLINE_S3_ENDPOINT": found.endpoint,
            "DRIFTLINE_S3_ACCESS_KEY": found.access_key,
            "DRIFTLINE_S3_SECRET_KEY": found.secret_key,
            "DRIFTLINE_S3_SECURE": "true" if found.secure else "false",
        }))
        yield found


# -- per-test names, so tests share one broker and one object store without seeing each other --


@pytest.fixture
def topic_prefix() -> str:
    """A prefix unique to this test, for DRIFTLINE_TOPIC_PREFIX / Topics(prefix)."""
    return unique_prefix()


@pytest.fixture
def unique_topic(topic_prefix) -> Callable[[str], str]:
    """unique_topic("events") -> "t3f9c….events": same name within a test, unique across tests."""

    def make(name: str = "topic") -> str:
        return topic_prefix + re.sub(r"[^a-zA-Z0-9._-]", "-", name)

    return make


@pytest.fixture
def bucket_name() -> str:
    """A valid S3 bucket name (lowercase letters, digits, hyphens; ≤ 63) unique to this test."""
    return unique_bucket()
