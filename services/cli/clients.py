"""The command's connections: gRPC with a deadline on every call and no waiting for a server
that is not there, Kafka and S3 clients that give up within seconds, each failure a CliError
that names the part of the platform that did not answer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driftline.v1 import monitor_pb2_grpc, registry_pb2, registry_pb2_grpc, serving_pb2_grpc
from services.common import channels
from services.common.settings import CommonSettings

from .errors import CliError, from_rpc, unreachable
from .state import Platform

DEADLINE_S = 3.0  # every gRPC call; an unreachable service is reported well within 5 s
# The monitor answers a report between two batches of its worker, and a batch that brings a new
# version calibrates its thresholds first (seconds on a small machine). A stopped monitor still
# fails at once: a refused connection does not wait for the deadline.
REPORT_DEADLINE_S = 15.0
KAFKA_TIMEOUT_S = 3.0
ALIASES = ("production", "canary", "shadow")

STUBS = {"registry": registry_pb2_grpc.RegistryStub, "serving": serving_pb2_grpc.PredictorStub,
         "monitor": monitor_pb2_grpc.MonitorStub}


class Rpc:
    """One service's stub; `call("Method", request)` raises CliError instead of grpc.RpcError."""

    def __init__(self, service: str, address: str, stub=None, settings: CommonSettings | None = None) -> None:
        self.service = service
        self.address = address
        # wait_for_ready is False on every call (grpc's default): a refused connection fails now.
        # The platform's settings: on a secure one, the operator's certificate and token.
        self.channel = channels.channel(address, settings or Platform.load().settings,
                                        options=[("grpc.enable_http_proxy", 0)])
        self.stub = (stub or STUBS[service])(self.channel)

    @classmethod
    def of(cls, platform: Platform, service: str) -> "Rpc":
        return cls(service, platform.address(service), settings=platform.settings)

    def call(self, method: str, request, timeout: float = DEADLINE_S):
        try:
            return getattr(self.stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc(exc, self.service, self.address) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Rpc":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def health(address: str, timeout: float = DEADLINE_S, settings: CommonSettings | None = None) -> str:
    """The server's grpc.health.v1 status (SERVING, NOT_SERVING, …) or why there is none."""
    try:
        with channels.channel(address, settings, options=[("grpc.enable_http_proxy", 0)]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as exc:
        return exc.code().name if callable(getattr(exc, "code", None)) else "ERROR"


def require_serving(platform: Platform, service: str) -> None:
    """Raises `<service> at <address> is unreachable (…)` unless its health check says SERVING."""
    address = platform.address(service)
    state = health(address, settings=platform.settings)
    if state != "SERVING":
        raise unreachable(service, address, state)


def require_trainer(platform: Platform) -> None:
    """The trainer has no gRPC server: when this machine started the platform, its process must be alive."""
    if not platform.doc:
        return  # a platform started elsewhere: nothing here to check
    trainer = platform.supervision().get("trainer", {})
    if not platform.running() or trainer.get("state") != "running":
        raise CliError(f"trainer is not running (the platform in {platform.home} is down: driftline up)")


# -- Kafka ------------------------------------------------------------------------------------


def group_lag(admin, prefix: str, timeout: float = KAFKA_TIMEOUT_S) -> list[dict]:
    """Per consumer group whose id starts with `prefix`: committed offsets against the partitions'
    ends, one row per partition (a group that committed nothing: one row with lag None)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    listed = admin.list_consumer_groups(request_timeout=timeout).result(timeout=timeout)
    groups = sorted(g.group_id for g in listed.valid if g.group_id.startswith(prefix))
    rows = []
    for group in groups:
        futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout)
        committed = [tp for tp in futures[group].result(timeout=timeout).topic_partitions if tp.error is None]
        if not committed:
            rows.append({"group": group, "topic": "", "partition": None, "committed": None, "end": None, "lag": None})
            continue
        ends = admin.list_offsets({TopicPartition(tp.topic, tp.partition): OffsetSpec.latest() for tp in committed},
                                  request_timeout=timeout)
        end_of = {(tp.topic, tp.partition): f.result(timeout=timeout).offset for tp, f in ends.items()}
        for tp in committed:
            end = end_of[(tp.topic, tp.partition)]
            rows.append({"group": group, "topic": tp.topic, "partition": tp.partition,
                         "committed": tp.offset, "end": end, "lag": max(0, end - max(tp.offset, 0))})
    return rows


def kafka_admin(platform: Platform):
    """An AdminClient that answered a metadata request, else `kafka at … is unreachable`."""
    from confluent_kafka.admin import AdminClient

    bootstrap = platform.settings.kafka_bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 2000,
                         "logger": _QuietLogger(), **platform.settings.kafka_client_config()})
    try:
        admin.list_topics(timeout=KAFKA_TIMEOUT_S)
    except Exception as exc:
        raise unreachable("kafka", bootstrap, _kafka_reason(exc)) from None
    return admin


def _kafka_reason(exc: Exception) -> str:
    text = str(exc.args[0]) if exc.args else str(exc)
    return "no broker answered" if "Failed to get metadata" in text or "TRANSPORT" in text or not text else text


class _QuietLogger:
    """librdkafka's connection-refused chatter is not one line: keep it off the terminal."""

    def log(self, *args, **kwargs) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., None]:
        return self.log


def producer(platform: Platform):
    from services.common.kafka import Producer

    kafka_admin(platform)  # fail fast when there is no broker: a producer would just queue
    return Producer(platform.settings.kafka_bootstrap,
                    config={"logger": _QuietLogger(), **platform.settings.kafka_client_config()})


def read_topic(platform: Platform, topic: str, timeout_s: float = 5.0) -> Iterator:
    """Every record of `topic` from its start to its end as of now (no consumer group is joined)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    admin = kafka_admin(platform)
    meta = admin.list_topics(topic, timeout=KAFKA_TIMEOUT_S).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        return
    consumer = Consumer({"bootstrap.servers": platform.settings.kafka_bootstrap,
                         "group.id": f"{platform.settings.topic_prefix}driftline-cli", "enable.auto.commit": False,
                         "logger": _QuietLogger(), **platform.settings.kafka_client_config()})
    try:
        ends = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=KAFKA_TIMEOUT_S)
            if high > low:
                ends[p] = high
        if not ends:
            return
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is not None:
                    continue
                yield msg
                if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
    finally:
        consumer.close()


def registry_events(platform: Platform) -> list[registry_pb2.RegistryEvent]:
    """The registry's announcements so far (its outbox topic): versions, alias moves, gate decisions."""
    events = []
    for msg in read_topic(platform, platform.topics.registry_events):
        event = registry_pb2.RegistryEvent()
        try:
            event.ParseFromString(msg.value() or b"")
        except Exception:
            continue
        events.append(event)
    return events


# -- S3 ---------------------------------------------------------------------------------------


def s3_client(platform: Platform):
    """A minio client that fails within seconds (no retries) and the bucket it reads."""
    import urllib3
    from minio import Minio

    s = platform.settings
    verify = {"cert_reqs": "CERT_REQUIRED", "ca_certs": s.s3_ca_file} if s.s3_ca_file else {}
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=10.0), retries=urllib3.Retry(total=0),
                               **verify)
    client = Minio(s.s3_endpoint, access_key=s.s3_access_key, secret_key=s.s3_secret_key, secure=s.s3_secure,
                   http_client=http)
    try:
        exists = client.bucket_exists(s.bucket)
    except Exception as exc:
        reason = getattr(exc, "reason", None) or exc
        why = "connection refused" if "refused" in str(reason).lower() else type(reason).__name__
        raise unreachable("s3", s.s3_endpoint, why) from None
    if not exists:
        raise CliError(f"s3: no bucket {s.bucket!r} at {s.s3_endpoint} (nothing was stored yet, or DRIFTLINE_BUCKET "
                       "names another platform)")
    return client, s.bucket
