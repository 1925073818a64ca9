"""The monitor as a real process on the real broker and object store: delayed labels on
`driftline.labels` (late, unmatched, too late), the server-streaming WatchDriftStats over
real gRPC, and the ops dashboard in a real headless Chromium (Debian's `chromium`,
driven by Playwright): it loads without console errors and draws a new stats record
without a reload; a screenshot is written."""

from __future__ import annotations

import os
import shutil
import threading
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from driftline.v1 import events_pb2, monitor_pb2, monitor_pb2_grpc, registry_pb2_grpc, serving_pb2
from services.common.kafka import Producer
from services.common.settings import Topics
from services.monitor.psi import reference_bins
from support import ROOT, GrpcThread, ServiceRun, free_port, wait_for
from monitor_fakes import stop_cleanly
from registry_stand_in import RegistryStandIn, isolated

FEATURES = ["f0", "f1", "f2"]
JOIN_TTL_S = 2.0
CHROMIUM = os.environ.get("DRIFTLINE_CHROMIUM", "/usr/bin/chromium")


@dataclass
class Live:
    topics: Topics
    producer: Producer
    stub: monitor_pb2_grpc.MonitorStub
    dashboard: str
    run: ServiceRun

    def report(self, model: str) -> monitor_pb2.DriftReport | None:
        self.run.assert_running()
        try:
            found = self.stub.GetDriftReport(monitor_pb2.GetDriftReportRequest(model_name=model), timeout=2)
        except grpc.RpcError:
            return None
        return found.reports[0] if found.reports else None

    def predict(self, model: str, event_ids: list[str], shift: float = 0.0, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        log = serving_pb2.PredictionLog(request_id=uuid.uuid4().hex, model_name=model, model_version=1,
                                        variant="production")
        log.served_at.GetCurrentTime()
        for event_id in event_ids:
            score = float(rng.uniform(0, 1))
            log.rows.add(event_id=event_id, features=[rng.uniform(0, 1) + shift, rng.uniform(0, 1), rng.uniform(0, 1)],
                         scores=[1 - score, score], label=int(score > 0.5))
        self.producer.produce(self.topics.predictions, log, key=model)
        self.producer.flush()

    def label(self, event_id: str, value: int) -> None:
        label = events_pb2.Label(event_id=event_id, label=value)
        label.labelled_at.GetCurrentTime()
        self.producer.produce(self.topics.labels, label, key=event_id)


@pytest.fixture(scope="module")
def live(kafka_bootstrap, s3, tmp_path_factory):
    own = isolated(kafka_bootstrap, s3)
    prefix, bucket, topics = own.prefix, own.bucket, own.topics
    training = np.random.default_rng(0).uniform(0, 1, (2000, len(FEATURES)))
    registry_servicer = RegistryStandIn()
    for model in ("dash", "watched", "labels"):
        registry_servicer.with_reference(own.store, model, 1, FEATURES, training,
                                         reference_bins(np.random.default_rng(1).uniform(0, 1, 2000)))
    registry = GrpcThread(registry_servicer, registry_pb2_grpc.add_RegistryServicer_to_server)
    grpc_port, dashboard_port = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("monitor-live") / "monitor.log"
    env = {"DRIFTLINE_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFTLINE_TOPIC_PREFIX": prefix,
           "DRIFTLINE_BUCKET": bucket, "DRIFTLINE_REGISTRY_ADDRESS": registry.address,
           "DRIFTLINE_GRPC_PORT": str(grpc_port), "DRIFTLINE_DASHBOARD_PORT": str(dashboard_port),
           "DRIFTLINE_JOIN_TTL_S": str(JOIN_TTL_S), "DRIFTLINE_REPORT_EVERY_S": "0.3",
           "DRIFTLINE_REPORT_EVERY_SAMPLES": "50", "DRIFTLINE_PSI_WINDOW": "200", "DRIFTLINE_WINDOW_STEP": "50",
           "DRIFTLINE_CALIBRATION_STREAMS": "64", "DRIFTLINE_POLICY_MIN_SAMPLES": "100000"}
    run = ServiceRun("monitor", env, log_path)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    producer = Producer(kafka_bootstrap)
    try:
        run.wait_serving(f"127.0.0.1:{grpc_port}", timeout=60)
        dashboard = f"http://127.0.0.1:{dashboard_port}"

        def healthy() -> bool:
            run.assert_running()
            try:
                return urllib.request.urlopen(dashboard + "/healthz", timeout=2).read() == b"ok"
            except OSError:
                return False

        wait_for(healthy, 30, "the dashboard to answer")
        yield Live(topics, producer, monitor_pb2_grpc.MonitorStub(channel), dashboard, run)
    finally:
        channel.close()
        stop_cleanly(run, registry)
    assert "Traceback" not in run.log_text(), run.log_tail()


def test_a_late_label_joins_and_an_unmatched_one_is_counted_not_an_error(live):
    ids = [f"late-{i}" for i in range(40)]
    live.predict("labels", ids)
    # The predictions are in before any label is sent: every label below is a late one.
    wait_for(lambda: (r := live.report("labels")) and r.predicted_rows == len(ids), 30, "the predictions")
    for i, event_id in enumerate(ids):
        live.label(event_id, i % 2)
    live.label("ghost-1", 1)  # an event nobody predicted
    live.producer.flush()
    report = wait_for(lambda: (r := live.report("labels")) and r.samples == len(ids) and r, 30,
                      "the late labels to be joined")
    assert report.join.late_labels >= len(ids)
    # The label that never meets a prediction leaves the join after the TTL, counted.
    report = wait_for(lambda: (r := live.report("labels")) and r.join.unmatched_labels >= 1 and r,
                      30, "the unmatched label to expire")
    assert report.join.pending_labels == 0 and report.samples == len(ids)
    # A label after its prediction has expired: too late, counted, dropped.
    live.predict("labels", ["expiring-1"])
    wait_for(lambda: (r := live.report("labels")) and r.join.unmatched_predictions >= 1, 30,
             "the lone prediction to expire")
    live.label("expiring-1", 1)
    live.producer.flush()
    report = wait_for(lambda: (r := live.report("labels")) and r.join.too_late_labels >= 1 and r, 30,
                      "the too-late label to be counted")
    assert report.samples == len(ids)
    live.run.assert_running()
    assert "Traceback" not in live.run.log_text()


def test_watch_drift_stats_streams_reports_as_they_are_published(live):
    call = live.stub.WatchDriftStats(monitor_pb2.WatchDriftStatsRequest(model_name="watched"), timeout=60)
    stop = threading.Event()

    def feed() -> None:  # keeps the monitor publishing until the stream has delivered
        i = 0
        while not stop.is_set():
            live.predict("watched", [f"w-{i}-{j}" for j in range(60)], seed=i)
            i += 1
            stop.wait(0.4)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        received = []
        for report in call:
            received.append(report)
            if len(received) == 3:
                break
    finally:
        stop.set()
        call.cancel()
        feeder.join(10)
    assert all(r.model_name == "watched" and r.model_version == 1 for r in received)
    assert received[-1].predicted_rows > received[0].predicted_rows > 0
    assert received[-1].computed_at.ToNanoseconds() > received[0].computed_at.ToNanoseconds()


def test_the_dashboard_draws_a_new_stats_record_live_in_headless_chromium(live, tmp_path):
    from playwright import sync_api as playwright_api  # a dev dependency: a missing one fails, not skips
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    live.predict("dash", [f"d0-{i}" for i in range(300)], seed=1)
    wait_for(lambda: (r := live.report("dash")) and len(r.features) == len(FEATURES) + 1, 30,
             "the dashboard model's first full window")
    errors: list[str] = []
    with playwright_api.sync_playwright() as p:
        # A fresh profile (Playwright passes it as --user-data-dir) and no network but loopback.
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            viewport={"width": 1400, "height": 900},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live.dashboard + "/", wait_until="load")
            page.wait_for_function("document.getElementById('status').textContent === 'live'", timeout=20_000)
            page.select_option("#model", "dash")
            page.wait_for_function("Number(document.getElementById('drift-chart').dataset.points) > 0",
                                   timeout=20_000)
            before_points = int(page.get_attribute("#drift-chart", "data-points"))
            before_reports = int(page.text_content("#report-count"))
            page.evaluate("window.__stayedOnPage = true")
            # A new stats record: the monitor reports the next batch, with f0 shifted.
            live.predict("dash", [f"d1-{i}" for i in range(200)], shift=0.6, seed=2)
            page.wait_for_function(
                f"Number(document.getElementById('drift-chart').dataset.points) > {before_points}"
                f" && Number(document.getElementById('report-count').textContent) > {before_reports}",
                timeout=30_000)
            assert page.evaluate("window.__stayedOnPage === true"), "the page reloaded"
            page.wait_for_timeout(300)  # let the frame with the new point paint
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, results / "dashboard.png")
    print(f"dashboard screenshot: {shot} (copied to {results / 'dashboard.png'})")
    assert errors == [], errors
