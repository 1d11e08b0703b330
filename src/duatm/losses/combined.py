"""The full DuATM objective l = l0 + lambda1 l1 + lambda2 l2 (Sec. 3.3), with each term for logging."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from duatm.losses.decorrelation import decorrelation_loss
from duatm.losses.random_pooling import RandomPoolingCrossEntropy
from duatm.losses.triplet import batch_hard_triplet


class LossOutput(NamedTuple):
    total: Tensor
    triplet: Tensor
    decorrelation: Tensor
    cross_entropy: Tensor

    def as_floats(self) -> dict[str, float]:
        """Detached Python floats, named for logs and progress bars."""
        return {name: float(value.detach()) for name, value in self._asdict().items()}


class DuATMLoss(nn.Module):
    """Batch-hard triplet on the matcher's B x B distances + de-correlation + pooled cross-entropy."""

    def __init__(
        self,
        margin: float = 0.2,
        lambda1: float = 0.1,
        lambda2: float = 0.5,
        drop_prob: float = 0.2,
        *,
        soft_margin: bool = False,
    ) -> None:
        super().__init__()
        if lambda1 < 0 or lambda2 < 0:
            raise ValueError(f"lambda1 and lambda2 must be >= 0; got {lambda1}, {lambda2}")
        self.margin = margin
        self.soft_margin = soft_margin
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.cross_entropy = RandomPoolingCrossEntropy(drop_prob)

    def forward(
        self, distances: Tensor, sequences: Tensor, pids: Tensor, classifier: nn.Module
    ) -> LossOutput:
        """``distances`` (B, B) from the matcher, ``sequences`` (B, S, D), ``pids`` (B,)."""
        triplet = batch_hard_triplet(distances, pids, self.margin, soft=self.soft_margin)
        decorrelation = decorrelation_loss(sequences)
        cross_entropy = self.cross_entropy(sequences, classifier, pids)
        total = triplet + self.lambda1 * decorrelation + self.lambda2 * cross_entropy
        return LossOutput(total, triplet, decorrelation, cross_entropy)
