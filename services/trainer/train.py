"""Training: seeded mini-batch Adam on cross-entropy, on CPU, in seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace

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
    # The most optimiser steps: a refresh on thousands of rows needs fewer epochs, not a minute.
    max_steps: int = 1500
    # Quantiles per feature whose thresholds the net sees as 0/1 steps (model.py); 0 or 1: none.
    quantiles: int = 32

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
                or params.min_steps < 0 or params.max_steps < 1 or params.quantiles < 0):
            raise InvalidParams(f"training params out of range: {params}")
        return params

    def as_strings(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Trained:
    model: MLPClassifier
    seconds: float
    final_loss: float


def train(x: np.ndarray, y: np.ndarray, n_classes: int, params: TrainParams,
          superseded: Callable[[], bool] = lambda: False) -> Trained:
    """The model trained on (x, y); `superseded` is asked after every epoch and stops it (Superseded)."""
    started = time.perf_counter()
    torch.manual_seed(params.seed)
    thresholds = quantile_thresholds(x, params.quantiles) if params.quantiles > 1 else None
    model = MLPClassifier(x.mean(axis=0), x.std(axis=0), n_classes, params.hidden, thresholds)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    shuffle = torch.Generator().manual_seed(params.seed)
    model.train()
    final_loss = float("nan")
    for _ in range(epochs_for(len(features), params)):
        for batch in torch.randperm(len(features), generator=shuffle).split(params.batch_size):
            optimiser.zero_grad()
            loss = loss_fn(model.logits(features[batch]), labels[batch])
            loss.backward()
            optimiser.step()
        final_loss = loss.item()
        if superseded():
            raise Superseded(f"a newer request of the model came after {time.perf_counter() - started:.1f}s of training")
    model.eval()
    seconds = time.perf_counter() - started
    log.info("trained", extra={"rows": len(x), "seconds": round(seconds, 3), "loss": round(final_loss, 4)})
    return Trained(model, seconds, final_loss)


def epochs_for(rows: int, params: TrainParams) -> int:
    """`params.epochs`, or more where that many would take fewer than `params.min_steps` steps,
    or fewer (one at least) where they would take more than `params.max_steps`.

    >>> epochs_for(240, TrainParams()), epochs_for(2000, TrainParams()), epochs_for(8000, TrainParams())
    (100, 20, 12)
    """
    batches = max(1, -(-rows // params.batch_size))
    epochs = max(params.epochs, -(-params.min_steps // batches))
    return max(1, min(epochs, params.max_steps // batches))
