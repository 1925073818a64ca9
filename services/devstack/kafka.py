"""Apache Kafka in KRaft mode (one combined broker+controller) from its Maven Central jars.

Plaintext by default (loopback only). Secure mode (`DRIFTLINE_DEVSTACK_SECURE=true`, or a `Broker`
made with `secure=True`, as tests/security does on its own ports) serves SASL_SSL (SCRAM-SHA-512)
with a certificate of the stack's own CA, runs the KRaft controller listener over mutual TLS,
and turns on the StandardAuthorizer: an `admin` super-user made at format time, then one SCRAM
user per principal of services/common/kafka_acls.py with only its ACLs (`Broker.provision`).
Every password is generated at setup and kept 0600 in the broker's directory.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from services.common.certificates import write_private
from services.common.kafka_acls import PRINCIPALS, Grant, acl_table

from . import config, tls
from .process import DevstackError, ManagedProcess, Say, port_open, run_streaming

KAFKA_VERSION = "4.4.0"
_HERE = Path(__file__).resolve().parent
POM = _HERE / "kafka-pom.xml"
LOG4J_CONFIG = _HERE / "kafka-log4j2.xml"
# Pinned so the first run does not depend on whatever plugin version Maven would pick.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

# Sized for a 2-core laptop that also runs the services and the tests: a small fixed heap,
# few threads, and a log cleaner that does not reserve its default 128 MB up front.
JVM_OPTS = [
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
    # Kafka stops its own loggers on shutdown; log4j's hook would race it and log a warning.
    "-Dlog4j2.shutdownHookEnabled=false",
]

_PLAINTEXT_LISTENERS = """\
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
"""

# SCRAM credentials live in the metadata log, which the controller must read before it can check
# one, so the controller listener authenticates the broker by its certificate (mutual TLS) instead.
_SECURE_LISTENERS = """\
listeners=SASL_SSL://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=SASL_SSL://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule \\
  required username="admin" password="{admin_password}";
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={ca_file}
listener.name.controller.ssl.client.auth=required
# A certificate's principal is its common name: the broker's own is "kafka-broker".
ssl.principal.mapping.rules=RULE:^CN=([^,]+),.*$/$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:kafka-broker
allow.everyone.if.no.acl.found=false
"""

_SERVER_PROPERTIES = """\
# Written by services/devstack on every start; edit kafka.py instead.
process.roles=broker,controller
node.id=1
# A static one-voter quorum: unlike --standalone's dynamic quorum it does not record the
# controller's address in the metadata log, so the ports can change between runs.
controller.quorum.voters=1@{host}:{controller_port}
{listeners}log.dirs={data_dir}

# One broker: every internal topic must live with a replication factor of 1.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer internal partitions than the default 50: the first consumer group and the first
# transaction then create 5 partitions instead of 50, which is seconds on a small box.
offsets.topic.num.partitions=5
transaction.state.log.num.partitions=5
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true

num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
# Tests create many uniquely named topics; do not keep their data for a week.
log.retention.hours=24
"""


def libs_dir() -> Path:
    return config.cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java") or "java"


def _require_java() -> None:
    if not Path(_java()).exists():
        raise DevstackError("kafka needs a JDK 17 or newer: put `java` on PATH or set JAVA_HOME")


def _class_data_archive() -> Path:
    """Where the JVM's class-data-sharing archive of Kafka's classes lives.

    Loading Kafka's classes from a CDS archive instead of 45 jars makes the broker ready in
    ≈1.4 s instead of ≈2.4 s here, and tests start it often. An archive is only valid for the
    JVM that wrote it (a mismatched one is silently ignored), so the name carries that JVM.
    """
    java = Path(_java()).resolve()
    jvm = java.parent.parent / "lib" / "server" / "libjvm.so"
    stamp = (jvm if jvm.exists() else java).stat().st_mtime_ns if java.exists() else 0
    key = hashlib.sha1(f"{java}:{stamp}".encode()).hexdigest()[:12]
    return libs_dir().parent / f"kafka-classes-{key}.jsa"


def _class_data_options() -> list[str]:
    archive = _class_data_archive()
    quiet = ["-Xlog:cds=off", "-Xlog:cds+dynamic=off"]  # it lists every class it skips
    if archive.exists():
        return [f"-XX:SharedArchiveFile={archive}", *quiet]
    # The first broker writes the archive when it exits; see _keep_class_data_archive.
    return [f"-XX:ArchiveClassesAtExit={archive}.partial", *quiet]


def _keep_class_data_archive(killed: bool) -> None:
    # Only a broker that exited on SIGTERM finished writing its archive; anything else may
    # have left half a file, which would silently cost the speed-up forever.
    partial = Path(f"{_class_data_archive()}.partial")
    if partial.exists():
        if killed:
            partial.unlink()
        else:
            partial.replace(_class_data_archive())


def install(say: Say) -> Path:
    libs = libs_dir()
    complete = libs.parent / ".complete"
    if complete.exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise DevstackError("kafka's jars are fetched with Maven on the first run: install `mvn`")
    say(f"kafka: fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {libs} "
        "(first run only)")
    shutil.rmtree(libs, ignore_errors=True)
    libs.parent.mkdir(parents=True, exist_ok=True)
    # Run from a copy in the cache so Maven writes nothing into the source tree.
    pom = libs.parent / "pom.xml"
    shutil.copyfile(POM, pom)
    run_streaming(
        [mvn, "-B", "-f", str(pom), f"{DEPENDENCY_PLUGIN}:copy-dependencies",
         f"-DoutputDirectory={libs}", "-Dmdep.includeScope=runtime"],
        "mvn", say,
        show=lambda line: "Downloaded from" in line or line.startswith(("[ERROR]", "[INFO] BUILD")),
        progress=lambda lines: f"{sum('Downloaded from' in ln for ln in lines)} files downloaded",
    )
    complete.touch()
    return libs


def _format_storage(properties: Path, data_dir: Path, say: Say, extra: list[str] = ()) -> None:
    if (data_dir / "meta.properties").exists():
        return
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    say(f"kafka: formatting storage in {data_dir} (cluster id {cluster_id})")
    out = subprocess.run(
        [_java(), *JVM_OPTS, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
         "-cp", f"{libs_dir()}/*", "kafka.tools.StorageTool",
         # --cluster-id=…: a base64 id may start with "-", which the separate form reads as an option.
         "format", f"--cluster-id={cluster_id}", "-c", str(properties), *extra],
        capture_output=True, text=True, timeout=120,
    )
    if out.returncode != 0:
        raise DevstackError(f"kafka storage format failed:\n{out.stdout}{out.stderr}")


def bootstrap() -> str:
    return f"{config.HOST}:{config.kafka_port()}"


def _silent_logger() -> logging.Logger:
    # librdkafka logs every refused connection while the broker is still starting.
    logger = logging.getLogger("driftline.devstack.librdkafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


_ACL_RESOURCES = {"topic": "TOPIC", "group": "GROUP", "transactional_id": "TRANSACTIONAL_ID"}


@dataclass(frozen=True)
class Broker:
    """One broker's files and ports: the stack's (`component()`), or a test's private one.

    >>> b = Broker(Path("/s/kafka"), 19092, secure=True)
    >>> b.bootstrap, b.controller_port, b.data_dir.name
    ('127.0.0.1:19092', 19093, 'data-secure')
    """

    home: Path
    port: int
    secure: bool = False
    host: str = config.HOST
    # The CA and certificates (default: <home>/tls); the stack's is shared with its S3 server.
    ca_dir: Path | None = None

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def properties(self) -> Path:
        return self.home / "server.properties"

    @property
    def data_dir(self) -> Path:
        # Apart from the plaintext data: a secure log holds the admin's SCRAM credential from its format.
        return self.home / ("data-secure" if self.secure else "data")

    @property
    def tls_dir(self) -> Path:
        return self.ca_dir or self.home / "tls"

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.pem"

    def passwords(self) -> dict[str, str]:
        """{principal: SCRAM password}, "admin" included; generated on first use, kept 0600."""
        return tls.secret_file(self.home / "secrets.json", ("admin", *PRINCIPALS))

    def client_config(self, principal: str = "admin", password: str | None = None) -> dict[str, str]:
        """librdkafka keys that log in as `principal` (`password`: its own unless given)."""
        if not self.secure:
            return {}
        return {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": principal, "sasl.password": password or self.passwords()[principal],
                "ssl.ca.location": str(self.ca_file)}

    def env(self, principal: str) -> dict[str, str]:
        """The DRIFTLINE_* variables of a process that is `principal` on this broker."""
        found = {"DRIFTLINE_KAFKA_BOOTSTRAP": self.bootstrap}
        if self.secure:
            found.update({"DRIFTLINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                          "DRIFTLINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                          "DRIFTLINE_KAFKA_SASL_USERNAME": principal,
                          "DRIFTLINE_KAFKA_SASL_PASSWORD": self.passwords()[principal],
                          "DRIFTLINE_KAFKA_SSL_CA_FILE": str(self.ca_file)})
        return found

    def prepare(self, say: Say) -> None:
        """Jars, certificates, secrets, server.properties and formatted storage."""
        _require_java()
        install(say)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        listeners = _PLAINTEXT_LISTENERS
        extra: list[str] = []
        fields = {"host": self.host, "port": self.port, "controller_port": self.controller_port}
        if self.secure:
            cert, key = tls.ensure_server_cert(self.tls_dir, "kafka-broker", self.tls_dir)
            keystore = self.tls_dir / "kafka-broker.keystore.pem"
            write_private(keystore, key.read_bytes() + cert.read_bytes())
            admin_password = self.passwords()["admin"]
            fields.update(admin_password=admin_password, keystore=keystore, ca_file=self.ca_file)
            listeners = _SECURE_LISTENERS
            extra = ["--add-scram", f"SCRAM-SHA-512=[name=admin,password={admin_password}]"]
        self.properties.write_text(_SERVER_PROPERTIES.format(
            listeners=listeners.format(**fields), data_dir=self.data_dir, **fields))
        os.chmod(self.properties, 0o600)  # it holds the admin's password in secure mode
        _format_storage(self.properties, self.data_dir, say, extra)

    def command(self) -> list[str]:
        return [_java(), *JVM_OPTS, *_class_data_options(), f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
                "-cp", f"{libs_dir()}/*", "kafka.Kafka", str(self.properties)]

    def is_ready(self, timeout: float = 2.0) -> bool:
        if not port_open(self.port):
            return False
        from confluent_kafka.admin import AdminClient  # only needed once a broker listens

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": _silent_logger(),
                             **self.client_config()})
        metadata = admin.list_topics(timeout=timeout)
        return bool(metadata.brokers)  # empty until the broker has registered with the controller

    def provision(self, prefix: str = "", timeout: float = 30.0) -> list[Grant]:
        """Upserts every principal's SCRAM user and creates its ACLs for the loop of `prefix`
        (idempotent); returns the grants."""
        from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient,
                                           ResourcePatternType, ResourceType, ScramCredentialInfo,
                                           ScramMechanism, UserScramCredentialUpsertion)

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": _silent_logger(),
                             **self.client_config()})
        upserts = [UserScramCredentialUpsertion(name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                                password.encode())
                   for name, password in self.passwords().items() if name != "admin"]
        for future in admin.alter_user_scram_credentials(upserts, request_timeout=timeout).values():
            future.result(timeout)
        grants = acl_table(prefix)
        bindings = [AclBinding(getattr(ResourceType, _ACL_RESOURCES[g.resource]), g.name,
                               getattr(ResourcePatternType, g.pattern.upper()), f"User:{g.principal}", "*",
                               getattr(AclOperation, op), AclPermissionType.ALLOW)
                    for g in grants for op in g.operations]
        for future in admin.create_acls(bindings, request_timeout=timeout).values():
            future.result(timeout)
        return grants


def broker() -> Broker:
    """The local stack's broker (state dir, port and mode from the DRIFTLINE_* environment)."""
    return Broker(config.state_dir() / "kafka", config.kafka_port(), config.secure(), ca_dir=config.tls_dir())


def is_ready(timeout: float = 2.0) -> bool:
    return broker().is_ready(timeout)


def component() -> ManagedProcess:
    stack = broker()

    def setup(say: Say) -> None:
        stack.prepare(say)

    return ManagedProcess(
        name="kafka",
        command=stack.command(),
        address=stack.bootstrap,
        ports=[stack.port, stack.controller_port],
        marker=str(stack.properties),
        home=stack.home,
        ready=stack.is_ready,
        setup=setup,
        after_stop=_keep_class_data_archive,
        start_timeout=120.0,
        stop_timeout=30.0,
    )
