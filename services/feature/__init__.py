"""feature: turns `driftline.events` into feature vectors on
`driftline.features` for every stream of the catalogue
(`DRIFTLINE_STREAMS_DIR`, one schema file per stream; a stream added to the
folder is served without a restart), exactly once among read_committed readers
(Kafka transactions of feature records, state changes and offsets): each event
is computed with its own stream's schema, per-(stream, entity) state lives in
memory and in a compacted changelog topic, gRPC `FeatureStore` serves the
latest vector per entity of any stream (the feature set is the stream), every
feature record goes to immutable Parquet segments under
`datasets/<stream>/segments/` and every delayed label of `driftline.labels` to
label segments under `datasets/<stream>/labels/` in the object store."""
