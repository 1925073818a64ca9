"""Serving's Prometheus metrics (`driftline_serving_*`)."""

from prometheus_client import Counter, Gauge, Histogram

MODEL_VERSION = Gauge(
    "driftline_serving_model_version", "The model version currently serving (0 = none yet).",
    ["model"])
MODEL_INFO = Gauge(
    "driftline_serving_model_info",
    "1 for the model version serving now and the execution provider it runs on; 0 for earlier ones.",
    ["model", "version", "provider"])
MODEL_LOADS = Counter(
    "driftline_serving_model_loads_total",
    "Attempts to install a model version, by outcome: loaded, or refused_<why> "
    "(integrity = sha256 mismatch, missing, invalid), or failed (transient, retried).",
    ["model", "outcome"])
PREDICTED_ROWS = Counter(
    "driftline_serving_predicted_rows_total", "Rows answered by Predict.", ["model"])
PREDICTION_LOGS = Counter(
    "driftline_serving_prediction_logs_total",
    "Prediction logs by outcome: queued, produced (acknowledged by the broker), spooled (to local disk "
    "while the broker could not take them), replayed (acknowledged from the spool), dropped.",
    ["outcome"])
DROPPED_LOGS = Counter(
    "driftline_serving_prediction_logs_dropped_total",
    "Prediction logs dropped, by reason: queue_full (the hand-over queue), spool_full (past the spool's "
    "byte quota), spool_error (the spool could not be written), corrupt (an unreadable spool tail).",
    ["reason"])
SPOOL_BYTES = Gauge(
    "driftline_serving_prediction_spool_bytes",
    "Bytes of prediction logs waiting in the local spool for the broker.")

# -- requests, by API (predict = driftline.v1.Predictor, infer = OIP v2 ModelInfer) ---------------
REQUESTS = Counter(
    "driftline_serving_requests_total",
    "Inference requests by API and outcome: ok, invalid_argument, not_found, unavailable, "
    "deadline_exceeded (expired in the queue, not run), resource_exhausted (queue full), "
    "cancelled (the caller went away), error.",
    ["model", "api", "outcome"])
REQUEST_LATENCY = Histogram(
    "driftline_serving_request_duration_seconds",
    "Inference request latency inside the server (decode, queue, run, encode), by API.",
    ["model", "api"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10))
QUEUE_DELAY = Histogram(
    "driftline_serving_queue_delay_seconds",
    "Time a request waited in the batching queue before its batch ran.",
    ["model"],
    buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5))
BATCH_ROWS = Histogram(
    "driftline_serving_batch_size_rows",
    "Rows per ONNX Runtime call (one batch, possibly several requests).",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536))
BATCH_REQUESTS = Histogram(
    "driftline_serving_batch_size_requests",
    "Requests per ONNX Runtime call: above 1 when dynamic batching merged requests.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

# -- variants (production, canary, shadow) and the lifecycle of each alias -------------------------
VARIANT_INFO = Gauge(
    "driftline_serving_variant_info",
    "1 for the version each variant (production, canary, shadow) serves now, with its execution "
    "provider; 0 for earlier ones. A variant whose alias points nowhere has no series at 1.",
    ["model", "variant", "version", "provider"])
ALIAS_LOADS = Counter(
    "driftline_serving_alias_loads_total",
    "Attempts to install the version an alias points at, by alias and outcome: loaded, reused "
    "(a recently served version, e.g. a rollback), cleared (the alias points nowhere), "
    "refused_integrity, refused_missing, refused_invalid (the old version keeps serving), failed (retried).",
    ["model", "alias", "outcome"])
VARIANT_REQUESTS = Counter(
    "driftline_serving_variant_requests_total",
    "Requests answered, by the variant that answered (production or canary).",
    ["model", "variant"])
SHADOW_REQUESTS = Counter(
    "driftline_serving_shadow_requests_total",
    "Requests mirrored to the shadow variant, by outcome: ok, skipped (its queue was full), error.",
    ["model", "outcome"])
