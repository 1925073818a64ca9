"""ingest's Prometheus metrics."""

from prometheus_client import Counter

RECORDS = Counter(
    "driftline_ingest_records_total",
    "Raw records handled, by source (kafka, grpc) and outcome (accepted, rejected, duplicate).",
    ["source", "outcome"])
TRANSACTIONS = Counter(
    "driftline_ingest_transactions_total",
    "Batches written in one Kafka transaction, by source and result (committed, aborted).",
    ["source", "result"])
