"""Classifier heads for the training-only cross-entropy on randomly pooled sequences (l2).

The paper feeds the pooled vector z = sum_i w_i x^i straight into one FC layer. Because every
x^i is a unit vector, |z| <= 1, and |z| is largest when all elements point the same way: with a
plain linear head under weight decay, the cheapest way to make logits large is to collapse the
sequence onto one vector, which leaves the dual attention nothing to align (see
docs/design.md#ce-head). The other heads take the length of z out of the logits:

* ``paper``: ``Linear(D, C)`` on z, as published.
* ``bnneck``: ``BatchNorm1d(D)`` (no shift) then a bias-free ``Linear(D, C)``; the batch
  statistics rescale z, as in the BNNeck of modern re-id baselines.
* ``cosine``: ``scale * cos(z, w_c)`` for every class c: z and the class weights are
  normalised, so only the direction of z matters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CE_HEADS = ("paper", "bnneck", "cosine")


class BNNeckClassifier(nn.Module):
    """BatchNorm (scale only) then a bias-free linear layer."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)
        self.norm.bias.requires_grad_(False)  # a shift would only move every logit together
        self.fc = nn.Linear(dim, num_classes, bias=False)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.fc(self.norm(pooled))


class CosineClassifier(nn.Module):
    """Logits ``scale * cos(z, w_c)``: normalised features against normalised class weights."""

    def __init__(self, dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = scale
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"

    def forward(self, pooled: Tensor) -> Tensor:
        return self.scale * F.normalize(pooled, dim=-1) @ F.normalize(self.weight, dim=-1).T


def build_classifier(kind: str, dim: int, num_classes: int, *, scale: float = 16.0) -> nn.Module:
    """The CE head named ``kind`` (one of :data:`CE_HEADS`) from D features to C classes."""
    if kind == "paper":
        return nn.Linear(dim, num_classes)
    if kind == "bnneck":
        return BNNeckClassifier(dim, num_classes)
    if kind == "cosine":
        return CosineClassifier(dim, num_classes, scale)
    raise ValueError(f"ce head must be one of {CE_HEADS}; got {kind!r}")
