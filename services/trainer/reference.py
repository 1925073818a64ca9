"""The trainer's side of the reference contract (`services.common.reference`): the training
rows' decile bins, or for a categorical feature its categories and their shares, per feature."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from services.common.reference import FeatureReference, fit_reference


def feature_references(x: np.ndarray, feature_names: list[str],
                       categorical: Collection[str] | None = None) -> dict[str, FeatureReference]:
    """Per feature, decile bins, or for a categorical feature its categories and their shares
    (the monitor compares those with Jensen–Shannon distance). `categorical` names the categorical
    features; by default a feature is categorical when its training values are integers with at
    most 20 distinct values (bools, codes, small counts: `services.common.reference.is_categorical`).

    >>> x = np.c_[np.arange(40) / 7, np.arange(40) % 3]
    >>> ref = feature_references(x, ["amount", "channel"])
    >>> ref["amount"].categorical, ref["channel"].categories, ref["channel"].proportions
    (False, (0.0, 1.0, 2.0), (0.35, 0.325, 0.325))
    >>> feature_references(x, ["amount", "channel"], categorical=())["channel"].categorical
    False
    """
    return {name: fit_reference(x[:, i], None if categorical is None else name in categorical)
            for i, name in enumerate(feature_names)}
