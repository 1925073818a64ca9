"""Training: seeded mini-batch Adam on cross-entropy, its learning rate decayed linearly to 0, on
CPU, in seconds. Two nets are candidates: one that sees each feature's 0/1 quantile steps too
(model.py), which learns a band of a feature (Agrawal's salary bands) from few rows, and one that
sees the standardised values alone, which learns a smooth boundary (SEA's threshold on a sum,
Hyperplane, RBF) 1–4 points better from the same rows, the steps being noise to it there. Which
suits a window is measured, not guessed: both train on all but a random share of its rows, and
the one that scores better on that share is trained again on every row. A request may name the
net instead (`quantile_steps` 1 or 0), as a drift retrain does with production's: it is the
first answer to a change, and half a second of choosing is half a second more of the drift.

>>> rng = np.random.default_rng(0)
>>> x = rng.random((600, 2)).astype(np.float32)
>>> smooth, banded = (x.sum(axis=1) > 1).astype(np.int64), ((x[:, 0] > 0.3) & (x[:, 0] < 0.4)).astype(np.int64)
>>> [train(x, y, 2, TrainParams(min_steps=200)).steps for y in (smooth, banded)]
[False, True]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
from torch import nn

from .dataset import Superseded
from .model import MLPClassifier, quantile_thresholds

log = logging.getLogger(__name__)


class InvalidParams(ValueError):
    """A request's training params cannot be used."""


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters; the service takes its defaults from TrainerSettings."""

    epochs: int = 20
    batch_size: int = 64
    hidden: int = 64
    learning_rate: float = 3e-3
    seed: int = 0
    # The fewest optimiser steps: a window of a few hundred rows (the first retrain after a
    # change) is a handful of batches an epoch, and 20 epochs of it stop far short of a fit.
    min_steps: int = 400
    # But no more epochs than this for it: 400 steps of a 150-row window are 134 epochs, which
    # overfit it (SEA, Hyperplane: 40 score better) and delay the change's first answer 3x as long.
    min_steps_max_epochs: int = 40
    # The most optimiser steps: a refresh on thousands of rows needs fewer epochs, not a minute.
    max_steps: int = 1500
    # Quantiles per feature whose thresholds the steps net sees as 0/1 steps (model.py); 0 or 1: no
    # steps net, the smooth one alone.
    quantiles: int = 32
    # The net: 1 with the quantile steps, 0 without, -1 the better on a held-out share of the rows.
    quantile_steps: int = -1
    # That share; under MIN_SELECTION_ROWS rows of it, the steps net, unchosen.
    selection_share: float = 0.2

    def with_overrides(self, overrides: Mapping[str, str]) -> "TrainParams":
        """Applies a request's params map (strings); an unknown name or a bad value raises InvalidParams."""
        types = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(overrides) - set(types))
        if unknown:
            raise InvalidParams(f"unknown training params {unknown}; known: {sorted(types)}")
        parsed = {}
        for name, text in overrides.items():
            kind = int if types[name] in (int, "int") else float
            try:
                parsed[name] = kind(text)
            except ValueError:
                raise InvalidParams(f"training param {name}={text!r} must be {kind.__name__}") from None
        params = replace(self, **parsed)
        if (params.epochs < 1 or params.batch_size < 1 or params.hidden < 1 or params.learning_rate <= 0
                or params.min_steps < 0 or params.min_steps_max_epochs < 1 or params.max_steps < 1
                or params.quantiles < 0
                or params.quantile_steps not in (-1, 0, 1) or not 0 <= params.selection_share < 1):
            raise InvalidParams(f"training params out of range: {params}")
        return params

    def as_strings(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Trained:
    model: MLPClassifier
    seconds: float
    final_loss: float
    steps: bool                           # the net that sees the quantile steps was chosen
    selection: dict[str, float] = field(default_factory=dict)  # each net's accuracy on the held-out share


# Fewer held-out rows than this cannot tell the nets apart: the steps net is trained, unchosen.
MIN_SELECTION_ROWS = 30


def train(x: np.ndarray, y: np.ndarray, n_classes: int, params: TrainParams,
          superseded: Callable[[], bool] = lambda: False) -> Trained:
    """The model trained on (x, y), the better of the two nets (module docstring); `superseded` is
    asked after every epoch and stops it (Superseded)."""
    started = time.perf_counter()
    steps, selection = _choose_net(x, y, n_classes, params, superseded)
    model, final_loss = _fit(x, y, n_classes, params, steps, superseded)
    seconds = time.perf_counter() - started
    log.info("trained", extra={"rows": len(x), "seconds": round(seconds, 3), "loss": round(final_loss, 4),
                               "steps": steps, "selection": selection})
    return Trained(model, seconds, final_loss, steps, selection)


def _choose_net(x: np.ndarray, y: np.ndarray, n_classes: int, params: TrainParams,
                superseded: Callable[[], bool]) -> tuple[bool, dict[str, float]]:
    """(whether the steps net is the better, each net's held-out accuracy). Each candidate trains
    half the recipe's steps: enough to rank them, at half the cost of the final fit."""
    if params.quantiles <= 1:
        return False, {}
    if params.quantile_steps >= 0:
        return bool(params.quantile_steps), {}
    held = int(len(x) * params.selection_share)
    if held < MIN_SELECTION_ROWS:
        return True, {}
    order = np.random.default_rng(params.seed).permutation(len(x))
    fit_rows, held_rows = order[held:], order[:held]
    quick = replace(params, min_steps=params.min_steps // 2, max_steps=max(1, params.max_steps // 2))
    selection = {}
    for name, steps in (("smooth", False), ("steps", True)):
        model, _ = _fit(x[fit_rows], y[fit_rows], n_classes, quick, steps, superseded)
        with torch.no_grad():
            predicted = model.logits(torch.from_numpy(x[held_rows])).argmax(dim=1).numpy()
        selection[name] = round(float(np.mean(predicted == y[held_rows])), 4)
    # A tie goes to the smooth net: fewer inputs, nothing it needs the steps for.
    return selection["steps"] > selection["smooth"], selection


def _fit(x: np.ndarray, y: np.ndarray, n_classes: int, params: TrainParams, steps: bool,
         superseded: Callable[[], bool]) -> tuple[MLPClassifier, float]:
    """(the net fitted on (x, y), its last batch's loss); with the quantile steps or without."""
    started = time.perf_counter()
    torch.manual_seed(params.seed)
    thresholds = quantile_thresholds(x, params.quantiles) if steps else None
    model = MLPClassifier(x.mean(axis=0), x.std(axis=0), n_classes, params.hidden, thresholds)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    epochs = epochs_for(len(x), params)
    total = epochs * max(1, -(-len(x) // params.batch_size))
    # Linear decay to 0: a constant rate ends on a noisy iterate, and label noise (SEA's 10 %)
    # then moves the boundary by a point of accuracy.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: max(0.0, 1.0 - step / total))
    loss_fn = nn.CrossEntropyLoss()
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    shuffle = torch.Generator().manual_seed(params.seed)
    model.train()
    final_loss = float("nan")
    for _ in range(epochs):
        for batch in torch.randperm(len(features), generator=shuffle).split(params.batch_size):
            optimiser.zero_grad()
            loss = loss_fn(model.logits(features[batch]), labels[batch])
            loss.backward()
            optimiser.step()
            schedule.step()
        final_loss = loss.item()
        if superseded():
            raise Superseded(f"a newer request of the model came after {time.perf_counter() - started:.1f}s of training")
    model.eval()
    return model, final_loss


def epochs_for(rows: int, params: TrainParams) -> int:
    """`params.epochs`, or more where that many would take fewer than `params.min_steps` steps (up
    to `params.min_steps_max_epochs`), or fewer (one at least) where they would take more than
    `params.max_steps`.

    >>> [epochs_for(rows, TrainParams()) for rows in (150, 600, 2000, 8000)]
    [40, 40, 20, 12]
    """
    batches = max(1, -(-rows // params.batch_size))
    epochs = max(params.epochs, min(-(-params.min_steps // batches), params.min_steps_max_epochs))
    return max(1, min(epochs, params.max_steps // batches))
