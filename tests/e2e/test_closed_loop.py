"""The whole loop, end to end, on the real stack: six service processes, a
concept drift, detection, retraining, the gate, the hot swap."""

import pytest

from driftline.v1 import registry_pb2, registry_pb2_grpc
from services.demo.runner import run_closed_loop
from services.demo.scenario import Options

# A model that only learned the old concept agrees with the new one on about
# 45 % of rows (Agrawal function 0 vs 1); a retrained one should be far above.
RECOVERED_ACCURACY = 0.80


@pytest.mark.e2e
def test_drift_is_detected_retrained_promoted_and_swapped_without_a_failed_call(kafka_bootstrap, s3, tmp_path):
    options = Options(rate=300, drift_at=4000, bootstrap_rows=1500, retrain_rows=1500,
                      recovery_rows=600, timeout_s=400, seed=7)
    lines: list[str] = []
    result, run = run_closed_loop(options, say=lines.append, state_root=tmp_path)
    log_dir = run.log_dir
    timeline = "\n".join(lines)

    assert not result.failures, f"{result.failures}\n{timeline}\nlogs: {log_dir}"
    assert result.first_version is not None and result.new_version is not None, timeline
    assert result.new_version > result.first_version
    # Predict answered with the new version after `production` moved to it.
    assert result.recovered_s is not None and result.time_to_recover_s > 0
    assert result.predict_failures == 0, result.failures
    # The drift hurt, and the retrained model recovered.
    assert result.accuracy["before"] > RECOVERED_ACCURACY, timeline
    assert result.accuracy["after_drift"] < result.accuracy["before"] - 0.2, timeline
    assert result.accuracy["recovered"] >= RECOVERED_ACCURACY, timeline
    # The promoted version's lineage names a dataset that holds post-drift rows.
    assert result.gate and result.gate["candidate_version"] == result.new_version
    assert result.new_dataset, timeline
    post_drift = _event_indices_in_dataset(run, options.stream, result.new_dataset)
    assert post_drift and min(post_drift) >= options.drift_at - 500, \
        "the retrained model's dataset should start near the change point"
    assert max(post_drift) >= options.drift_at


def _event_indices_in_dataset(run, stream: str, dataset_id: str) -> list[int]:
    """Stream positions of the rows in a dataset version, read back from its manifest."""
    import io

    import pyarrow.parquet as pq

    from services.common.objectstore import MinioObjectStore
    from services.demo.stream import index_of

    store = MinioObjectStore(run.endpoints.s3_endpoint, run.endpoints.s3_access_key,
                             run.endpoints.s3_secret_key, run.bucket)
    manifest = store.get_json(f"datasets/{stream}/versions/{dataset_id}.json")
    indices = []
    for segment in manifest["segments"]:
        table = pq.read_table(io.BytesIO(store.get_bytes(segment["key"], segment["sha256"])))
        indices += [index_of(e) for e in table.column("event_id").to_pylist()]
    return indices
