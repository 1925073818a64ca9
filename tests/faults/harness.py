"""The fault-injection harness, shared by tests/faults/ and bench/faults.py.

A private platform per run, started the way a user starts one: `driftline up` with its own
DRIFTLINE_HOME, topic prefix and bucket, and — since faults kill the broker and stop S3 — its own
Kafka broker and S3 server (services.devstack on free ports with their own data under the run's
folder), so the shared stack other people use is never touched. During a steady labelled stream
with a concept drift (services.demo's DriftingStream: raw JSON events, most labelled on the event,
every `late_every`-th labelled `late_s` later on driftline.labels, a few invalid) and a Predict
client that retries UNAVAILABLE as a real client does, the faults strike one after another once the
platform serves its first model. After the stream drains, everything is read back (read_committed)
and each invariant is judged with its figures: a failed one names itself and what it counted.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from confluent_kafka import KafkaException

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/faults.py runs from anywhere
    sys.path.insert(0, str(ROOT))

from driftline.v1 import (  # noqa: E402
    events_pb2, features_pb2, monitor_pb2, monitor_pb2_grpc, registry_pb2, serving_pb2, serving_pb2_grpc,
    training_pb2,
)
from services.cli.clients import group_lag  # noqa: E402
from services.common.kafka import Consumer, Producer  # noqa: E402
from services.common.settings import Topics  # noqa: E402
from services.demo.stream import DriftingStream  # noqa: E402
from services.devstack.supervisor import SERVICES, WITH_GRPC, free_port_pair, serving  # noqa: E402

DRIFTLINE = Path(sys.executable).parent / "driftline"
STREAM, MODEL = "default", "driftline-model"  # config/streams/default.json, which `up` seeds
SERVICE_FAULTS = tuple(f"kill:{name}" for name in SERVICES)
ALL_FAULTS = (*SERVICE_FAULTS, "kill:feature+monitor", "stop:feature", "kill:broker", "stop:s3",
              "registry-during-promotion")


@dataclass
class Config:
    events: int = 3000              # the stream's length at least; it goes on while faults are left
    rate: float = 60.0              # events per second
    warmup_rate: float | None = None  # events per second until the first model serves (None: `rate`); no fault
                                      # strikes before it, so only the time to the first model changes
    drift_at: float = 0.5           # the abrupt drift's position, as a fraction of `events`
    late_every: int = 10            # every n-th event's label comes late on driftline.labels…
    late_s: float = 30.0            # …this long after the event
    invalid_every: int = 250        # every n-th raw event is invalid (a dead letter, never an event)
    first_model_rows: int = 800     # DRIFTLINE_FIRST_MODEL_MIN_ROWS
    retrain_rows: int = 800         # DRIFTLINE_MONITOR_RETRAIN_MIN_ROWS
    seed: int = 42
    settle_s: float = 8.0           # steady stream before the first fault: its lag is the baseline
    resettle_s: float | None = None  # before each later fault: this long of lag within the baseline's limits
                                     # (polled, at most settle_s); None: a fixed settle_s pause
    recover_timeout_s: float = 90.0
    stop_s: float = 15.0            # SIGSTOP this long: past the 10 s session timeout
    s3_outage_s: float = 20.0
    drain_timeout_s: float = 240.0
    train_timeout_s: float = 300.0  # the final training, on the whole stream
    start_timeout_s: float = 400.0


def _now() -> float:
    return time.monotonic()


# -- the platform --------------------------------------------------------------------------------


class PrivatePlatform:
    """`driftline up` with a home, a stack, topics and a bucket of its own, under `root`."""

    def __init__(self, root: Path, config: Config, extra_env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:10]
        self.prefix = f"flt{tag}."
        self.topics = Topics(self.prefix)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("DRIFTLINE_") or k == "DRIFTLINE_CACHE_DIR"}
        self.env.update(
            DRIFTLINE_HOME=str(self.root / "home"), DRIFTLINE_STATE_DIR=str(self.root / "stack"),
            DRIFTLINE_DEVSTACK_KAFKA_PORT=str(free_port_pair()), DRIFTLINE_DEVSTACK_S3_PORT=str(free_port_pair()),
            DRIFTLINE_TOPIC_PREFIX=self.prefix, DRIFTLINE_BUCKET=f"faults-{tag}", DRIFTLINE_LOG_JSON="false",
            DRIFTLINE_FIRST_MODEL_MIN_ROWS=str(config.first_model_rows),
            DRIFTLINE_MONITOR_RETRAIN_MIN_ROWS=str(config.retrain_rows),
            COLUMNS="200", **(extra_env or {}))
        self.home = self.root / "home"
        self.stack = self.root / "stack"
        self.doc: dict = {}

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(DRIFTLINE), *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def up(self, timeout: float) -> None:
        done = self.cli("up", "--any-ports", "--json", "--timeout", str(timeout), timeout=timeout + 120)
        if done.returncode != 0:
            raise RuntimeError(f"driftline up failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                               f"{self.log_tail('supervisor')}")
        self.doc = json.loads((self.home / "platform.json").read_text())

    def down(self) -> str:
        done = self.cli("down", "--json", timeout=180)
        return f"{done.returncode}: {done.stdout.strip()} {done.stderr.strip()}"

    @property
    def bootstrap(self) -> str:
        return self.doc["env"]["DRIFTLINE_KAFKA_BOOTSTRAP"]

    def s3_store(self):
        from services.common.objectstore import MinioObjectStore

        env = self.doc["env"]
        return MinioObjectStore(env["DRIFTLINE_S3_ENDPOINT"], env["DRIFTLINE_S3_ACCESS_KEY"],
                                env["DRIFTLINE_S3_SECRET_KEY"], env["DRIFTLINE_BUCKET"], False)

    # -- processes ----------------------------------------------------------------------------

    @staticmethod
    def process_name(service: str) -> str:
        return f"serving:{MODEL}" if service == "serving" else service

    def supervision(self) -> dict:
        try:
            return json.loads((self.home / "supervisor.json").read_text())
        except (OSError, ValueError):
            return {}

    def pid(self, service: str) -> int | None:
        return self.supervision().get(self.process_name(service), {}).get("pid")

    def entry(self, service: str) -> dict:
        return self.doc["serving"][MODEL] if service == "serving" else self.doc["services"][service]

    def address(self, service: str) -> str:
        return self.entry(service)["address"]

    def healthy(self, service: str) -> bool:
        """Running, and answering: its gRPC health check, or (the trainer) its metrics endpoint."""
        state = self.supervision().get(self.process_name(service), {})
        if state.get("state") != "running":
            return False
        if service in WITH_GRPC:
            return serving(self.address(service))
        try:
            with urllib.request.urlopen(self.entry(service)["metrics"], timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    def stack_pid(self, component: str) -> int | None:
        try:
            return int((self.stack / f"{component}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stack_up(self) -> None:
        """Starts what of the private stack is down (same ports, same data), waits until it answers."""
        done = subprocess.run([sys.executable, "-m", "services.devstack", "up"], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"devstack up failed:\n{done.stdout}\n{done.stderr}")

    def log_tail(self, service: str, chars: int = 3000) -> str:
        path = self.home / ("supervisor.log" if service == "supervisor" else
                            f"logs/{'serving-' + MODEL if service == 'serving' else service}.log")
        try:
            return f"--- {path} ---\n{path.read_text(errors='replace')[-chars:]}"
        except OSError:
            return f"--- {path}: no log ---"


def _signal(pid: int | None, sig: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _gone(pid: int, timeout: float = 30.0) -> None:
    deadline = _now() + timeout
    while _now() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)


# -- the traffic ---------------------------------------------------------------------------------


class LabelledStream(threading.Thread):
    """Raw JSON events at a steady rate (`warmup_rate` until the first model serves, if set); the drift
    is held until the first model serves, so that model is trained on the concept before it and the
    drift asks for a retraining."""

    def __init__(self, platform: PrivatePlatform, config: Config, first_served: threading.Event,
                 more: threading.Event, stop: threading.Event) -> None:
        super().__init__(name="stream", daemon=True)
        self.platform, self.config = platform, config
        self.first_served, self.more, self.stop = first_served, more, stop
        self.valid: set[str] = set()
        self.invalid: set[str] = set()
        self.labels: dict[str, int] = {}          # every valid event's label, on it or late
        self.late: set[str] = set()
        self.event_time_ms: dict[str, int] = {}
        self.finished = threading.Event()       # every event and every late label produced
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # the run ends with a reason instead of hanging
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.finished.set()

    def _run(self) -> None:
        c, topics = self.config, self.platform.topics
        producer = Producer(self.platform.bootstrap, config={"logger": _quiet_logger()})
        # Never before the first model's rows are in: the drift waits for that model to serve.
        drift_at = max(int(c.events * c.drift_at), int(c.first_model_rows * 1.5))
        pending: collections.deque[tuple[float, events_pb2.Label]] = collections.deque()
        next_at = _now()
        for i, event in enumerate(DriftingStream(drift_at, c.seed).take()):
            if self.stop.is_set() or (i >= c.events and not self.more.is_set()):
                break
            if i == drift_at:
                while not self.first_served.wait(0.5) and not self.stop.is_set():
                    self._send_due(producer, pending)
                next_at = _now()
            event_id = event["event_id"]
            event["event_time"] = int(time.time() * 1000)
            if c.invalid_every and i % c.invalid_every == c.invalid_every - 1:
                event["age"] = 999  # outside the schema's range: a dead letter
                self.invalid.add(event_id)
            else:
                self.valid.add(event_id)
                self.labels[event_id] = event["label"]
                self.event_time_ms[event_id] = event["event_time"]
                if c.late_every and i % c.late_every == 0:
                    label = events_pb2.Label(event_id=event_id, label=event.pop("label"))
                    label.event_time.FromMilliseconds(event["event_time"])
                    pending.append((_now() + c.late_s, label))
                    self.late.add(event_id)
            producer.produce_raw(topics.events_raw, json.dumps(event).encode(), event["entity_id"],
                                 [("content-type", b"application/json")])
            self._send_due(producer, pending)
            warming = c.warmup_rate and not self.first_served.is_set()
            next_at += 1.0 / (c.warmup_rate if warming else c.rate)
            if (delay := next_at - _now()) > 0:
                time.sleep(delay)
        while pending and not self.stop.is_set():
            self._send_due(producer, pending)
            time.sleep(0.2)
        producer.flush(60)

    def _send_due(self, producer: Producer, pending) -> None:
        while pending and pending[0][0] <= _now():
            _, label = pending.popleft()
            label.labelled_at.GetCurrentTime()
            producer.produce(self.platform.topics.labels, label, key=label.event_id,
                             headers=[("driftline.stream", STREAM.encode())])


@dataclass
class CallFailure:
    t: float
    code: str
    details: str


class PredictClient(threading.Thread):
    """Calls Predict with the feature vectors the feature service publishes, as a real client
    would: a deadline per attempt, UNAVAILABLE retried with exponential back-off within an overall
    deadline, any other error (or the overall deadline) a failed call, recorded with its time.
    Before serving's first answer "no model yet" is expected and not counted."""

    ATTEMPT_S, CALL_S, FIRST_BACKOFF_S, MOST_BACKOFF_S = 2.0, 15.0, 0.1, 1.0

    def __init__(self, platform: PrivatePlatform, first_served: threading.Event, stop: threading.Event) -> None:
        super().__init__(name="predict", daemon=True)
        self.platform, self.first_served, self.stop = platform, first_served, stop
        self.calls = 0
        self.failures: list[CallFailure] = []
        self.unavailable_at: list[float] = []  # every UNAVAILABLE attempt after the first answer
        self.versions: collections.Counter = collections.Counter()
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        consumer = Consumer(self.platform.bootstrap, f"{self.platform.prefix}faults-client",
                            [self.platform.topics.features], read_committed=True,
                            config={"logger": _quiet_logger()})
        channel = grpc.insecure_channel(self.platform.address("serving"))
        stub = serving_pb2_grpc.PredictorStub(channel)
        try:
            while not self.stop.is_set():
                records = consumer.poll_batch(features_pb2.FeatureRecord, 16, 0.2)
                if records:
                    rows = [serving_pb2.Row(values=r.value.values, event_id=r.value.event_id) for r in records]
                    self._call(stub, serving_pb2.PredictRequest(model_name=MODEL, rows=rows))
                    try:
                        consumer.commit()
                    except KafkaException:
                        pass  # the broker is down (a fault): the next commit covers these rows

        finally:
            consumer.close()
            channel.close()

    def _call(self, stub, request) -> None:
        deadline, backoff = _now() + self.CALL_S, self.FIRST_BACKOFF_S
        while not self.stop.is_set():
            try:
                reply = stub.Predict(request, timeout=min(self.ATTEMPT_S, max(0.1, deadline - _now())))
            except grpc.RpcError as exc:
                code = exc.code()
                if not self.first_served.is_set():
                    if self.stop.wait(0.2):
                        return
                    continue  # no model yet: the same rows again, until the first one serves
                if code == grpc.StatusCode.UNAVAILABLE and _now() + backoff < deadline:
                    self.unavailable_at.append(_now())
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, self.MOST_BACKOFF_S)
                    continue
                self.failures.append(CallFailure(_now(), code.name, (exc.details() or "")[:200]))
                return
            self.calls += 1
            self.versions[reply.model_version] += 1
            self.first_served.set()
            return


class LagSampler(threading.Thread):
    """The platform's consumer-group lag (committed offsets against high watermarks, AdminClient),
    once a second: (time, {"group topic[partition]": lag}), or (time, None) when the broker does
    not answer. A drained transactional topic keeps a lag of 1: its last offset is a commit marker."""

    def __init__(self, platform: PrivatePlatform, stop: threading.Event, every_s: float = 1.0) -> None:
        super().__init__(name="lag", daemon=True)
        self.platform, self.stop, self.every_s = platform, stop, every_s
        self.samples: list[tuple[float, dict[str, int] | None]] = []
        self.lock = threading.Lock()
        self.error = ""  # why the last sample failed

    def _admin(self):
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.platform.bootstrap, "socket.connection.setup.timeout.ms": 2000,
                            "logger": _quiet_logger()})

    def run(self) -> None:
        admin = self._admin()
        while not self.stop.wait(self.every_s):
            t = _now()
            try:
                # Serving follows registry events in a group of its own per process (it starts at the
                # topic's end): a killed serving process leaves its group behind, never to drain.
                # Whether serving applied the events is an invariant of its own.
                serving = f"{self.platform.prefix}driftline-serving-"
                sample = {f"{row['group']} {row['topic']}[{row['partition']}]": row["lag"] or 0
                          for row in group_lag(admin, f"{self.platform.prefix}driftline", timeout=3.0)
                          if not row["group"].startswith(serving)}
            except Exception as exc:
                # A client that saw the broker die may keep failing after it is back: a new one.
                self.error, sample, admin = f"{type(exc).__name__}: {exc}", None, self._admin()
            with self.lock:
                self.samples.append((t, sample))

    def window(self, start: float, end: float) -> list[tuple[float, dict[str, int] | None]]:
        with self.lock:
            return [(t, s) for t, s in self.samples if start <= t < end]

    def drained(self, most: int = 2, samples: int = 3) -> bool:
        """Whether the last `samples` samples saw every partition within `most` of its end, unchanged."""
        with self.lock:
            last = [s for _, s in self.samples[-samples:]]
        return len(last) == samples and all(s is not None and s == last[0] for s in last) and \
            all(lag <= most for lag in last[0].values())

    def latest(self) -> dict[str, int] | None:
        with self.lock:
            return self.samples[-1][1] if self.samples else None

    def segments_written(self) -> bool:
        """Whether the feature service's segment writers hold no row unwritten, by the latest sample: a
        writer commits only below its first buffered row, so its group is at the end of its topic —
        on driftline.features but for the commit marker a transaction ends with, on driftline.labels
        (a plain producer's, the stream's) exactly."""
        latest, topics = self.latest(), self.platform.topics
        if not latest:
            return False
        app = f"{self.platform.prefix}driftline-feature"
        ends = {(f"{app}-segments", topics.features): 1, (f"{app}-labels", topics.labels): 0}
        seen = set()
        for key, lag in latest.items():
            group, _, partition = key.partition(" ")
            most = ends.get((group, partition.rsplit("[", 1)[0]))
            if most is not None:
                seen.add(group)
                if lag > most:
                    return False
        return len(seen) == len(ends)


def _quiet_logger():
    import logging

    logger = logging.getLogger("driftline.faults.librdkafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def steady_limits(baseline: list[tuple[float, dict[str, int] | None]], rate: float) -> dict[str, float]:
    """Per partition of each group, the lag that counts as steady: twice the most seen before the fault, and at least
    that most plus one second of the stream (a commit interval's worth of jitter).

    >>> steady_limits([(0, {"a": 10, "b": 0}), (1, {"a": 40}), (2, None)], rate=50)
    {'a': 90, 'b': 50}
    """
    most: dict[str, int] = {}
    for _, sample in baseline:
        for group, lag in (sample or {}).items():
            most[group] = max(most.get(group, 0), lag)
    return {group: max(2 * lag, lag + rate) for group, lag in most.items()}


def recovered_at(samples: list[tuple[float, dict[str, int] | None]], limits: dict[str, float],
                 after: float, default_limit: float) -> float | None:
    """The first sample time ≥ `after` from which two samples in a row are within the limits.

    >>> s = [(0, {"a": 500}), (1, {"a": 80}), (2, {"a": 600}), (3, {"a": 10}), (4, {"a": 20})]
    >>> recovered_at(s, {"a": 100}, after=0, default_limit=50)
    3
    >>> recovered_at(s, {"a": 100}, after=3.5, default_limit=50) is None
    True
    """
    run: list[float] = []
    for t, sample in samples:
        if t < after:
            continue
        run = run + [t] if within(sample, limits, default_limit) else []
        if len(run) == 2:
            return run[0]
    return None


def within(sample: dict[str, int] | None, limits: dict[str, float], default_limit: float) -> bool:
    """Whether every partition of a lag sample is within its steady limit (a group not seen before the
    fault: `default_limit`); a failed sample (None) is not.

    >>> within({"a": 90, "new": 50}, {"a": 90}, 50), within({"a": 91}, {"a": 90}, 50), within(None, {}, 50)
    (True, False, False)
    """
    return sample is not None and all(lag <= limits.get(group, default_limit) for group, lag in sample.items())


# -- the faults ----------------------------------------------------------------------------------


@dataclass
class Strike:
    fault: str
    at: float                       # monotonic time of the fault
    healthy_at: float | None = None  # the struck part answering again
    recovered_at: float | None = None
    down: list[str] = field(default_factory=list)  # services this fault took down
    note: str = ""
    request_id: str = ""            # registry-during-promotion: the training request it struck

    def figures(self) -> dict:
        def since(t):
            return None if t is None else round(t - self.at, 2)
        after_healthy = (None if self.recovered_at is None or self.healthy_at is None
                         else round(max(0.0, self.recovered_at - self.healthy_at), 2))
        return {"fault": self.fault, "healthy_s": since(self.healthy_at), "recovered_s": since(self.recovered_at),
                "recovered_after_healthy_s": after_healthy, "note": self.note}


class Faults:
    """Strikes each fault of a plan in turn, each after a steady stretch, and waits for recovery."""

    def __init__(self, platform: PrivatePlatform, config: Config, lag: LagSampler, stop: threading.Event) -> None:
        self.platform, self.config, self.lag, self.stop = platform, config, lag, stop
        self.strikes: list[Strike] = []
        self.limits: dict[str, float] | None = None

    def run(self, plan: list[str]) -> None:
        for fault in plan:
            if self.limits is None:
                if self.stop.wait(self.config.settle_s):
                    return
                # The steady level is the one before the first fault: a fault that leaves the pipeline
                # behind must not make the next one's "steady" its own backlog.
                self.limits = steady_limits(self.lag.window(_now() - self.config.settle_s, _now()), self.config.rate)
            elif not self._settled(self.limits):
                return
            limits = self.limits
            strike = self.strike(fault)
            self.strikes.append(strike)
            deadline = strike.at + self.config.recover_timeout_s
            while strike.recovered_at is None and _now() < deadline and not self.stop.wait(1.0):
                if strike.healthy_at is not None:
                    strike.recovered_at = recovered_at(self.lag.window(strike.at, _now() + 1), limits,
                                                       strike.healthy_at, self.config.rate)

    def _settled(self, limits: dict[str, float]) -> bool:
        """Waits for a steady stretch before a later fault: `resettle_s` of lag samples (two at least),
        every one within the steady limits, or at most `settle_s` (a fault that never recovered);
        with no `resettle_s`, a fixed `settle_s` pause. False when the run is stopping."""
        c = self.config
        if c.resettle_s is None:
            return not self.stop.wait(c.settle_s)
        give_up = _now() + c.settle_s
        while not self.stop.is_set():
            window = self.lag.window(_now() - c.resettle_s, _now())
            if _now() >= give_up or (len(window) >= 2 and all(within(s, limits, c.rate) for _, s in window)):
                return True
            self.stop.wait(0.2)
        return False

    def strike(self, fault: str) -> Strike:
        kind, _, what = fault.partition(":")
        if kind == "kill":
            return self._kill(fault, what.split("+"))
        if fault == "stop:s3":
            return self._stop_s3(fault)
        if kind == "stop":
            return self._sigstop(fault, what)
        if fault == "registry-during-promotion":
            return self._registry_during_promotion(fault)
        raise ValueError(f"unknown fault {fault!r}: one of {', '.join(ALL_FAULTS)}")

    def _kill(self, fault: str, names: list[str]) -> Strike:
        if names == ["broker"]:
            pid = self.platform.stack_pid("kafka")
            strike = Strike(fault, _now())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _gone(pid)
            self.platform.stack_up()  # same port, same data
            strike.healthy_at = _now()
            return strike
        before = {name: self.platform.pid(name) for name in names}
        strike = Strike(fault, _now(), down=names)
        for name in names:
            _signal(before[name], signal.SIGKILL)
        self._wait_back(strike, names, before)
        return strike

    def _wait_back(self, strike: Strike, names: list[str], before: dict[str, int | None]) -> None:
        deadline = _now() + self.config.recover_timeout_s
        waiting = set(names)
        while waiting and _now() < deadline:
            waiting = {n for n in waiting if self.platform.pid(n) == before[n] or not self.platform.healthy(n)}
            time.sleep(0.1)
        if waiting:
            strike.note = f"not healthy again within {self.config.recover_timeout_s:g}s: {sorted(waiting)}"
        else:
            strike.healthy_at = _now()

    def _sigstop(self, fault: str, name: str) -> Strike:
        pid = self.platform.pid(name)
        strike = Strike(fault, _now(), down=[name])
        _signal(pid, signal.SIGSTOP)
        self.stop.wait(self.config.stop_s)
        _signal(pid, signal.SIGCONT)
        self._wait_back(strike, [name], {name: None})
        return strike

    def _stop_s3(self, fault: str) -> Strike:
        pid = self.platform.stack_pid("s3")
        strike = Strike(fault, _now())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        _gone(pid)
        self.stop.wait(self.config.s3_outage_s)
        self.platform.stack_up()
        strike.healthy_at = _now()
        return strike

    def _registry_during_promotion(self, fault: str) -> Strike:
        """Asks for a training and SIGKILLs the registry once it has registered the version: the
        trainer's Promote comes next (the gate reads the eval slice and scores it first)."""
        request = training_pb2.TrainingRequest(request_id=f"faults-promotion-{uuid.uuid4().hex[:12]}",
                                               model_name=MODEL, stream=STREAM,
                                               reason="fault suite: a promotion to restart the registry in")
        request.requested_at.GetCurrentTime()
        producer = Producer(self.platform.bootstrap, config={"logger": _quiet_logger()})
        producer.produce(self.platform.topics.training_requests, request, key=MODEL)
        producer.flush(30)
        db = self.platform.home / "data" / "registry.db"
        deadline = _now() + 240
        gated = None
        while _now() < deadline and not self.stop.is_set():
            version, gated = _registered(db, request.request_id)
            if version is not None:
                break
            time.sleep(0.02)
        else:
            strike = Strike(fault, _now(), request_id=request.request_id)
            strike.note = "the version was never registered: nothing to strike"
            return strike
        before = {"registry": self.platform.pid("registry")}
        strike = Strike(fault, _now(), down=["registry"], request_id=request.request_id,
                        note=f"v{version} registered, gate {'already decided' if gated else 'not yet decided'}")
        _signal(before["registry"], signal.SIGKILL)
        self._wait_back(strike, ["registry"], before)
        return strike


def spurious_requests(requests: list, results: list, registry: list) -> tuple[list[str], list[str]]:
    """Training requests no drift explains: a first-model request after a production version
    existed, and a drift request for a model version asked while an earlier request for that
    version was still unanswered, or after one of them was promoted (the version was replaced)."""
    production_ms = min((e.occurred_at.ToMilliseconds() for e in registry
                         if e.kind == registry_pb2.RegistryEvent.ALIAS_MOVED and e.alias == "production"), default=None)
    late_first = [r.request_id for r in requests if r.request_id.startswith("first-model-") and production_ms
                  and r.requested_at.ToMilliseconds() > production_ms]
    finished = {r.request_id: r for r in results}
    by_version: dict[str, list] = collections.defaultdict(list)
    for request in requests:
        if "[alert " in request.reason:
            by_version[request.reason.split("] in ", 1)[-1].split(":", 1)[0]].append(request)
    repeated = []
    for version, asked in by_version.items():
        asked.sort(key=lambda r: r.requested_at.ToMilliseconds())
        for earlier_index, later in enumerate(asked[1:]):
            for earlier in asked[:earlier_index + 1]:
                result = finished.get(earlier.request_id)
                if result is None or result.promoted or \
                        result.finished_at.ToMilliseconds() > later.requested_at.ToMilliseconds():
                    repeated.append(f"{version}: {later.request_id[:24]} after {earlier.request_id[:24]}")
                    break
    return late_first, repeated


def _kind(request_id: str, request: training_pb2.TrainingRequest) -> str:
    if request_id.startswith("first-model-"):
        return "first-model"
    return "drift" if "[alert " in request.reason else "asked by the suite"


def _registered(db: Path, request_id: str) -> tuple[int | None, bool]:
    """(the version registered for `request_id`, whether its gate decision is recorded), read-only."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5)) as conn:
            row = conn.execute("SELECT version FROM model_versions WHERE params LIKE ?",
                               (f'%"{request_id}"%',)).fetchone()
            if row is None:
                return None, False
            gated = conn.execute("SELECT COUNT(*) FROM gate_decisions WHERE candidate_version = ? AND model_name = ?",
                                 (row[0], MODEL)).fetchone()[0]
            return row[0], bool(gated)
    except sqlite3.Error:
        return None, False


# -- reading back --------------------------------------------------------------------------------


def read_topic(bootstrap: str, topic: str, idle_s: float = 3.0) -> list:
    """Every record of `topic` a read_committed reader sees now, every partition from the start."""
    from confluent_kafka import Consumer as RawConsumer, TopicPartition

    consumer = RawConsumer({"bootstrap.servers": bootstrap, "group.id": f"faults-read-{uuid.uuid4().hex[:8]}",
                            "isolation.level": "read_committed", "enable.auto.commit": False,
                            "logger": _quiet_logger()})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return []
        parts = [TopicPartition(topic, p, 0) for p in metadata.partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        consumer.assign(parts)
        found, last = [], _now()
        while _now() - last < idle_s:
            batch = consumer.consume(1000, 0.5)
            for message in batch:
                if message.error() is None:
                    found.append(message)
            if batch:
                last = _now()
            positions = consumer.position(parts)
            if all(p.offset >= ends[p.partition] for p in positions if p.offset >= 0) and \
                    all(p.offset >= 0 for p in positions):
                break
        return found
    finally:
        consumer.close()


def parsed(messages: list, message_type) -> list:
    out = []
    for message in messages:
        value = message_type()
        with contextlib.suppress(Exception):
            value.ParseFromString(message.value() or b"")
            out.append(value)
    return out


@dataclass
class Verdict:
    invariant: str
    ok: bool
    figures: dict

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.invariant}: {json.dumps(self.figures, default=str)}"


def once_by_id(invariant: str, expected: set[str], seen: collections.Counter, **extra) -> Verdict:
    """Exactly once by id: figures in, out, duplicates, lost, unexpected.

    >>> once_by_id("x", {"a", "b"}, collections.Counter(["a", "a", "c"])).figures
    {'in': 2, 'out': 3, 'duplicates': 1, 'lost': 1, 'unexpected': 1, 'lost_sample': ['b']}
    """
    lost = sorted(expected - seen.keys())
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    unexpected = len(seen.keys() - expected)
    figures = {"in": len(expected), "out": sum(seen.values()), "duplicates": duplicates, "lost": len(lost),
               "unexpected": unexpected, "lost_sample": lost[:5], **extra}
    return Verdict(invariant, not (lost or duplicates or unexpected), figures)


def _parquet(store, key: str):
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(store.get_bytes(key)))


def dataset_verdicts(store, final_dataset: str, stream: LabelledStream) -> list[Verdict]:
    """The final dataset (built after the stream drained, covering all of it): every valid event in
    its window exactly once, with its label (on the row, or joined from a label segment the manifest
    names); and no dataset of the run with an event twice."""
    from services.common.datasets import manifest_key, versions_prefix

    manifests = {key: store.get_json(key) for key in store.list_keys(versions_prefix(STREAM)) if key.endswith(".json")}
    doubled = {}
    final_rows: collections.Counter = collections.Counter()
    final_labels: dict[str, int] = {}
    final = manifests.get(manifest_key(STREAM, final_dataset)) if final_dataset else None
    for key, manifest in manifests.items():
        ids: collections.Counter = collections.Counter()
        labels: dict[str, int] = {}
        for label_segment in manifest.get("label_segments", []):
            table = _parquet(store, label_segment["key"])
            for event_id, label in zip(table.column("event_id").to_pylist(), table.column("label").to_pylist()):
                labels[event_id] = label
        for segment in manifest["segments"]:
            table = _parquet(store, segment["key"])
            times = table.column("event_time_ms").to_pylist()
            for event_id, label, t in zip(table.column("event_id").to_pylist(), table.column("label").to_pylist(), times):
                if manifest["window_start_ms"] <= t <= manifest["window_end_ms"]:
                    ids[event_id] += 1
                    if label is not None:
                        labels.setdefault(event_id, label)
        doubled[key.rsplit("/", 1)[1][:12]] = sum(n - 1 for n in ids.values() if n > 1)
        if manifest is final:
            final_rows, final_labels = ids, labels
    verdicts = [Verdict("no dataset holds an event twice", not any(doubled.values()),
                        {"datasets": len(manifests), "duplicates_by_dataset": doubled})]
    if final is None:
        verdicts.append(Verdict("every valid event exactly once in the dataset covering it", False,
                                {"error": f"no manifest for the final dataset {final_dataset!r}"}))
        return verdicts
    covered = {e for e in stream.valid if final["window_start_ms"] <= stream.event_time_ms[e] <= final["window_end_ms"]}
    labelled = collections.Counter({e: n for e, n in final_rows.items() if e in final_labels})
    late = covered & stream.late
    verdicts.append(once_by_id("every valid event exactly once in the dataset covering it", covered, labelled,
                               dataset=final_dataset[:12], late_labelled_in=len(late),
                               late_labelled_lost=len(late - labelled.keys())))
    wrong = [e for e in labelled if final_labels[e] != stream.labels.get(e)]
    verdicts.append(Verdict(f"a label sent {stream.config.late_s:g} s after its event is in the next dataset",
                            bool(late) and not (late - labelled.keys()) and not wrong,
                            {"late_labels": len(late), "in_dataset": len(late & labelled.keys()),
                             "wrong_labels": len(wrong)}))
    return verdicts


def _samples_by_version(monitor_address: str) -> dict[int, dict]:
    with grpc.insecure_channel(monitor_address) as channel:
        reply = monitor_pb2_grpc.MonitorStub(channel).GetDriftReport(
            monitor_pb2.GetDriftReportRequest(model_name=MODEL), timeout=30)
    return {r.model_version: {"samples": r.samples, "production": r.production,
                              "too_late_labels": r.join.too_late_labels, "unmatched_labels": r.join.unmatched_labels}
            for r in reply.reports}


def _serving_version(metrics_url: str) -> int | None:
    with contextlib.suppress(OSError), urllib.request.urlopen(metrics_url, timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("driftline_serving_model_version{") and f'model="{MODEL}"' in line:
                return int(float(line.rsplit(" ", 1)[1]))
    return None


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class RunReport:
    config: dict
    plan: list[str]
    strikes: list[dict]
    verdicts: list[Verdict]
    predict: dict
    events_sent: int
    failures: list[str]

    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.ok]

    def to_json(self) -> dict:
        return {"config": self.config, "plan": self.plan, "strikes": self.strikes,
                "verdicts": [asdict(v) for v in self.verdicts], "predict": self.predict,
                "events_sent": self.events_sent, "failures": self.failures}


class FaultRun:
    """One platform, one stream, the faults of `plan` in turn, then the stream drained and judged."""

    def __init__(self, root: Path, config: Config, plan: list[str], say=print) -> None:
        self.config, self.plan, self.say = config, list(plan), say
        self.platform = PrivatePlatform(root, config)
        self.stop = threading.Event()
        self.first_served = threading.Event()
        self.more = threading.Event()  # the stream goes on while faults are left
        self.t0 = _now()

    def log(self, text: str) -> None:
        self.say(f"[faults t+{_now() - self.t0:6.1f}s] {text}")

    def __enter__(self) -> "FaultRun":
        self.log(f"driftline up (home {self.platform.home}, prefix {self.platform.prefix})")
        self.platform.up(self.config.start_timeout_s)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.log(f"driftline down: {self.platform.down()}")

    def run(self) -> RunReport:
        p, c = self.platform, self.config
        stream = LabelledStream(p, c, self.first_served, self.more, self.stop)
        client = PredictClient(p, self.first_served, self.stop)
        lag = LagSampler(p, self.stop)
        faults = Faults(p, c, lag, self.stop)
        failures: list[str] = []
        self.more.set()
        for actor in (lag, client, stream):
            actor.start()
        self.log(f"stream of {c.events:,} events at {c.rate:g}/s; waiting for the first model to serve…")
        if not self._wait(self.first_served.is_set, c.start_timeout_s):
            failures.append("the platform never served a first model")
        else:
            self.log(f"first model served; faults: {', '.join(self.plan)}")
            for fault in self.plan:
                faults.run([fault])
                s = faults.strikes[-1]
                self.log(f"{fault}: {json.dumps(s.figures())}")
        self.more.clear()
        self.log("faults done; draining the stream and its late labels…")
        stream.finished.wait(c.events / c.rate + c.late_s + 120)
        drained = self._wait(lag.drained, c.drain_timeout_s)
        if not drained:
            failures.append(f"the pipeline did not drain within {c.drain_timeout_s:g}s: lag {lag.latest()}"
                            + (f" ({lag.error})" if lag.latest() is None else ""))
        # The feature service writes a segment at most feature_segment_seconds (2 s) after its last row.
        if drained and not self._wait(lag.segments_written, 15.0, every=0.2):
            self.log(f"segment writers not at the end after 15 s: lag {lag.latest()}")
        final = self._final_training(failures)
        self.log("reading everything back…")
        verdicts = self._judge(stream, client, faults, final, failures)
        self.log(f"judged: {sum(not v.ok for v in verdicts)} of {len(verdicts)} invariants failed")
        self.stop.set()
        for actor in (lag, client, stream):
            actor.join(20)
        for actor in (stream, client):
            if actor.error:
                failures.append(f"{actor.name}: {actor.error}")
        return RunReport(asdict(c), self.plan, [s.figures() for s in faults.strikes], verdicts,
                         {"calls": client.calls, "failures": [asdict(f) for f in client.failures],
                          "unavailable_attempts": len(client.unavailable_at), "versions": dict(client.versions)},
                         len(stream.valid) + len(stream.invalid), failures)

    def _wait(self, condition, timeout: float, every: float = 1.0) -> bool:
        deadline = _now() + timeout
        while _now() < deadline and not self.stop.is_set():
            if condition():
                return True
            time.sleep(every)
        return False

    def _final_training(self, failures: list[str]) -> str:
        """A training on the whole stream, asked once it drained: the dataset that covers every event."""
        wait = self.config.train_timeout_s
        done = self.platform.cli("train", "--stream", STREAM, "--wait", "--json", "--timeout", str(wait), timeout=wait + 60)
        if done.returncode != 0:
            failures.append(f"the final training failed: {done.stderr.strip()[-500:]}")
            return ""
        return json.loads(done.stdout).get("dataset_id", "")

    def _judge(self, stream: LabelledStream, client: PredictClient, faults: Faults, final: str,
               failures: list[str]) -> list[Verdict]:
        p, topics = self.platform, self.platform.topics
        verdicts = []
        events = parsed(read_topic(p.bootstrap, topics.events), events_pb2.Event)
        verdicts.append(once_by_id("every valid raw event exactly once in driftline.events", stream.valid,
                                   collections.Counter(e.event_id for e in events)))
        features = parsed(read_topic(p.bootstrap, topics.features), features_pb2.FeatureRecord)
        verdicts.append(once_by_id("every valid raw event exactly once in driftline.features", stream.valid,
                                   collections.Counter(f.event_id for f in features)))
        try:
            verdicts += dataset_verdicts(p.s3_store(), final, stream)
        except Exception as exc:
            verdicts.append(Verdict("every valid event exactly once in the dataset covering it", False,
                                    {"error": f"{type(exc).__name__}: {exc}"}))
        verdicts += self._training_verdicts(faults)
        verdicts += self._consumer_verdicts(stream)
        verdicts.append(self._client_verdict(client, faults))
        verdicts.append(self._recovery_verdict(faults))
        return verdicts

    def _training_verdicts(self, faults: Faults) -> list[Verdict]:
        p, topics = self.platform, self.platform.topics
        requests = parsed(read_topic(p.bootstrap, topics.training_requests), training_pb2.TrainingRequest)
        results = parsed(read_topic(p.bootstrap, topics.training_results), training_pb2.TrainingResult)
        registry = parsed(read_topic(p.bootstrap, topics.registry_events), registry_pb2.RegistryEvent)
        asked = collections.OrderedDict((r.request_id, r) for r in requests)
        # A request redelivered after its answer (its commit lost to the broker's restart) is answered
        # again from the stored result: the same record, which consumers take once by request id.
        # Two different answers to one request would be the failure. Records compare as canonical
        # bytes (maps in key order): a map's wire order says nothing of the answer.
        distinct = {r.SerializeToString(deterministic=True): r for r in results}.values()
        answered = collections.Counter(r.request_id for r in distinct)
        copies = len(results) - sum(answered.values())
        versions: dict[str, set[int]] = collections.defaultdict(set)
        for event in registry:
            if event.kind == registry_pb2.RegistryEvent.VERSION_REGISTERED:
                versions[event.model_version.params.get("request_id", "")].add(event.model_version.version)
        not_one = {rid[:24]: answered[rid] for rid in asked if answered[rid] != 1}
        several = {rid[:24]: sorted(v) for rid, v in versions.items() if rid in asked and len(v) > 1}
        late_first, repeated = spurious_requests(list(asked.values()), results, registry)
        promotion = [s for s in faults.strikes if s.request_id]
        return [
            Verdict("every training request gets one result, identical copies aside", not not_one,
                    {"requests": len(asked), "results": len(results), "identical_copies": copies,
                     "not_exactly_one": not_one,
                     "struck_promotions": [s.request_id for s in promotion]}),
            Verdict("at most one registered version per training request", not several,
                    {"registered": sum(len(v) for v in versions.values()), "several": several}),
            Verdict("no restart causes an extra training request", not late_first and not repeated,
                    {"requests": dict(collections.Counter(_kind(rid, r) for rid, r in asked.items())),
                     "asked_again_while_in_flight_or_after_promotion": repeated,
                     "first_model_requests_after_production": late_first}),
        ]

    def _consumer_verdicts(self, stream: LabelledStream) -> list[Verdict]:
        """Registry events reach serving and the monitor (seen by their effect: neither exposes the
        event ids it applied), and the monitor's labelled samples match the labelled predictions."""
        from services.monitor.codec import prediction_columns

        p, topics = self.platform, self.platform.topics
        registry = parsed(read_topic(p.bootstrap, topics.registry_events), registry_pb2.RegistryEvent)
        moves = sorted((e for e in registry if e.kind == registry_pb2.RegistryEvent.ALIAS_MOVED
                        and e.alias == "production" and e.model_name == MODEL), key=lambda e: e.occurred_at.ToMilliseconds())
        production = moves[-1].model_version.version if moves else None
        served = _serving_version(p.entry("serving")["metrics"])
        try:
            reports = _samples_by_version(p.address("monitor"))
        except grpc.RpcError as exc:
            reports, error = {}, f"{exc.code().name}: {exc.details()}"
        else:
            error = ""
        monitor_production = [v for v, r in reports.items() if r["production"]]
        ids = [e.event_id for e in registry]
        reached = Verdict("every registry event reaches every consumer", production is not None and served == production
                          and monitor_production == [production],
                          {"events": len(ids), "distinct": len(set(ids)), "production": production,
                           "serving_version": served, "monitor_production": monitor_production,
                           "how": "by effect: serving's driftline_serving_model_version and the monitor's report; "
                                  "neither exposes the event ids it applied", **({"error": error} if error else {})})
        predicted: dict[int, set[str]] = collections.defaultdict(set)
        for log in parsed(read_topic(p.bootstrap, topics.predictions), serving_pb2.PredictionLog):
            with contextlib.suppress(ValueError):
                predicted[log.model_version].update(e for e in prediction_columns(log).event_ids if e in stream.labels)
        expected = {v: len(ids) for v, ids in predicted.items()}
        counted = {v: r["samples"] for v, r in reports.items()}
        samples = Verdict("the monitor's labelled samples equal the distinct labelled predictions",
                          bool(expected) and all(counted.get(v) == n for v, n in expected.items()),
                          {"distinct_labelled_predictions": expected, "monitor_samples": counted,
                           "too_late_labels": {v: r["too_late_labels"] for v, r in reports.items()},
                           **({"error": error} if error else {})})
        return [reached, samples]

    def _client_verdict(self, client: PredictClient, faults: Faults) -> Verdict:
        windows = [(s.at, (s.healthy_at or _now()) + PredictClient.CALL_S) for s in faults.strikes if "serving" in s.down]
        outside = [f for f in client.failures if not any(a <= f.t <= b for a, b in windows)]
        return Verdict("a Predict client retrying UNAVAILABLE fails only while serving is down", not outside,
                       {"calls": client.calls, "failed_calls": len(client.failures), "outside_serving_down": len(outside),
                        "serving_down_windows_s": [round(b - a - PredictClient.CALL_S, 2) for a, b in windows],
                        "failures": [f"t+{f.t - self.t0:.1f}s {f.code} {f.details}" for f in outside[:5]]})

    def _recovery_verdict(self, faults: Faults) -> Verdict:
        missing = [s.fault for s in faults.strikes if s.recovered_at is None]
        return Verdict("every fault recovers to a steady lag", len(faults.strikes) == len(self.plan) and not missing,
                       {"struck": len(faults.strikes), "planned": len(self.plan), "not_recovered": missing})


def recovery_table(strikes: list[dict]) -> dict[str, dict]:
    """Per fault: median and max of recovery (from the fault) and of recovery after healthy.

    >>> recovery_table([{"fault": "k", "recovered_s": 3.0, "recovered_after_healthy_s": 1.0},
    ...                 {"fault": "k", "recovered_s": 5.0, "recovered_after_healthy_s": 2.0},
    ...                 {"fault": "k", "recovered_s": None, "recovered_after_healthy_s": None}])
    {'k': {'rounds': 3, 'recovered': 2, 'recover_median_s': 4.0, 'recover_max_s': 5.0, 'after_healthy_median_s': 1.5, 'after_healthy_max_s': 2.0}}
    """
    table: dict[str, dict] = {}
    for fault in dict.fromkeys(s["fault"] for s in strikes):
        mine = [s for s in strikes if s["fault"] == fault]
        rec = [s["recovered_s"] for s in mine if s["recovered_s"] is not None]
        after = [s["recovered_after_healthy_s"] for s in mine if s["recovered_after_healthy_s"] is not None]
        table[fault] = {"rounds": len(mine), "recovered": len(rec),
                        "recover_median_s": statistics.median(rec) if rec else None,
                        "recover_max_s": max(rec) if rec else None,
                        "after_healthy_median_s": statistics.median(after) if after else None,
                        "after_healthy_max_s": max(after) if after else None}
    return table
