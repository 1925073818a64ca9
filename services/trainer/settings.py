from services.common.settings import CommonSettings


class TrainerSettings(CommonSettings):
    # Prefixed with topic_prefix, so isolated loops on one broker do not share a group.
    consumer_group: str = "driftline-trainer"
    # How long a request waits for its window to hold min_rows labelled rows, and how often it looks
    # (a drift retrain asks for a few hundred rows, about a second of a stream: 2 s polls were most of its wait;
    # a poll lists only each partition's new segments, one small S3 request).
    wait_timeout_s: float = 300.0
    poll_interval_s: float = 0.05
    # A refresh waits for thousands of rows, and nobody waits on it: a listing a second is enough.
    refresh_poll_interval_s: float = 1.0
    # Labelled feature records per stream the trainer keeps from the features topic (recent.py), from
    # which a drift retrain's first rows come before a segment holds them; 0: from segments only.
    recent_rows: int = 8192
    # Used when a request leaves min_rows at 0.
    default_min_rows: int = 1000
    # The most recent share of the window (by event time) held out for evaluation and the gate.
    holdout_fraction: float = 0.2
    # Training defaults; a request may override them through its params map.
    epochs: int = 20
    batch_size: int = 64
    hidden: int = 64
    learning_rate: float = 3e-3
    seed: int = 0
    train_min_steps: int = 400
    train_min_steps_max_epochs: int = 40
    train_max_steps: int = 1500
    train_quantiles: int = 32
    # The share of a window's training rows that chooses between the nets with and without the steps.
    train_selection_share: float = 0.2
    # Rows after a change on which a drift request's earlier versions are scored first (reuse.py);
    # 0: only beside the fresh candidate, once it is trained.
    reuse_rows: int = 100
    # A tiny MLP trains fastest on one thread; more only adds synchronisation.
    torch_threads: int = 1
    promote_alias: str = "production"
    registry_timeout_s: float = 120.0
    # Lineage; empty means `git rev-parse HEAD`, else the package version (env DRIFTLINE_CODE_VERSION).
    code_version: str = ""
