"""Categorical features: their window statistic.

A feature is categorical when its reference lists categories (`services.common.reference.
CategoricalShares`, written by the trainer into metadata.json): the values seen in the training
data, ascending, and their shares.

The monitor bins a categorical value to its category, and anything else — a value the training
data never had, NaN — to one more bucket, *unseen*, whose reference share is 0 (the contract's
`category_indices`). The window statistic is the Jensen–Shannon distance (base 2, in [0, 1]) of
the window's category shares against the reference's: it is symmetric, bounded, and defined when
a category is missing on either side, where χ² and KL are not (an unseen category has expected
count 0). KS needs an order the categories do not have, so categorical features get JS in its
place; PSI is kept for both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["category_proportions", "js_distance"]


def js_distance(counts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Jensen–Shannon distance (base 2) of bin counts (..., K) against reference shares (K,) or
    (..., K): sqrt of the mean KL divergence of each side from their midpoint. 0 for the same
    shares, 1 for shares with no category in common (scipy.spatial.distance.jensenshannon, base 2).

    >>> js_distance(np.array([[25, 75], [50, 50], [0, 10]]), np.array([0.25, 0.75])).round(3).tolist()
    [0.0, 0.221, 0.371]
    >>> float(js_distance(np.array([0, 0, 7]), np.array([0.5, 0.5, 0.0])))
    1.0
    """
    counts = np.asarray(counts, dtype=np.float64)
    current = counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1)
    reference = np.broadcast_to(np.asarray(reference, dtype=np.float64), current.shape)
    middle = (current + reference) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        divergence = (np.where(current > 0, current * np.log2(current / middle), 0.0)
                      + np.where(reference > 0, reference * np.log2(reference / middle), 0.0)).sum(axis=-1) / 2
    return np.sqrt(np.clip(divergence, 0.0, 1.0))


def category_proportions(categories: Sequence[float], proportions: Sequence[float], width: int) -> np.ndarray:
    """A categorical reference's shares as a row of `width` bins: the categories, the unseen
    bucket (share 0), then zero padding.

    >>> category_proportions([0.0, 1.0], [0.3, 0.7], 4).tolist()
    [0.3, 0.7, 0.0, 0.0]
    """
    row = np.zeros(width)
    row[:len(categories)] = proportions
    return row
