"""Cross-entropy on randomly pooled sequences, DuATM's l2 (Sec. 3.3).

Each training sequence is collapsed by a random convex combination of its elements, so that
every element (not just their average) has to carry identity information.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def random_pooling_weights(
    batch: int,
    length: int,
    drop_prob: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(batch, length) weights: U[0, 1], each zeroed with probability ``drop_prob``, summing to 1.

    A row whose weights were all dropped falls back to uniform weights.
    """
    if not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"drop_prob must be in [0, 1); got {drop_prob}")
    weights = torch.rand(batch, length, device=device, generator=generator)
    kept = torch.rand(batch, length, device=device, generator=generator) >= drop_prob
    weights = weights * kept
    total = weights.sum(1, keepdim=True)
    uniform = torch.full_like(weights, 1.0 / length)
    return torch.where(
        total > 0, weights / total.clamp_min(torch.finfo(weights.dtype).tiny), uniform
    )


class RandomPoolingCrossEntropy(nn.Module):
    """Softmax cross-entropy of ``classifier(sum_i w_i x^i)`` with random weights w."""

    def __init__(self, drop_prob: float = 0.2) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1); got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(
        self,
        sequences: Tensor,
        classifier: nn.Module,
        pids: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        batch, length, _ = sequences.shape
        weights = random_pooling_weights(
            batch, length, self.drop_prob, device=sequences.device, generator=generator
        )
        pooled = (weights.to(sequences.dtype).unsqueeze(-1) * sequences).sum(1)
        return F.cross_entropy(classifier(pooled), pids)
