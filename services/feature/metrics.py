"""feature's Prometheus metrics."""

from prometheus_client import Counter

EVENTS = Counter(
    "driftline_feature_events_total",
    "Events handled by the feature processor, by outcome (computed, replayed; undecodable, unknown_stream "
    "and failed are dead-lettered) and stream (empty when undecodable).",
    ["outcome", "stream"])
SEGMENTS = Counter("driftline_feature_segments_total", "Feature segments written to the object store, by stream.",
                   ["stream"])
SEGMENT_ROWS = Counter("driftline_feature_segment_rows_total", "Feature rows written in segments, by stream.",
                       ["stream"])
LABEL_SEGMENTS = Counter("driftline_feature_label_segments_total",
                         "Label segments written to the object store, by stream.", ["stream"])
LABEL_ROWS = Counter("driftline_feature_label_rows_total", "Labels written in label segments, by stream.",
                     ["stream"])
TRANSACTIONS = Counter("driftline_feature_transactions_total",
                       "Transactions of the feature processor (features, state changes and offsets), by outcome "
                       "(committed, aborted).", ["outcome"])
SEGMENT_FAILURES = Counter(
    "driftline_feature_segment_failures_total",
    "Segment uploads and writer rounds (feature and label segments) that failed (object store or Kafka) "
    "and were retried.")
SKIPPED_ROWS = Counter(
    "driftline_feature_segment_skipped_total",
    "Feature records the segment writer could not write, by reason (undecodable, unknown_stream, wrong_length).",
    ["reason"])
ONLINE_LOOKUPS = Counter(
    "driftline_feature_online_lookups_total", "Entities asked for by GetOnlineFeatures, by found (true, false).",
    ["found"])
