"""Serving's settings (`DRIFTLINE_*` environment variables)."""

from __future__ import annotations

from services.common.settings import CommonSettings


class ServingSettings(CommonSettings):
    grpc_port: int = 50054
    # The registry alias this instance serves.
    alias: str = "production"
    # "auto" takes CUDAExecutionProvider when onnxruntime offers it; "cpu" or "cuda" force one.
    execution_provider: str = "auto"
    # How often to ask the registry for the alias while no model is loaded, and (to heal a
    # missed event) how often once one is; 0 turns the second off.
    alias_retry_s: float = 2.0
    alias_resync_s: float = 60.0
    registry_timeout_s: float = 5.0
    # Prediction logs wait here for the producer thread; beyond it they are dropped (counted),
    # because a slow broker must never slow down Predict.
    prediction_log_queue: int = 10_000
    # No longer used: every batch now runs on the batcher's worker thread (kept so existing
    # DRIFTLINE_INLINE_MAX_ROWS settings still parse).
    inline_max_rows: int = 64
    # Dynamic batching (services/serving/batcher.py), for Predict and ModelInfer alike:
    # requests that arrive together run as one session call of up to `max_batch_rows` rows;
    # the oldest waits at most `max_queue_delay_ms` for others to join (0: no waiting, batches
    # still form while a previous one runs). 1 row turns batching off.
    max_batch_rows: int = 64
    max_queue_delay_ms: float = 2.0
    # Requests waiting for a batch at most; beyond it a request is answered RESOURCE_EXHAUSTED at once.
    max_queued_requests: int = 1024
    # Session calls that may run at once (threads).
    batch_workers: int = 1
    # Rows one request may carry; more is INVALID_ARGUMENT.
    max_request_rows: int = 65_536
