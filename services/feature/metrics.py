"""feature's Prometheus metrics."""

from prometheus_client import Counter

EVENTS = Counter(
    "driftline_feature_events_total",
    "Events handled by the feature agent, by outcome (computed, replayed, undecodable).",
    ["outcome"])
SEGMENTS = Counter("driftline_feature_segments_total", "Feature segments written to the object store.")
SEGMENT_ROWS = Counter("driftline_feature_segment_rows_total", "Labelled rows written in segments.")
SEGMENT_FAILURES = Counter(
    "driftline_feature_segment_failures_total",
    "Segment rounds that failed (object store or Kafka) and were retried.")
ONLINE_LOOKUPS = Counter(
    "driftline_feature_online_lookups_total", "Entities asked for by GetOnlineFeatures, by found (true, false).",
    ["found"])
