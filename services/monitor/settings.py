"""Monitor's settings (`DRIFTLINE_*` environment variables)."""

from __future__ import annotations

from services.common.settings import CommonSettings


class MonitorSettings(CommonSettings):
    grpc_port: int = 50055
    # The group is prefixed with the topic prefix, so isolated loops never share offsets.
    consumer_group: str = "driftline-monitor"
    registry_timeout_s: float = 2.0
    max_poll_records: int = 500
    # The label join keeps up to join_max_pending small entries: collect the young generation
    # less often, so the collector does not rescan them a hundred times a second (runtime.tune_gc).
    gc_gen0_threshold: int = 50_000

    # Join of predictions with labels: how long and how many may wait for a partner.
    join_ttl_s: float = 600.0
    join_max_pending: int = 100_000

    # Statistics per model version (see tracker.py, signals.py, calibration.py).
    accuracy_window: int = 500
    # Expected run length: events between two false alarms, per version and signal family.
    # Every threshold is bootstrapped for it; none is a hand-picked constant. A false alarm
    # costs a retraining, so the default is long: at 400 labelled events/s, one in ~8 minutes
    # per version at worst, far rarer once the policy's min samples and cooldown apply.
    expected_run_length: float = 200_000
    # Labelled predictions a version's error-stream reference is built from (and, after an alarm,
    # the new regime's); it is refined from every later sample but the latest error_guard_samples.
    error_reference_samples: int = 500
    error_guard_samples: int = 500
    # The CUSUM bank: error-rate increases over the reference, one CUSUM (and threshold) each.
    cusum_shifts: str = "0.01,0.02,0.05,0.1,0.2,0.4"
    # ADWIN's delta until the reference is complete; then bootstrapped (unless calibrate_adwin is off).
    adwin_delta: float = 0.002
    calibrate_adwin: bool = True
    # Data and prediction drift: sliding windows of this many rows, tested every window_step rows;
    # window_confirm consecutive tests over the threshold raise an alert, as many under
    # window_clear_ratio × threshold clear it (hysteresis).
    psi_window: int = 1000
    window_step: int = 100
    window_confirm: int = 2
    window_clear_ratio: float = 0.8
    # Enough bootstrap streams to resolve the no-alarm quantile of a long expected run length.
    calibration_streams: int = 256
    # Versions tracked per model; older ones are forgotten.
    max_versions_per_model: int = 5
    # A version whose metadata.json could not be read is asked for again after this.
    reference_retry_s: float = 30.0

    # A DriftReport per version after this many new labelled samples, or this many seconds.
    report_every_samples: int = 500
    report_every_s: float = 10.0

    # Drift policy (see policy.py): the signals that may ask for training, comma-separated, each
    # a signal (concept_drift, data_drift, prediction_drift) or signal:statistic (concept_drift:cusum,
    # concept_drift:adwin, data_drift:ks, data_drift:psi, ...); then min samples and cooldown.
    policy_signals: str = "concept_drift:cusum"
    policy_min_samples: int = 500
    policy_cooldown_s: float = 600.0
    # After a retrain that failed or was not promoted, the version may ask again this much later.
    policy_retry_s: float = 15.0

    # The ops dashboard (HTTP, server-sent events); 0 = off. Binds dashboard_host.
    dashboard_port: int = 8055
    dashboard_host: str = "127.0.0.1"
    history: int = 2000
    # The fewest labelled rows a training request asks the trainer for
    # (DRIFTLINE_MONITOR_RETRAIN_MIN_ROWS, the name the demo sets).
    monitor_retrain_min_rows: int = 1000
