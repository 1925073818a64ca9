"""Plumbing shared by every Driftline service: settings, Kafka, the object
store, the gRPC server bootstrap and telemetry. Nothing service-specific."""
