"""feature's settings: DRIFTLINE_* like every service, plus DRIFTLINE_FEATURE_*."""

from __future__ import annotations

from services.common.settings import CommonSettings


class FeatureSettings(CommonSettings):
    grpc_port: int = 50052

    # Empty: "<topic_prefix>driftline-feature". It is faust's app id, so also the consumer
    # group of the events agent and the prefix of the table's changelog topic
    # ("<app id>-entity_state-changelog").
    feature_app_id: str = ""
    # Where faust keeps its own files. Empty: a fresh temporary directory per process (the
    # table lives in memory and is rebuilt from its changelog, so nothing there must survive).
    feature_datadir: str = ""
    # A segment is written when a partition's buffer holds this many labelled rows, or when
    # its oldest row has waited this long, and on shutdown.
    feature_segment_rows: int = 500
    feature_segment_seconds: float = 2.0
    # Most entity ids one GetOnlineFeatures call may ask for.
    feature_max_online_entities: int = 1000

    @property
    def app_id(self) -> str:
        return self.feature_app_id or f"{self.topic_prefix}driftline-feature"

    @property
    def segments_group_id(self) -> str:
        return f"{self.app_id}-segments"
