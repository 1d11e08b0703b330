"""Evaluation: query and gallery sequences, the DuATM distance matrix, CMC / mAP / mINP.

Why separate from training: `duatm evaluate`, the trainer's periodic evaluation and the demo run
the same steps. Three stages, each replaceable: extraction (`extract`), distances
(`distance_matrix`, the whole matrix) and metrics (`rank_metrics`); `evaluate_split` keeps the
matrix (and can re-rank it). With several processes or a
``stream_to`` folder, each rank extracts its share and the last two stages run block by block
(`duatm.engine.blockwise`), with the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from duatm.atomic import atomic_write_text
from duatm.config import ConfigError, EvalConfig
from duatm.data.batches import batch_pixels
from duatm.data.clips import ClipSampler
from duatm.engine.blockwise import blockwise_rank_metrics
from duatm.engine.builders import autocast_for
from duatm.engine.diagnostics import MEANVEC_MAP, matcher_diagnostics
from duatm.engine.distributed import SINGLE, DistContext, all_gather_cat
from duatm.engine.progress import Progress
from duatm.metrics import RankMetrics, check_valid_queries, rank_metrics, re_ranking
from duatm.metrics.report import per_query_to_dict, rank_metrics_to_dict
from duatm.models.duatm import DuATM
from duatm.models.matching import DualAttentionMatcher

RESULTS_JSON = "results.json"
_LOG = logging.getLogger(__name__)
#: How many example pairs a warning about mislabelled copies names.
_SHOW = 3
#: A results JSON is a few kB (its CMC curve has max_rank entries); larger files are not ours.
_RESULTS_MAX_BYTES = 1 << 20


class Rerank(NamedTuple):
    """Parameters of k-reciprocal re-ranking (:func:`duatm.metrics.re_ranking`)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    @classmethod
    def asked_by(cls, e: EvalConfig) -> Rerank | None:
        """The re-ranking the ``eval`` config section asks for (``eval.rerank``), or None."""
        return cls(e.rerank_k1, e.rerank_k2, e.rerank_lambda) if e.rerank else None


def evaluation_options(e: EvalConfig, *, amp: bool) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate` / :func:`evaluate_split` that the ``eval``
    config section sets, so every caller evaluates with the same settings."""
    return {
        "flip": e.flip,
        "amp": amp,
        "tile_mb": e.tile_mb,
        "max_rank": e.max_rank,
        "keep_same_camera": e.keep_same_camera,
    }


class SplitEvaluation(NamedTuple):
    """What :func:`evaluate_split` measured: the metrics of the matcher's (Q, G) distances, the
    seconds each stage took, the distances, after re-ranking (when asked for) its metrics and
    distances, and the matcher diagnostics."""

    metrics: RankMetrics
    timings: dict[str, float]
    distances: Tensor  # (Q, G) float32 on the CPU
    reranked: RankMetrics | None = None
    reranked_distances: Tensor | None = None
    diagnostics: dict[str, float] = {}  # noqa: RUF012 (a NamedTuple default, never mutated)


class ExtractedSequences(NamedTuple):
    """Sequences of a query or gallery set (on the model's device) and their labels.

    Without ``lengths`` every item has S elements and ``sequences`` is (N, S, D). With
    ``lengths`` (N,) (video in the ``all`` mode, one element per frame of each tracklet)
    ``sequences`` is packed: (lengths.sum(), D), item k's elements following item k-1's, so
    that one very long tracklet does not make every item as long.
    """

    sequences: Tensor  # (N, S, D) float32, or (sum of lengths, D) when lengths are given
    pids: Tensor  # (N,) int64, on the CPU
    camids: Tensor  # (N,) int64, on the CPU
    lengths: Tensor | None = None  # (N,) int64, on the CPU: variable-length items only


def extract(
    model: DuATM,
    loader: DataLoader[Any],
    device: torch.device,
    *,
    flip: bool = False,
    amp: bool = False,
    desc: str = "extract",
    progress: bool = True,
) -> ExtractedSequences:
    """Sequences of every image or clip the loader yields, in order (the model is put in eval
    mode); clips of different lengths (the ``all`` mode) come back packed."""
    model.eval()
    chunks, pids, camids, lengths = [], [], [], []
    variable = False
    total = len(loader.dataset)  # type: ignore[arg-type]
    unit = "clip" if _clip_sampler(loader) is not None else "img"
    with Progress(total=total, desc=desc, unit=unit, enabled=progress) as bar:
        for batch in loader:
            pixels, batch_lengths = batch_pixels(batch)
            sequences = extract_batch(
                model, pixels, device, lengths=batch_lengths, flip=flip, amp=amp
            )
            size = sequences.shape[1]
            # Padded clips, or batches of different clip lengths: items differ in length.
            variable |= batch_lengths is not None or bool(chunks and size != chunks[0].shape[1])
            if batch_lengths is None:
                batch_lengths = torch.full((len(sequences),), size, dtype=torch.int64)
            chunks.append(sequences)
            lengths.append(batch_lengths)
            pids.append(batch["pid"])
            camids.append(batch["camid"])
            bar.update(len(pixels))
    if not chunks:
        raise ValueError(f"{desc}: the loader yielded no items")
    if not variable:
        return ExtractedSequences(torch.cat(chunks), torch.cat(pids), torch.cat(camids))
    packed = torch.cat(
        [
            seqs[_valid(n, seqs.shape[1]).to(seqs.device)]
            for seqs, n in zip(chunks, lengths, strict=True)
        ]
    )
    return ExtractedSequences(packed, torch.cat(pids), torch.cat(camids), torch.cat(lengths))


def extract_batch(
    model: DuATM,
    pixels: Tensor,
    device: torch.device,
    *,
    lengths: Tensor | None = None,
    flip: bool = False,
    amp: bool = False,
) -> Tensor:
    """float32 sequences (B, S, D) on ``device`` of a uint8 batch from a pixel pipeline: images
    (B, 3, H, W), or clips (B, T, 3, H, W) with optional ``lengths`` (zero beyond each). The
    one extraction step that evaluation, indexing and :func:`duatm.load`'s ``extract`` share,
    so that they give the same numbers; the model normalises the pixels on ``device``."""
    pixels = pixels.to(device, non_blocking=True)
    with autocast_for(device, amp):
        sequences = model.extract_sequences(pixels, lengths=lengths, flip=flip)
    return sequences.float()


def distance_matrix(
    matcher: DualAttentionMatcher,
    query: ExtractedSequences,
    gallery: ExtractedSequences,
    *,
    tile_mb: int,
) -> Tensor:
    """The (Q, G) ``matcher`` distances on the CPU, computed in tiles of at most ``tile_mb`` MiB.

    Variable-length sets are cut into buckets of similar length (each zero-padded to its
    longest item, at most about twice its shortest), prepared once per bucket, and compared
    bucket by bucket with the matcher's variable-length ``pairwise_prepared``.
    """
    budget = tile_mb << 20
    with torch.inference_mode():
        if query.lengths is None and gallery.lengths is None:
            return matcher.pairwise(query.sequences, gallery.sequences, max_tile_bytes=budget).cpu()
        query_buckets = [(i, matcher.prepare(x, n)) for i, x, n in length_buckets(query)]
        gallery_buckets = [(i, matcher.prepare(x, n)) for i, x, n in length_buckets(gallery)]
        distances = torch.empty(len(query.pids), len(gallery.pids))
        for q_index, q_prepared in query_buckets:
            for g_index, g_prepared in gallery_buckets:
                block = matcher.pairwise_prepared(q_prepared, g_prepared, max_tile_bytes=budget)
                distances[q_index[:, None], g_index[None, :]] = block.cpu()
    return distances


def length_buckets(
    extracted: ExtractedSequences, max_ratio: float = 2.0
) -> list[tuple[Tensor, Tensor, Tensor | None]]:
    """``(indices, zero-padded sequences (n, L, D), lengths (n,))`` per bucket of items whose
    lengths lie within ``max_ratio`` of the bucket's longest L: padding stays below half of
    each bucket however long the longest tracklet is. One bucket for equal lengths."""
    if extracted.lengths is None:
        return [(torch.arange(len(extracted.pids)), extracted.sequences, None)]
    lengths = extracted.lengths
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    order = torch.sort(lengths, descending=True, stable=True).indices.tolist()
    buckets, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        stop = start
        while stop < len(order) and int(lengths[order[stop]]) * max_ratio >= longest:
            stop += 1
        members = order[start:stop]
        padded = extracted.sequences.new_zeros(len(members), longest, extracted.sequences.shape[1])
        for row, item in enumerate(members):
            start_row, stop_row = int(offsets[item]), int(offsets[item + 1])
            padded[row, : stop_row - start_row] = extracted.sequences[start_row:stop_row]
        index = torch.tensor(members)
        buckets.append((index, padded, lengths[index]))
        start = stop
    return buckets


def _valid(lengths: Tensor, size: int) -> Tensor:
    """(B, size) bool: True at the positions each item really has."""
    return torch.arange(size) < lengths[:, None]


def evaluate(
    model: DuATM,
    query_loader: DataLoader[Any],
    gallery_loader: DataLoader[Any],
    device: torch.device,
    *,
    flip: bool = False,
    amp: bool = False,
    tile_mb: int = 256,
    max_rank: int = 50,
    keep_same_camera: bool = False,
    distractor_pids: Collection[int] = (),
    own_images: OwnImages | None = None,
    progress: bool = True,
    dist: DistContext = SINGLE,
    stream_to: str | Path | None = None,
    block_mb: int = 512,
    diagnostics: bool = True,
) -> tuple[RankMetrics, dict[str, float]]:
    """Rank metrics of the model on a query / gallery split, and a dict of the seconds each
    stage took (``*_s``) and, with ``diagnostics``, the matcher diagnostics of
    :func:`duatm.engine.diagnostics.matcher_diagnostics` (is the attention still attending?).

    With ``dist`` of several ranks (every rank calls this with the same loaders), each rank
    extracts its share of both sets and the distances are computed in blocks of ``block_mb``
    MiB, each rank holding only its share of the gallery and of the matrix; with
    ``stream_to``, the blocks go to a scratch file there instead of memory. Every rank gets
    the same metrics, equal to one process's; the diagnostics then describe the queries
    against the gallery share of each rank.

    ``distractor_pids``: the dataset's (``ReIDDataset.distractor_pids``); queries with them are
    skipped. ``own_images``: from :func:`find_own_images` when the caller evaluates repeatedly
    (it reads the image files); found here when None.
    """
    if own_images is None:
        own_images = find_own_images(query_loader.dataset, gallery_loader.dataset)
    if dist.enabled or stream_to is not None:
        return _evaluate_blockwise(
            model,
            query_loader,
            gallery_loader,
            device,
            flip=flip,
            amp=amp,
            tile_mb=tile_mb,
            max_rank=max_rank,
            keep_same_camera=keep_same_camera,
            distractor_pids=distractor_pids,
            own_images=own_images,
            progress=progress and dist.is_main,
            dist=dist,
            stream_to=stream_to,
            block_mb=block_mb,
            diagnostics=diagnostics,
        )
    result = evaluate_split(
        model,
        query_loader,
        gallery_loader,
        device,
        flip=flip,
        amp=amp,
        tile_mb=tile_mb,
        max_rank=max_rank,
        keep_same_camera=keep_same_camera,
        distractor_pids=distractor_pids,
        own_images=own_images,
        progress=progress,
        diagnostics=diagnostics,
    )
    return result.metrics, {**result.timings, **result.diagnostics}


def evaluate_split(
    model: DuATM,
    query_loader: DataLoader[Any],
    gallery_loader: DataLoader[Any],
    device: torch.device,
    *,
    flip: bool = False,
    amp: bool = False,
    tile_mb: int = 256,
    max_rank: int = 50,
    keep_same_camera: bool = False,
    distractor_pids: Collection[int] = (),
    own_images: OwnImages | None = None,
    rerank: Rerank | None = None,
    progress: bool = True,
    diagnostics: bool = True,
) -> SplitEvaluation:
    """:func:`evaluate` in one process with the whole (Q, G) matrix, which it returns too; with
    ``rerank`` also the metrics and distances after k-reciprocal re-ranking (``duatm evaluate
    --rerank``, reports)."""
    if own_images is None:
        own_images = find_own_images(query_loader.dataset, gallery_loader.dataset)
    start = time.perf_counter()
    query = extract(
        model, query_loader, device, flip=flip, amp=amp, desc="query", progress=progress
    )
    gallery = extract(
        model, gallery_loader, device, flip=flip, amp=amp, desc="gallery", progress=progress
    )
    extracted = time.perf_counter()
    distances = distance_matrix(model.matcher, query, gallery, tile_mb=tile_mb)
    matched = time.perf_counter()

    def ranked(matrix: Tensor) -> RankMetrics:
        return rank_metrics(
            matrix.numpy(),
            query.pids.numpy(),
            gallery.pids.numpy(),
            query.camids.numpy(),
            gallery.camids.numpy(),
            max_rank=max_rank,
            keep_same_camera=keep_same_camera,
            query_gallery_index=own_images.table,
            distractor_pids=distractor_pids,
        )

    metrics = ranked(distances)
    timings = {
        "extract_s": extracted - start,
        "match_s": matched - extracted,
        "rank_s": time.perf_counter() - matched,
    }
    found = _diagnostics(model, query, gallery, distances) if diagnostics else {}
    if diagnostics and model.matcher.mode != "avgpool":
        pooled = distance_matrix(mean_pooling(model), query, gallery, tile_mb=tile_mb)
        found[MEANVEC_MAP] = ranked(pooled).mAP
    if rerank is None:
        return SplitEvaluation(metrics, timings, distances, diagnostics=found)
    reranking = time.perf_counter()
    reranked = reranked_distances(model, query, gallery, distances, rerank, tile_mb=tile_mb)
    reranked_metrics = ranked(reranked)
    timings["rerank_s"] = time.perf_counter() - reranking
    return SplitEvaluation(metrics, timings, distances, reranked_metrics, reranked, found)


def _diagnostics(
    model: DuATM,
    query: ExtractedSequences,
    gallery: ExtractedSequences,
    distances: Tensor | None = None,
) -> dict[str, float]:
    """The matcher diagnostics; the packed tracklets of the ``all`` mode item by item."""
    if query.lengths is None and gallery.lengths is None:
        return matcher_diagnostics(model.matcher, query.sequences, gallery.sequences, distances)
    return matcher_diagnostics(model.matcher, _items(query), _items(gallery), distances)


def mean_pooling(model: DuATM) -> DualAttentionMatcher:
    """The AvePool matcher (Euclidean distance of mean vectors, no parameters) on the model's
    features: ranking with it gives ``meanvec_mAP``, what the same features would score without
    the attention; the difference from the matcher's mAP is what the attention earns."""
    return DualAttentionMatcher(model.matcher.dim, "avgpool")


def _items(extracted: ExtractedSequences) -> list[Tensor]:
    """Every item's (S_k, D) sequence: views of a packed set, or rows of an equal-length one."""
    if extracted.lengths is None:
        return list(extracted.sequences)
    return list(torch.split(extracted.sequences, extracted.lengths.tolist()))


def reranked_distances(
    model: DuATM,
    query: ExtractedSequences,
    gallery: ExtractedSequences,
    distances: Tensor,
    settings: Rerank,
    *,
    tile_mb: int,
) -> Tensor:
    """k-reciprocal re-ranking of the (Q, G) ``distances``, with the query-query and
    gallery-gallery matcher distances computed by the same tiled matcher (each set against
    itself, so one attention direction per pair and a symmetric result)."""
    with torch.inference_mode():
        q_q = model.matcher.pairwise(query.sequences, max_tile_bytes=tile_mb << 20).cpu()
        g_g = model.matcher.pairwise(gallery.sequences, max_tile_bytes=tile_mb << 20).cpu()
    return re_ranking(distances, q_q, g_g, *settings)


def _evaluate_blockwise(
    model: DuATM,
    query_loader: DataLoader[Any],
    gallery_loader: DataLoader[Any],
    device: torch.device,
    *,
    flip: bool,
    amp: bool,
    tile_mb: int,
    max_rank: int,
    keep_same_camera: bool,
    distractor_pids: Collection[int],
    own_images: OwnImages,
    progress: bool,
    dist: DistContext,
    stream_to: str | Path | None,
    block_mb: int,
    diagnostics: bool,
) -> tuple[RankMetrics, dict[str, float]]:
    """`evaluate` with the extraction shared out over the ranks and the metrics block by block."""
    if any(_every_frame(loader) for loader in (query_loader, gallery_loader)):
        raise ConfigError(
            'data.test_clip_mode "all" (tracklets of different lengths) is evaluated in one '
            "process without streaming for now; use test_clip_mode clip here, or evaluate the "
            "checkpoint with duatm evaluate in one process"
        )
    start = time.perf_counter()
    own_query = extract(
        model,
        shard_loader(query_loader, dist),
        device,
        flip=flip,
        amp=amp,
        desc="query",
        progress=progress,
    )
    gallery = extract(
        model,
        shard_loader(gallery_loader, dist),
        device,
        flip=flip,
        amp=amp,
        desc="gallery",
        progress=progress,
    )
    # Every rank compares the whole query set with its gallery share.
    query = ExtractedSequences(*(all_gather_cat(t, dist) for t in own_query[:3]))
    extracted = time.perf_counter()

    def ranked(matcher: DualAttentionMatcher) -> tuple[RankMetrics, dict[str, float]]:
        return blockwise_rank_metrics(
            matcher,
            query.sequences,
            query.pids,
            query.camids,
            gallery.sequences,
            gallery.pids,
            gallery.camids,
            dist,
            max_rank=max_rank,
            keep_same_camera=keep_same_camera,
            query_gallery_index=own_images.table,
            distractor_pids=distractor_pids,
            tile_mb=tile_mb,
            block_bytes=block_mb << 20,
            stream_to=stream_to,
            progress=progress,
        )

    metrics, timings = ranked(model.matcher)
    extra = {"extract_s": extracted - start, **timings}
    if diagnostics:
        # On the rank's gallery share: the matrix itself is never held in one place here.
        extra.update(_diagnostics(model, query, gallery))
        if model.matcher.mode != "avgpool":
            extra[MEANVEC_MAP] = ranked(mean_pooling(model))[0].mAP
    return metrics, extra


def _clip_sampler(loader: DataLoader[Any]) -> ClipSampler | None:
    """The clip sampler of a video loader (of a shard's whole dataset), None for images."""
    dataset = loader.dataset
    dataset = dataset.dataset if isinstance(dataset, Subset) else dataset
    sampler = getattr(dataset, "sampler", None)
    return sampler if isinstance(sampler, ClipSampler) else None


def _every_frame(loader: DataLoader[Any]) -> bool:
    """Whether the loader gives whole tracklets (the ``all`` mode: items of different lengths)."""
    sampler = _clip_sampler(loader)
    return sampler is not None and sampler.length is None


def shard_loader(loader: DataLoader[Any], dist: DistContext) -> DataLoader[Any]:
    """A loader over this rank's contiguous share of ``loader``'s dataset, with its batch size,
    workers and collation (the loader itself in one process)."""
    if not dist.enabled:
        return loader
    dataset = loader.dataset
    share = Subset(dataset, dist.shard(len(dataset)))  # type: ignore[arg-type]
    return DataLoader(
        share,
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=torch.Generator().manual_seed(0),
    )


def query_gallery_index(query_set: object, gallery_set: object) -> np.ndarray | None:
    """For each query, the gallery position of the same image file (-1 if absent), or None when
    the sets share no file (the usual split) or do not list their records.

    Own collections often put the query images in the gallery too; without this, each query
    would find itself at distance 0 whenever same-camera matches are kept.
    """
    query_paths = _image_paths(query_set)
    gallery_paths = _image_paths(gallery_set)
    if query_paths is None or gallery_paths is None:
        return None
    position = {path: i for i, path in enumerate(gallery_paths)}
    index = np.array([position.get(path, -1) for path in query_paths], dtype=np.int64)
    return index if (index >= 0).any() else None


class OwnImages(NamedTuple):
    """Where each query's own image is in the gallery: as the same file, or as a byte-identical
    copy of it with the same identity. Removed from that query's ranking (never a match)."""

    table: np.ndarray | None  # (Q, K) gallery indices, -1 padded; None when there are none
    copies: int  # how many of them are copies (another path, the same bytes)
    mislabelled: int  # copies labelled with another identity: left in the ranking, warned about


def find_own_images(query_set: object, gallery_set: object) -> OwnImages:
    """Query images inside the gallery, by file path (:func:`query_gallery_index`) and by
    content (:func:`byte_identical_copies`), as the table :func:`rank_metrics` takes.

    Own collections often hold the query images in the gallery too, sometimes as copies under
    another name; without this, each such query finds itself at distance 0 when same-camera
    matches are kept (R1 = 100). A copy labelled with another identity contradicts its labels:
    it stays in the ranking as a non-match, and a warning names it.
    """
    query, gallery = _records(query_set), _records(gallery_set)
    query_paths, gallery_paths = _image_paths(query_set), _image_paths(gallery_set)
    if query_paths is None or gallery_paths is None or query is None or gallery is None:
        return OwnImages(None, 0, 0)
    by_path = query_gallery_index(query_set, gallery_set)
    rows = [
        [] if by_path is None or by_path[q] < 0 else [int(by_path[q])] for q in range(len(query))
    ]
    copies, mislabelled = 0, []
    for q, found in enumerate(byte_identical_copies(query_paths, gallery_paths)):
        for g in found:
            if g in rows[q]:
                continue
            if gallery[g].pid == query[q].pid:
                rows[q].append(g)
                copies += 1
            else:
                mislabelled.append((gallery_paths[g], query_paths[q]))
    if mislabelled:
        examples = ", ".join(f"{g} = {q}" for g, q in mislabelled[:_SHOW])
        _LOG.warning(
            "%d gallery image(s) are byte-identical to a query image but labelled with another "
            "identity (e.g. %s); they stay in the ranking as non-matches",
            len(mislabelled),
            examples,
        )
    width = max((len(r) for r in rows), default=0)
    if width == 0:
        return OwnImages(None, 0, len(mislabelled))
    table = np.full((len(rows), width), -1, dtype=np.int64)
    for q, row in enumerate(rows):
        table[q, : len(row)] = row
    return OwnImages(table, copies, len(mislabelled))


def byte_identical_copies(
    query_paths: Sequence[str], gallery_paths: Sequence[str]
) -> list[list[int]]:
    """For each query file, the gallery positions of *other* files with exactly its bytes.

    Cheap first: only files whose size some file on the other side shares are read and hashed
    (BLAKE2b), so a usual split reads next to nothing. Files that cannot be read are left out
    here; loading them reports the error.
    """
    q_sizes, g_sizes = _file_sizes(query_paths), _file_sizes(gallery_paths)
    shared = set(q_sizes) & set(g_sizes)
    by_digest: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for size in shared:
        for g in g_sizes[size]:
            digest = _digest(gallery_paths[g])
            if digest is not None:
                by_digest[size, digest].append(g)
    found: list[list[int]] = [[] for _ in query_paths]
    for size in shared:
        for q in q_sizes[size]:
            digest = _digest(query_paths[q])
            if digest is None:
                continue
            found[q] = [
                g for g in by_digest.get((size, digest), []) if gallery_paths[g] != query_paths[q]
            ]
    return found


def _file_sizes(paths: Sequence[str]) -> dict[int, list[int]]:
    """Positions of the regular files, grouped by size (nothing else is opened: a FIFO blocks)."""
    sizes: dict[int, list[int]] = defaultdict(list)
    for i, path in enumerate(paths):
        try:
            info = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            sizes[info.st_size].append(i)
    return sizes


def _digest(path: str) -> bytes | None:
    digest = hashlib.blake2b()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.digest()


def check_protocol(
    query_set: object,
    gallery_set: object,
    *,
    keep_same_camera: bool,
    distractor_pids: Collection[int] = (),
) -> OwnImages:
    """Fail before training, with the protocol's own explanation, when no query could be
    evaluated (single-camera data without ``eval.keep_same_camera``, disjoint identities, ...);
    returns the own-image table for the evaluations to come."""
    own = find_own_images(query_set, gallery_set)
    query, gallery = _records(query_set), _records(gallery_set)
    if not query or not gallery:  # nothing to check here (an empty split fails on its own)
        return own
    check_valid_queries(
        [r.pid for r in query],
        [r.pid for r in gallery],
        [r.camid for r in query],
        [r.camid for r in gallery],
        keep_same_camera=keep_same_camera,
        query_gallery_index=own.table,
        distractor_pids=distractor_pids,
    )
    return own


def _records(dataset: object) -> list[Any] | None:
    """The records of a torch dataset over records (``.records``) or a list of records."""
    records = getattr(dataset, "records", None)
    if records is None and isinstance(dataset, Sequence):
        records = dataset
    return None if records is None else list(records)


def _image_paths(dataset: object) -> list[str] | None:
    """Resolved file paths of a dataset's image records, or None when it has none to give."""
    paths = [getattr(r, "path", None) for r in _records(dataset) or []]
    if not paths or None in paths:
        return None
    return [os.path.realpath(path) for path in paths]


class ResultsPathError(ValueError):
    """A results path that must not be written: a folder, a read-only place, or a file that
    is not a duatm results file (a checkpoint, an image, a config, ...)."""


def check_results_path(path: str | Path, *, not_over: Sequence[str | Path] = ()) -> Path:
    """Refuse, before any evaluation runs, a results path that :func:`write_results` must not
    write or could not write; returns it.

    Refused: a folder; anything but a regular file; an existing file that is not a results JSON
    written by duatm (an object with ``mAP`` and ``cmc``); a file or folder that is read-only;
    a path under a file; and the files in ``not_over`` (the checkpoint being evaluated).
    """
    path = Path(path)
    where = f"results path {path}"
    if path.is_dir():
        raise ResultsPathError(f"{where} is a folder; give a file name, e.g. {path / RESULTS_JSON}")
    for other in not_over:
        if Path(other).exists() and path.exists() and path.samefile(other):
            raise ResultsPathError(f"{where} is {other} itself; results never replace it")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise ResultsPathError(f"{where} exists and is not a regular file")
        if not _is_results_file(path):
            raise ResultsPathError(
                f"{where} exists and is not a duatm results file; it is never overwritten: "
                "choose another --results"
            )
        if not os.access(path, os.W_OK):
            raise ResultsPathError(f"{where} is read-only")
    folder = path.parent
    while not folder.exists():  # the nearest folder that exists is where files get created
        folder = folder.parent
    if not folder.is_dir():
        raise ResultsPathError(f"{where} is under {folder}, which is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ResultsPathError(f"{where}: the folder {folder} is read-only")
    return path


def _is_results_file(path: Path) -> bool:
    """Whether ``path`` holds what :func:`write_results` writes (read only if it is small)."""
    if path.stat().st_size > _RESULTS_MAX_BYTES:
        return False
    try:
        payload = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(payload, dict) and {"mAP", "cmc"} <= payload.keys()


def write_results(path: str | Path, metrics: RankMetrics, **extra: Any) -> Path:
    """Write the metrics (fractions in [0, 1], the full CMC curve, and each query's AP and
    first-match rank, for paired comparisons of runs) and ``extra`` fields as JSON."""
    payload = {**extra, **rank_metrics_to_dict(metrics), **per_query_to_dict(metrics)}
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return Path(path)
