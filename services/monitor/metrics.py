"""Monitor's Prometheus metrics (`driftline_monitor_*`): one series per signal, so
Grafana (deploy/grafana/) and alert rules see what the DriftReports say."""

from prometheus_client import Counter, Gauge, Histogram

SAMPLES = Counter(
    "driftline_monitor_labelled_samples_total", "Predictions joined with their true label.", ["model"])
PREDICTED_ROWS = Counter(
    "driftline_monitor_predicted_rows_total", "Served rows seen on the predictions topic.", ["model"])
RECORDS = Counter(
    "driftline_monitor_records_total", "Records consumed, by input topic kind.", ["kind"])
ROLLING_ACCURACY = Gauge(
    "driftline_monitor_rolling_accuracy", "Accuracy over the rolling window.", ["model", "version"])
FEATURE_PSI = Gauge(
    "driftline_monitor_feature_psi", "PSI of the recent window against the training reference "
    "(feature _score: the positive-class score).", ["model", "version", "feature"])
FEATURE_KS = Gauge(
    "driftline_monitor_feature_ks", "Two-sample KS distance of the recent window against the training "
    "reference's binned CDF.", ["model", "version", "feature"])
FEATURE_JS = Gauge(
    "driftline_monitor_feature_js", "Jensen–Shannon distance (base 2) of the recent window's category shares "
    "against the training reference (categorical features, in KS's place).", ["model", "version", "feature"])
FEATURE_THRESHOLD = Gauge(
    "driftline_monitor_feature_threshold", "Calibrated threshold of a window statistic (ks, psi).",
    ["model", "version", "feature", "statistic"])
FEATURE_DRIFTED = Gauge(
    "driftline_monitor_feature_drifted", "1 while a feature's data-drift alert is active.",
    ["model", "version", "feature"])
ERROR_CUSUM = Gauge(
    "driftline_monitor_error_cusum", "The error stream's CUSUM statistic (max over the bank).",
    ["model", "version"])
ERROR_CUSUM_THRESHOLD = Gauge(
    "driftline_monitor_error_cusum_threshold", "Its calibrated threshold.", ["model", "version"])
REFERENCE_ERROR_RATE = Gauge(
    "driftline_monitor_reference_error_rate", "Error rate of the version's reference samples.",
    ["model", "version"])
ERROR_RATE = Gauge(
    "driftline_monitor_error_rate", "ADWIN's estimate of the current error rate.", ["model", "version"])
CONCEPT_DRIFT = Gauge(
    "driftline_monitor_concept_drift", "1 while concept drift is detected for the version.", ["model", "version"])
PREDICTION_DRIFT = Gauge(
    "driftline_monitor_prediction_drift", "1 while the score distribution has drifted.", ["model", "version"])
ACTIVE_ALERTS = Gauge(
    "driftline_monitor_active_alerts", "Active alerts, by signal.", ["model", "version", "signal"])
ALERTS = Counter(
    "driftline_monitor_alerts_total", "Alerts raised, by signal and statistic.", ["model", "signal", "statistic"])
CHANGES = Counter(
    "driftline_monitor_error_changes_total",
    "Changes ADWIN detected in the error rate, by direction (worse, better).", ["model", "direction"])
TRAINING_REQUESTS = Counter(
    "driftline_monitor_training_requests_total", "Training requests published.", ["model"])
FIRST_MODEL_REQUESTS = Counter(
    "driftline_monitor_first_model_requests_total", "First-model training requests published: a stream "
    "with enough labelled rows whose model had no production version.", ["model", "stream"])
FIRST_MODEL_ROWS = Gauge(
    "driftline_monitor_first_model_rows", "Labelled rows a stream without a production model has counted "
    "towards its first model since it was (re-)armed.", ["stream"])
POLICY_BLOCKED = Counter(
    "driftline_monitor_policy_blocked_total", "Alerts the policy did not turn into a request, by rule.",
    ["model", "rule"])
JOIN_STATE = Gauge(
    "driftline_monitor_join", "The label join: joined, pending, late, too late, duplicate and unmatched "
    "(expired, evicted) entries by kind.", ["kind"])
UNDECODABLE = Counter(
    "driftline_monitor_undecodable_records_total", "Records skipped because they did not decode.",
    ["topic"])
PROMOTIONS = Counter(
    "driftline_monitor_promotions_total", "Alias moves seen on the registry's events.", ["model", "alias"])
DEAD_LETTERS = Counter(
    "driftline_monitor_dead_letters_total", "Records sent to the monitor's dead-letter topic, by input topic "
    "and stage (decode: not the topic's message; handle: its handling raised every time).", ["topic", "stage"])
DUPLICATES = Counter(
    "driftline_monitor_duplicates_total", "Records dropped as repeats of one already counted, by kind "
    "(prediction_log: a log's request id; prediction: an event already joined; replayed: a record at or "
    "before the state's position).", ["kind"])
SNAPSHOTS = Counter(
    "driftline_monitor_snapshots_total", "State snapshots, by outcome: written, failed (the object store did "
    "not take it; the next one tries again), superseded (a newer one came first), restored, ignored "
    "(other code or settings, or damaged), unreadable.", ["outcome"])
SNAPSHOT_SECONDS = Histogram(
    "driftline_monitor_snapshot_seconds", "Time to take a state snapshot (under the lock) and to write it.",
    ["step"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SNAPSHOT_BYTES = Gauge("driftline_monitor_snapshot_bytes", "Size of the latest state snapshot.")
