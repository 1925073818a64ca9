"""Labelled drifting streams for bench/adaptation.py, from river's synthetic generators.

Each stream is a sequence of (features, label) with its drifts at known events, and the
stream schema the loop needs to carry it (numeric fields only, no entity features, so the
feature vector the loop serves is the event's own fields in schema order, the same values
river's learners see). Drift positions are fractions of the stream's length, so `--quick`
(fewer events) keeps their shape:

* `sea`: SEA, abrupt, its threshold changed twice (variant 0 → 3 → 1: 8 → 9.5 → 9), 10 % noise;
* `agrawal_abrupt`: Agrawal `classification_function` 1 → 3 (river's 0-based index), abrupt;
* `agrawal_gradual`: Agrawal 4 → 7 through `ConceptDriftStream`, the transition 4,000 events wide
  (`Drift.start`/`end` bracket the sigmoid's 2 %–98 % points);
* `stagger`: STAGGER, recurring: function 0 → 1 → 2 → 0, abrupt;
* `hyperplane`: 10-dimensional Hyperplane, incremental: `mag_change` 0.001 on two features over
  the middle third of the stream (0 before and after), 5 % noise;
* `rbf`: RandomRBFDrift, 2 classes, 10 features, 50 centroids all moving at `change_speed`
  0.0001 over the middle third;
* `*_stationary`: SEA, Agrawal and Hyperplane with no drift at all (the false-alarm runs).

Abrupt drifts switch generators (itertools.chain; ConceptDriftStream overflows for abrupt drift
far into a stream, FIELD-NOTES); the incremental ones set the generator's own speed attribute
while it runs, which river reads at every sample.

>>> s = make("stagger", 400)
>>> [d.start for d in s.drifts], s.concept_at(0), s.concept_at(399)
([100, 200, 300], 0, 0)
>>> rows = list(s.samples())
>>> len(rows), sorted(rows[0][0]) == sorted(s.features)
(400, True)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

os.environ.setdefault("RIVER_DATA", os.path.join(os.path.expanduser("~"), ".cache", "driftline", "river"))

from river.datasets import synth  # noqa: E402

GRADUAL_WIDTH = 4000
# ConceptDriftStream's sigmoid 1 / (1 + e^(-4 (t - p) / w)) is at 2 % at p - w/2 and 98 % at p + w/2.
_HALF = GRADUAL_WIDTH // 2


@dataclass(frozen=True)
class Drift:
    start: int   # first event of the change
    end: int     # first event wholly of the new concept (== start for an abrupt drift)
    kind: str    # abrupt, gradual, incremental


@dataclass(frozen=True)
class Field:
    name: str
    type: str    # number or integer
    min: float
    max: float


@dataclass
class AdaptationStream:
    name: str
    n: int
    fields: tuple[Field, ...]
    drifts: tuple[Drift, ...]
    concepts: tuple[int, ...]       # the concept of each stretch (len(drifts) + 1), for recurrence
    _make: Callable[[], Iterator[tuple[dict, int]]]
    description: str = ""

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def concept_at(self, index: int) -> int:
        return self.concepts[sum(index >= d.end for d in self.drifts)]

    def samples(self) -> Iterator[tuple[dict[str, float], int]]:
        """(features by name, label) for every event, the same on every call."""
        for x, y in itertools.islice(self._make(), self.n):
            # Named generators (Agrawal, STAGGER) by name, numbered ones (SEA, Hyperplane, RBF) by position.
            keys = [f.name if f.name in x else key for f, key in zip(self.fields, x)]
            yield {f.name: float(x[k]) for f, k in zip(self.fields, keys)}, int(y)

    def schema(self) -> dict:
        """The stream schema file the loop reads (DRIFTLINE_STREAMS_DIR/<name>.json)."""
        return {
            "stream": self.name, "model": f"adapt-{self.name}".replace("_", "-"),
            "description": self.description,
            "id_field": "event_id", "entity_field": "entity_id", "time_field": "event_time", "label_field": "label",
            "label": {"type": "integer", "required": False, "min": 0, "max": 1},
            "fields": [{"name": f.name, "type": f.type, "required": True, "min": f.min, "max": f.max}
                       for f in self.fields],
            "entity_features": [],
        }


def _abrupt(generators: list, positions: list[int], n: int) -> Iterator:
    bounds = [0, *positions, n]
    return itertools.chain.from_iterable(g.take(b - a) for g, a, b in zip(generators, bounds, bounds[1:]))


def _ramped(generator, attribute: str, speed: float, start: int, end: int) -> Iterator:
    """The generator with `attribute` (its drift speed) at `speed` for events [start, end), 0 elsewhere."""
    setattr(generator, attribute, 0.0)
    for i, sample in enumerate(generator):
        yield sample
        if i + 1 == start:
            setattr(generator, attribute, speed)
        elif i + 1 == end:
            setattr(generator, attribute, 0.0)


def _numbered(prefix: str, k: int, lo: float, hi: float) -> tuple[Field, ...]:
    return tuple(Field(f"{prefix}{i}", "number", lo, hi) for i in range(k))


AGRAWAL_FIELDS = (
    Field("salary", "number", 20000, 150000), Field("commission", "number", 0, 85000),
    Field("age", "integer", 20, 80), Field("elevel", "integer", 0, 4), Field("car", "integer", 1, 20),
    Field("zipcode", "integer", 0, 8), Field("hvalue", "number", 0, 1200000),
    Field("hyears", "integer", 1, 30), Field("loan", "number", 0, 500000),
)
STAGGER_FIELDS = (Field("size", "integer", 0, 2), Field("color", "integer", 0, 2), Field("shape", "integer", 0, 2))


def make(name: str, n: int = 60_000, seed: int = 42) -> AdaptationStream:
    third, half, quarter = n // 3, n // 2, n // 4
    if name in ("sea", "sea_stationary"):
        variants = (0, 3, 1) if name == "sea" else (0,)
        positions = [third, 2 * third][:len(variants) - 1]
        return AdaptationStream(
            name, n, _numbered("x", 3, 0, 10), tuple(Drift(p, p, "abrupt") for p in positions), variants,
            lambda: _abrupt([synth.SEA(variant=v, noise=0.1, seed=seed + i) for i, v in enumerate(variants)],
                            positions, n),
            "SEA, threshold 8 → 9.5 → 9" if name == "sea" else "SEA, threshold 8, no drift")
    if name in ("agrawal_abrupt", "agrawal_stationary"):
        functions = (1, 3) if name == "agrawal_abrupt" else (1,)
        positions = [half][:len(functions) - 1]
        return AdaptationStream(
            name, n, AGRAWAL_FIELDS, tuple(Drift(p, p, "abrupt") for p in positions), functions,
            lambda: _abrupt([synth.Agrawal(classification_function=f, seed=seed + i) for i, f in enumerate(functions)],
                            positions, n),
            "Agrawal function 1 → 3, abrupt" if name == "agrawal_abrupt" else "Agrawal function 1, no drift")
    if name == "agrawal_gradual":
        assert 4 * half / GRADUAL_WIDTH < 700, "ConceptDriftStream's sigmoid would overflow"
        return AdaptationStream(
            name, n, AGRAWAL_FIELDS, (Drift(half - _HALF, half + _HALF, "gradual"),), (4, 7),
            lambda: iter(synth.ConceptDriftStream(
                stream=synth.Agrawal(classification_function=4, seed=seed),
                drift_stream=synth.Agrawal(classification_function=7, seed=seed + 1),
                position=half, width=GRADUAL_WIDTH, seed=seed)),
            f"Agrawal function 4 → 7, gradual over {GRADUAL_WIDTH:,} events")
    if name == "stagger":
        functions = (0, 1, 2, 0)
        positions = [quarter, half, 3 * quarter]
        return AdaptationStream(
            name, n, STAGGER_FIELDS, tuple(Drift(p, p, "abrupt") for p in positions), functions,
            lambda: _abrupt([synth.STAGGER(classification_function=f, seed=seed + i) for i, f in enumerate(functions)],
                            positions, n),
            "STAGGER, recurring: function 0 → 1 → 2 → 0")
    if name in ("hyperplane", "hyperplane_stationary"):
        drifting = name == "hyperplane"
        drifts = (Drift(third, 2 * third, "incremental"),) if drifting else ()
        return AdaptationStream(
            name, n, _numbered("x", 10, 0, 1), drifts, (0, 1) if drifting else (0,),
            lambda: _ramped(synth.Hyperplane(seed=seed, n_features=10, n_drift_features=2, noise_percentage=0.05),
                            "mag_change", 0.001 if drifting else 0.0, third, 2 * third),
            "Hyperplane, 10 features, mag_change 0.001 on 2 over the middle third" if drifting
            else "Hyperplane, 10 features, no drift")
    if name == "rbf":
        return AdaptationStream(
            # RBF points scatter around centroids in [0, 1] (seen: -2.4 to 2.9 over 60,000 events)
            name, n, _numbered("x", 10, -10, 10), (Drift(third, 2 * third, "incremental"),), (0, 1),
            lambda: _ramped(synth.RandomRBFDrift(seed_model=seed, seed_sample=seed + 1, n_classes=2, n_features=10,
                                                 n_centroids=50, n_drift_centroids=50), "change_speed",
                            1e-4, third, 2 * third),
            "RandomRBFDrift, 2 classes, 10 features, 50 centroids moving at 1e-4 over the middle third")
    raise ValueError(f"unknown stream {name!r}; known: {', '.join(DRIFTING + STATIONARY)}")


DRIFTING = ("sea", "agrawal_abrupt", "agrawal_gradual", "stagger", "hyperplane", "rbf")
STATIONARY = ("sea_stationary", "agrawal_stationary", "hyperplane_stationary")
QUICK = ("agrawal_abrupt", "stagger")
