"""Evaluation: query and gallery sequences, the DuATM distance matrix, CMC / mAP / mINP.

Why separate from training: `duatm evaluate`, the trainer's periodic evaluation and the demo run
the same steps. Three stages, each replaceable: extraction (`extract`), distances
(`distance_matrix`, the whole matrix) and metrics (`rank_metrics`). With several processes or a
``stream_to`` folder, each rank extracts its share and the last two stages run block by block
(`duatm.engine.blockwise`), with the same numbers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from duatm.atomic import atomic_write_text
from duatm.data.transforms import normalise
from duatm.engine.blockwise import blockwise_rank_metrics
from duatm.engine.builders import autocast_for
from duatm.engine.distributed import SINGLE, DistContext, all_gather_cat
from duatm.engine.progress import Progress
from duatm.metrics import RankMetrics, rank_metrics
from duatm.metrics.report import rank_metrics_to_dict
from duatm.models.duatm import DuATM

RESULTS_JSON = "results.json"


class ExtractedSequences(NamedTuple):
    """Sequences of a query or gallery set (on the model's device) and their labels."""

    sequences: Tensor  # (N, S, D) float32
    pids: Tensor  # (N,) int64, on the CPU
    camids: Tensor  # (N,) int64, on the CPU


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
    """Sequences of every image the loader yields, in order (the model is put in eval mode)."""
    model.eval()
    chunks, pids, camids = [], [], []
    total = len(loader.dataset)  # type: ignore[arg-type]
    with Progress(total=total, desc=desc, unit="img", enabled=progress) as bar:
        for batch in loader:
            chunks.append(extract_batch(model, batch["image"], device, flip=flip, amp=amp))
            pids.append(batch["pid"])
            camids.append(batch["camid"])
            bar.update(len(batch["image"]))
    if not chunks:
        raise ValueError(f"{desc}: the loader yielded no images")
    return ExtractedSequences(torch.cat(chunks), torch.cat(pids), torch.cat(camids))


def extract_batch(
    model: DuATM, images: Tensor, device: torch.device, *, flip: bool = False, amp: bool = False
) -> Tensor:
    """float32 sequences (B, S, D) on ``device`` of a uint8 batch (B, 3, H, W) from a pixel
    pipeline: the one extraction step that evaluation, indexing and :func:`duatm.load`'s
    ``extract`` share, so that they give the same numbers."""
    pixels = normalise(images.to(device, non_blocking=True))
    with autocast_for(device, amp):
        sequences = model.extract_sequences(pixels, flip=flip)
    return sequences.float()


def distance_matrix(
    model: DuATM, query: ExtractedSequences, gallery: ExtractedSequences, *, tile_mb: int
) -> Tensor:
    """The (Q, G) matcher distances on the CPU, computed in tiles of at most ``tile_mb`` MiB."""
    with torch.inference_mode():
        distances = model.matcher.pairwise(
            query.sequences, gallery.sequences, max_tile_bytes=tile_mb << 20
        )
    return distances.cpu()


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
    progress: bool = True,
    dist: DistContext = SINGLE,
    stream_to: str | Path | None = None,
    block_mb: int = 512,
) -> tuple[RankMetrics, dict[str, float]]:
    """Rank metrics of the model on a query / gallery split, and the seconds each stage took.

    With ``dist`` of several ranks (every rank calls this with the same loaders), each rank
    extracts its share of both sets and the distances are computed in blocks of ``block_mb``
    MiB, each rank holding only its share of the gallery and of the matrix; with
    ``stream_to``, the blocks go to a scratch file there instead of memory. Every rank gets
    the same metrics, equal to one process's.
    """
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
            progress=progress and dist.is_main,
            dist=dist,
            stream_to=stream_to,
            block_mb=block_mb,
        )
    start = time.perf_counter()
    query = extract(
        model, query_loader, device, flip=flip, amp=amp, desc="query", progress=progress
    )
    gallery = extract(
        model, gallery_loader, device, flip=flip, amp=amp, desc="gallery", progress=progress
    )
    extracted = time.perf_counter()
    distances = distance_matrix(model, query, gallery, tile_mb=tile_mb)
    matched = time.perf_counter()
    metrics = rank_metrics(
        distances.numpy(),
        query.pids.numpy(),
        gallery.pids.numpy(),
        query.camids.numpy(),
        gallery.camids.numpy(),
        max_rank=max_rank,
        keep_same_camera=keep_same_camera,
        query_gallery_index=query_gallery_index(query_loader.dataset, gallery_loader.dataset),
    )
    timings = {
        "extract_s": extracted - start,
        "match_s": matched - extracted,
        "rank_s": time.perf_counter() - matched,
    }
    return metrics, timings


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
    progress: bool,
    dist: DistContext,
    stream_to: str | Path | None,
    block_mb: int,
) -> tuple[RankMetrics, dict[str, float]]:
    """`evaluate` with the extraction shared out over the ranks and the metrics block by block."""
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
    query = ExtractedSequences(*(all_gather_cat(t, dist) for t in own_query))
    extracted = time.perf_counter()
    metrics, timings = blockwise_rank_metrics(
        model.matcher,
        query.sequences,
        query.pids,
        query.camids,
        gallery.sequences,
        gallery.pids,
        gallery.camids,
        dist,
        max_rank=max_rank,
        keep_same_camera=keep_same_camera,
        query_gallery_index=query_gallery_index(query_loader.dataset, gallery_loader.dataset),
        tile_mb=tile_mb,
        block_bytes=block_mb << 20,
        stream_to=stream_to,
        progress=progress,
    )
    return metrics, {"extract_s": extracted - start, **timings}


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


def _image_paths(dataset: object) -> list[str] | None:
    """Resolved file paths of a dataset's image records, or None when it has none to give."""
    paths = [getattr(r, "path", None) for r in getattr(dataset, "records", None) or []]
    if not paths or None in paths:
        return None
    return [os.path.realpath(path) for path in paths]


def write_results(path: str | Path, metrics: RankMetrics, **extra: Any) -> Path:
    """Write the metrics (fractions in [0, 1], the full CMC curve) and ``extra`` fields as JSON."""
    payload = {**extra, **rank_metrics_to_dict(metrics)}
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return Path(path)
