"""ingest: validates raw events (JSON or protobuf) from `driftline.events.raw`
and gRPC `Ingest.IngestBatch`, each against the schema of the stream it names
(its `driftline.stream` header, else a protobuf Event's `stream`, else the
default stream; the catalogue of services/common/streams.py), publishes valid
ones exactly once to `driftline.events`, and dead-letters the rest to
`driftline.events.dlq`: the record's own bytes, key, headers and timestamp,
plus `driftline.errors.*` headers with the reason, field, stage and origin
(services/ingest/README.md)."""
