"""Population stability index (PSI) of recent values against a reference histogram.

The reference is what the trainer stored in metadata.json for each feature
(`services.common.reference`, whose binning rule the monitor bins values with):
``{"edges": [b0, ..., bk], "proportions": [p1, ..., pk]}`` — k bins of the
training data. A value falls in bin ``i`` when ``edges[i] <= v < edges[i+1]``
(the last bin also holds ``bk``), which is numpy.histogram's rule; values below
``b0`` or above ``bk`` count in the first or last bin, because a shift out of
the training range is exactly what PSI must see.

    PSI = sum_i (current_i - reference_i) * ln(current_i / reference_i)

Rule of thumb: < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 a major shift. The monitor computes
it over every window at once (`signals.window_statistics`).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.reference import DecileBins

# A numeric feature's reference, by the name the monitor's tests and benchmarks know it by.
Bins = DecileBins


def reference_bins(values: Sequence[float], bins: int = 10) -> dict[str, list[float]]:
    """Decile (by default) edges of `values`, repeated ones kept, and the share of values in each
    bin: the shape metadata.json's "reference" holds, counted by the contract's binning rule.

    >>> reference_bins([1, 2, 3, 4], bins=2)
    {'edges': [1.0, 2.5, 4.0], 'proportions': [0.5, 0.5]}
    >>> reference_bins([0, 0, 0, 1], bins=2)
    {'edges': [0.0, 0.0, 1.0], 'proportions': [0.0, 1.0]}
    """
    return DecileBins.fit(values, bins, distinct=False).to_json()
