"""Serving's settings (`DRIFTLINE_*` environment variables)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from services.common.settings import CommaList, CommonSettings


class ServingSettings(CommonSettings):
    grpc_port: int = 50054
    # The registry alias this instance serves.
    alias: str = "production"
    # "auto": TensorrtExecutionProvider, then CUDAExecutionProvider, then CPU, whichever onnxruntime
    # offers; "tensorrt", "cuda" or "cpu" force one (with the ones below it as fallback); or an explicit
    # list of provider names ("cuda,cpu" or a JSON list).
    execution_provider: CommaList[str] = ["auto"]
    # onnxruntime threads per session (0: its default). Intra-op parallelises one operator,
    # inter-op runs independent operators at once (only with a parallel execution mode).
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    # Idle onnxruntime threads spin for work by default: the fastest back-to-back runs when the
    # session has the cores to itself, but a spinning pool takes CPU from the gRPC threads and
    # the event loop that feed it when cores are few.
    ort_spin_threads: bool = True
    # TensorRT EP: where built engines are cached (empty: not cached) and whether FP16 is allowed.
    trt_engine_cache_dir: str = ""
    trt_fp16: bool = False
    # Warm-up batches (rows) run on a new version before it takes traffic ("1,8" or a JSON list);
    # the largest batch the batcher forms (max_batch_rows) is always added.
    warmup_rows: CommaList[int] = [1, 8]
    # Recently replaced versions kept loaded (per alias), so moving an alias back (a rollback)
    # swaps at once instead of downloading again.
    keep_previous_models: int = 1

    # -- traffic: optional canary and shadow aliases, followed like the serving alias ---------------
    # A request goes to the canary version with this probability (0..1), decided by its request key
    # (Predict's request_key; ModelInfer's parameter "request_key", else its id) so one caller sticks
    # to one variant. No key: the split is by a random request id. 0, or no canary alias: no canary.
    canary_alias: str = "canary"
    canary_weight: float = 0.0
    # Every answered request is mirrored to the shadow version asynchronously; its answer is only logged.
    shadow_alias: str = "shadow"
    # Mirrored requests waiting at most; beyond it mirroring is skipped (counted), never the caller slowed.
    shadow_max_queued: int = 256
    # Empty canary_alias / shadow_alias turns that variant off entirely (no GetAlias, no events).
    # How often to ask the registry for the alias while no model is loaded, and (to heal a
    # missed event) how often once one is; 0 turns the second off.
    alias_retry_s: float = 2.0
    alias_resync_s: float = 60.0
    registry_timeout_s: float = 5.0
    # Prediction logs wait here for the producer thread; beyond it they are dropped (counted),
    # because a slow broker must never slow down Predict.
    prediction_log_queue: int = 10_000
    # What the broker cannot take goes to a spool on local disk and is replayed when it answers again
    # (services/serving/spool.py). Its directory (empty: <temp dir>/driftline-prediction-spool), under
    # which each process takes <predictions topic>/<instance id or model>; its byte quota, beyond which
    # logs are dropped (counted); how long a written log may wait for its fsync.
    prediction_spool_dir: str = ""
    prediction_spool_max_bytes: int = 256 << 20
    prediction_spool_fsync_s: float = 1.0
    # A log the broker has not acknowledged by then is spooled instead of waiting in memory.
    prediction_log_delivery_timeout_ms: int = 5000
    # Dynamic batching (services/serving/batcher.py), for Predict and ModelInfer alike:
    # requests that arrive together run as one session call of up to `max_batch_rows` rows;
    # the oldest waits at most `max_queue_delay_ms` for others to join (0: no waiting, batches
    # still form while a previous one runs). A request alone (nothing else queued or running) skips
    # the wait once the last timed-out wait gathered nobody; any overlap turns waiting back on.
    # 1 row turns batching off.
    max_batch_rows: int = 64
    max_queue_delay_ms: float = 2.0
    # Requests waiting for a batch at most; beyond it a request is answered RESOURCE_EXHAUSTED at once.
    max_queued_requests: int = 1024
    # Session calls that may run at once (threads).
    batch_workers: int = 1
    # A batch runs on the event loop itself (no thread hand-off) when the model has been answering
    # batches of its size within this many microseconds; slower ones run on a worker thread. 0: always
    # a worker thread.
    inline_max_us: float = 200.0
    # Rows one request may carry; more is INVALID_ARGUMENT.
    max_request_rows: int = 65_536
    # Bytes one request message may have; more is INVALID_ARGUMENT saying so. gRPC's own receive
    # limit is set above it (grpc_max_receive_bytes, 0: twice this plus 1 MiB), so messages up to
    # that are read and refused with a reason; beyond it gRPC itself answers RESOURCE_EXHAUSTED.
    max_message_bytes: int = 64 * 1024 * 1024
    grpc_max_receive_bytes: int = 0

    def spool_directory(self) -> Path:
        """This process's prediction-log spool.

        >>> ServingSettings(prediction_spool_dir="/s", topic_prefix="t.", model_name="m").spool_directory()
        PosixPath('/s/t.driftline.predictions/m')
        """
        root = Path(self.prediction_spool_dir or Path(tempfile.gettempdir()) / "driftline-prediction-spool")
        owner = re.sub(r"[^A-Za-z0-9._-]", "_", self.instance_id or self.model_name)
        return root / self.topics.predictions / owner

    @property
    def receive_limit(self) -> int:
        return self.grpc_max_receive_bytes or 2 * self.max_message_bytes + (1 << 20)
