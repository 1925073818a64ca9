from services.common.settings import CommonSettings


class RegistrySettings(CommonSettings):
    grpc_port: int = 50053
    # SQLite file (DRIFTLINE_REGISTRY_DB); its parent folder is created on start.
    registry_db: str = ".devstack/registry.db"
    # How long the outbox relay sleeps when nothing wakes it (a write wakes it at once).
    relay_interval_s: float = 1.0
    relay_batch: int = 100
    # A candidate must beat the baseline's accuracy by more than this to be promoted.
    gate_min_improvement: float = 0.0
