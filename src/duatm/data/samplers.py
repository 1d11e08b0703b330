"""P x V identity batches for batch-hard triplet training, splittable across processes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import Sampler


class IdentityBatchSampler(Sampler[list[int]]):
    """Batches of ``num_identities`` (P) distinct identities x ``num_instances`` (V) indices.

    Batch-hard mining needs every anchor to have positives and negatives in its batch. One epoch
    visits every identity once, in an order shuffled from ``(seed, epoch)``: an identity with at
    least V samples gives V distinct ones; one with fewer gives all of them plus random repeats
    up to V. Consecutive groups of P identities form the batches.

    With ``world_size > 1`` every process builds the same batch list and takes every
    ``world_size``-th batch from ``rank``, so shares are disjoint and equally long. With
    ``drop_last=False`` the identities left over make one smaller final batch, and the list is
    wrapped around to a multiple of ``world_size`` (so a few batches can repeat across ranks).
    Call :meth:`set_epoch` before each epoch; the order depends only on seed and epoch.
    """

    def __init__(
        self,
        pids: Sequence[int],
        num_identities: int,
        num_instances: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
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
        by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            by_pid[int(pid)].append(index)
        self.indices_by_pid: dict[int, np.ndarray] = {
            pid: np.asarray(indices, dtype=np.int64) for pid, indices in sorted(by_pid.items())
        }
        self.num_identities = num_identities
        self.num_instances = num_instances
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        if len(self) == 0:
            raise ValueError(
                f"{len(self.indices_by_pid)} identities cannot fill one batch of "
                f"{num_identities} identities on each of {world_size} process(es)"
            )

    @property
    def batch_size(self) -> int:
        """Indices per full batch (P x V)."""
        return self.num_identities * self.num_instances

    def _num_global_batches(self) -> int:
        full, rest = divmod(len(self.indices_by_pid), self.num_identities)
        return full if self.drop_last or rest == 0 else full + 1

    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        total = self._num_global_batches()
        if self.drop_last:
            return total // self.world_size
        return -(-total // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch``; the same (seed, epoch) gives the same batches."""
        self.epoch = int(epoch)

    def global_batches(self) -> list[list[int]]:
        """All batches of the current epoch, before the split across ranks."""
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = list(self.indices_by_pid.values())
        chunks = [self._draw(groups[i], rng) for i in rng.permutation(len(groups))]
        p = self.num_identities
        return [
            [index for chunk in chunks[b * p : (b + 1) * p] for index in chunk]
            for b in range(self._num_global_batches())
        ]

    def _draw(self, indices: np.ndarray, rng: np.random.Generator) -> list[int]:
        """V indices of one identity: distinct when it has enough, else all plus repeats."""
        v = self.num_instances
        if len(indices) >= v:
            return rng.choice(indices, size=v, replace=False).tolist()
        extra = rng.choice(indices, size=v - len(indices), replace=True)
        return rng.permutation(np.concatenate([indices, extra])).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches()
        # Cut (drop_last=True) or wrap around (drop_last=False) to a multiple of world_size.
        needed = len(self) * self.world_size
        batches = [batches[i % len(batches)] for i in range(needed)]
        yield from batches[self.rank :: self.world_size]

    def state_dict(self) -> dict[str, int]:
        """Plain ints that restore the order at an epoch boundary."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore the seed and epoch saved by :meth:`state_dict`."""
        missing = {"seed", "epoch"} - set(state)
        if missing:
            raise KeyError(f"sampler state lacks {sorted(missing)}; got keys {sorted(state)}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
