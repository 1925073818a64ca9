"""feature: a faust-streaming app that turns `driftline.events` into feature
vectors on `driftline.features` (per-entity state in a changelog-backed
table), serves the latest vector per entity over gRPC `FeatureStore`, and
writes labelled rows to immutable Parquet segments in the object store."""
