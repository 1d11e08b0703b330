"""First stage of a search: the gallery items whose pooled vectors are nearest to a query's.

Why a first stage: the exact DuATM distance costs 8 S^2 D flops per pair, the Euclidean
distance of pooled vectors 3 D; ranking the whole gallery by the cheap one and scoring only
the nearest few hundred exactly makes a query's cost nearly independent of the gallery size.
Both backends do exact (flat) nearest-neighbour search, so they return the same candidates up
to ties; faiss (``pip install 'duatm[faiss]'``) is used when installed, torch otherwise.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch
from torch import Tensor

from duatm.config import ConfigError

# Gallery rows per similarity block of the torch backend: (Q x 64k) float32 scores at a time.
_TORCH_BLOCK = 1 << 16


def faiss_installed() -> bool:
    """Whether the optional faiss package can be imported."""
    return importlib.util.find_spec("faiss") is not None


def resolve_backend(name: str) -> str:
    """``"auto"`` -> ``"faiss"`` when installed, else ``"torch"``; ``"faiss"`` must be installed."""
    if name == "auto":
        return "faiss" if faiss_installed() else "torch"
    if name == "faiss" and not faiss_installed():
        raise ConfigError(
            "search.backend=faiss: faiss is not installed; install the extra with "
            "pip install 'duatm[faiss]' (or use search.backend=torch)"
        )
    if name not in ("faiss", "torch"):
        raise ConfigError(f"search.backend must be one of auto, faiss, torch, got {name!r}")
    return name


class Shortlister:
    """Nearest gallery items by Euclidean distance of pooled vectors (N, D).

    Build it once per gallery (faiss copies the vectors into its own index) and call
    :meth:`nearest` for any number of queries.
    """

    def __init__(self, pooled: Tensor, backend: str = "auto") -> None:
        self.backend = resolve_backend(backend)
        self.size = pooled.shape[0]
        self._pooled = pooled
        self._faiss: Any = None
        if self.backend == "faiss":
            import faiss

            self._faiss = faiss.IndexFlatL2(pooled.shape[1])
            self._faiss.add(np.ascontiguousarray(pooled.float().numpy()))

    def nearest(self, queries: Tensor, n: int) -> Tensor:
        """(Q, min(n, N)) int64 gallery positions, nearest first, for pooled vectors (Q, D)."""
        n = min(n, self.size)
        queries = queries.detach().float().cpu()
        if self._faiss is not None:
            _, found = self._faiss.search(np.ascontiguousarray(queries.numpy()), n)
            return torch.from_numpy(found).long()
        # ||q - g||^2 = ||q||^2 + ||g||^2 - 2 q.g; the first term is the same for every item.
        best_scores = torch.empty(queries.shape[0], 0)
        best = torch.empty(queries.shape[0], 0, dtype=torch.int64)
        for start in range(0, self.size, _TORCH_BLOCK):
            block = self._pooled[start : start + _TORCH_BLOCK].float()
            scores = block.square().sum(1) - 2 * queries @ block.T
            scores, found = scores.topk(min(n, block.shape[0]), dim=1, largest=False)
            best_scores = torch.cat([best_scores, scores], 1)
            best = torch.cat([best, found + start], 1)
            if best.shape[1] > n:
                best_scores, keep = best_scores.topk(n, dim=1, largest=False)
                best = best.gather(1, keep)
        return best
