"""Writes Driftline's Grafana dashboards from the metrics the services export (run it after
changing them; tests check that the committed JSON is what this writes, and that every metric it
reads is one a service exports):

    python deploy/grafana/build_dashboard.py

- driftline-platform.json (`build_platform`): the whole platform, one row per concern: per service
  throughput, errors and Kafka consumer lag, gRPC calls and latency; serving's requests, p99
  latency, batch sizes, model versions and execution providers; the monitor's drift.
- driftline-monitor.json (`build`): the monitor's drift in detail, with template variables for
  the model and version (services/monitor/metrics.py).

Both read the Prometheus data source with uid `driftline-prometheus` (provisioned by
deploy/grafana/provisioning/datasources/, which also loads these files through
deploy/grafana/provisioning/dashboards/). deploy/prometheus/prometheus.yml scrapes each service as
a job of its own name, so `job` names the service in the platform dashboard's queries.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "driftline-prometheus"}  # provisioning: deploy/grafana/provisioning
SEL = 'model=~"$model", version=~"$version"'


def panel(pid, title, exprs, x, y, w=12, h=8, unit="none", kind="timeseries", thresholds=None, description="",
          instant=False):
    targets = [{"datasource": DS, "expr": e, "legendFormat": legend, "refId": chr(65 + i)}
               for i, (e, legend) in enumerate(exprs)]
    if instant:  # the current value of each series, one table row per label set
        for target in targets:
            target.update(instant=True, range=False, format="table")
    p = {"id": pid, "type": kind, "title": title, "description": description, "datasource": DS,
         "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}
    if thresholds:
        p["fieldConfig"]["defaults"]["thresholds"] = {"mode": "absolute", "steps": thresholds}
        if kind == "timeseries":
            p["fieldConfig"]["defaults"]["custom"] = {"thresholdsStyle": {"mode": "dashed"}}
    return p


def build() -> dict:
    red = [{"color": "green", "value": None}, {"color": "red", "value": 1}]
    panels = [
        panel(1, "Rolling accuracy", [(f"driftline_monitor_rolling_accuracy{{{SEL}}}", "v{{version}}")],
              0, 0, unit="percentunit"),
        panel(2, "Per-feature drift: KS (categorical: Jensen–Shannon) ÷ calibrated threshold (alert above 1)",
              [(f"driftline_monitor_feature_ks{{{SEL}}} / on(model, version, feature) "
                f"driftline_monitor_feature_threshold{{{SEL}, statistic=\"ks\"}}", "{{feature}} v{{version}}"),
               (f"driftline_monitor_feature_js{{{SEL}}} / on(model, version, feature) "
                f"driftline_monitor_feature_threshold{{{SEL}, statistic=\"js\"}}", "{{feature}} v{{version}} (JS)")],
              12, 0, thresholds=red,
              description="Thresholds are bootstrapped for the configured expected run length; none is hand-picked."),
        panel(3, "Per-feature PSI", [(f"driftline_monitor_feature_psi{{{SEL}}}", "{{feature}} v{{version}}")], 0, 8),
        panel(4, "Prediction (score) drift: KS ÷ threshold",
              [(f"driftline_monitor_feature_ks{{{SEL}, feature=\"_score\"}} / on(model, version, feature) "
                f"driftline_monitor_feature_threshold{{{SEL}, feature=\"_score\", statistic=\"ks\"}}", "v{{version}}")],
              12, 8, thresholds=red),
        panel(5, "Error stream: CUSUM ÷ calibrated threshold",
              [(f"driftline_monitor_error_cusum{{{SEL}}} / on(model, version) "
                f"driftline_monitor_error_cusum_threshold{{{SEL}}}", "v{{version}}")], 0, 16, thresholds=red),
        panel(6, "Error rate: ADWIN's estimate vs the reference",
              [(f"driftline_monitor_error_rate{{{SEL}}}", "ADWIN v{{version}}"),
               (f"driftline_monitor_reference_error_rate{{{SEL}}}", "reference v{{version}}")],
              12, 16, unit="percentunit"),
        panel(7, "Active alerts by signal", [(f"driftline_monitor_active_alerts{{{SEL}}}", "{{signal}} v{{version}}")],
              0, 24, w=8),
        panel(8, "Alerts raised (per 5 min)",
              [('sum by (signal, statistic) (increase(driftline_monitor_alerts_total{model=~"$model"}[5m]))',
                "{{signal}}/{{statistic}}")], 8, 24, w=8),
        panel(9, "Training requests and promotions (per 5 min)",
              [('sum(increase(driftline_monitor_training_requests_total{model=~"$model"}[5m]))', "training requests"),
               ('sum by (alias) (increase(driftline_monitor_promotions_total{model=~"$model"}[5m]))', "promoted to {{alias}}"),
               ('sum by (rule) (increase(driftline_monitor_policy_blocked_total{model=~"$model"}[5m]))', "held by {{rule}}")],
              16, 24, w=8),
        panel(10, "Label join: late, too late, unmatched, pending",
              [('driftline_monitor_join{kind=~"late_labels|too_late_labels|duplicate_labels|unmatched|'
                'pending_labels|pending_predictions"}', "{{kind}}")], 0, 32),
        panel(11, "Throughput: records consumed per second",
              [("sum by (kind) (rate(driftline_monitor_records_total[1m]))", "{{kind}}"),
               ('sum(rate(driftline_monitor_labelled_samples_total{model=~"$model"}[1m]))', "labelled samples")],
              12, 32, unit="ops"),
        panel(12, "Drift state", [(f"driftline_monitor_concept_drift{{{SEL}}}", "concept v{{version}}"),
                                  (f"driftline_monitor_prediction_drift{{{SEL}}}", "prediction v{{version}}"),
                                  (f"sum by (version) (driftline_monitor_feature_drifted{{{SEL}}})",
                                   "drifted features v{{version}}")], 0, 40, w=24, h=6, kind="state-timeline"),
    ]
    variables = [
        {"name": "model", "label": "model", "type": "query", "datasource": DS, "refresh": 2, "includeAll": True,
         "multi": True, "query": {"query": "label_values(driftline_monitor_rolling_accuracy, model)", "refId": "m"},
         "definition": "label_values(driftline_monitor_rolling_accuracy, model)", "current": {}},
        {"name": "version", "label": "version", "type": "query", "datasource": DS, "refresh": 2, "includeAll": True,
         "multi": True, "query": {"query": 'label_values(driftline_monitor_rolling_accuracy{model=~"$model"}, version)',
                                  "refId": "v"},
         "definition": 'label_values(driftline_monitor_rolling_accuracy{model=~"$model"}, version)', "current": {}},
    ]
    return {
        "uid": "driftline-monitor", "title": "Driftline · monitor", "tags": ["driftline", "drift"],
        "timezone": "browser", "schemaVersion": 39, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "panels": panels, "templating": {"list": variables},
        "annotations": {"list": [{
            "name": "training requests", "datasource": DS, "enable": True, "iconColor": "orange",
            "expr": 'changes(driftline_monitor_training_requests_total{model=~"$model"}[1m]) > 0',
            "titleFormat": "training requested"}, {
            "name": "promotions", "datasource": DS, "enable": True, "iconColor": "green",
            "expr": 'changes(driftline_monitor_promotions_total{model=~"$model", alias="production"}[1m]) > 0',
            "titleFormat": "promoted"}]},
    }


# -- the whole platform -------------------------------------------------------------------------------

# Exported by services/common for every consumer group it runs, per partition (labels group,
# topic, partition): the records between the group's committed offset and the partition's end.
LAG = "driftline_kafka_consumer_lag"


def row(pid, title, y):
    return {"id": pid, "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}}


def p99(metric, by, window="5m"):
    return f"histogram_quantile(0.99, sum by ({by}, le) (rate({metric}_bucket[{window}])))"


def build_platform() -> dict:
    red = [{"color": "green", "value": None}, {"color": "red", "value": 1}]
    panels = [
        row(100, "Platform: every service", 0),
        panel(1, "Throughput by service",
              [("sum(rate(driftline_ingest_records_total[1m]))", "ingest: raw records"),
               ("sum(rate(driftline_feature_events_total[1m]))", "feature: events"),
               ("sum(rate(driftline_feature_segment_rows_total[1m]))", "feature: rows written to segments"),
               ("sum(rate(driftline_serving_requests_total[1m]))", "serving: inference requests"),
               ("sum(rate(driftline_serving_predicted_rows_total[1m]))", "serving: predicted rows"),
               ("sum(rate(driftline_monitor_records_total[1m]))", "monitor: records consumed"),
               ("sum(rate(driftline_registry_events_published_total[1m]))", "registry: events published"),
               ("sum(rate(driftline_trainer_requests_total[5m]))", "trainer: training requests")],
              0, 1, unit="ops", description="Per second, over the last minute (the trainer: 5 minutes)."),
        panel(2, "Errors by service",
              [('sum(rate(driftline_ingest_records_total{outcome="rejected"}[1m]))', "ingest: rejected (dead-lettered)"),
               ('sum(rate(driftline_ingest_transactions_total{result="aborted"}[1m]))', "ingest: aborted transactions"),
               ('sum(rate(driftline_feature_events_total{outcome="undecodable"}[1m]))', "feature: undecodable events"),
               ("sum(rate(driftline_feature_segment_failures_total[1m]))", "feature: failed segment rounds"),
               ('sum(rate(driftline_trainer_requests_total{outcome=~"failed|invalid|undecodable"}[5m]))',
                "trainer: failed requests"),
               ("sum(rate(driftline_registry_relay_failures_total[1m]))", "registry: failed relay rounds"),
               ('sum(rate(driftline_serving_requests_total{outcome!="ok"}[1m]))', "serving: failed requests"),
               ('sum(rate(driftline_serving_prediction_logs_total{outcome="dropped"}[1m]))',
                "serving: prediction logs dropped"),
               ("sum(rate(driftline_monitor_undecodable_records_total[1m]))", "monitor: undecodable records"),
               ('sum by (job) (rate(driftline_grpc_requests_total{code!="OK"}[1m]))', "{{job}}: gRPC calls not OK")],
              12, 1, unit="ops", description="Per second; every line should be flat at 0."),
        panel(3, "Kafka consumer lag by group and topic (records behind)",
              [(f"sum by (job, group, topic) ({LAG})", "{{job}} · {{group}} · {{topic}}")], 0, 9,
              description=f"{LAG}{{group, topic, partition}}, exported by services/common for every "
                          "consumer: the records between the group's committed offset and the end of "
                          "each partition, summed over partitions."),
        panel(4, "Largest partition lag per service", [(f"max by (job) ({LAG})", "{{job}}")], 12, 9, w=6,
              kind="bargauge", unit="short"),
        panel(5, "Registry outbox: committed, not yet delivered",
              [("sum(driftline_registry_outbox_unsent)", "unsent rows")], 18, 9, w=6, kind="stat", unit="short"),
        panel(6, "gRPC calls per second by service and method",
              [("sum by (job, method) (rate(driftline_grpc_requests_total[1m]))", "{{job}} {{method}}")],
              0, 17, unit="ops",
              description="Every unary call the common gRPC server handles (serving's Predict and ModelInfer "
                          "count themselves: see the serving row)."),
        panel(7, "gRPC p99 latency by service and method",
              [(p99("driftline_grpc_request_duration_seconds", "job, method"), "{{job}} {{method}}")],
              12, 17, unit="s"),
        panel(8, "Ingest: records by source and outcome",
              [("sum by (source, outcome) (rate(driftline_ingest_records_total[1m]))", "{{source}} {{outcome}}"),
               ("sum by (source, result) (rate(driftline_ingest_transactions_total[1m]))",
                "{{source}} transactions {{result}}")], 0, 25, w=8, unit="ops"),
        panel(9, "Feature: events, segments, online lookups",
              [("sum by (outcome) (rate(driftline_feature_events_total[1m]))", "events {{outcome}}"),
               ("sum(rate(driftline_feature_segments_total[1m]))", "segments written"),
               ("sum by (found) (rate(driftline_feature_online_lookups_total[1m]))", "online lookups found={{found}}")],
              8, 25, w=8, unit="ops"),
        panel(10, "Trainer and registry: training outcomes, gate decisions (per 15 min)",
              [("sum by (outcome) (increase(driftline_trainer_requests_total[15m]))", "trainer {{outcome}}"),
               ("sum by (promoted) (increase(driftline_registry_gate_decisions_total[15m]))",
                "gate promoted={{promoted}}")], 16, 25, w=8),

        row(101, "Serving", 33),
        panel(11, "Serving: requests per second by API and outcome",
              [("sum by (api, outcome) (rate(driftline_serving_requests_total[1m]))", "{{api}} {{outcome}}")],
              0, 34, unit="ops"),
        panel(12, "Serving: latency inside the server (p50, p99) and batching queue delay (p99)",
              [(p99("driftline_serving_request_duration_seconds", "api", "1m"), "p99 {{api}}"),
               ("histogram_quantile(0.5, sum by (api, le) (rate(driftline_serving_request_duration_seconds_bucket[1m])))",
                "p50 {{api}}"),
               (p99("driftline_serving_queue_delay_seconds", "model", "1m"), "p99 queue delay {{model}}")],
              12, 34, unit="s"),
        panel(13, "Serving: batch sizes (per ONNX Runtime call)",
              [("sum by (model) (rate(driftline_serving_batch_size_rows_sum[1m])) / "
                "sum by (model) (rate(driftline_serving_batch_size_rows_count[1m]))", "mean rows {{model}}"),
               (p99("driftline_serving_batch_size_rows", "model", "1m"), "p99 rows {{model}}"),
               ("sum by (model) (rate(driftline_serving_batch_size_requests_sum[1m])) / "
                "sum by (model) (rate(driftline_serving_batch_size_requests_count[1m]))",
                "mean requests merged {{model}}")], 0, 42, w=8,
              description="Above 1 request per call: dynamic batching merged concurrent requests."),
        panel(14, "Serving: model version in production",
              [("max by (model) (driftline_serving_model_version)", "{{model}}")], 8, 42, w=8,
              description="0 until a version is promoted; a step is a hot swap."),
        panel(15, "Serving now: version and execution provider per variant",
              [("max by (model, variant, version, provider) (driftline_serving_variant_info) == 1", "")],
              16, 42, w=8, kind="table", instant=True,
              description="production, canary and shadow; the provider is the ONNX Runtime execution "
                          "provider the version runs on (TensorRT, CUDA or CPU)."),
        panel(16, "Serving: answers by variant, shadow mirroring, prediction logs",
              [("sum by (variant) (rate(driftline_serving_variant_requests_total[1m]))", "answered by {{variant}}"),
               ("sum by (outcome) (rate(driftline_serving_shadow_requests_total[1m]))", "shadow {{outcome}}"),
               ("sum by (outcome) (rate(driftline_serving_prediction_logs_total[1m]))", "prediction logs {{outcome}}")],
              0, 50, unit="ops"),
        panel(17, "Serving: model installs by alias and outcome (per 15 min)",
              [("sum by (alias, outcome) (increase(driftline_serving_alias_loads_total[15m]))", "{{alias}} {{outcome}}"),
               ("sum by (outcome) (increase(driftline_serving_model_loads_total[15m]))", "model {{outcome}}")],
              12, 50),

        row(102, "Monitor: drift (detail: the Driftline · monitor dashboard)", 58),
        panel(18, "Rolling accuracy by version",
              [("driftline_monitor_rolling_accuracy", "{{model}} v{{version}}")], 0, 59, w=8, unit="percentunit"),
        panel(19, "Worst feature drift ÷ calibrated threshold (alert above 1)",
              [("max by (model, version) (driftline_monitor_feature_ks / on(model, version, feature) "
                'driftline_monitor_feature_threshold{statistic="ks"})', "KS {{model}} v{{version}}"),
               ("max by (model, version) (driftline_monitor_feature_js / on(model, version, feature) "
                'driftline_monitor_feature_threshold{statistic="js"})', "JS {{model}} v{{version}}")],
              8, 59, w=8, thresholds=red),
        panel(20, "Error stream: CUSUM ÷ calibrated threshold (alert above 1)",
              [("driftline_monitor_error_cusum / on(model, version) driftline_monitor_error_cusum_threshold",
                "{{model}} v{{version}}")], 16, 59, w=8, thresholds=red),
        panel(21, "Drift state", [("driftline_monitor_concept_drift", "concept {{model}} v{{version}}"),
                                  ("driftline_monitor_prediction_drift", "prediction {{model}} v{{version}}"),
                                  ("sum by (model, version) (driftline_monitor_feature_drifted)",
                                   "drifted features {{model}} v{{version}}")], 0, 67, w=12, kind="state-timeline"),
        panel(22, "Alerts, training requests and promotions (per 5 min)",
              [("sum by (signal) (increase(driftline_monitor_alerts_total[5m]))", "alerts {{signal}}"),
               ("sum(increase(driftline_monitor_training_requests_total[5m]))", "training requests"),
               ("sum by (alias) (increase(driftline_monitor_promotions_total[5m]))", "promoted to {{alias}}")],
              12, 67),
    ]
    return {
        "uid": "driftline-platform", "title": "Driftline · platform", "tags": ["driftline"],
        "timezone": "browser", "schemaVersion": 39, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "panels": panels, "templating": {"list": []},
        "links": [{"title": "Driftline · monitor", "type": "dashboards", "tags": ["drift"], "asDropdown": False}],
        "annotations": {"list": [{
            "name": "promotions", "datasource": DS, "enable": True, "iconColor": "green",
            "expr": 'changes(driftline_monitor_promotions_total{alias="production"}[1m]) > 0',
            "titleFormat": "promoted"}]},
    }


# The files this writes, each from its builder.
DASHBOARDS = {"driftline-platform.json": build_platform, "driftline-monitor.json": build}


def render(builder) -> str:
    return json.dumps(builder(), indent=2) + "\n"


def main() -> None:
    for name, builder in DASHBOARDS.items():
        out = HERE / name
        out.write_text(render(builder))
        print(f"wrote {out}")

if __name__ == "__main__":
    main()
