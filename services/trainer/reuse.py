"""Earlier versions scored on a new window's held-out rows, for concept reuse.

A concept that returns (a season, a regime, a product line switched back on) was learnt
before: the registry holds the version trained on it. A drift request names how many recent
versions to try (`TrainingRequest.reuse_candidates`); each is scored in onnxruntime on the
rows the fresh candidate is evaluated on, and the best of them is sent through the gate
instead of the fresh one when its concept is back (`concept_is_back`) and it scores as well,
within the slice's standard error. None of them trained on these rows (they are newer than every
version), so the gate's decision stays one on unseen rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from driftline.v1 import registry_pb2
from services.common.objectstore import IntegrityError, ObjectNotFound, ObjectStore, split_uri

from .export import predict_proba, session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    version: registry_pb2.ModelVersion
    accuracy: float


def score_earlier(versions: Iterable[registry_pb2.ModelVersion], limit: int, store: ObjectStore,
                  feature_names: list[str], x: np.ndarray, y: np.ndarray) -> Scored | None:
    """The best of the `limit` newest `versions` on (x, y), or None when none can be scored; a
    version with other features, or whose artifact is gone or not a model, is passed over."""
    newest = sorted(versions, key=lambda v: v.version, reverse=True)[:limit]
    best = None
    for version in newest:
        if list(version.feature_names) != feature_names:
            continue
        try:
            bucket, key = split_uri(version.artifact_uri)
            if bucket != store.bucket:
                continue
            model = session(store.get_bytes(key, expected_sha256=version.artifact_sha256))
            accuracy = float(np.mean(np.argmax(predict_proba(model, x), axis=1) == y))
        except (ObjectNotFound, IntegrityError, ValueError, RuntimeError) as exc:
            log.warning("earlier version not scored", extra={"version": version.version, "error": str(exc)})
            continue
        if best is None or accuracy > best.accuracy:
            best = Scored(version, accuracy)
    return best


def standard_error(accuracy: float, rows: int) -> float:
    """The standard error of an accuracy measured on `rows` rows. An earlier version within it of
    a fresh candidate is preferred: the two are a tie on this slice, and the earlier one learnt
    from many more rows than the few hundred the first retrain after a change has.

    Agresti-Coull's (two right and two wrong answers added): Wald's sqrt(p(1-p)/n) is 0 at an
    accuracy of 1.0, and a version perfect on its own held-out rows was then refused as the
    concept's return over one row of the previous concept among a change's first 110 (STAGGER).

    >>> round(standard_error(0.9, 100), 3), round(standard_error(1.0, 110), 3)
    (0.031, 0.012)
    """
    n = max(rows, 1) + 4
    p = (accuracy * (n - 4) + 2) / n
    return math.sqrt(p * (1 - p) / n)


def concept_is_back(scored: Scored, rows: int) -> bool:
    """Whether the version scores on these `rows` what it scored on its own held-out rows, within
    two standard errors: the concept it learnt is back. A tie with a fresh candidate is not enough
    on its own: on the 60 held-out rows of a 300-row retrain a version of the old concept (0.82)
    tied a fresh one (0.85) after an abrupt Agrawal drift, and served the drift on.

    >>> v = registry_pb2.ModelVersion(version=3, metrics={"accuracy": 0.97})
    >>> concept_is_back(Scored(v, 0.95), 100), concept_is_back(Scored(v, 0.82), 60)
    (True, False)
    >>> perfect = registry_pb2.ModelVersion(version=1, metrics={"accuracy": 1.0})
    >>> concept_is_back(Scored(perfect, 108 / 110), 110), concept_is_back(Scored(perfect, 0.9), 110)
    (True, False)
    """
    own = scored.version.metrics.get("accuracy")
    return own is not None and scored.accuracy >= own - 2 * standard_error(own, rows)
