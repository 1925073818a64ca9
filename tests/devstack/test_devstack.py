"""The local stack: real Kafka and MinIO as plain processes (services.devstack).

The session's stack (the `local_stack` fixture) is only ever started and queried here; tests
that stop a stack or make one fail run their own in a subprocess, on other ports, with their
own state dir.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from minio import Minio

from services import devstack
from services.devstack.config import REPO_ROOT


def test_up_twice_is_a_no_op_the_second_time(local_stack):
    before = devstack.status()
    again = devstack.up(quiet=True)
    after = devstack.status()
    assert again == local_stack
    assert {k: v["pid"] for k, v in after.items()} == {k: v["pid"] for k, v in before.items()}
    assert all(v["pid"] for v in after.values())


def test_the_cli_says_up_is_a_no_op_and_status_is_healthy(local_stack):
    up = _cli("up")
    assert up.returncode == 0, up.stderr
    assert up.stdout.count("already running, nothing to do") == 2
    status = _cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for name, address in (("kafka", local_stack.kafka_bootstrap), ("s3", local_stack.s3_endpoint)):
        line = next(line for line in status.stdout.splitlines() if line.startswith(name))
        assert address in line and "healthy" in line and "pid " in line


def test_status_reports_every_component_healthy_with_its_pid(local_stack):
    report = devstack.status()
    assert set(report) == {"kafka", "s3"}
    for component in report.values():
        assert component["state"] == "healthy"
        assert Path(f"/proc/{component['pid']}").exists()
    assert report["kafka"]["address"] == local_stack.kafka_bootstrap
    assert report["s3"]["address"] == local_stack.s3_endpoint


def test_kafka_answers_and_round_trips_a_record(local_stack, unique_topic):
    admin = AdminClient({"bootstrap.servers": local_stack.kafka_bootstrap})
    brokers = admin.list_topics(timeout=10).brokers.values()
    assert [b.port for b in brokers] == [int(local_stack.kafka_bootstrap.split(":")[1])]

    topic = unique_topic("devstack")  # auto-created on first produce
    producer = Producer({"bootstrap.servers": local_stack.kafka_bootstrap})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": local_stack.kafka_bootstrap,
                         "group.id": f"g-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        for _ in range(60):
            message = consumer.poll(1.0)
            if message is not None and not message.error():
                break
        assert message is not None and message.value() == b"hello"
    finally:
        consumer.close()


def test_s3_answers_list_buckets_and_stores_an_object(local_stack, bucket_name):
    client = Minio(local_stack.s3_endpoint, access_key=local_stack.s3_access_key,
                   secret_key=local_stack.s3_secret_key, secure=False)
    client.make_bucket(bucket_name)
    assert bucket_name in [b.name for b in client.list_buckets()]
    client.put_object(bucket_name, "a/b.txt", io.BytesIO(b"payload"), length=7)
    assert client.get_object(bucket_name, "a/b.txt").read() == b"payload"


def test_the_session_fixtures_export_the_addresses(kafka_bootstrap, s3):
    assert os.environ["DRIFTLINE_KAFKA_BOOTSTRAP"] == kafka_bootstrap
    assert os.environ["DRIFTLINE_S3_ENDPOINT"] == s3.endpoint
    assert s3.client().bucket_exists(f"nope-{uuid.uuid4().hex[:8]}") is False


def test_names_are_unique_and_valid(unique_topic, bucket_name):
    import re

    assert unique_topic("a b") == unique_topic("a b") != unique_topic("c")
    assert re.fullmatch(r"[a-zA-Z0-9._-]+", unique_topic("a b"))
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", bucket_name)


# -- stacks of their own, in a subprocess ---------------------------------------------------


def test_down_stops_everything_and_stale_pid_files_do_not_confuse_up(tmp_path):
    """Also `down --wipe`, which deletes the data."""
    env = _private_stack_env(tmp_path)
    state = Path(env["DRIFTLINE_STATE_DIR"])
    state.mkdir()
    # Pid files left by a crashed run, pointing at a process that no longer exists.
    gone = subprocess.Popen(["true"])
    gone.wait()
    for name in ("kafka", "s3"):
        (state / f"{name}.pid").write_text(f"{gone.pid}\n")

    up = _cli("up", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.stdout.count("healthy") == 2
    pids = [int((state / f"{name}.pid").read_text()) for name in ("kafka", "s3")]
    assert gone.pid not in pids

    down = _cli("down", "--wipe", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (state / "kafka").exists() and not (state / "minio").exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} still there after down"
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert str(state) not in ps
    assert not list(state.glob("*.pid"))

    status = _cli("status", env=env)
    assert status.returncode == 3
    assert status.stdout.count(" down ") == 2


def test_a_port_taken_by_another_program_is_a_clear_error(tmp_path):
    env = _private_stack_env(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["DRIFTLINE_DEVSTACK_KAFKA_PORT"])))
        squatter.listen()
        up = _cli("up", env=env)
    assert up.returncode == 1
    assert f"port {env['DRIFTLINE_DEVSTACK_KAFKA_PORT']}" in up.stderr
    assert "already in use" in up.stderr
    assert not list(Path(env["DRIFTLINE_STATE_DIR"]).glob("*.pid"))  # nothing was started


def test_a_kafka_that_fails_to_start_shows_its_log_and_nothing_is_left_running(tmp_path):
    env = _private_stack_env(tmp_path)
    data = Path(env["DRIFTLINE_STATE_DIR"]) / "kafka" / "data"
    data.mkdir(parents=True)
    # Storage formatted for another node: Kafka refuses to start.
    (data / "meta.properties").write_text(
        "version=1\ncluster.id=CUK0ZZzTRImgF86BgBDAeg\nnode.id=2\n"
        "directory.id=Dv9uSwWUSSSaX1VZ5ue-Bw\n")
    up = _cli("up", env=env)
    assert up.returncode == 1
    assert "kafka exited during startup" in up.stderr
    assert "Stored node id 2 doesn't match" in up.stderr  # the broker's own log line
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert env["DRIFTLINE_STATE_DIR"] not in ps


# -- helpers -----------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.devstack", *args], cwd=REPO_ROOT,
                          env=env or os.environ.copy(), capture_output=True, text=True, timeout=600)


def _free_port_pair() -> int:
    """A port p with p+1 also free (Kafka's controller and MinIO's console take the next one)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    pytest.fail("no two consecutive free ports")


def _private_stack_env(tmp_path: Path) -> dict[str, str]:
    kafka_port = _free_port_pair()
    s3_port = _free_port_pair()
    while abs(s3_port - kafka_port) < 2:
        s3_port = _free_port_pair()
    return {
        **os.environ,
        "DRIFTLINE_STATE_DIR": str(tmp_path / "state"),
        "DRIFTLINE_DEVSTACK_KAFKA_PORT": str(kafka_port),
        "DRIFTLINE_DEVSTACK_S3_PORT": str(s3_port),
    }
