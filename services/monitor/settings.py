"""Monitor's settings (`DRIFTLINE_*` environment variables)."""

from __future__ import annotations

from services.common.settings import CommonSettings


class MonitorSettings(CommonSettings):
    grpc_port: int = 50055
    # The group is prefixed with the topic prefix, so isolated loops never share offsets.
    consumer_group: str = "driftline-monitor"
    registry_timeout_s: float = 2.0

    # Join of predictions with labels: how long and how many may wait for a partner.
    join_ttl_s: float = 600.0
    join_max_pending: int = 100_000

    # Statistics per model version.
    accuracy_window: int = 500
    adwin_delta: float = 0.002
    psi_window: int = 1000
    psi_min_samples: int = 200
    psi_threshold: float = 0.25
    # Versions tracked per model; older ones are forgotten.
    max_versions_per_model: int = 5
    # A version whose metadata.json could not be read is asked for again after this.
    reference_retry_s: float = 30.0

    # A DriftReport per version after this many new labelled samples, or this many seconds.
    report_every_samples: int = 500
    report_every_s: float = 10.0

    # Drift policy (see policy.py).
    policy_min_samples: int = 500
    policy_cooldown_s: float = 600.0
    # The fewest labelled rows a training request asks the trainer for
    # (DRIFTLINE_MONITOR_RETRAIN_MIN_ROWS, the name the demo sets).
    monitor_retrain_min_rows: int = 1000
