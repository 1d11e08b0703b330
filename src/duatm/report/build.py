"""What a report shows, computed from a trained model, the items of a split and their distances:
metrics, the worst (or chosen) queries' ranked lists, and the attention of query-gallery pairs.

Why here and not in the command: a notebook can build the same page from its own distances
(e.g. after re-ranking or on a filtered split) with :func:`build_report` and
:func:`duatm.report.page.render_report`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2.functional import to_pil_image

from duatm.api import TrainedModel
from duatm.config import ConfigError
from duatm.data.clips import evaluation_clip_sampler
from duatm.data.records import ImageRecord, TrackletRecord
from duatm.data.transforms import normalise, read_image
from duatm.data.video_dataset import VideoDataset
from duatm.engine.evaluator import extract_batch, find_own_images
from duatm.metrics import per_query_ranks, rank_metrics
from duatm.report.figures import attention_data_uri, image_data_uri
from duatm.report.page import (
    AttentionDirection,
    AttentionView,
    Cell,
    Frame,
    FrameAttentionDirection,
    FrameAttentionView,
    Item,
    MetricsRow,
    PairAttentionSection,
    QueryRanking,
    RankedItem,
    ReportContent,
)

#: Fractions of the feature-map height where the default positions sit (centre column):
#: roughly head, torso and legs of a standing person.
DEFAULT_HEIGHTS = (1 / 6, 1 / 2, 5 / 6)
#: Frames of a tracklet shown in a ranked list: evenly spread from its first to its last.
STRIP_FRAMES = 4


def worst_queries(
    ap: np.ndarray, first_rank: np.ndarray, num_rel: np.ndarray, count: int
) -> list[int]:
    """Indices of the ``count`` valid queries with the lowest AP (ties: later first true match,
    then lower index)."""
    valid = np.flatnonzero(num_rel > 0)
    order = np.lexsort((valid, -first_rank[valid], ap[valid]))
    return [int(i) for i in valid[order[:count]]]


def default_positions(rows: int, cols: int) -> list[int]:
    """Sequence positions of the centre column at DEFAULT_HEIGHTS (row-major, docs/design.md#sequences)."""
    picked = sorted({min(rows - 1, int(rows * f)) for f in DEFAULT_HEIGHTS})
    return [r * cols + cols // 2 for r in picked]


def default_steps(length: int) -> list[int]:
    """Time steps of a clip looked from by default: the first, the middle and the last."""
    return sorted({0, length // 2, length - 1})


def strip_frames(num_frames: int, count: int = STRIP_FRAMES) -> list[int]:
    """Indices of ``count`` frames spread evenly over a tracklet, first and last included."""
    if num_frames <= count:
        return list(range(num_frames))
    return [round(k * (num_frames - 1) / (count - 1)) for k in range(count)]


def record_name(record: ImageRecord | TrackletRecord) -> str:
    """The name a report prints and ``--queries`` accepts: an image's file name, or the file
    name of a tracklet's first frame."""
    path = record.path if isinstance(record, ImageRecord) else record.paths[0]
    return path.rsplit("/", 1)[-1]


def feature_grid(model: TrainedModel) -> tuple[int, int]:
    """(rows, columns) of the feature map behind each sequence, at the model's input size."""
    d = model.config.data
    blank = torch.zeros(1, 3, d.height, d.width, dtype=torch.uint8, device=model.device)
    with torch.inference_mode():
        fmap = model.module.extractor.backbone(normalise(blank))
    return int(fmap.shape[-2]), int(fmap.shape[-1])


def ranked_gallery(
    distances: np.ndarray,
    query: int,
    q_pid: int,
    q_camid: int,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    own_images: np.ndarray,
    keep_same_camera: bool,
    top: int,
) -> list[int]:
    """Gallery indices of the query's ``top`` nearest items as the protocol ranks them: sorted
    by distance (ties by index), without same-identity same-camera items (unless kept) and
    without the query's own image and its copies (``own_images``, gallery indices)."""
    order = np.argsort(distances[query], kind="stable")
    removed = np.zeros(order.size, dtype=bool)
    if not keep_same_camera:
        removed |= (g_pids[order] == q_pid) & (g_camids[order] == q_camid)
    removed |= np.isin(order, own_images)
    return [int(g) for g in order[~removed][:top]]


def build_report(
    model: TrainedModel,
    query: Sequence[ImageRecord] | Sequence[TrackletRecord],
    gallery: Sequence[ImageRecord] | Sequence[TrackletRecord],
    distances: Tensor | np.ndarray,
    *,
    title: str = "DuATM report",
    facts: Sequence[tuple[str, str]] = (),
    reranked: Tensor | np.ndarray | None = None,
    reranked_label: str = "re-ranked",
    queries: Sequence[int] | None = None,
    worst: int = 5,
    top: int = 10,
    pairs: Sequence[tuple[int, int]] | None = None,
    attention_pairs: int = 2,
    positions: Sequence[int] | None = None,
    keep_same_camera: bool = False,
    distractor_pids: Collection[int] = (),
    max_rank: int = 50,
) -> ReportContent:
    """The content of a report on ``query`` x ``gallery`` with their (Q, G) ``distances``.

    ``queries`` (indices) are shown, or else the ``worst`` valid queries by AP; each with its
    ``top`` ranked gallery items. Attention is drawn for ``pairs`` (query index, gallery index),
    or else for the first ``attention_pairs`` shown queries with their rank-1 item; at
    ``positions`` (sequence indices, default: :func:`default_positions`). Query images found
    in the gallery (same file or byte-identical copy) and distractor queries are handled as
    evaluation handles them.

    For a video model the items are :class:`~duatm.data.records.TrackletRecord`: ranked
    lists show :func:`strip_frames` of each tracklet, and each pair's attention is drawn over
    the frames of the clips the evaluation matches (``data.test_clip_mode``), at
    ``positions`` that are time steps (default: :func:`default_steps`).
    """
    dist = np.asarray(distances.cpu() if isinstance(distances, Tensor) else distances)
    q_pids = np.array([r.pid for r in query])
    g_pids = np.array([r.pid for r in gallery])
    q_camids = np.array([r.camid for r in query])
    g_camids = np.array([r.camid for r in gallery])
    labels = (q_pids, g_pids, q_camids, g_camids)
    own = find_own_images(list(query), list(gallery)).table  # (Q, K), -1 padded, or None
    options = {
        "keep_same_camera": keep_same_camera,
        "query_gallery_index": own,
        "distractor_pids": distractor_pids,
    }
    metrics = [_metrics_row("matcher distances", dist, labels, max_rank, options)]
    if reranked is not None:
        matrix = np.asarray(reranked.cpu() if isinstance(reranked, Tensor) else reranked)
        metrics.append(_metrics_row(reranked_label, matrix, labels, max_rank, options))

    per_query = per_query_ranks(dist, *labels, **options)
    if queries is None:
        shown = worst_queries(per_query.ap, per_query.first_rank, per_query.num_rel, worst)
        note = f"The {len(shown)} queries with the lowest average precision."
    else:
        shown = [int(i) for i in queries]
        note = "Chosen queries."
    images = _ImageCache(model)
    rankings = []
    for qi in shown:
        order = ranked_gallery(
            dist,
            qi,
            q_pids[qi],
            q_camids[qi],
            g_pids,
            g_camids,
            np.empty(0, dtype=np.int64) if own is None else own[qi][own[qi] >= 0],
            keep_same_camera,
            top,
        )
        valid = per_query.num_rel[qi] > 0
        rankings.append(
            QueryRanking(
                index=qi,
                item=images.item(query[qi]),
                ap=float(per_query.ap[qi]) if valid else None,
                first_rank=int(per_query.first_rank[qi]) if valid else None,
                ranked=[
                    RankedItem(
                        images.item(gallery[g]),
                        g,
                        rank,
                        float(dist[qi, g]),
                        bool(g_pids[g] == q_pids[qi]),
                    )
                    for rank, g in enumerate(order, start=1)
                ],
            )
        )
    notes = []
    if model.config.model.mode == "avgpool":
        notes.append("The AvePool baseline compares mean vectors: it has no attention to draw.")
        pairs = []
    elif pairs is None:
        pairs = [(r.index, r.ranked[0].index) for r in rankings[:attention_pairs] if r.ranked]
    if model.config.model.kind == "video":
        sections = [
            _clip_pair_attention(
                model, images, query[qi], gallery[gi], qi, gi, float(dist[qi, gi]), positions
            )
            for qi, gi in pairs
        ]
    else:
        grid = feature_grid(model)
        sections = [
            _pair_attention(
                model, images, query[qi], gallery[gi], qi, gi, float(dist[qi, gi]), grid, positions
            )
            for qi, gi in pairs
        ]
    return ReportContent(
        title=title,
        facts=list(facts),
        metrics=metrics,
        queries_note=note,
        queries=rankings,
        pairs=sections,
        notes=notes,
    )


def _metrics_row(label, matrix, labels, max_rank, options) -> MetricsRow:
    m = rank_metrics(matrix, *labels, max_rank=max_rank, **options)
    return MetricsRow(label, [float(v) for v in m.cmc], m.mAP, m.mINP, m.num_valid_queries)


class _ImageCache:
    """Each image (or frame) decoded and resized to the model's input once, as a data URI."""

    def __init__(self, model: TrainedModel) -> None:
        self.model = model
        self.uris: dict[str, str] = {}

    def pixels(self, path: str) -> Image.Image:
        return to_pil_image(self.model.transform.prepare(read_image(path)))

    def uri(self, path: str) -> str:
        if path not in self.uris:
            self.uris[path] = image_data_uri(self.pixels(path))
        return self.uris[path]

    def item(self, record: ImageRecord | TrackletRecord) -> Item:
        if isinstance(record, TrackletRecord):
            frames = tuple(
                Frame(self.uri(record.paths[i]), i) for i in strip_frames(len(record.paths))
            )
            return Item(
                frames[0].image,
                record_name(record),
                record.pid,
                record.camid,
                frames=frames,
                num_frames=len(record.paths),
            )
        return Item(self.uri(record.path), record_name(record), record.pid, record.camid)


def _pair_attention(
    model: TrainedModel,
    images: _ImageCache,
    query: ImageRecord,
    gallery: ImageRecord,
    qi: int,
    gi: int,
    distance: float,
    grid: tuple[int, int],
    positions: Sequence[int] | None,
) -> PairAttentionSection:
    """Both directions' attention of one pair, at the chosen positions."""
    rows, cols = grid
    sequences = model.extract([query.path, gallery.path])
    if sequences.shape[1] != rows * cols:
        raise ValueError(
            f"sequences have {sequences.shape[1]} elements but the feature map is {rows} x {cols}"
        )
    picked = default_positions(rows, cols) if positions is None else list(positions)
    for p in picked:
        if not 0 <= p < rows * cols:
            raise ValueError(
                f"positions: {p} is outside 0..{rows * cols - 1} ({rows} x {cols} map)"
            )
    with torch.inference_mode():
        att = model.module.matcher.attention(sequences[:1], sequences[1:])
    q_item, g_item = images.item(query), images.item(gallery)
    q_label, g_label = f"query {qi}", f"gallery {gi}"

    def views(intra: Tensor | None, inter: Tensor | None) -> list[AttentionView]:
        out = []
        for p in picked:
            intra_map = None if intra is None else intra[0, p].reshape(rows, cols).cpu().numpy()
            inter_map = None if inter is None else inter[0, p].reshape(rows, cols).cpu().numpy()
            out.append(
                AttentionView(
                    position=p,
                    cell=Cell(p // cols, p % cols, rows, cols),
                    intra=None if intra_map is None else attention_data_uri(intra_map),
                    inter=None if inter_map is None else attention_data_uri(inter_map),
                    intra_peak=None if intra_map is None else float(intra_map.max()),
                    inter_peak=None if inter_map is None else float(inter_map.max()),
                )
            )
        return out

    return PairAttentionSection(
        title=f"query {qi} ({q_item.name}) and gallery {gi} ({g_item.name})",
        distance=distance,
        match=query.pid == gallery.pid,
        directions=[
            AttentionDirection(q_item, g_item, q_label, g_label, views(att.intra_a, att.inter_ab)),
            AttentionDirection(g_item, q_item, g_label, q_label, views(att.intra_b, att.inter_ba)),
        ],
    )


def _clip_pair_attention(
    model: TrainedModel,
    images: _ImageCache,
    query: TrackletRecord,
    gallery: TrackletRecord,
    qi: int,
    gi: int,
    distance: float,
    positions: Sequence[int] | None,
) -> PairAttentionSection:
    """Both directions' attention of a tracklet pair over the frames of its evaluation clips.

    Each clip is extracted alone (a batch of one, no padding), so clips of different lengths
    (``data.test_clip_mode`` "all") need nothing special: the attention of one pair is
    computed on the two sequences at their own lengths."""
    d = model.config.data
    sampler = evaluation_clip_sampler(d.test_clip_mode, d.test_clip_len, d.test_clip_start)
    labels = (f"query {qi}", f"gallery {gi}")
    clips, sequences = [], []
    for record in (query, gallery):
        item = VideoDataset([record], model.transform, sampler)[0]
        chosen = sampler(len(record.paths))
        clips.append([Frame(images.uri(record.paths[i]), i) for i in chosen])
        sequences.append(
            extract_batch(
                model.module,
                item["clip"][None],
                model.device,
                flip=model.config.eval.flip,
                amp=model.amp,
            )
        )
    for label, clip in zip(labels, clips, strict=True):
        for p in positions or []:
            if not 0 <= p < len(clip):
                raise ConfigError(
                    f"positions: time step {p} is outside 0..{len(clip) - 1} ({label}'s clip "
                    f"has {len(clip)} frames)"
                )
    with torch.inference_mode():
        att = model.module.matcher.attention(sequences[0], sequences[1])

    def direction(
        source: int, intra: Tensor | None, inter: Tensor | None
    ) -> FrameAttentionDirection:
        target = 1 - source
        intra_rows = None if intra is None else intra[0].cpu().numpy()
        inter_rows = None if inter is None else inter[0].cpu().numpy()
        picked = default_steps(len(clips[source])) if positions is None else list(positions)
        return FrameAttentionDirection(
            source=images.item((query, gallery)[source]),
            target=images.item((query, gallery)[target]),
            source_label=labels[source],
            target_label=labels[target],
            source_frames=clips[source],
            target_frames=clips[target],
            intra_matrix=None if intra_rows is None else attention_data_uri(intra_rows),
            inter_matrix=None if inter_rows is None else attention_data_uri(inter_rows),
            views=[
                FrameAttentionView(
                    position=p,
                    intra=None if intra_rows is None else [float(w) for w in intra_rows[p]],
                    inter=None if inter_rows is None else [float(w) for w in inter_rows[p]],
                )
                for p in picked
            ],
        )

    names = (record_name(query), record_name(gallery))
    return PairAttentionSection(
        title=f"query {qi} ({names[0]}) and gallery {gi} ({names[1]})",
        distance=distance,
        match=query.pid == gallery.pid,
        directions=[
            direction(0, att.intra_a, att.inter_ab),
            direction(1, att.intra_b, att.inter_ba),
        ],
    )
