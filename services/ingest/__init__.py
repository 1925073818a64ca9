"""ingest: validates raw events (JSON or protobuf) from `driftline.events.raw`
and gRPC `Ingest.IngestBatch`, publishes valid ones exactly once to
`driftline.events`, and dead-letters the rest to `driftline.events.dlq` with
the reason and the record's origin."""
