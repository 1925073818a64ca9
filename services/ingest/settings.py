"""ingest's settings: DRIFTLINE_* like every service, plus DRIFTLINE_INGEST_*."""

from __future__ import annotations

import socket

from services.common.settings import CommonSettings


class IngestSettings(CommonSettings):
    grpc_port: int = 50051

    # Empty: "<topic_prefix>driftline-ingest", so prefixed test loops do not share a group.
    ingest_group_id: str = ""
    # Empty: "<group id>-<instance id>" (DRIFTLINE_INSTANCE_ID), else "<group id>-<hostname>". Must
    # be unique per running instance and stable across its restarts: a restarted instance then
    # aborts the transaction its predecessor left open at once, instead of read_committed
    # consumers stalling until it times out.
    ingest_transactional_id: str = ""
    # Kept short so a crashed instance's open transaction blocks readers for seconds, not a minute.
    ingest_transaction_timeout_ms: int = 15000
    # How many published (stream, event id) pairs are remembered for de-duplication (≈ 150 bytes
    # each), and read back from each partition of the published-ids topic at start.
    ingest_dedup_capacity: int = 200_000
    # How long the published-ids topic keeps an id: a duplicate re-sent later may be published again.
    ingest_dedup_retention_ms: int = 7 * 24 * 3600 * 1000
    # Records per Kafka poll (one transaction each) and per gRPC IngestBatch call.
    ingest_poll_max_records: int = 500
    ingest_max_batch_records: int = 1000
    # A gRPC record (key, value, content type and stream) above this is refused with the call:
    # librdkafka's and the broker's default message limit is about 1 MB, so it could be neither
    # published nor dead-lettered (a dead letter adds headers: hence the margin), and a client
    # told UNAVAILABLE would retry it for ever.
    ingest_max_record_bytes: int = 900_000

    @property
    def group_id(self) -> str:
        return self.ingest_group_id or f"{self.topic_prefix}driftline-ingest"

    @property
    def transactional_id(self) -> str:
        return self.ingest_transactional_id or f"{self.group_id}-{self.instance_id or socket.gethostname()}"

    @property
    def ids_topic(self) -> str:
        """The published-ids topic (idlog.py): ingest's own, so not among the loop's `Topics`."""
        return f"{self.topic_prefix}driftline.events.ids"
