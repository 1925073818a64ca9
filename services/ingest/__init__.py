"""ingest: validates raw events (JSON or protobuf) from `driftline.events.raw`
and gRPC `Ingest.IngestBatch`, each against the schema of the stream it names
(its `driftline.stream` header, else a protobuf Event's `stream`, else the
default stream; the catalogue of services/common/streams.py), publishes valid
ones exactly once to `driftline.events` (their ids to `driftline.events.ids` in
the same transaction, so a re-sent event is a duplicate across restarts and
replicas), and dead-letters the rest, and records it cannot process, to
`driftline.events.dlq`: the record's own bytes, key, headers and timestamp,
plus `driftline.errors.*` headers with the reason, field, stage and origin
(services/ingest/README.md)."""
