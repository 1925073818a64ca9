"""Categorical features: their reference, their binning and their window statistic.

A feature is categorical when its reference (metadata.json, written by the trainer) lists
``"categories"``: the values seen in the training data, ascending, with ``"proportions"`` their
shares. (The trainer also writes ``"edges"``, the midpoints between categories, so a monitor that
predates categories still reads the feature as a histogram of one bin per category.)

The monitor bins a categorical value to its category, and anything else — a value the training
data never had, NaN — to one more bucket, *unseen*, whose reference share is 0. The window
statistic is the Jensen–Shannon distance (base 2, in [0, 1]) of the window's category shares
against the reference's: it is symmetric, bounded, and defined when a category is missing on
either side, where χ² and KL are not (an unseen category has expected count 0). KS needs an order
the categories do not have, so categorical features get JS in its place; PSI is kept for both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A feature whose training values are all integers and take at most this many distinct
# values is categorical (bools, codes, small counts), unless the trainer is told otherwise.
MAX_CATEGORIES = 20

def is_categorical(values: np.ndarray, max_categories: int = MAX_CATEGORIES) -> bool:
    """Integer-valued (all finite) with at most `max_categories` distinct values.

    >>> is_categorical(np.array([0, 1, 1, 0.0])), is_categorical(np.array([0.5, 1.0]))
    (True, False)
    >>> is_categorical(np.arange(21.0)), is_categorical(np.array([]))
    (False, False)
    """
    values = np.asarray(values, dtype=np.float64)
    if not values.size or not np.isfinite(values).all() or (values != np.round(values)).any():
        return False
    return len(np.unique(values)) <= max_categories


def categorical_reference(values: np.ndarray) -> dict[str, list[float]]:
    """The reference of a categorical feature: its categories, their shares, and the midpoints
    between them as histogram edges (one bin per category, for readers without categories).

    >>> categorical_reference(np.array([2, 0, 2, 2.0]))
    {'edges': [0.0, 1.0, 2.0], 'proportions': [0.25, 0.75], 'categories': [0.0, 2.0]}
    >>> categorical_reference(np.array([1, 1.0]))
    {'edges': [1.0, 1.0], 'proportions': [1.0], 'categories': [1.0]}
    """
    values = np.asarray(values, dtype=np.float64)
    categories, counts = np.unique(values, return_counts=True)
    middles = (categories[1:] + categories[:-1]) / 2
    edges = np.concatenate([categories[:1], middles, categories[-1:]])
    return {"edges": [float(e) for e in edges], "proportions": [float(c) for c in counts / len(values)],
            "categories": [float(c) for c in categories]}


def category_indices(categories: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's category index; len(categories) (the unseen bucket) for any other value.

    >>> category_indices(np.array([0.0, 1.0, 5.0]), np.array([5, 1, 2, np.nan, 0, -1])).tolist()
    [2, 1, 3, 3, 0, 3]
    """
    categories = np.asarray(categories, dtype=np.float64)
    k = len(categories)
    index = np.searchsorted(categories, values)
    hit = categories[np.minimum(index, k - 1)] == values
    return np.where(hit, index, k)


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
