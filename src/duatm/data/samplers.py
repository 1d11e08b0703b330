"""P x V identity batches for batch-hard triplet training, splittable across processes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import Sampler


class IdentityBatchSampler(Sampler[list[int]]):
    """Batches of ``num_identities`` (P) distinct identities x ``num_instances`` (V) indices.

    Batch-hard mining needs every anchor to have positives and negatives in its batch. A *pass*
    visits every identity once, in an order shuffled from ``(seed, epoch, pass)``: an identity
    with at least V samples gives V distinct ones; one with fewer gives all of them plus random
    repeats up to V. Consecutive groups of P identities form the batches. When P does not divide
    the number of identities, ``last_batch="fill"`` completes the last group with identities
    drawn from the rest of the pass (every batch full, every identity visited), and ``"short"``
    leaves it smaller.

    An epoch is one pass, or ``batches_per_epoch`` batches taken from consecutive passes (so a
    long epoch keeps drawing new samples instead of repeating a pass).

    It only sees identities, so it batches images and video tracklets alike (paper: P = 10,
    V = 4 images; P = 7, V = 3 tracklets). A tracklet repeated in a batch (an identity with
    fewer than V tracklets) still gives two different training clips, each with its own random
    start and augmentation.

    With ``world_size > 1`` (W processes, each training on its own P x V batch, one optimiser
    step over all of them) a pass is cut into *global* groups of P x W distinct identities,
    each split into W batches of P, and every process takes every W-th batch from ``rank``.
    So one global step sees P x V x W images of P x W distinct identities, no identity is on
    two ranks in the same step, every identity is visited in every pass, and the shares are
    disjoint and equally long. The identity order of a pass is the same for any W; only the
    cut (and so the last group's filling) depends on W. With W = 1 this is the batching above.
    Call :meth:`set_epoch` before each epoch; the batches depend only on seed, epoch and W.
    """

    def __init__(
        self,
        pids: Sequence[int],
        num_identities: int,
        num_instances: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        last_batch: str = "fill",
        batches_per_epoch: int | None = None,
    ) -> None:
        if num_identities < 1 or num_instances < 1:
            raise ValueError(
                f"num_identities and num_instances must be >= 1, "
                f"got {num_identities} and {num_instances}"
            )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}"
            )
        if last_batch not in ("fill", "short"):
            raise ValueError(f"last_batch must be 'fill' or 'short', got {last_batch!r}")
        if last_batch == "short" and world_size > 1:
            raise ValueError("last_batch='short' needs world_size 1: ranks must get equal batches")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1 or None, got {batches_per_epoch}")
        by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            by_pid[int(pid)].append(index)
        self.indices_by_pid: dict[int, np.ndarray] = {
            pid: np.asarray(indices, dtype=np.int64) for pid, indices in sorted(by_pid.items())
        }
        if len(self.indices_by_pid) < num_identities * world_size:
            across = f" on each of {world_size} ranks" if world_size > 1 else ""
            raise ValueError(
                f"{len(self.indices_by_pid)} identities cannot fill one batch of "
                f"{num_identities} identities{across}"
            )
        self.num_identities = num_identities
        self.num_instances = num_instances
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.last_batch = last_batch
        self.batches_per_epoch = batches_per_epoch
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        """Indices per full batch (P x V)."""
        return self.num_identities * self.num_instances

    def batches_per_pass(self) -> int:
        """Batches of one pass over the identities, before the split across ranks (a multiple
        of ``world_size``: a global step never spans two passes)."""
        group = self.num_identities * self.world_size
        return -(-len(self.indices_by_pid) // group) * self.world_size

    def __len__(self) -> int:
        """Batches this rank yields per epoch (= optimiser steps per epoch)."""
        if self.batches_per_epoch is not None:
            return self.batches_per_epoch
        return self.batches_per_pass() // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch``; the same (seed, epoch) gives the same batches."""
        self.epoch = int(epoch)

    def global_batches(self) -> list[list[int]]:
        """All batches of the current epoch, before the split across ranks."""
        needed = len(self) * self.world_size
        batches: list[list[int]] = []
        while len(batches) < needed:
            batches += self._pass(len(batches) // self.batches_per_pass())
        return batches[:needed]

    def _pass(self, pass_: int) -> list[list[int]]:
        """The batches of one pass: every identity once, in a shuffled order, cut into global
        groups of P x W identities (the last one filled from the others) and those into
        batches of P."""
        rng = np.random.default_rng([self.seed, self.epoch, pass_])
        order = rng.permutation(len(self.indices_by_pid)).tolist()
        p = self.num_identities
        group = p * self.world_size
        rest = len(order) % group
        if rest and self.last_batch == "fill":
            leftover = set(order[-rest:])
            others = [i for i in range(len(order)) if i not in leftover]
            order += rng.choice(others, size=group - rest, replace=False).tolist()
        groups = list(self.indices_by_pid.values())
        return [
            [index for i in order[b : b + p] for index in self._draw(groups[i], rng)]
            for b in range(0, len(order), p)
        ]

    def _draw(self, indices: np.ndarray, rng: np.random.Generator) -> list[int]:
        """V indices of one identity: distinct when it has enough, else all plus repeats."""
        v = self.num_instances
        if len(indices) >= v:
            return rng.choice(indices, size=v, replace=False).tolist()
        extra = rng.choice(indices, size=v - len(indices), replace=True)
        return rng.permutation(np.concatenate([indices, extra])).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.global_batches()[self.rank :: self.world_size]

    def state_dict(self) -> dict[str, int]:
        """Plain ints that restore the order at an epoch boundary."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore the seed and epoch saved by
        [`state_dict`][duatm.data.samplers.IdentityBatchSampler.state_dict]."""
        missing = {"seed", "epoch"} - set(state)
        if missing:
            raise KeyError(f"sampler state lacks {sorted(missing)}; got keys {sorted(state)}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
