"""ingest: validates raw events (JSON or protobuf) from `driftline.events.raw`
and gRPC `Ingest.IngestBatch`, publishes valid ones exactly once to
`driftline.events`, and dead-letters the rest to `driftline.events.dlq`: the
record's own bytes, key and headers, plus `driftline.errors.*` headers with
the reason, field, stage and origin (services/ingest/README.md)."""
