"""feature: a faust-streaming app that turns `driftline.events` into feature
vectors on `driftline.features` for every stream of the catalogue
(`DRIFTLINE_STREAMS_DIR`, one schema file per stream; a stream added to the
folder is served without a restart): each event is computed with its own
stream's schema, per-(stream, entity) state lives in a changelog-backed table,
gRPC `FeatureStore` serves the latest vector per entity of any stream (the
feature set is the stream), and labelled rows go to immutable Parquet
segments under `datasets/<stream>/segments/` in the object store."""
