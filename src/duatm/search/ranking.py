"""Ranking a gallery index for query sequences: a pooled-vector shortlist, then exact DuATM.

``search(model, index, queries, shortlist=N)`` scores, for each query, the N gallery items of
its shortlist (:mod:`duatm.search.shortlist`) with the exact matcher on the index's prepared
tensors; ``shortlist=0`` (or N >= the gallery) scores the whole gallery, in chunks so that a
mapped index is read piece by piece. Ties in distance are broken by gallery position in both
paths, so a shortlist that holds the whole gallery gives exactly the exact ranking.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from duatm.api import TrainedModel
from duatm.models.matching import PreparedSequences
from duatm.search.index import GalleryIndex, pooled_vectors
from duatm.search.shortlist import Shortlister

# Gallery bytes (float32 prepared tensors) scored per chunk by the exact whole-gallery path.
_EXACT_CHUNK_BYTES = 256 << 20


class SearchResult(NamedTuple):
    """Per query, the ``top`` nearest gallery positions (nearest first) and their distances."""

    indices: Tensor  # (Q, K) int64, on the CPU
    distances: Tensor  # (Q, K) float32, on the CPU


def search(
    model: TrainedModel,
    index: GalleryIndex,
    queries: Tensor,
    *,
    top: int = 10,
    shortlist: int = 0,
    shortlister: Shortlister | None = None,
) -> SearchResult:
    """The ``top`` nearest gallery items of each query sequence (Q, S, D) by the exact DuATM
    distance: among each query's ``shortlist`` nearest items by pooled vectors, or in the
    whole gallery when ``shortlist`` is 0 or at least the gallery size. Pass a ``shortlister``
    built on ``index.pooled`` to reuse it across calls (default: one with the auto backend)."""
    prepared = model.prepare(queries)
    if shortlist <= 0 or shortlist >= len(index):
        return exact_search(model, index, prepared, top=top)
    shortlister = shortlister or Shortlister(index.pooled)
    candidates = shortlister.nearest(pooled_vectors(prepared), shortlist)
    return rerank(model, index, prepared, candidates, top=top)


def rerank(
    model: TrainedModel,
    index: GalleryIndex,
    queries: PreparedSequences,
    candidates: Tensor,
    *,
    top: int = 10,
) -> SearchResult:
    """Second stage: each query's candidates (Q, N) ranked by the exact distance."""
    indices, distances = [], []
    for i, row in enumerate(candidates):
        row = row.sort().values  # gallery order, so that equal distances keep it
        d = model.distance_prepared(queries.slice(i, i + 1), index.select(row, model.device))[0]
        order = d.sort(stable=True).indices[:top]
        indices.append(row[order])
        distances.append(d[order])
    return SearchResult(torch.stack(indices), torch.stack(distances))


def exact_search(
    model: TrainedModel, index: GalleryIndex, queries: PreparedSequences, *, top: int = 10
) -> SearchResult:
    """Every query against the whole gallery, chunk by chunk, keeping a running top list."""
    chunk = max(1, _EXACT_CHUNK_BYTES // index.float32_bytes_per_item())
    best = torch.empty(len(queries), 0, dtype=torch.int64)
    best_d = torch.empty(len(queries), 0)
    for start in range(0, len(index), chunk):
        stop = min(start + chunk, len(index))
        d = model.distance_prepared(queries, index.slice(start, stop, model.device))
        positions = torch.arange(start, stop).expand(len(queries), -1)
        # Earlier items come first in the concatenation, so a stable sort keeps gallery order
        # among equal distances.
        best_d = torch.cat([best_d, d], 1)
        best = torch.cat([best, positions], 1)
        order = best_d.sort(dim=1, stable=True).indices[:, :top]
        best_d, best = best_d.gather(1, order), best.gather(1, order)
    return SearchResult(best, best_d)
