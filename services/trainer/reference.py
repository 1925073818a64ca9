"""Reference histograms for the monitor's PSI: decile bins of the training data.

Shape: {"edges": [b0, ..., bk], "proportions": [p1, ..., pk]}. Edges are the
distinct deciles, so a feature with few values gets fewer bins. Binning rule
(the monitor must use the same): bin i holds edges[i] <= x < edges[i+1], the
last bin also holds x == bk, and values beyond either end fall in the end bins
(`np.searchsorted(edges[1:-1], x, side="right")` gives the bin index).
"""

from __future__ import annotations

import numpy as np


def decile_histogram(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, 11)))
    if len(edges) == 1:  # a constant: one bin holding everything
        return {"edges": [float(edges[0]), float(edges[0])], "proportions": [1.0]}
    bins = np.searchsorted(edges[1:-1], values, side="right")
    counts = np.bincount(bins, minlength=len(edges) - 1)
    return {"edges": [float(e) for e in edges], "proportions": [float(c) for c in counts / len(values)]}


def feature_references(x: np.ndarray, feature_names: list[str]) -> dict[str, dict]:
    return {name: decile_histogram(x[:, i]) for i, name in enumerate(feature_names)}
