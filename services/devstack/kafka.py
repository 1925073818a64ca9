"""Apache Kafka in KRaft mode (one combined broker+controller) from its Maven Central jars."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from . import config
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

_SERVER_PROPERTIES = """\
# Written by services/devstack on every start; edit kafka.py instead.
process.roles=broker,controller
node.id=1
# A static one-voter quorum: unlike --standalone's dynamic quorum it does not record the
# controller's address in the metadata log, so the ports can change between runs.
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data_dir}

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


def _format_storage(properties: Path, data_dir: Path, say: Say) -> None:
    if (data_dir / "meta.properties").exists():
        return
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    say(f"kafka: formatting storage in {data_dir} (cluster id {cluster_id})")
    out = subprocess.run(
        [_java(), *JVM_OPTS, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
         "-cp", f"{libs_dir()}/*", "kafka.tools.StorageTool",
         "format", "-t", cluster_id, "-c", str(properties)],
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


def is_ready(timeout: float = 2.0) -> bool:
    if not port_open(config.kafka_port()):
        return False
    from confluent_kafka.admin import AdminClient  # only needed once a broker listens

    admin = AdminClient({"bootstrap.servers": bootstrap(), "logger": _silent_logger()})
    metadata = admin.list_topics(timeout=timeout)
    return bool(metadata.brokers)  # empty until the broker has registered with the controller


def component() -> ManagedProcess:
    state = config.state_dir()
    port = config.kafka_port()
    controller_port = port + 1
    properties = state / "kafka" / "server.properties"
    data_dir = state / "kafka" / "data"

    def setup(say: Say) -> None:
        _require_java()
        install(say)
        data_dir.mkdir(parents=True, exist_ok=True)
        properties.write_text(_SERVER_PROPERTIES.format(
            host=config.HOST, port=port, controller_port=controller_port, data_dir=data_dir))
        _format_storage(properties, data_dir, say)

    return ManagedProcess(
        name="kafka",
        command=[_java(), *JVM_OPTS, *_class_data_options(),
                 f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
                 "-cp", f"{libs_dir()}/*", "kafka.Kafka", str(properties)],
        address=bootstrap(),
        ports=[port, controller_port],
        marker=str(properties),
        home=properties.parent,
        ready=is_ready,
        setup=setup,
        after_stop=_keep_class_data_archive,
        start_timeout=120.0,
        stop_timeout=30.0,
    )
