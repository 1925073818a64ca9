"""Data drift of the stream itself, on the real broker: the monitor as a real process
(`python -m services.monitor`) with a catalogue of one stream, and a registry stand-in in which
that stream's model has a production version whose metadata.json (in the real object store)
holds the training reference. Only feature records arrive — nobody calls Predict, there is no
prediction log — and GetDriftReport for the production version lists the stream's features
with PSI and KS; a shift in one of them is a data-drift alert on it alone."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from driftline.v1 import features_pb2, monitor_pb2, monitor_pb2_grpc, registry_pb2_grpc
from services.common.kafka import Producer
from services.common.settings import Topics
from services.monitor.psi import reference_bins
from monitor_fakes import stop_cleanly
from registry_stand_in import RegistryStandIn, isolated
from support import GrpcThread, ServiceRun, free_port, wait_for

STREAM, MODEL, VERSION = "lake", "lake-model", 4
FEATURES = ["depth", "temperature", "turbidity"]
WINDOW = 200
T0_MS = 1_700_000_000_000


class Live:
    def __init__(self, topics: Topics, producer: Producer, stub: monitor_pb2_grpc.MonitorStub, run: ServiceRun) -> None:
        self.topics, self.producer, self.stub, self.run = topics, producer, stub, run
        self.sent = 0
        self.rng = np.random.default_rng(11)

    def send(self, n: int, shift: float = 0.0) -> None:
        """n events of the stream, as the feature service writes them (every third labelled)."""
        for i in range(self.sent, self.sent + n):
            values = self.rng.uniform(0, 1, len(FEATURES))
            values[0] += shift
            record = features_pb2.FeatureRecord(event_id=f"lake-{i}", entity_id=f"u{i % 5}", feature_set=STREAM,
                                                values=values.tolist())
            if i % 3 == 0:
                record.label = i % 2
            record.event_time.FromMilliseconds(T0_MS + 1000 * i)
            self.producer.produce(self.topics.features, record, key=record.entity_id)
        self.producer.flush()
        self.sent += n

    def report(self) -> monitor_pb2.DriftReport | None:
        self.run.assert_running()
        try:
            found = self.stub.GetDriftReport(
                monitor_pb2.GetDriftReportRequest(model_name=MODEL, model_version=VERSION), timeout=2)
        except grpc.RpcError:
            return None
        return found.reports[0] if found.reports else None


@pytest.fixture(scope="module")
def live(kafka_bootstrap, s3, tmp_path_factory):
    own = isolated(kafka_bootstrap, s3)
    training = np.random.default_rng(0).uniform(0, 1, (3000, len(FEATURES)))
    registry_servicer = RegistryStandIn()
    registry_servicer.with_reference(own.store, MODEL, VERSION, FEATURES, training,
                                     reference_bins(np.random.default_rng(1).uniform(0, 1, 3000)),
                                     metrics={"accuracy": 0.9, "eval_rows": 600, "train_rows": 3000})
    registry_servicer.aliases[(MODEL, "production")] = VERSION  # the first model was promoted already
    registry = GrpcThread(registry_servicer, registry_pb2_grpc.add_RegistryServicer_to_server)
    folder = tmp_path_factory.mktemp("streams")
    (folder / f"{STREAM}.json").write_text(json.dumps(
        {"stream": STREAM, "model": MODEL, "label": {"type": "integer", "min": 0, "max": 1},
         "fields": [{"name": name, "type": "number"} for name in FEATURES]}))
    grpc_port = free_port()
    log_path = tmp_path_factory.mktemp("monitor-stream-drift") / "monitor.log"
    env = {"DRIFTLINE_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFTLINE_TOPIC_PREFIX": own.prefix,
           "DRIFTLINE_BUCKET": own.bucket, "DRIFTLINE_REGISTRY_ADDRESS": registry.address,
           "DRIFTLINE_GRPC_PORT": str(grpc_port), "DRIFTLINE_DASHBOARD_PORT": "0",
           "DRIFTLINE_STREAMS_DIR": str(folder), "DRIFTLINE_STREAM": STREAM, "DRIFTLINE_LOG_JSON": "false",
           "DRIFTLINE_FIRST_MODEL_CHECK_S": "1", "DRIFTLINE_PSI_WINDOW": str(WINDOW),
           "DRIFTLINE_WINDOW_STEP": "50", "DRIFTLINE_CALIBRATION_STREAMS": "64",
           "DRIFTLINE_REPORT_EVERY_S": "0.3"}
    run = ServiceRun("monitor", env, log_path)
    producer = Producer(kafka_bootstrap)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        run.wait_serving(f"127.0.0.1:{grpc_port}", timeout=60)
        # The monitor asks the registry which version serves (GetAlias) before any record comes.
        wait_for(lambda: (MODEL, "production") in registry_servicer.alias_lookups, 30, "the production lookup")
        yield Live(own.topics, producer, monitor_pb2_grpc.MonitorStub(channel), run)
    finally:
        channel.close()
        stop_cleanly(run, registry)
    assert "Traceback" not in run.log_text(), run.log_tail()


def test_feature_records_alone_give_the_production_version_psi_and_ks_per_feature(live):
    live.send(2 * WINDOW)
    report = wait_for(lambda: (r := live.report()) and len(r.features) == len(FEATURES) and r, 60,
                      "the production version's report with the stream's features")
    assert report.production and report.predicted_rows == 0 and report.samples == 0  # no prediction log at all
    drift = {f.feature: f for f in report.features}
    assert list(drift) == FEATURES  # the score needs served rows; the features need none
    for f in drift.values():
        assert f.window == WINDOW and not f.categorical
        assert 0 <= f.psi < f.psi_threshold and 0 <= f.ks < f.ks_threshold and not f.drifted


def test_a_shift_in_one_feature_of_the_stream_is_a_data_drift_alert_on_it(live):
    live.send(3 * WINDOW, shift=0.6)
    report = wait_for(lambda: (r := live.report()) and any(f.drifted for f in r.features) and r, 60,
                      "the shifted feature to drift")
    drift = {f.feature: f for f in report.features}
    assert drift["depth"].drifted and drift["depth"].psi > drift["depth"].psi_threshold
    assert not drift["temperature"].drifted and not drift["turbidity"].drifted
    alerts = [a for a in report.alerts if a.signal == "data_drift"]
    assert alerts and {tuple(a.features) for a in alerts} == {("depth",)}
    assert all(a.topic == live.topics.features for a in alerts)
    assert report.predicted_rows == 0
