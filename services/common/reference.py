"""The training-data reference: the contract between the trainer, which writes it into a model
version's metadata.json, and the monitor, which compares live traffic against it.

Its layout in metadata.json (models already registered carry it, so it stays as it is):

    "reference": {feature: {"edges": [b0, ..., bk], "proportions": [p1, ..., pk]}      DecileBins
                  feature: {"edges": [...], "proportions": [...], "categories": [...]}  CategoricalShares
    "scores_reference": {"edges": [...], "proportions": [...]}  the positive-class score: DecileBins

A numeric feature is kept as the shares of its training values in decile bins. The edges are the
distinct deciles, so a feature with few values gets fewer bins; a constant gets one bin, [b, b].

A categorical feature (`is_categorical`: integer-valued, at most `MAX_CATEGORIES` distinct values)
is kept as its categories, ascending, and their shares; its "edges" are the midpoints between the
categories, so a reader that predates categories reads it as a histogram of one bin per category.

The binning rule — the trainer counts its shares with it, the monitor bins live values with it:

* numeric (`bin_indices`): bin i holds edges[i] <= x < edges[i+1], the last bin also holds
  x == bk, values beyond either end (a shift out of the training range) fall in the end bins,
  NaN in the last: ``np.searchsorted(edges[1:-1], x, side="right")``;
* categorical (`category_indices`): a value's category, or for anything else — a value the
  training data never had, NaN — one more bucket, *unseen*, index len(categories), share 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

import numpy as np

# A feature whose training values are all integers and take at most this many distinct
# values is categorical (bools, codes, small counts), unless the trainer is told otherwise.
MAX_CATEGORIES = 20
DECILES = 10


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


def bin_indices(edges: Sequence[float] | np.ndarray, values) -> np.ndarray:
    """The numeric binning rule: each value's bin among `edges` (k + 1 edges, k bins).

    >>> bin_indices([0.0, 1.0, 2.0, 3.0], [-5, 0, 0.99, 1, 2.5, 3, 99, np.nan]).tolist()
    [0, 0, 0, 1, 2, 2, 2, 2]
    >>> bin_indices([0.0, 1.0, 1.0, 2.0], [0.5, 1.0, 1.5]).tolist()  # a repeated edge: bin 1 stays empty
    [0, 2, 2]
    """
    return np.searchsorted(np.asarray(edges, dtype=np.float64)[1:-1], np.asarray(values, dtype=np.float64),
                           side="right")


def category_indices(categories: Sequence[float] | np.ndarray, values) -> np.ndarray:
    """The categorical binning rule: each value's index in `categories` (ascending), or
    len(categories), the unseen bucket, for any other value (NaN included).

    >>> category_indices(np.array([0.0, 1.0, 5.0]), np.array([5, 1, 2, np.nan, 0, -1])).tolist()
    [2, 1, 3, 3, 0, 3]
    """
    categories = np.asarray(categories, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    k = len(categories)
    index = np.searchsorted(categories, values)
    hit = categories[np.minimum(index, k - 1)] == values
    return np.where(hit, index, k)


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _as_floats(reference, *fields: str) -> None:
    """A frozen reference's fields as tuples of floats, whatever sequence it was given."""
    for name in fields:
        object.__setattr__(reference, name, _floats(getattr(reference, name)))


def _training_values(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not values.size:
        raise ValueError("no values to build a reference from")
    return values


@dataclass(frozen=True)
class DecileBins:
    """A numeric feature's reference: k bins (k + 1 edges) and the share of training values in each.

    >>> bins = DecileBins.fit([1, 2, 3, 4], bins=2)
    >>> bins, bins.to_json()
    (DecileBins(edges=(1.0, 2.5, 4.0), proportions=(0.5, 0.5)), {'edges': [1.0, 2.5, 4.0], 'proportions': [0.5, 0.5]})
    >>> bins.index(2.5), bins.indices([-1, 9]).tolist(), DecileBins.fit([3, 3, 3])
    (1, [0, 1], DecileBins(edges=(3.0, 3.0), proportions=(1.0,)))
    """

    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    categorical: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _as_floats(self, "edges", "proportions")
        if len(self.edges) != len(self.proportions) + 1 or not self.proportions:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) - 1} proportions, "
                             f"got {len(self.proportions)}")

    @classmethod
    def fit(cls, values, bins: int = DECILES, *, distinct: bool = True) -> "DecileBins":
        """The quantile bins (deciles by default) of `values` and their shares. `distinct`: repeated
        quantiles are merged into one edge (the trainer's reference); else there are always `bins`
        bins, some of them empty."""
        values = _training_values(values)
        edges = np.quantile(values, np.linspace(0.0, 1.0, bins + 1))
        if distinct:
            edges = np.unique(edges)
        if len(edges) == 1:  # a constant: one bin holding everything
            return cls((edges[0], edges[0]), (1.0,))
        counts = np.bincount(bin_indices(edges, values), minlength=len(edges) - 1)
        return cls(_floats(edges), _floats(counts / len(values)))

    def index(self, value: float) -> int:
        return int(bin_indices(self.edges, value))

    def indices(self, values) -> np.ndarray:
        return bin_indices(self.edges, values)

    def to_json(self) -> dict[str, list[float]]:
        return {"edges": list(self.edges), "proportions": list(self.proportions)}

    @classmethod
    def from_json(cls, value: Mapping[str, Sequence[float]]) -> "DecileBins":
        if value.get("categories"):
            raise ValueError("a categorical reference (it lists categories): read it with reference_from_json")
        return cls(_floats(value["edges"]), _floats(value["proportions"]))


@dataclass(frozen=True)
class CategoricalShares:
    """A categorical feature's reference: its categories (ascending) and the share of each.

    >>> shares = CategoricalShares.fit([2, 0, 2, 2.0])
    >>> shares, shares.edges
    (CategoricalShares(categories=(0.0, 2.0), proportions=(0.25, 0.75)), (0.0, 1.0, 2.0))
    >>> shares.to_json()
    {'edges': [0.0, 1.0, 2.0], 'proportions': [0.25, 0.75], 'categories': [0.0, 2.0]}
    >>> shares.indices([2, 1, np.nan]).tolist(), CategoricalShares.fit([1, 1.0]).edges
    ([1, 2, 2], (1.0, 1.0))
    """

    categories: tuple[float, ...]
    proportions: tuple[float, ...]
    categorical: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _as_floats(self, "categories", "proportions")
        if len(self.categories) != len(self.proportions) or not self.proportions:
            raise ValueError(f"{len(self.categories)} categories for {len(self.proportions)} proportions")

    @classmethod
    def fit(cls, values) -> "CategoricalShares":
        values = _training_values(values)
        categories, counts = np.unique(values, return_counts=True)
        return cls(_floats(categories), _floats(counts / len(values)))

    @property
    def edges(self) -> tuple[float, ...]:
        """The midpoints between the categories, framed by the first and the last: one bin per
        category for a reader that predates categories."""
        c = np.asarray(self.categories)
        return _floats(np.concatenate([c[:1], (c[1:] + c[:-1]) / 2, c[-1:]]))

    def index(self, value: float) -> int:
        return int(category_indices(self.categories, value))

    def indices(self, values) -> np.ndarray:
        return category_indices(self.categories, values)

    def to_json(self) -> dict[str, list[float]]:
        return {"edges": list(self.edges), "proportions": list(self.proportions),
                "categories": list(self.categories)}

    @classmethod
    def from_json(cls, value: Mapping[str, Sequence[float]]) -> "CategoricalShares":
        return cls(_floats(value["categories"]), _floats(value["proportions"]))


FeatureReference: TypeAlias = DecileBins | CategoricalShares


def reference_from_json(value: Mapping[str, Sequence[float]]) -> FeatureReference:
    """A feature's reference as metadata.json keeps it: categorical when it lists categories.

    >>> reference_from_json({"edges": [0, 0.5, 1], "proportions": [0.4, 0.6], "categories": [0, 1]}).categorical
    True
    """
    return CategoricalShares.from_json(value) if value.get("categories") else DecileBins.from_json(value)


def fit_reference(values, categorical: bool | None = None) -> FeatureReference:
    """A feature's reference from its training values; categorical by `is_categorical` unless told."""
    if categorical is None:
        categorical = is_categorical(values)
    return CategoricalShares.fit(values) if categorical else DecileBins.fit(values)


@dataclass(frozen=True)
class TrainingReference:
    """metadata.json's "reference" (per feature) and "scores_reference" (the positive-class score).

    >>> ref = TrainingReference({"code": CategoricalShares((0, 1), (0.5, 0.5))}, DecileBins((0, 1), (1,)))
    >>> metadata = ref.to_metadata()
    >>> metadata["reference"]["code"]["edges"], metadata["scores_reference"]
    ([0.0, 0.5, 1.0], {'edges': [0.0, 1.0], 'proportions': [1.0]})
    >>> TrainingReference.from_metadata(metadata) == ref
    True
    """

    features: Mapping[str, FeatureReference]
    scores: DecileBins | None = None

    def to_metadata(self) -> dict[str, dict]:
        metadata: dict[str, dict] = {"reference": {name: r.to_json() for name, r in self.features.items()}}
        if self.scores is not None:
            metadata["scores_reference"] = self.scores.to_json()
        return metadata

    @classmethod
    def from_metadata(cls, metadata: Mapping) -> "TrainingReference":
        """What the metadata holds; a version without a reference (an older trainer) has none."""
        scores = metadata.get("scores_reference")
        return cls({name: reference_from_json(value) for name, value in (metadata.get("reference") or {}).items()},
                   DecileBins.from_json(scores) if scores else None)
