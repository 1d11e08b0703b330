"""Batch-hard triplet loss (Hermans et al. 2017) on any distance matrix; DuATM's l0 (Sec. 3.3)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class TripletMining(NamedTuple):
    """The hardest positive and negative distance of every anchor that has both."""

    hardest_positive: Tensor  # (A,)
    hardest_negative: Tensor  # (A,)
    anchors: Tensor  # (A,) indices into the batch


def mine_batch_hard(dist: Tensor, pids: Tensor) -> TripletMining:
    """For each anchor: its farthest same-identity sample and its closest other-identity sample.

    Anchors without a positive (identity seen once) or without a negative are left out.
    """
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"dist must be a square (B, B) matrix; got {tuple(dist.shape)}")
    if pids.shape != (dist.shape[0],):
        raise ValueError(f"pids must have shape ({dist.shape[0]},); got {tuple(pids.shape)}")
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(len(pids), dtype=torch.bool, device=dist.device)
    positive = same & ~eye
    negative = ~same
    anchors = torch.nonzero(positive.any(1) & negative.any(1)).squeeze(1)
    hardest_positive = dist.masked_fill(~positive, float("-inf")).amax(1)
    hardest_negative = dist.masked_fill(~negative, float("inf")).amin(1)
    return TripletMining(hardest_positive[anchors], hardest_negative[anchors], anchors)


def batch_hard_triplet(
    dist: Tensor, pids: Tensor, margin: float = 0.2, *, soft: bool = False
) -> Tensor:
    """mean over anchors of max(0, d(a, hardest p) - d(a, hardest n) + margin), or with
    ``soft`` of softplus(d(a, hardest p) - d(a, hardest n)) (Hermans et al.'s soft margin:
    no margin to set against the distance's scale, and no anchor ever stops pulling)."""
    mined = mine_batch_hard(dist, pids)
    if mined.anchors.numel() == 0:
        raise ValueError(
            "batch-hard triplet loss needs at least one identity with two samples and one other "
            "identity in the batch; use an identity sampler with num_instances >= 2"
        )
    gap = mined.hardest_positive - mined.hardest_negative
    if soft:
        return F.softplus(gap).mean()
    return torch.relu(gap + margin).mean()
