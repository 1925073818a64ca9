"""Configuration from `DRIFTLINE_*` environment variables.

Every default points at localhost, so a laptop with the local stack needs no
configuration at all. Each service extends `CommonSettings` with its own
fields in `services/<name>/settings.py`.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, TypeVar

from pydantic import BeforeValidator, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def comma_list(value: object) -> object:
    """A list setting as deployments write it: comma-separated ("1, 8"; spaces and empty parts
    dropped) or a JSON list. Anything else (a list already) is left to pydantic.

    >>> comma_list("1, 8,"), comma_list('["cuda", "cpu"]'), comma_list(""), comma_list([1])
    (['1', '8'], ['cuda', 'cpu'], [], [1])
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    return [part.strip() for part in text.split(",") if part.strip()]


T = TypeVar("T")
# A list field read from one environment variable, "a,b" or '["a", "b"]' (pydantic-settings would
# otherwise accept only JSON), e.g. `warmup_rows: CommaList[int] = [1, 8]`.
CommaList = Annotated[list[T], NoDecode, BeforeValidator(comma_list)]


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLINE_", extra="ignore")

    # host:port[,host:port...], as Kafka clients take it (`kafka_brokers` is the list).
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Prepended to every topic name, so several loops (or tests) share a broker.
    topic_prefix: str = ""
    topic_partitions: int = 1
    topic_replication: int = 1
    # Kafka client security (`kafka_client_config()`): PLAINTEXT for the loopback developer loop;
    # SASL_SSL authenticates this process as its own principal (SCRAM), whose ACLs cover only its
    # topics and groups (services/common/kafka_acls.py), over TLS verified with `kafka_ssl_ca_file`
    # (empty: the system's CAs).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_ca_file: str = ""

    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "driftline"
    s3_secret_key: str = "driftline-secret"
    # https, verified with `s3_ca_file` (a private CA's PEM bundle; empty: the system's CAs).
    s3_secure: bool = False
    s3_ca_file: str = ""
    bucket: str = "driftline"

    # The stream the loop runs on and the model it serves.
    stream: str = "default"
    model_name: str = "driftline-model"
    # Every stream of the deployment: one schema file each (services/common/streams.py).
    streams_dir: str = "config/streams"

    registry_address: str = "127.0.0.1:50053"
    feature_address: str = "127.0.0.1:50052"
    serving_address: str = "127.0.0.1:50054"

    log_level: str = "INFO"
    # Structured logs by default; plain text is easier on a terminal.
    log_json: bool = True
    # 0 disables the Prometheus endpoint (tests start many services in one process).
    metrics_port: int = 0
    grpc_port: int = 0
    # Where the gRPC server and the metrics endpoint bind: loopback unless a deployment says
    # otherwise (the image sets 0.0.0.0). Clients are told `advertised_host` (default: the bind
    # host, or this machine's name when that is a wildcard), since 0.0.0.0 is no address to dial.
    grpc_host: str = "127.0.0.1"
    metrics_host: str = "127.0.0.1"
    advertised_host: str = ""
    shutdown_grace_s: float = 5.0
    # uvloop (when installed) or asyncio: the event loop every service runs on.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Allocations between young-generation garbage collections (0: Python's default, 700).
    gc_gen0_threshold: int = 0

    # This process's stable name among its group's members (Kafka static membership, KIP-345):
    # a process restarted under the same name takes its partitions back at once instead of after
    # the session timeout. Unique per replica (the supervisor and the manifests set it); empty:
    # dynamic membership.
    instance_id: str = ""
    # How long a member that stopped heart-beating keeps its partitions.
    kafka_session_timeout_ms: int = 10000
    # Attempts at a record before it goes to the service's dead-letter topic.
    max_attempts: int = 5

    # TLS of every gRPC server and client (services/common/tls.py, services/common/channels.py).
    # This process's PEM certificate and key: a server's own, and the client certificate it
    # presents to an mTLS server. With both a server binds TLS; without them only loopback.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # The CA bundle: clients verify servers with it (TLS on every channel when set), and a server
    # with `tls_client_auth` requires client certificates it signed (mTLS).
    tls_ca_file: str = ""
    tls_client_auth: bool = False
    # Lets a server bind beyond loopback without TLS (or without authentication) knowingly.
    allow_insecure: bool = False

    # Bearer tokens (services/common/auth.py): Ed25519-signed JWTs. A server with the issuer's
    # public key enforces roles on every call; without it everyone is "anonymous", on loopback only.
    auth_public_key_file: str = ""
    # The issuer's private key (`driftline tokens create`): never a service's setting.
    auth_private_key_file: str = ""
    # Revoked token ids, one per line (`driftline tokens revoke` appends), re-read when changed.
    auth_revoked_file: str = ""
    # The token this process sends on every gRPC call: DRIFTLINE_TOKEN, else `token_file`'s text.
    token: SecretStr = SecretStr("")
    token_file: str = ""

    @model_validator(mode="after")
    def _tls_files_usable(self) -> "CommonSettings":
        from .tls import settings_problem  # there, not here: tls imports grpc

        problem = settings_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def kafka_brokers(self) -> list[str]:
        """`kafka_bootstrap` as a list of host:port.

        >>> CommonSettings(kafka_bootstrap="k1:9092, k2:9092").kafka_brokers
        ['k1:9092', 'k2:9092']
        """
        return comma_list(self.kafka_bootstrap)

    def kafka_client_config(self) -> dict[str, str]:
        """The librdkafka security keys of every Kafka client this process makes (`config=`).

        >>> CommonSettings().kafka_client_config()
        {}
        >>> sorted(CommonSettings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="ingest",
        ...     kafka_sasl_password="p", kafka_ssl_ca_file="/ca.pem").kafka_client_config())
        ['sasl.mechanism', 'sasl.password', 'sasl.username', 'security.protocol', 'ssl.ca.location']
        """
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return {}
        config = {"security.protocol": protocol}
        if self.kafka_ssl_ca_file:
            config["ssl.ca.location"] = self.kafka_ssl_ca_file
        if protocol == "SASL_SSL":
            if not (self.kafka_sasl_username and self.kafka_sasl_password):
                raise ValueError("DRIFTLINE_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs DRIFTLINE_KAFKA_SASL_USERNAME "
                                 "and DRIFTLINE_KAFKA_SASL_PASSWORD (this service's Kafka principal)")
            config.update({"sasl.mechanism": self.kafka_sasl_mechanism, "sasl.username": self.kafka_sasl_username,
                           "sasl.password": self.kafka_sasl_password})
        return config

    @property
    def topics(self) -> "Topics":
        return Topics(self.topic_prefix)


class Topics:
    """The loop's topic names: `driftline.<domain>[.<event>]`, optionally prefixed."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.events_raw = f"{prefix}driftline.events.raw"
        self.events = f"{prefix}driftline.events"
        self.events_dlq = f"{prefix}driftline.events.dlq"
        self.features = f"{prefix}driftline.features"
        self.predictions = f"{prefix}driftline.predictions"
        self.labels = f"{prefix}driftline.labels"
        self.registry_events = f"{prefix}driftline.registry.events"
        self.training_requests = f"{prefix}driftline.training.requests"
        self.training_results = f"{prefix}driftline.training.results"
        self.monitor_stats = f"{prefix}driftline.monitor.stats"

    def all(self) -> list[str]:
        return [v for k, v in vars(self).items() if k != "prefix"]

    def dead_letters(self, service: str) -> str:
        """The dead-letter topic of `service` (ingest's is `events_dlq`).

        >>> Topics("t.").dead_letters("monitor"), Topics().dead_letters("ingest")
        ('t.driftline.monitor.dlq', 'driftline.events.dlq')
        """
        return self.events_dlq if service == "ingest" else f"{self.prefix}driftline.{service}.dlq"
