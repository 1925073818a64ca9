"""The classifier: an MLP with its standardisation and softmax inside the graph,
so the exported ONNX model takes raw feature values and returns probabilities."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class MLPClassifier(nn.Module):
    """features [N, F] (raw) → probabilities [N, C]: standardise → F→H→H→C → softmax."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, n_classes: int, hidden: int = 64) -> None:
        super().__init__()
        n_features = len(mean)
        # Buffers, not parameters: fixed from the training rows and exported as constants.
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        # A constant feature would divide by zero; scaling it by 1 leaves it centred at 0.
        self.register_buffer("std", torch.as_tensor(np.where(std > 1e-12, std, 1.0), dtype=torch.float32))
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features), dim=-1)
