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
    # Rows run inline on the event loop up to this size; larger batches go to a thread.
    inline_max_rows: int = 64
