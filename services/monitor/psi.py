"""Population stability index (PSI) of recent values against a reference histogram.

The reference is what the trainer stored in metadata.json for each feature:
``{"edges": [b0, ..., bk], "proportions": [p1, ..., pk]}`` — k bins of the
training data. A value falls in bin ``i`` when ``edges[i] <= v < edges[i+1]``
(the last bin also holds ``bk``), which is numpy.histogram's rule; values below
``b0`` or above ``bk`` count in the first or last bin, because a shift out of
the training range is exactly what PSI must see.

    PSI = sum_i (current_i - reference_i) * ln(current_i / reference_i)

Rule of thumb: < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 a major shift.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# Empty bins would make ln(0); proportions are floored at this instead.
EPSILON = 1e-4


@dataclass(frozen=True)
class Bins:
    """A feature's reference. With `categories` (ascending) it is categorical: proportion i is
    the share of categories[i] and the edges are the midpoints between them (see categorical.py).

    >>> Bins.from_json({"edges": [0, 0.5, 1], "proportions": [0.4, 0.6], "categories": [0, 1]}).categorical
    True
    """
    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    categories: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.proportions) + 1 or not self.proportions:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) - 1} proportions, "
                             f"got {len(self.proportions)}")
        if self.categories and len(self.categories) != len(self.proportions):
            raise ValueError(f"{len(self.categories)} categories for {len(self.proportions)} proportions")

    @property
    def categorical(self) -> bool:
        return bool(self.categories)

    @classmethod
    def from_json(cls, value: Mapping[str, Sequence[float]]) -> "Bins":
        return cls(tuple(float(e) for e in value["edges"]), tuple(float(p) for p in value["proportions"]),
                   tuple(float(c) for c in value.get("categories") or ()))

    def index(self, value: float) -> int:
        """The bin `value` falls in.

        >>> Bins((0.0, 1.0, 2.0), (0.5, 0.5)).index(1.0), Bins((0.0, 1.0, 2.0), (0.5, 0.5)).index(9.0)
        (1, 1)
        """
        return bisect_right(self.edges, value, 1, len(self.edges) - 1) - 1


def psi(reference: Sequence[float], current: Sequence[float], epsilon: float = EPSILON) -> float:
    """PSI between two proportion vectors over the same bins.

    >>> psi([0.5, 0.5], [0.5, 0.5])
    0.0
    >>> round(psi([0.5, 0.5], [0.9, 0.1]), 3)
    0.879
    """
    total = 0.0
    for ref, cur in zip(reference, current, strict=True):
        ref, cur = max(ref, epsilon), max(cur, epsilon)
        total += (cur - ref) * math.log(cur / ref)
    return total


def reference_bins(values: Sequence[float], bins: int = 10) -> dict[str, list[float]]:
    """Decile (by default) edges of `values` and the share of values in each bin:
    the shape metadata.json's "reference" holds, computed the way `Bins.index` reads it.

    >>> reference_bins([1, 2, 3, 4], bins=2)
    {'edges': [1.0, 2.5, 4.0], 'proportions': [0.5, 0.5]}
    """
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("no values to build a reference from")
    n = len(ordered)

    def quantile(q: float) -> float:  # linear interpolation, numpy's default
        position = q * (n - 1)
        low = math.floor(position)
        high = min(low + 1, n - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    edges = [quantile(i / bins) for i in range(bins + 1)]
    counts = [0] * bins
    reference = Bins(tuple(edges), tuple([0.0] * bins))
    for v in ordered:
        counts[reference.index(v)] += 1
    return {"edges": edges, "proportions": [c / n for c in counts]}


class RollingHistogram:
    """Counts of the last `window` values per reference bin, updated in O(log k) per value.

    >>> h = RollingHistogram(Bins((0.0, 1.0, 2.0), (0.5, 0.5)), window=4)
    >>> h.extend([0.2, 0.4, 1.5, 1.6, 1.7])  # the 0.2 has left the window
    >>> h.proportions(), h.count
    ([0.25, 0.75], 4)
    >>> round(h.psi(), 3)
    0.275
    """

    def __init__(self, reference: Bins, window: int) -> None:
        self.reference = reference
        self._recent: deque[int] = deque(maxlen=window)
        self._counts = [0] * len(reference.proportions)

    @property
    def count(self) -> int:
        return len(self._recent)

    def add(self, value: float) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._counts[self._recent[0]] -= 1  # the deque drops it on append
        index = self.reference.index(value)
        self._recent.append(index)
        self._counts[index] += 1

    def extend(self, values: Iterable[float]) -> None:
        for value in values:
            self.add(value)

    def proportions(self) -> list[float]:
        n = len(self._recent) or 1
        return [c / n for c in self._counts]

    def psi(self) -> float:
        return psi(self.reference.proportions, self.proportions())
