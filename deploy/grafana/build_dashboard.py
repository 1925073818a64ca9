"""Writes deploy/grafana/driftline-monitor.json, the monitor's Grafana dashboard, from the
metrics in services/monitor/metrics.py (run it after changing them):

    python deploy/grafana/build_dashboard.py

The dashboard reads the Prometheus data source with uid `driftline-prometheus` (provisioned by
deploy/grafana/provisioning/datasources/, which also loads this file through
deploy/grafana/provisioning/dashboards/), with template variables for the model and version.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "driftline-prometheus"}  # provisioning: deploy/grafana/provisioning
SEL = 'model=~"$model", version=~"$version"'


def panel(pid, title, exprs, x, y, w=12, h=8, unit="none", kind="timeseries", thresholds=None, description=""):
    targets = [{"datasource": DS, "expr": e, "legendFormat": legend, "refId": chr(65 + i)}
               for i, (e, legend) in enumerate(exprs)]
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


def main() -> None:
    out = HERE / "driftline-monitor.json"
    out.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
