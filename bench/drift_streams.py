"""Streams with known drift points for bench/drift.py, from river's synthetic generators.

Concept streams give the 0/1 error stream of a *deployed* model — one that learned the
first concept perfectly and is not retrained (the old concept's own labelling function,
so "the model" is exact and cheap) — on labels flipped with probability `noise`:

* SEA (threshold 8 → 9.5), Agrawal (function 0 → 2), STAGGER (function 0 → 1);
* FriedmanDrift (regression): the residual of the first concept's formula, as an error
  when |residual| exceeds its reference 90th percentile (so every detector reads the
  same 0/1 stream; ADWIN and Page-Hinkley could take the residual, DDM and HDDM could not).

Abrupt drift switches generators at `position` (itertools.chain; ConceptDriftStream
overflows for abrupt drift far into a stream, FIELD-NOTES); gradual drift uses
ConceptDriftStream with a `width`-wide sigmoid (4·position/width stays far below 709; the
drift counts from position - width, where 2 % of events are of the new concept), or
FriedmanDrift's own global-and-slow-gradual mode.

Feature streams (Gaussian, 5 features, drift in the first): a mean shift of 0.5σ and a
variance shift to 1.5σ.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import numpy as np
from river.datasets import synth

CONCEPT_KINDS = ("sea", "agrawal", "stagger", "friedman")
FEATURE_KINDS = ("gauss_mean", "gauss_var")


@dataclass
class Stream:
    kind: str
    variant: str       # abrupt, gradual or none
    seed: int
    values: np.ndarray  # (n,) 0/1 errors, or (n, F) feature values
    start: int          # first event of the drift (n when there is none)
    position: int       # the nominal drift position


def _sea_old(x) -> int:
    return int(x[0] + x[1] > 8)


def _make_classifier(kind: str, concept: int, seed: int, noise: float):
    if kind == "sea":
        return synth.SEA(variant={0: 0, 1: 3}[concept], noise=noise, seed=seed), _sea_old
    if kind == "agrawal":
        gen = synth.Agrawal(classification_function={0: 0, 1: 2}[concept], seed=seed)
        old = synth.Agrawal(classification_function=0)._classification_functions[0]
        return gen, lambda x: int(old(*x.values()))
    if kind == "stagger":
        gen = synth.STAGGER(classification_function={0: 0, 1: 1}[concept], seed=seed)
        old = synth.STAGGER(classification_function=0)._functions[0]
        return gen, lambda x: int(old(x["size"], x["color"], x["shape"]))
    raise ValueError(kind)


def concept_stream(kind: str, variant: str, seed: int, n: int, position: int, width: int,
                   noise: float = 0.1) -> Stream:
    if kind == "friedman":
        return _friedman(variant, seed, n, position, width)
    base, old = _make_classifier(kind, 0, seed, noise if kind == "sea" else 0.0)
    after, _ = _make_classifier(kind, 1, seed + 7919, noise if kind == "sea" else 0.0)
    if variant == "none":
        source, start = base.take(n), n
    elif variant == "abrupt":
        source, start = itertools.chain(base.take(position), after.take(n - position)), position
    else:
        source = synth.ConceptDriftStream(stream=base, drift_stream=after, position=position, width=width,
                                          seed=seed).take(n)
        start = position - width  # the sigmoid's 2 % point: 1 / (1 + e^4)
    flip = random.Random(seed * 31 + 1)
    errors = np.empty(n, dtype=np.int8)
    for i, (x, y) in enumerate(source):
        y = int(y)
        if kind != "sea" and flip.random() < noise:  # SEA flips its own labels
            y = 1 - y
        errors[i] = int(old(x) != y)
    return Stream(kind, variant, seed, errors, start if variant != "none" else n, position)


def _friedman_old(x) -> float:
    return 10 * math.sin(math.pi * x[0] * x[1]) + 20 * (x[2] - 0.5) ** 2 + 10 * x[3] + 5 * x[4]


def _friedman(variant: str, seed: int, n: int, position: int, width: int) -> Stream:
    if variant == "none":
        gen, start = synth.FriedmanDrift(drift_type="gra", position=(10 * n, 20 * n), seed=seed), n
    elif variant == "abrupt":
        gen, start = synth.FriedmanDrift(drift_type="gra", position=(position, 10 * n), seed=seed), position
    else:
        gen = synth.FriedmanDrift(drift_type="gsg", position=(position - width // 2, 10 * n),
                                  transition_window=width, seed=seed)
        start = position - width // 2
    residuals = np.array([abs(y - _friedman_old(x)) for x, y in gen.take(n)])
    # Before the drift the residual is river's N(0, 1) noise: an error is |residual| above its
    # 90th percentile, so the pre-drift error rate is 0.1 exactly (not fitted on the stream).
    threshold = 1.6448536269514722
    return Stream("friedman", variant, seed, (residuals > threshold).astype(np.int8), start, position)


def feature_stream(kind: str, variant: str, seed: int, n: int, position: int, width: int,
                   features: int = 5) -> Stream:
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 1, (n, features))
    if variant == "none":
        return Stream(kind, variant, seed, values, n, position)
    # the share of the new distribution at each event: a step, or a linear ramp over `width`
    t = np.arange(n)
    share = (t >= position).astype(float) if variant == "abrupt" else np.clip((t - (position - width / 2)) / width, 0, 1)
    start = position if variant == "abrupt" else position - width // 2
    drifted = rng.random(n) < share
    if kind == "gauss_mean":
        values[drifted, 0] += 0.5
    else:
        values[drifted, 0] *= 1.5
    return Stream(kind, variant, seed, values, start, position)


def make(kind: str, variant: str, seed: int, n: int, position: int, width: int) -> Stream:
    if kind in FEATURE_KINDS:
        return feature_stream(kind, variant, seed, n, position, width)
    return concept_stream(kind, variant, seed, n, position, width)
