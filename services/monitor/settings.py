"""Monitor's settings (`DRIFTLINE_*` environment variables), defined once.

`TrackerConfig` holds what each version's statistics need (tracker.py, signals.py,
calibration.py); `MonitorSettings` is the service's whole configuration and a
`TrackerConfig` too, so its fields are declared once, with the deployed defaults, and
read from the same environment variables as before (`DRIFTLINE_EXPECTED_RUN_LENGTH`, …).
List settings take a JSON list or, as older deployments write them, a comma-separated
string:

>>> settings = MonitorSettings(cusum_shifts="0.05, 0.2", policy_signals='["concept_drift", "data_drift:ks"]')
>>> settings.cusum_shifts, settings.policy_signals, settings.tracker_config().cusum_shifts
((0.05, 0.2), ['concept_drift', 'data_drift:ks'], (0.05, 0.2))

A setting that cannot be right stops the service with a ValueError that names it:

>>> try:
...     MonitorSettings(policy_signals="concept_drift:cusm")
... except ValueError as error:
...     print(error.errors()[0]["msg"])
Value error, policy_signals: unknown statistic 'cusm' in 'concept_drift:cusm' (one of adwin, cusum, js, ks, psi)
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.common.settings import CommonSettings, comma_list

from .signals import CUSUM_GUARD, CUSUM_SHIFTS

SIGNALS = ("concept_drift", "data_drift", "prediction_drift")
STATISTICS = ("adwin", "cusum", "js", "ks", "psi")


class TrackerConfig(BaseModel):
    """What a version's statistics need; `MonitorSettings().tracker_config()` is the deployed one."""

    model_config = ConfigDict(frozen=True)

    accuracy_window: int = Field(500, ge=1)
    # Expected run length: events between two false alarms, per version and signal family.
    # Every threshold is bootstrapped for it; none is a hand-picked constant. A false alarm
    # costs a retraining, so the default is long: at 400 labelled events/s, one in ~8 minutes
    # per version at worst, far rarer once the policy's min samples and cooldown apply.
    expected_run_length: float = Field(200_000, gt=0)
    # Labelled predictions a version's error-stream reference is built from (and, after an alarm,
    # the new regime's); it is refined from every later sample but the latest error_guard_samples
    # (a slow drift in progress is not learnt as normal).
    error_reference_samples: int = Field(500, ge=1)
    error_guard_samples: int = Field(CUSUM_GUARD, ge=0)
    # The CUSUM bank: error-rate increases over the reference, one CUSUM (and threshold) each.
    cusum_shifts: Annotated[tuple[float, ...], NoDecode] = CUSUM_SHIFTS
    # ADWIN's delta until the reference is complete; then bootstrapped (unless calibrate_adwin is off).
    adwin_delta: float = Field(0.002, gt=0, lt=1)
    calibrate_adwin: bool = True
    # Data and prediction drift: sliding windows of this many rows, tested every window_step rows;
    # window_confirm consecutive tests over the threshold raise an alert, as many under
    # window_clear_ratio × threshold clear it (hysteresis).
    psi_window: int = Field(1000, ge=1)
    window_step: int = Field(100, ge=1)
    window_confirm: int = Field(2, ge=1)
    window_clear_ratio: float = Field(0.8, gt=0)
    # Enough bootstrap streams to resolve the no-alarm quantile of a long expected run length.
    calibration_streams: int = Field(256, ge=1)

    _shifts_listed = field_validator("cusum_shifts", mode="before")(comma_list)

    @field_validator("cusum_shifts")
    @classmethod
    def _rises(cls, shifts: tuple[float, ...]) -> tuple[float, ...]:
        if not shifts or not all(0 < s < 1 for s in shifts):
            raise ValueError(f"cusum_shifts: error-rate rises in (0, 1), at least one; got {list(shifts)}")
        return shifts


class MonitorSettings(CommonSettings, TrackerConfig):
    model_config = SettingsConfigDict(frozen=False)

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

    # (Statistics per model version: the TrackerConfig fields above.)
    # Versions tracked per model; older ones are forgotten.
    max_versions_per_model: int = 5
    # A version whose metadata.json could not be read is asked for again after this.
    reference_retry_s: float = 30.0

    # A DriftReport per version after this many new labelled samples, or this many seconds.
    report_every_samples: int = 500
    report_every_s: float = 10.0

    # Drift policy (see policy.py): the signals that may ask for training, each a signal
    # (concept_drift, data_drift, prediction_drift) or signal:statistic (concept_drift:cusum,
    # concept_drift:adwin, data_drift:ks, data_drift:psi, ...); then min samples and cooldown.
    policy_signals: Annotated[list[str], NoDecode] = ["concept_drift:cusum"]
    policy_min_samples: int = 500
    policy_cooldown_s: float = 600.0
    # After a retrain that failed, the version may ask again this much later (one the gate refused
    # is retried by its refreshes, on more rows: refresh.py).
    policy_retry_s: float = 15.0
    # Progressive retraining (refresh.py): after a first model or a drift retrain, a refresh each
    # time the labelled rows since the change double, on the latest policy_refresh_max_rows of
    # them; they end at policy_refresh_until_rows rows (0: no refreshes) or after
    # policy_refresh_refusals refused in a row.
    policy_refresh_max_rows: int = Field(8000, ge=1)
    policy_refresh_until_rows: int = Field(32000, ge=0)
    # (8: the refreshes of a gradual drift's transition are refused while production still does well
    # on its mixture; 3 ended them there in bench/adaptation.py, leaving the drifted version serving.)
    policy_refresh_refusals: int = Field(8, ge=1)
    # The latest versions that served a drift retrain has tried again (concept reuse; 0: none).
    policy_reuse_candidates: int = Field(5, ge=0)

    # The ops dashboard (HTTP, server-sent events); 0 = off. Binds dashboard_host.
    dashboard_port: int = 8055
    dashboard_host: str = "127.0.0.1"
    history: int = 2000
    # The labelled rows since the change a drift retrain asks the trainer for
    # (DRIFTLINE_MONITOR_RETRAIN_MIN_ROWS, the name the demo sets): few, so that a model of the new
    # concept serves within seconds; the refreshes then train on more.
    monitor_retrain_min_rows: int = 150
    # The platform starts itself (first_model.py): a stream of the catalogue (DRIFTLINE_STREAMS_DIR)
    # whose model has no `production` version asks for its first model once it has counted this
    # many labelled feature records (DRIFTLINE_FIRST_MODEL_MIN_ROWS; 0 = never), and again after as
    # many new ones when that request failed or was not promoted. The registry is asked whether a
    # production version exists at start and every first_model_check_s until one does.
    first_model_min_rows: int = Field(2000, ge=0)
    first_model_check_s: float = Field(10.0, gt=0)

    # The state is saved to the object store (checkpoint.py) this often, right after each training
    # request, and on a clean stop; a restart replays at most about this much of the input. A
    # monitor that cannot read the store at start waits for it up to snapshot_load_wait_s before it
    # starts afresh (its next snapshot replaces the one it could not read).
    snapshot_every_s: float = Field(10.0, gt=0)
    snapshot_load_wait_s: float = Field(60.0, ge=0)

    _signals_listed = field_validator("policy_signals", mode="before")(comma_list)

    @field_validator("policy_signals")
    @classmethod
    def _known_signals(cls, names: list[str]) -> list[str]:
        # A misspelt name would silently keep every alert from asking for training.
        for name in names:
            signal, _, statistic = name.partition(":")
            if signal not in SIGNALS:
                raise ValueError(f"policy_signals: unknown signal {signal!r} in {name!r} (one of {', '.join(SIGNALS)})")
            if statistic and statistic not in STATISTICS:
                raise ValueError(f"policy_signals: unknown statistic {statistic!r} in {name!r} "
                                 f"(one of {', '.join(STATISTICS)})")
        return names

    def tracker_config(self) -> TrackerConfig:
        """The statistics' part of these settings, as every version tracker gets it."""
        return TrackerConfig(**{name: getattr(self, name) for name in TrackerConfig.model_fields})


# The settings a monitor's state is built under (checkpoint.py: a snapshot taken under others is
# not restored): the statistics', the policy's, the join's, the reports' and the first models'.
STATE_SETTINGS = (*TrackerConfig.model_fields, "stream", "policy_signals", "policy_min_samples",
                  "policy_cooldown_s", "policy_retry_s", "policy_refresh_max_rows", "policy_refresh_until_rows",
                  "policy_refresh_refusals", "policy_reuse_candidates", "join_ttl_s", "join_max_pending",
                  "max_versions_per_model", "report_every_samples", "report_every_s", "history",
                  "monitor_retrain_min_rows", "first_model_min_rows")
