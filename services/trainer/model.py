"""The classifier: an MLP with its standardisation and softmax inside the graph,
so the exported ONNX model takes raw feature values and returns probabilities.

Beside the standardised values the net sees each feature against its training quantiles,
as 0/1 steps (x > threshold): a concept that is an interval of a feature (Agrawal's age
and salary bands, a category's code) is then one linear unit, where from raw values it
takes many more rows to carve out. The thresholds are constants of the graph.

>>> x = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]], np.float32)
>>> quantile_thresholds(x, 4)
array([[0.75, 1.5 , 2.25],
       [1.  ,  inf,  inf]], dtype=float32)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def quantile_thresholds(x: np.ndarray, quantiles: int) -> np.ndarray:
    """(F, quantiles - 1) float32: each feature's distinct inner quantiles of `x`, padded with +inf
    (a step that never turns on) so that every feature has as many."""
    inner = np.quantile(x, np.arange(1, quantiles) / quantiles, axis=0).T
    thresholds = np.full(inner.shape, np.inf, np.float32)
    for f, row in enumerate(inner):
        distinct = np.unique(row.astype(np.float32))
        thresholds[f, :len(distinct)] = distinct
    return thresholds


class MLPClassifier(nn.Module):
    """features [N, F] (raw) → probabilities [N, C]: [standardise, steps over thresholds] →
    H → H → C → softmax. `thresholds` (F, K) or None for the standardised values alone."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, n_classes: int, hidden: int = 64,
                 thresholds: np.ndarray | None = None) -> None:
        super().__init__()
        n_features = len(mean)
        # Buffers, not parameters: fixed from the training rows and exported as constants.
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        # A constant feature would divide by zero; scaling it by 1 leaves it centred at 0.
        self.register_buffer("std", torch.as_tensor(np.where(std > 1e-12, std, 1.0), dtype=torch.float32))
        if thresholds is None:
            thresholds = np.zeros((n_features, 0), np.float32)
        self.register_buffer("thresholds", torch.as_tensor(thresholds, dtype=torch.float32))
        self.net = nn.Sequential(
            nn.Linear(n_features * (1 + self.thresholds.shape[1]), hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        standardised = (features - self.mean) / self.std
        if not self.thresholds.shape[1]:
            return self.net(standardised)
        steps = (features.unsqueeze(-1) > self.thresholds).float().flatten(1)
        return self.net(torch.cat([standardised, steps], dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features), dim=-1)
