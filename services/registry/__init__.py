"""The model registry: versions with their lineage, aliases, the promotion gate,
and an outbox that publishes every change on `driftline.registry.events`."""
