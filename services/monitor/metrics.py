"""Monitor's Prometheus metrics (`driftline_monitor_*`)."""

from prometheus_client import Counter, Gauge

SAMPLES = Counter(
    "driftline_monitor_labelled_samples_total", "Predictions joined with their true label.", ["model"])
ROLLING_ACCURACY = Gauge(
    "driftline_monitor_rolling_accuracy", "Accuracy over the rolling window.", ["model", "version"])
FEATURE_PSI = Gauge(
    "driftline_monitor_feature_psi", "PSI of recent values against the training reference.",
    ["model", "version", "feature"])
CHANGES = Counter(
    "driftline_monitor_error_changes_total",
    "Changes ADWIN detected in the error rate, by direction (worse, better).", ["model", "direction"])
TRAINING_REQUESTS = Counter(
    "driftline_monitor_training_requests_total", "Training requests published.", ["model"])
JOIN_STATE = Gauge(
    "driftline_monitor_join", "The label join: joined, pending and unmatched (expired, evicted) "
    "entries by kind.", ["kind"])
UNDECODABLE = Counter(
    "driftline_monitor_undecodable_records_total", "Records skipped because they did not decode.",
    ["topic"])
