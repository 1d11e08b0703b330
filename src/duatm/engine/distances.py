"""An evaluation's distances saved to a file: the (Q, G) matrix and the items it ranks.

Why: the whole-split extraction and matching are the slow part of an evaluation; `duatm report`
(or a notebook) can start from the saved matrix instead of computing it again. The file holds
only tensors, strings and numbers (written atomically, read with ``weights_only=True``) and the
fingerprint of the model that made it, so it is never shown beside another model's attention.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from duatm.data.records import ImageRecord, TrackletRecord
from duatm.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

DISTANCES_KIND = "duatm-distances"
# Bumped when the layout changes; a file of another version is refused with a clear error.
DISTANCES_FORMAT = 1


class SavedDistances(NamedTuple):
    """What :func:`load_distances` returns."""

    distances: Tensor  # (Q, G) float32
    query: list[ImageRecord] | list[TrackletRecord]
    gallery: list[ImageRecord] | list[TrackletRecord]
    fingerprint: str  # TrainedModel.fingerprint of the model that computed them
    checkpoint: str
    reranked: Tensor | None  # (Q, G) after k-reciprocal re-ranking, when the evaluation did it
    rerank: dict[str, float] | None  # its parameters (k1, k2, lambda_value)
    distractor_pids: list[int]  # identities that are not one person (their queries are skipped)


def save_distances(
    path: str | Path,
    distances: Tensor,
    query: Sequence[ImageRecord] | Sequence[TrackletRecord],
    gallery: Sequence[ImageRecord] | Sequence[TrackletRecord],
    *,
    fingerprint: str,
    checkpoint: str,
    reranked: Tensor | None = None,
    rerank: dict[str, float] | None = None,
    distractor_pids: Collection[int] = (),
) -> Path:
    """Write the distances of ``query`` x ``gallery`` (in that order) to ``path``, atomically."""
    shape = (len(query), len(gallery))
    for name, matrix in (("distances", distances), ("reranked", reranked)):
        if matrix is not None and tuple(matrix.shape) != shape:
            raise ValueError(
                f"{name}: expected shape {shape} (query x gallery), got {tuple(matrix.shape)}"
            )
    state: dict[str, Any] = {
        "kind": DISTANCES_KIND,
        "format": DISTANCES_FORMAT,
        "distances": distances.detach().float().cpu().contiguous(),
        "reranked": None if reranked is None else reranked.detach().float().cpu().contiguous(),
        "rerank": None if rerank is None else dict(rerank),
        "distractor_pids": sorted(int(p) for p in distractor_pids),
        "fingerprint": fingerprint,
        "checkpoint": checkpoint,
        "query": _records_state(query),
        "gallery": _records_state(gallery),
    }
    save_checkpoint(path, state)
    return Path(path)


def load_distances(path: str | Path) -> SavedDistances:
    """Read a file written by :func:`save_distances`; errors name the file and what is wrong."""
    state = load_checkpoint(path)
    if state.get("kind") != DISTANCES_KIND:
        raise CheckpointError(
            f"{path} is not a saved distance file (write one with duatm evaluate "
            "--save-distances FILE)"
        )
    if state.get("format") != DISTANCES_FORMAT:
        raise CheckpointError(
            f"{path}: distance file format {state.get('format')!r}, this duatm reads format "
            f"{DISTANCES_FORMAT}"
        )
    return SavedDistances(
        distances=state["distances"],
        query=_records(state["query"]),
        gallery=_records(state["gallery"]),
        fingerprint=state["fingerprint"],
        checkpoint=state["checkpoint"],
        reranked=state["reranked"],
        rerank=state["rerank"],
        distractor_pids=list(state["distractor_pids"]),
    )


def _records_state(records: Sequence[ImageRecord] | Sequence[TrackletRecord]) -> dict[str, Any]:
    """Images keep their path under ``paths``; tracklets their frame paths under ``tracklets``
    (a separate key, so that an image reader never mistakes a tracklet for one image)."""
    state: dict[str, Any] = {
        "pids": torch.tensor([r.pid for r in records], dtype=torch.int64),
        "camids": torch.tensor([r.camid for r in records], dtype=torch.int64),
    }
    if records and isinstance(records[0], TrackletRecord):
        state["tracklets"] = [[str(p) for p in r.paths] for r in records]  # type: ignore[union-attr]
    else:
        state["paths"] = [str(r.path) for r in records]  # type: ignore[union-attr]
    return state


def _records(state: dict[str, Any]) -> list[ImageRecord] | list[TrackletRecord]:
    labels = zip(state["pids"].tolist(), state["camids"].tolist(), strict=True)
    if "tracklets" in state:
        return [
            TrackletRecord(tuple(paths), int(pid), int(camid))
            for paths, (pid, camid) in zip(state["tracklets"], labels, strict=True)
        ]
    return [
        ImageRecord(path, int(pid), int(camid))
        for path, (pid, camid) in zip(state["paths"], labels, strict=True)
    ]
