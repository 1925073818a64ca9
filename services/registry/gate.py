"""The promotion gate: a candidate takes an alias only if it is better on fresh data.

The rule: promote when the alias points nowhere; otherwise score the candidate
and the alias's current target on the same rows, in onnxruntime, and promote only
when the candidate's accuracy is higher. The rows are the candidate's eval slice
(the most recent labelled data of its window), or the slice the caller names: an
earlier version promoted again is judged on rows newer than all it trained on. Artifacts are read with sha256 verification,
so a tampered or truncated model is refused, never scored.

A model that cannot be scored (bad artifact, missing feature columns, an eval
slice that cannot be read) is a refusal with the reason recorded, not an
error: the decision log should show every attempt. Infrastructure failures
(the object store down) propagate, because no decision was made.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

from driftline.v1 import registry_pb2
from services.common.objectstore import IntegrityError, ObjectNotFound, ObjectStores
from services.common.onnx_safety import UnsafeModel, check_artifact

from . import events

log = logging.getLogger(__name__)

LABEL_COLUMN = "label"
OUTPUT_NAME = "probabilities"


class Unscorable(Exception):
    """This model cannot be scored on this slice; the message says why."""


class Gate:
    def __init__(self, artifacts: ObjectStores, min_improvement: float = 0.0) -> None:
        self.artifacts = artifacts
        self.min_improvement = min_improvement

    def decide(self, candidate: registry_pb2.ModelVersion, baseline: registry_pb2.ModelVersion | None,
               alias: str, eval_uri: str = "") -> registry_pb2.GateDecision:
        """The decision on `eval_uri`'s rows, or (empty) the candidate's own eval slice."""
        decision = registry_pb2.GateDecision(
            model_name=candidate.name, alias=alias, candidate_version=candidate.version,
            baseline_version=baseline.version if baseline else 0, eval_uri=eval_uri or candidate.eval_uri)
        decision.decided_at.FromMilliseconds(events.now_ms())
        promoted, reason = self._judge(candidate, baseline, alias, decision)
        decision.promoted = promoted
        decision.reason = reason
        log.info("gate decided", extra={"model": candidate.name, "alias": alias, "candidate": candidate.version,
                                        "baseline": decision.baseline_version, "promoted": promoted,
                                        "reason": reason})
        return decision

    def _judge(self, candidate: registry_pb2.ModelVersion, baseline: registry_pb2.ModelVersion | None,
               alias: str, decision: registry_pb2.GateDecision) -> tuple[bool, str]:
        """Fills in the accuracies and row count; returns (promoted, reason)."""
        cand, base = f"candidate v{candidate.version}", f"baseline v{decision.baseline_version}"
        if baseline is not None and baseline.version == candidate.version:
            return True, f"v{candidate.version} already is {alias!r}"
        if not decision.eval_uri:
            if baseline is None:
                try:
                    self._load_model(candidate)  # never hand serving an artifact that does not load
                except Unscorable as exc:
                    return False, f"{cand} refused: {exc}"
                return True, f"{alias!r} pointed nowhere: promoted {cand} (it has no eval slice to score)"
            return False, f"{cand} has no eval slice, so it cannot be compared with {base}"

        try:
            rows = self._load_eval_slice(decision.eval_uri)
            decision.eval_rows = rows.num_rows
            decision.candidate_accuracy = accuracy(self._load_model(candidate), rows, candidate.feature_names)
        except Unscorable as exc:
            return False, f"{cand} refused: {exc}"
        scored = f"{cand} accuracy {decision.candidate_accuracy:.4f} on {decision.eval_rows} rows"
        if baseline is None:
            return True, f"{alias!r} pointed nowhere: promoted {cand} ({scored})"

        try:
            decision.baseline_accuracy = accuracy(self._load_model(baseline), rows, baseline.feature_names)
        except Unscorable as exc:
            return False, (f"{base} cannot be scored on {cand}'s eval slice ({exc}); "
                           f"move {alias!r} with SetAlias if the change is intended")
        versus = f"{scored} vs {base} {decision.baseline_accuracy:.4f} on the same rows"
        if decision.candidate_accuracy > decision.baseline_accuracy + self.min_improvement:
            return True, f"promoted: {versus}"
        margin = f" by more than {self.min_improvement}" if self.min_improvement else ""
        return False, f"refused: {versus}; the candidate must be better{margin}"

    def _load_model(self, version: registry_pb2.ModelVersion) -> ort.InferenceSession:
        try:
            data = self.artifacts.read_bytes(version.artifact_uri, version.artifact_sha256)
        except (ObjectNotFound, IntegrityError, ValueError) as exc:
            raise Unscorable(f"artifact {version.artifact_uri}: {exc}") from exc
        try:
            check_artifact(data, f"artifact {version.artifact_uri}")
        except UnsafeModel as exc:
            raise Unscorable(str(exc)) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # a gate run is small; leave the cores to serving
        try:
            return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own RuntimeError subclasses
            raise Unscorable(f"artifact {version.artifact_uri} does not load in onnxruntime: {exc}") from exc

    def _load_eval_slice(self, uri: str) -> pa.Table:
        try:
            table = pq.read_table(io.BytesIO(self.artifacts.read_bytes(uri)))
        except (ObjectNotFound, IntegrityError, ValueError, pa.ArrowException) as exc:
            raise Unscorable(f"eval slice {uri} cannot be read: {exc}") from exc
        if LABEL_COLUMN not in table.column_names:
            raise Unscorable(f"eval slice {uri} has no {LABEL_COLUMN!r} column")
        if table.num_rows == 0:
            raise Unscorable(f"eval slice {uri} has no rows")
        return table


def accuracy(session: ort.InferenceSession, rows: pa.Table, feature_names) -> float:
    """Share of rows whose argmax class equals the label."""
    missing = [name for name in feature_names if name not in rows.column_names]
    if missing or not feature_names:
        raise Unscorable(f"the eval slice lacks the model's feature columns {missing or '(none declared)'}")
    features = np.column_stack([rows.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
                                for name in feature_names])
    labels = rows.column(LABEL_COLUMN).to_numpy(zero_copy_only=False).astype(np.int64)
    outputs = [o.name for o in session.get_outputs()]
    try:
        (probabilities,) = session.run([OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]],
                                       {session.get_inputs()[0].name: features})
    except Exception as exc:
        raise Unscorable(f"onnxruntime failed on the eval slice: {exc}") from exc
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))
