"""Serving's Prometheus metrics (`driftline_serving_*`)."""

from prometheus_client import Counter, Gauge

MODEL_VERSION = Gauge(
    "driftline_serving_model_version", "The model version currently serving (0 = none yet).",
    ["model"])
MODEL_LOADS = Counter(
    "driftline_serving_model_loads_total",
    "Attempts to install a model version, by outcome: loaded, or refused_<why> "
    "(integrity = sha256 mismatch, missing, invalid), or failed (transient, retried).",
    ["model", "outcome"])
PREDICTED_ROWS = Counter(
    "driftline_serving_predicted_rows_total", "Rows answered by Predict.", ["model"])
PREDICTION_LOGS = Counter(
    "driftline_serving_prediction_logs_total",
    "Prediction logs by outcome: queued, produced, or dropped because the queue was full.",
    ["outcome"])
