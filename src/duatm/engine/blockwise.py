"""Rank metrics from the distance matrix in gallery column blocks: across ranks, or off memory.

Why: the Q x G matcher distances of a large gallery outgrow one process (MSMT17: 11,659 x
82,161; a city's cameras: far more). The protocol needs, per query, only the positions of its
true matches in the sorted gallery list, and a position is a count that adds up over column
blocks (`duatm.metrics.rank.count_ahead`). So each rank computes the distances of all queries
to its own gallery share, block by block, keeping its blocks in memory or in a file
(``stream_to``); the ranks exchange only the true matches' distances and their counts; and the
protocol code of `rank_metrics` turns the positions into exactly the numbers one process
computes from the whole matrix (docs/design.md#distributed).

Memory per rank: its query copy, its gallery share's sequences, and its share of the matrix
(Q x G / world_size floats) or, streamed, one block (``eval.block_mb``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from duatm.engine.distributed import DistContext, all_gather_cat, all_reduce_sum
from duatm.engine.progress import Progress
from duatm.metrics import RankMetrics
from duatm.metrics.rank import count_ahead, rank_metrics_from_positions
from duatm.models.matching import DualAttentionMatcher

_FLOAT32_BYTES = 4


class DistanceBlocks:
    """One rank's column blocks of the distance matrix (float32, all queries x some gallery
    items), kept in memory or, with ``stream_to``, in a scratch file there that is removed on
    `close`. Reading a block back uses plain reads, so the file's pages count against the page
    cache, not against the process's resident memory."""

    def __init__(self, num_queries: int, stream_to: str | Path | None, ctx: DistContext) -> None:
        self.num_queries = num_queries
        self._blocks: list[tuple[int, np.ndarray]] = []
        self._spans: list[tuple[int, int, int]] = []  # (gallery start, width, file offset)
        self._file = None
        self.path: Path | None = None
        if stream_to is not None:
            folder = Path(stream_to)
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(
                dir=folder, prefix=f".duatm-distances-rank{ctx.rank}-", suffix=".f32"
            )
            self.path = Path(name)
            self._file = os.fdopen(fd, "w+b")

    def append(self, start: int, block: np.ndarray) -> None:
        """Keep ``block`` (num_queries x width), which holds gallery items ``start ...``."""
        if self._file is None:
            self._blocks.append((start, block))
            return
        offset = self._file.seek(0, os.SEEK_END)
        self._file.write(np.ascontiguousarray(block, dtype=np.float32).tobytes())
        self._spans.append((start, block.shape[1], offset))

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """(gallery start, block) in the order they were appended."""
        if self._file is None:
            yield from self._blocks
            return
        self._file.flush()
        for start, width, offset in self._spans:
            block = np.empty((self.num_queries, width), dtype=np.float32)
            self._file.seek(offset)
            if self._file.readinto(memoryview(block).cast("B")) != block.nbytes:
                raise OSError(f"{self.path}: distance block at byte {offset} is cut short")
            yield start, block

    def close(self) -> None:
        """Drop the blocks (and remove the scratch file)."""
        self._blocks.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
            assert self.path is not None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def block_width(num_queries: int, block_bytes: int) -> int:
    """Gallery items per block so that a block of all queries takes at most ``block_bytes``."""
    return max(1, block_bytes // (max(1, num_queries) * _FLOAT32_BYTES))


@torch.inference_mode()
def blockwise_rank_metrics(
    matcher: DualAttentionMatcher,
    query: Tensor,
    q_pids: Tensor,
    q_camids: Tensor,
    gallery: Tensor,
    g_pids: Tensor,
    g_camids: Tensor,
    ctx: DistContext,
    *,
    max_rank: int = 50,
    keep_same_camera: bool = False,
    query_gallery_index: np.ndarray | None = None,
    distractor_pids: Collection[int] | None = None,
    tile_mb: int = 256,
    block_bytes: int = 512 << 20,
    stream_to: str | Path | None = None,
    progress: bool = True,
) -> tuple[RankMetrics, dict[str, float]]:
    """Rank metrics of every query against the gallery shared out over the ranks of ``ctx``.

    ``query`` (Q, S, D) and its labels are the whole query set, the same on every rank;
    ``gallery`` (G_r, S, D) and its labels are this rank's contiguous share (rank order is
    gallery order). Every rank returns the same metrics, and the seconds spent matching and
    ranking. ``matcher`` must be in eval mode.
    """
    start_time = time.perf_counter()
    q_pids_np, q_camids_np = q_pids.numpy(), q_camids.numpy()
    local_pids = g_pids.numpy()
    sizes = all_gather_cat(torch.tensor([len(gallery)]), ctx)
    offset = int(sizes[: ctx.rank].sum())
    all_g_pids = all_gather_cat(g_pids, ctx).numpy()
    all_g_camids = all_gather_cat(g_camids, ctx).numpy()

    prepared_query = matcher.prepare(query)
    width = block_width(len(query), block_bytes)
    blocks = DistanceBlocks(len(query), stream_to, ctx)
    try:
        match_q, match_g, match_v = [], [], []
        starts = range(0, len(gallery), width)
        for start in Progress(
            starts, total=len(starts), desc="match", unit="block", enabled=progress
        ):
            part = gallery[start : start + width]
            block = matcher.pairwise_prepared(
                prepared_query, matcher.prepare(part), max_tile_bytes=tile_mb << 20
            )
            block = block.float().cpu().numpy()
            if np.isnan(block).any():
                row, col = np.argwhere(np.isnan(block))[0]
                raise ValueError(
                    f"distances contain NaN (first at query {row}, gallery "
                    f"{offset + start + col}); the model's weights or inputs are broken"
                )
            rows, cols = np.nonzero(
                local_pids[start : start + width][None, :] == q_pids_np[:, None]
            )
            match_q.append(rows)
            match_g.append(offset + start + cols)
            match_v.append(block[rows, cols])
            blocks.append(offset + start, block)
        matched_time = time.perf_counter()
        # Every rank learns every true match's distance, counts the items of its own blocks
        # ranked ahead of each, and the sums over ranks are the positions.
        match_query = all_gather_cat(torch.from_numpy(_cat(match_q, np.int64)), ctx).numpy()
        match_gallery = all_gather_cat(torch.from_numpy(_cat(match_g, np.int64)), ctx).numpy()
        match_value = all_gather_cat(torch.from_numpy(_cat(match_v, np.float32)), ctx).numpy()
        counts = np.zeros(match_query.size, dtype=np.int64)
        for block_start, block in blocks:
            counts += count_ahead(block, block_start, match_query, match_gallery, match_value)
    finally:
        blocks.close()
    positions = all_reduce_sum(torch.from_numpy(counts), ctx).numpy()
    metrics = rank_metrics_from_positions(
        match_query,
        match_gallery,
        positions,
        q_pids_np,
        all_g_pids,
        q_camids_np,
        all_g_camids,
        max_rank,
        keep_same_camera=keep_same_camera,
        query_gallery_index=query_gallery_index,
        distractor_pids=distractor_pids,
    )
    return metrics, {
        "match_s": matched_time - start_time,
        "rank_s": time.perf_counter() - matched_time,
    }


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
