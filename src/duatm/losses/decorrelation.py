"""De-correlation loss l1 (Sec. 3.3): pushes the elements of a sequence apart."""

from __future__ import annotations

import torch
from torch import Tensor


def decorrelation_loss(sequences: Tensor) -> Tensor:
    """(1/S^2) ||I - X X^T||_F^2 per sequence (rows of X are the unit elements), batch mean."""
    if sequences.dim() != 3:
        raise ValueError(f"sequences must have shape (B, S, D); got {tuple(sequences.shape)}")
    length = sequences.shape[1]
    gram = sequences @ sequences.transpose(1, 2)
    eye = torch.eye(length, device=sequences.device, dtype=gram.dtype)
    return (eye - gram).square().sum((1, 2)).mean() / length**2
