"""Reference histograms for the monitor's PSI: decile bins of the training data.

Shape: {"edges": [b0, ..., bk], "proportions": [p1, ..., pk]}. Edges are the
distinct deciles, so a feature with few values gets fewer bins. Binning rule
(the monitor must use the same): bin i holds edges[i] <= x < edges[i+1], the
last bin also holds x == bk, and values beyond either end fall in the end bins
(`np.searchsorted(edges[1:-1], x, side="right")` gives the bin index).

A categorical feature (integer-valued, at most 20 distinct values) is stored as its categories
and their shares instead, with the midpoints between categories as edges (one bin per category
for a reader that predates categories): {"edges": [...], "proportions": [...], "categories": [...]}.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from services.monitor.categorical import categorical_reference
from services.monitor.categorical import is_categorical as _is_categorical


def decile_histogram(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, 11)))
    if len(edges) == 1:  # a constant: one bin holding everything
        return {"edges": [float(edges[0]), float(edges[0])], "proportions": [1.0]}
    bins = np.searchsorted(edges[1:-1], values, side="right")
    counts = np.bincount(bins, minlength=len(edges) - 1)
    return {"edges": [float(e) for e in edges], "proportions": [float(c) for c in counts / len(values)]}


def feature_references(x: np.ndarray, feature_names: list[str],
                       categorical: Collection[str] | None = None) -> dict[str, dict]:
    """Per feature, decile bins, or for a categorical feature its categories and their shares
    (`services.monitor.categorical`: the monitor compares those with Jensen–Shannon distance).
    `categorical` names the categorical features; by default a feature is categorical when its
    training values are integers with at most 20 distinct values (bools, codes, small counts).

    >>> x = np.c_[np.arange(40) / 7, np.arange(40) % 3]
    >>> ref = feature_references(x, ["amount", "channel"])
    >>> "categories" in ref["amount"], ref["channel"]["categories"], ref["channel"]["proportions"]
    (False, [0.0, 1.0, 2.0], [0.35, 0.325, 0.325])
    >>> "categories" in feature_references(x, ["amount", "channel"], categorical=())["channel"]
    False
    """
    def is_categorical(i: int, name: str) -> bool:
        return _is_categorical(x[:, i]) if categorical is None else name in categorical

    return {name: categorical_reference(x[:, i]) if is_categorical(i, name) else decile_histogram(x[:, i])
            for i, name in enumerate(feature_names)}
