"""Ranking metrics for re-identification: CMC, mAP and mINP under the Market-1501 protocol.

Why this exists: every reported number of the project comes from here, so it must agree with the
evaluation the field uses (torchreid's and fast-reid's ``eval_market1501``) while staying fast and
memory-bounded on full test sets (Market-1501: 3,368 x 15,913).

Protocol, per query (Zheng et al., ICCV 2015; as implemented by torchreid and fast-reid):

* the gallery is sorted by ascending distance;
* gallery items with the query's pid *and* the query's camera are removed (they are near-duplicates
  of the query: same person, same view); ranks are counted in the list that remains;
* a query left with no true match is skipped (it counts neither in CMC nor in mAP), and so is
  a query whose identity is a distractor (``distractor_pids``, e.g. Market-1501's pid 0): the
  distractors are not one person, so "finding" another distractor is no match; how many were
  skipped, and why, is returned (:class:`SkippedQueries`);
* CMC@k: fraction of valid queries whose first true match is at rank <= k;
* AP: mean over the true matches of the precision at that match (hits so far / rank);
* INP (Ye et al., TPAMI 2021): number of true matches / rank of the last true match.

Ties: the sort is stable, so equal distances are ranked by gallery index (lower index first).
torchreid and fast-reid use numpy's default (unstable) argsort, whose order among ties is
unspecified; with ties only among non-matches (or only among matches) every metric is the same.

Numerics: per-query AP terms are summed in rank order in float64, and mAP/mINP are float64 means
over the valid queries in query order, so they agree with the references up to floating-point
rounding (~1e-16 relative; the references sum in different orders among themselves). CMC is
count / num_valid in float64; the references return it in float32.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

import numpy as np

if TYPE_CHECKING:  # only for annotations: this module never imports torch itself
    import torch

#: What the metric functions accept: numpy arrays (or array-likes) and torch tensors on any device.
Array: TypeAlias = "np.ndarray | torch.Tensor"

#: Matrix entries per query chunk when ``chunk_size`` is None (~4M: about 70 MB of working memory).
_CHUNK_ENTRIES = 1 << 22


class NoValidQueryError(ValueError):
    """No query has a true match left in the gallery, so CMC and mAP are undefined."""


class RankResult(NamedTuple):
    """CMC curve and mAP: exactly these two fields (docs/design.md#contracts)."""

    cmc: (
        np.ndarray
    )  # float64, shape (max_rank,), cmc[k-1] = fraction of valid queries hit by rank k
    mAP: float


class SkippedQueries(NamedTuple):
    """How many queries the protocol left out of CMC and mAP, by reason."""

    distractor: int = 0  # the query's identity is a distractor (``distractor_pids``)
    absent: int = 0  # the query's identity is nowhere in the gallery
    no_match_left: int = 0  # every true match removed: same camera, or the query image itself

    @property
    def total(self) -> int:
        return self.distractor + self.absent + self.no_match_left


class RankMetrics(NamedTuple):
    """Everything [`rank_metrics`][duatm.metrics.rank_metrics] computes (a superset of
    [`RankResult`][duatm.metrics.RankResult])."""

    cmc: np.ndarray  # float64, shape (max_rank,)
    mAP: float
    mINP: float
    num_valid_queries: int
    skipped: SkippedQueries = SkippedQueries()  # queries not counted, by reason
    own_images_removed: int = 0  # gallery items removed as a query's own image
    #: (Q,) float64 AP of every query, NaN where the query was skipped (no true match left);
    #: per-query values are what paired comparisons of two models resample (bootstrap CIs).
    query_ap: np.ndarray | None = None
    #: (Q,) int64 rank of each query's first true match (1-based), 0 where it was skipped.
    query_first_rank: np.ndarray | None = None


class QueryRanks(NamedTuple):
    """Per-query statistics (arrays of length Q); ranks are 1-based positions in the kept
    gallery list (0 if no hit). A query with ``num_rel == 0`` is skipped by the protocol."""

    num_matches: np.ndarray  # gallery items with the query's pid, before any removal
    num_rel: np.ndarray  # true matches kept after removal
    ap: np.ndarray  # average precision (0 where num_rel == 0)
    first_rank: np.ndarray
    last_rank: np.ndarray


def evaluate_rank(
    distmat: Array,
    q_pids: Array,
    g_pids: Array,
    q_camids: Array,
    g_camids: Array,
    max_rank: int = 50,
    *,
    keep_same_camera: bool = False,
    query_gallery_index: Array | None = None,
    chunk_size: int | None = None,
) -> RankResult:
    """CMC and mAP of a query x gallery distance matrix (Market-1501 protocol).

    The drop-in for the field's ``evaluate_rank``; see [`rank_metrics`][duatm.metrics.rank_metrics]
    for the arguments.
    """
    metrics = rank_metrics(
        distmat,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        max_rank,
        keep_same_camera=keep_same_camera,
        query_gallery_index=query_gallery_index,
        chunk_size=chunk_size,
    )
    return RankResult(cmc=metrics.cmc, mAP=metrics.mAP)


def rank_metrics(
    distmat: Array,
    q_pids: Array,
    g_pids: Array,
    q_camids: Array,
    g_camids: Array,
    max_rank: int = 50,
    *,
    keep_same_camera: bool = False,
    query_gallery_index: Array | None = None,
    distractor_pids: Collection[int] | None = None,
    chunk_size: int | None = None,
) -> RankMetrics:
    """CMC, mAP, mINP and the number of valid queries of a distance matrix.

    Args:
        distmat: (Q, G) distances, smaller = more similar; numpy array or torch tensor, no NaN.
        q_pids: (Q,) integer identity of each query.
        g_pids: (G,) integer identity of each gallery item.
        q_camids: (Q,) integer camera of each query.
        g_camids: (G,) integer camera of each gallery item.
        max_rank: length of the returned CMC curve. When fewer gallery items are left than
            ``max_rank``, the tail repeats the last value (every valid query is hit by then),
            so the length is always ``max_rank``.
        keep_same_camera: False (default) is the Market-1501 protocol: same-pid same-camera
            gallery items are removed. True keeps them, for data where camera ids carry no
            meaning (single camera, own collections): then only the query image itself is
            removed, and only if ``query_gallery_index`` says where it is.
        query_gallery_index: optional (Q,) integers; entry i is the gallery index of query i's
            own image, or -1 when the gallery does not contain it. (Q, K) integers when a query
            image can be in the gallery several times (byte-identical copies): row i lists
            them, padded with -1. Those gallery items are removed from query i's list in either
            mode. Leave it None when query and gallery are disjoint sets of images (the usual
            split). Identity is never guessed from a zero distance, since distinct images can
            be at distance 0 too.
        distractor_pids: identities that are not one person (Market-1501: ``{0}``); a query
            with one of them is skipped. The dataset says which (``ReIDDataset.distractor_pids``);
            None or empty: every identity is a person.
        chunk_size: queries processed at once; None picks about 4M matrix entries per chunk.
            Results do not depend on it.

    Raises:
        ValueError: inputs of the wrong shape, type or value (message names the argument).
        NoValidQueryError: no query has a true match left (message says why and what to do).
    """
    max_rank = _positive_int(max_rank, "max_rank")
    per_query, q_pids, q_camids, g_camids, q_self = _per_query_ranks(
        distmat,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        keep_same_camera,
        query_gallery_index,
        chunk_size,
    )
    return _finish(
        per_query, q_pids, q_self, distractor_pids, max_rank, keep_same_camera, q_camids, g_camids
    )


def per_query_ranks(
    distmat: Array,
    q_pids: Array,
    g_pids: Array,
    q_camids: Array,
    g_camids: Array,
    *,
    keep_same_camera: bool = False,
    query_gallery_index: Array | None = None,
    distractor_pids: Collection[int] | None = None,
    chunk_size: int | None = None,
) -> QueryRanks:
    """Each query's AP, first and last true-match rank and number of true matches: what
    [`rank_metrics`][duatm.metrics.rank_metrics] averages, for finding the queries that fail
    (reports). Same arguments and errors as `rank_metrics`, except that queries without a true
    match are not an error; they, and queries of a distractor identity, have ``num_rel == 0``.
    """
    per_query, q_pids, _, _, _ = _per_query_ranks(
        distmat,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        keep_same_camera,
        query_gallery_index,
        chunk_size,
    )
    distractor = _is_distractor(q_pids, distractor_pids)
    return per_query._replace(num_rel=np.where(distractor, 0, per_query.num_rel))


def _per_query_ranks(
    distmat: Array,
    q_pids: Array,
    g_pids: Array,
    q_camids: Array,
    g_camids: Array,
    keep_same_camera: bool,
    query_gallery_index: Array | None,
    chunk_size: int | None,
) -> tuple[QueryRanks, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Checked inputs -> per-query statistics, with the checked pids, cameras and own-image
    table that the aggregation needs."""
    dist = _as_numpy(distmat, "distmat")
    if dist.ndim != 2 or dist.shape[0] == 0 or dist.shape[1] == 0:
        raise ValueError(
            f"distmat: expected a non-empty 2-D (num_query, num_gallery) matrix, "
            f"got shape {tuple(dist.shape)}"
        )
    if dist.dtype == np.bool_ or dist.dtype.kind not in "iuf":
        raise ValueError(f"distmat: expected real numbers, got dtype {dist.dtype}")
    num_q, num_g = dist.shape
    q_pids = _as_int_vector(q_pids, "q_pids", num_q, "num_query = distmat.shape[0]")
    g_pids = _as_int_vector(g_pids, "g_pids", num_g, "num_gallery = distmat.shape[1]")
    q_camids = _as_int_vector(q_camids, "q_camids", num_q, "num_query = distmat.shape[0]")
    g_camids = _as_int_vector(g_camids, "g_camids", num_g, "num_gallery = distmat.shape[1]")
    q_self = _as_own_image_table(query_gallery_index, q_pids, g_pids)
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ENTRIES // num_g)
    chunk_size = _positive_int(chunk_size, "chunk_size")

    parts = []
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        chunk = dist[start:stop]
        if chunk.dtype.kind == "f" and np.isnan(chunk).any():
            row, col = np.argwhere(np.isnan(chunk))[0]
            raise ValueError(
                f"distmat: contains NaN (first at query {start + row}, gallery {col}); "
                "distances must be numbers"
            )
        parts.append(
            _chunk_per_query(
                chunk,
                q_pids[start:stop],
                q_camids[start:stop],
                None if q_self is None else q_self[start:stop],
                g_pids,
                g_camids,
                keep_same_camera,
            )
        )
    per_query = QueryRanks(*(np.concatenate(field) for field in zip(*parts, strict=True)))
    return per_query, q_pids, q_camids, g_camids, q_self


def _finish(
    per_query: QueryRanks,
    q_pids: np.ndarray,
    q_self: np.ndarray | None,
    distractor_pids: Collection[int] | None,
    max_rank: int,
    keep_same_camera: bool,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
) -> RankMetrics:
    """The metrics over the valid queries, with what was skipped and removed."""
    distractor = _is_distractor(q_pids, distractor_pids)
    metrics = _aggregate(
        per_query, distractor, max_rank, keep_same_camera, q_self is not None, q_camids, g_camids
    )
    own_removed = 0 if q_self is None else int((q_self >= 0).sum())
    return metrics._replace(own_images_removed=own_removed)


def _chunk_per_query(
    dist: np.ndarray,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    q_self: np.ndarray | None,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    keep_same_camera: bool,
) -> QueryRanks:
    """Per-query statistics of one block of rows, working only on the (few) true matches.

    Everything removed is a true match (same pid; the query's own image is checked to be one),
    so a kept match's rank in the kept list is its sorted position minus the removed matches
    before it in the same row. This avoids any further (chunk x gallery) pass after the sort.
    """
    order = np.argsort(dist, axis=1, kind="stable")
    # Row-major, so the matches of a row come together and in rank order.
    rows, cols = np.nonzero(g_pids[order] == q_pids[:, None])
    return _per_query_from_matches(
        rows, cols, order[rows, cols], dist.shape[0], q_camids, q_self, g_camids, keep_same_camera
    )


def _per_query_from_matches(
    rows: np.ndarray,
    cols: np.ndarray,
    gallery_idx: np.ndarray,
    num_rows: int,
    q_camids: np.ndarray,
    q_self: np.ndarray | None,
    g_camids: np.ndarray,
    keep_same_camera: bool,
) -> QueryRanks:
    """The protocol on the true matches of ``num_rows`` queries: entry k is a match of query
    ``rows[k]`` (a row index into q_camids / q_self), gallery item ``gallery_idx[k]``, at 0-based
    position ``cols[k]`` of that query's sorted gallery list; entries come row by row, each
    row's in rank order."""
    num_matches = np.bincount(rows, minlength=num_rows)
    removed = np.zeros(rows.size, dtype=bool)
    if not keep_same_camera:
        removed |= g_camids[gallery_idx] == q_camids[rows]
    if q_self is not None:
        own = q_self.reshape(num_rows, -1)[rows]  # (matches, K): the query's own images
        removed |= (own == gallery_idx[:, None]).any(axis=1)

    removed_before = _exclusive_cumsum_within_rows(removed, rows, num_matches)
    kept = ~removed
    rows = rows[kept]
    rank = (cols + 1 - removed_before)[kept]
    num_rel = np.bincount(rows, minlength=num_rows)
    starts = np.cumsum(num_rel) - num_rel
    hits_so_far = np.arange(1, rows.size + 1) - starts[rows]
    # Precision at each hit (hits so far / rank), summed per query in rank order.
    ap_sum = np.bincount(rows, weights=hits_so_far / rank, minlength=num_rows)

    valid = num_rel > 0
    first_rank = np.zeros(num_rows, np.int64)
    last_rank = np.zeros(num_rows, np.int64)
    first_rank[valid] = rank[starts[valid]]
    last_rank[valid] = rank[(starts + num_rel - 1)[valid]]
    ap = np.divide(ap_sum, num_rel, out=np.zeros(num_rows), where=valid)
    return QueryRanks(num_matches, num_rel, ap, first_rank, last_rank)


def rank_metrics_from_positions(
    match_query: Array,
    match_gallery: Array,
    match_position: Array,
    q_pids: Array,
    g_pids: Array,
    q_camids: Array,
    g_camids: Array,
    max_rank: int = 50,
    *,
    keep_same_camera: bool = False,
    query_gallery_index: Array | None = None,
    distractor_pids: Collection[int] | None = None,
) -> RankMetrics:
    """:func:`rank_metrics` from where each true match stands, instead of from the matrix.

    Why: the protocol needs, per query, only the positions of its true matches in the sorted
    gallery list, and a position is a count (items with a smaller distance, or an equal one at
    a lower gallery index: the stable sort's order) that adds up over gallery blocks. So a
    distance matrix too large for one process or for memory is evaluated block by block, with
    :func:`count_ahead` per block, and the same protocol code gives the same numbers.

    Args:
        match_query: (M,) integers: the query of each true match. The matches are every
            (query, gallery item) pair with equal pids, each once, in any order.
        match_gallery: (M,) integers: the gallery item of each true match.
        match_position: (M,) integers: the gallery item's 0-based position in its query's list.
        q_pids: (Q,) integer identity of each query.
        g_pids: (G,) integer identity of each gallery item.
        q_camids: (Q,) integer camera of each query.
        g_camids: (G,) integer camera of each gallery item.
        max_rank: length of the returned CMC curve, as in :func:`rank_metrics`.
        keep_same_camera: as in :func:`rank_metrics`.
        query_gallery_index: as in :func:`rank_metrics`.
        distractor_pids: as in :func:`rank_metrics`.

    Raises:
        ValueError: inputs of the wrong shape or value, or pairs that are not exactly the true
            matches (message names the argument).
        NoValidQueryError: no query has a true match left.
    """
    num_q, num_g = np.size(q_pids), np.size(g_pids)
    if num_q == 0 or num_g == 0:
        raise ValueError(
            f"q_pids, g_pids: expected queries and gallery items, got {num_q} and {num_g}"
        )
    q_pids = _as_int_vector(q_pids, "q_pids", num_q, "one per query")
    g_pids = _as_int_vector(g_pids, "g_pids", num_g, "one per gallery item")
    q_camids = _as_int_vector(q_camids, "q_camids", num_q, "num_query = len(q_pids)")
    g_camids = _as_int_vector(g_camids, "g_camids", num_g, "num_gallery = len(g_pids)")
    num_m = np.size(match_query)
    rows = _as_int_vector(match_query, "match_query", num_m, "num_matches")
    gallery_idx = _as_int_vector(match_gallery, "match_gallery", num_m, "num_matches")
    positions = _as_int_vector(match_position, "match_position", num_m, "num_matches")
    max_rank = _positive_int(max_rank, "max_rank")
    q_self = _as_own_image_table(query_gallery_index, q_pids, g_pids)
    inside = (rows >= 0) & (rows < num_q) & (gallery_idx >= 0) & (gallery_idx < num_g)
    if not inside.all() or ((positions < 0) | (positions >= num_g)).any():
        raise ValueError("match_query / match_gallery / match_position: index out of range")
    if (q_pids[rows] != g_pids[gallery_idx]).any():
        raise ValueError("match_query / match_gallery: a pair whose pids differ is not a match")
    pids, gallery_counts = np.unique(g_pids, return_counts=True)
    where = np.searchsorted(pids, q_pids).clip(max=pids.size - 1)
    expected = np.where(pids[where] == q_pids, gallery_counts[where], 0)
    if num_m != expected.sum() or np.unique(rows * num_g + gallery_idx).size != num_m:
        raise ValueError(
            f"match_query / match_gallery: expected each of the {int(expected.sum())} "
            f"same-pid (query, gallery) pairs once, got {num_m} pairs"
        )
    order = np.lexsort((positions, rows))
    per_query = _per_query_from_matches(
        rows[order],
        positions[order],
        gallery_idx[order],
        num_q,
        q_camids,
        q_self,
        g_camids,
        keep_same_camera,
    )
    return _finish(
        per_query, q_pids, q_self, distractor_pids, max_rank, keep_same_camera, q_camids, g_camids
    )


def count_ahead(
    block: np.ndarray,
    block_start: int,
    rows: np.ndarray,
    gallery_idx: np.ndarray,
    values: np.ndarray,
) -> np.ndarray:
    """For matches (query ``rows``, gallery item ``gallery_idx`` at distance ``values``), how
    many items of one column block of the distance matrix rank ahead of them: a smaller
    distance, or an equal one at a lower gallery index. ``block`` holds gallery items
    ``block_start ...`` for every query. Summed over all blocks, this is the match's position
    for :func:`rank_metrics_from_positions`."""
    counts = np.zeros(rows.size, dtype=np.int64)
    width = block.shape[1]
    if width == 0 or rows.size == 0:
        return counts
    columns = np.arange(block_start, block_start + width)
    step = max(1, _CHUNK_ENTRIES // width)
    for start in range(0, rows.size, step):
        part = slice(start, start + step)
        distances = block[rows[part]]
        value = values[part, None]
        counts[part] = np.count_nonzero(distances < value, axis=1)
        counts[part] += np.count_nonzero(
            (distances == value) & (columns < gallery_idx[part, None]), axis=1
        )
    return counts


def _exclusive_cumsum_within_rows(
    values: np.ndarray, rows: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """For entries grouped by row (row-major), the sum of the same row's earlier values."""
    inclusive = np.cumsum(values)
    exclusive = inclusive - values
    row_start = np.cumsum(counts) - counts
    return exclusive - exclusive[row_start[rows]]


def _aggregate(
    per_query: QueryRanks,
    distractor: np.ndarray,
    max_rank: int,
    keep_same_camera: bool,
    has_query_index: bool,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
) -> RankMetrics:
    """Average the per-query statistics over the valid queries."""
    valid = (per_query.num_rel > 0) & ~distractor
    num_valid = int(valid.sum())
    skipped = _skipped(distractor, per_query.num_matches, per_query.num_rel)
    if num_valid == 0:
        raise NoValidQueryError(
            _no_valid_query_message(skipped, keep_same_camera, has_query_index, q_camids, g_camids)
        )
    # Histogram of first-hit ranks, cumulated. A gallery shorter than max_rank has no first hits
    # past its end, so the tail keeps the last value.
    first_hits = np.bincount(per_query.first_rank[valid] - 1, minlength=max_rank)[:max_rank]
    cmc = np.cumsum(first_hits) / num_valid
    inp = per_query.num_rel[valid] / per_query.last_rank[valid]
    return RankMetrics(
        cmc=cmc,
        mAP=float(np.mean(per_query.ap[valid])),
        mINP=float(np.mean(inp)),
        num_valid_queries=num_valid,
        skipped=skipped,
        query_ap=np.where(valid, per_query.ap, np.nan),
        query_first_rank=np.where(valid, per_query.first_rank, 0),
    )


def _skipped(
    distractor: np.ndarray, num_matches: np.ndarray, num_rel: np.ndarray
) -> SkippedQueries:
    """Counts of skipped queries by reason; a distractor query counts only as a distractor."""
    person = ~distractor
    return SkippedQueries(
        distractor=int(distractor.sum()),
        absent=int((person & (num_matches == 0)).sum()),
        no_match_left=int((person & (num_matches > 0) & (num_rel == 0)).sum()),
    )


def count_valid_queries(
    q_pids: Array,
    g_pids: Array,
    q_camids: Array,
    g_camids: Array,
    *,
    keep_same_camera: bool = False,
    query_gallery_index: Array | None = None,
    distractor_pids: Collection[int] | None = None,
) -> tuple[int, SkippedQueries]:
    """How many queries the protocol will count, and why the others are skipped, from the labels
    alone (no distances needed): what :func:`rank_metrics` finds, checked before a training run
    spends hours on data that cannot be evaluated. O(Q + G).
    """
    q_pids = _as_int_vector(q_pids, "q_pids", len(q_pids), "num_query")
    q_camids = _as_int_vector(q_camids, "q_camids", q_pids.size, "num_query = len(q_pids)")
    g_pids = _as_int_vector(g_pids, "g_pids", len(g_pids), "num_gallery")
    g_camids = _as_int_vector(g_camids, "g_camids", g_pids.size, "num_gallery = len(g_pids)")
    q_self = _as_own_image_table(query_gallery_index, q_pids, g_pids)
    distractor = _is_distractor(q_pids, distractor_pids)
    num_matches = _gallery_counts(q_pids[:, None], g_pids[:, None])
    removed = np.zeros_like(num_matches)
    if not keep_same_camera:
        removed += _gallery_counts(np.stack([q_pids, q_camids], 1), np.stack([g_pids, g_camids], 1))
    if q_self is not None:
        # Own images are true matches (checked); those under the query's camera are already
        # counted above when same-camera matches are removed. Each gallery item counts once.
        own = np.sort(q_self, axis=1)
        first = np.ones_like(own, dtype=bool)
        first[:, 1:] = own[:, 1:] != own[:, :-1]
        present = (own >= 0) & first
        other_camera = g_camids[np.where(present, own, 0)] != q_camids[:, None]
        removed += (present & (keep_same_camera | other_camera)).sum(axis=1)
    num_rel = num_matches - removed
    valid = (num_rel > 0) & ~distractor
    return int(valid.sum()), _skipped(distractor, num_matches, num_rel)


def check_valid_queries(
    q_pids: Array,
    g_pids: Array,
    q_camids: Array,
    g_camids: Array,
    *,
    keep_same_camera: bool = False,
    query_gallery_index: Array | None = None,
    distractor_pids: Collection[int] | None = None,
) -> tuple[int, SkippedQueries]:
    """:func:`count_valid_queries`, raising the :class:`NoValidQueryError` that
    :func:`rank_metrics` would raise (with its explanation) when no query is valid."""
    num_valid, skipped = count_valid_queries(
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        keep_same_camera=keep_same_camera,
        query_gallery_index=query_gallery_index,
        distractor_pids=distractor_pids,
    )
    if num_valid == 0:
        raise NoValidQueryError(
            _no_valid_query_message(
                skipped,
                keep_same_camera,
                query_gallery_index is not None,
                np.asarray(q_camids),
                np.asarray(g_camids),
            )
        )
    return num_valid, skipped


def _gallery_counts(q_keys: np.ndarray, g_keys: np.ndarray) -> np.ndarray:
    """For each query row of keys, how many gallery rows are equal to it."""
    _, inverse = np.unique(np.concatenate([q_keys, g_keys]), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    counts = np.bincount(inverse[len(q_keys) :], minlength=int(inverse.max()) + 1)
    return counts[inverse[: len(q_keys)]]


def _is_distractor(q_pids: np.ndarray, distractor_pids: Collection[int] | None) -> np.ndarray:
    if not distractor_pids:
        return np.zeros(q_pids.shape, dtype=bool)
    return np.isin(q_pids, np.fromiter(distractor_pids, dtype=np.int64))


def _no_valid_query_message(
    skipped: SkippedQueries,
    keep_same_camera: bool,
    has_query_index: bool,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
) -> str:
    """Explain why every query was skipped and how to evaluate such data."""
    lines = [
        f"no query has a true match left in the gallery, so CMC and mAP are undefined "
        f"({skipped.total} queries, all skipped):"
    ]
    if skipped.distractor:
        lines.append(
            f"- {skipped.distractor} of them: the query's identity is a distractor (not one "
            "person, e.g. Market-1501's pid 0), which has no true match by definition."
        )
    if skipped.absent:
        lines.append(
            f"- {skipped.absent} of them: the query's pid does not appear in the gallery at all; "
            "check that query and gallery come from the same split and use the same pid "
            "numbering (e.g. training pids relabelled to 0..N-1 compared with original gallery "
            "pids)."
        )
    all_removed = skipped.no_match_left
    if all_removed and not keep_same_camera:
        single = np.unique(np.concatenate([q_camids, g_camids]))
        camera_note = f" (every image here has camera id {single[0]})" if single.size == 1 else ""
        self_note = " (or is the query image itself)" if has_query_index else ""
        lines.append(
            f"- {all_removed} of them: every true match is under the query's own camera"
            f"{camera_note}{self_note}; the Market-1501 protocol removes gallery images with the "
            "same pid AND the same camera as the query, so nothing is left to find. For "
            "single-camera data or data whose camera ids carry no meaning, evaluate with "
            "keep_same_camera=True (on the duatm command line: --set eval.keep_same_camera=true): "
            "same-camera matches are then kept and only the query image itself is removed "
            "(duatm's evaluator finds query images in the gallery by their file path and by "
            "their content; from Python, pass query_gallery_index)."
        )
    elif all_removed:
        lines.append(
            f"- {all_removed} of them: the only true match in the gallery is the query image "
            "itself (query_gallery_index), which is never counted as a match."
        )
    return "\n".join(lines)


def _as_numpy(x, name: str) -> np.ndarray:
    """numpy view of an array-like or torch tensor (any device), without importing torch."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{name}: expected an array or tensor, could not convert {type(x).__name__} ({err})"
        ) from err


def _as_int_vector(x, name: str, length: int, what: str) -> np.ndarray:
    """int64 1-D array of the given length, or a ValueError naming the argument."""
    arr = _as_numpy(x, name)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"{name}: expected shape ({length},) ({what}), got {tuple(arr.shape)}")
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _as_own_image_table(
    query_gallery_index: Array | None, q_pids: np.ndarray, g_pids: np.ndarray
) -> np.ndarray | None:
    """``query_gallery_index`` as a checked (Q, K) int64 table (-1 = none), or None."""
    if query_gallery_index is None:
        return None
    num_q, num_g = q_pids.size, g_pids.size
    name = "query_gallery_index"
    table = _as_numpy(query_gallery_index, name)
    if table.ndim not in (1, 2) or table.shape[0] != num_q:
        raise ValueError(
            f"{name}: expected shape ({num_q},) or ({num_q}, K) (num_query = distmat.shape[0]), "
            f"got {tuple(table.shape)}"
        )
    if table.dtype == np.bool_ or table.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integers, got dtype {table.dtype}")
    table = table.astype(np.int64, copy=False).reshape(num_q, -1)
    bad = np.argwhere((table < -1) | (table >= num_g))
    if bad.size:
        i, k = bad[0]
        raise ValueError(
            f"{name}: entry {_entry(table, i, k)} is {table[i, k]}; expected -1 or a gallery "
            f"index in [0, {num_g})"
        )
    present = table >= 0
    mismatch = np.argwhere(present & (g_pids[np.where(present, table, 0)] != q_pids[:, None]))
    if mismatch.size:
        i, k = mismatch[0]
        raise ValueError(
            f"{name}: entry {_entry(table, i, k)} points at gallery item {table[i, k]} with pid "
            f"{g_pids[table[i, k]]}, but query {i} has pid {q_pids[i]}; it must be the query's "
            "own image"
        )
    return table


def _entry(table: np.ndarray, i: int, k: int) -> str:
    return str(i) if table.shape[1] == 1 else f"({i}, {k})"
