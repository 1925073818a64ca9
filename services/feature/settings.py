"""feature's settings: DRIFTLINE_* like every service, plus DRIFTLINE_FEATURE_*."""

from __future__ import annotations

import uuid

from services.common.settings import CommonSettings


class FeatureSettings(CommonSettings):
    grpc_port: int = 50052

    # Empty: "<topic_prefix>driftline-feature": the consumer group of the events processor, the
    # prefix of its transactional id and of the state's changelog topic
    # ("<app id>-entity_state-changelog", the name the faust app of earlier releases used, so an
    # upgrade keeps the entities' state).
    feature_app_id: str = ""
    # Not read any more (the worker was a faust app, which kept files here); accepted so that
    # deployments that still set it start.
    feature_datadir: str = ""
    # A segment (feature or label) is written when a partition's buffer holds this many rows, or
    # when its oldest row has waited this long, and on shutdown.
    feature_segment_rows: int = 500
    feature_segment_seconds: float = 2.0
    # Most entity ids one GetOnlineFeatures call may ask for.
    feature_max_online_entities: int = 1000
    # Most events one transaction carries.
    feature_batch_records: int = 500
    # A process that dies inside a transaction and is not restarted under the same instance id
    # holds back read_committed readers of `driftline.features` until the broker aborts it, this long.
    feature_transaction_timeout_ms: int = 10000

    @property
    def app_id(self) -> str:
        return self.feature_app_id or f"{self.topic_prefix}driftline-feature"

    @property
    def changelog_topic(self) -> str:
        return f"{self.app_id}-entity_state-changelog"

    @property
    def segments_group_id(self) -> str:
        return f"{self.app_id}-segments"

    @property
    def labels_group_id(self) -> str:
        return f"{self.app_id}-labels"

    def member_id(self, role: str = "") -> str:
        """The static member name (`group.instance.id`) of one of this process's consumers, "" for
        dynamic membership: each group of the process gets the instance id with its role.

        >>> FeatureSettings(instance_id="feature").member_id("labels"), FeatureSettings().member_id("labels")
        ('feature-labels', '')
        """
        if not self.instance_id:
            return ""
        return f"{self.instance_id}-{role}" if role else self.instance_id

    def transactional_id(self) -> str:
        """Stable across restarts with an instance id, so the restarted process fences its
        predecessor and aborts what it left open at once; random without one.

        >>> FeatureSettings(instance_id="feature").transactional_id()
        'driftline-feature-feature'
        """
        return f"{self.app_id}-{self.instance_id or uuid.uuid4().hex}"
