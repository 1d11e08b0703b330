"""The report's HTML: what it shows (plain dataclasses) and how it is laid out (one function).

Why separate from building: rendering needs no model and no data set, so the layout can be
checked and changed on small hand-made contents, and other producers (video, search results)
can fill the same dataclasses.

The page carries hooks for checks in a browser: every image is an ``<img>`` with a data URI;
attention maps are ``img.attention-overlay`` (``data-kind`` "intra" or "inter") stacked over
their image, the looking position is a ``div.position-marker``; when the page has loaded, a
small script writes ``data-images``, ``data-images-loaded`` and ``data-overlays`` on ``<body>``.
Video pages show tracklets as ``figure.tracklet`` strips of ``img.frame``; their attention is
``img.attention-matrix`` heat maps (``data-kind``) and, per looking time step, a
``div.frame-weight`` under every frame with its weight in ``data-weight``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from duatm.report.figures import cmc_svg

REPORT_RANKS = (1, 5, 10, 20)


@dataclass(frozen=True)
class MetricsRow:
    """One row of the metrics table and one CMC curve."""

    label: str
    cmc: list[float]  # fractions at ranks 1..max_rank
    mAP: float
    mINP: float
    num_valid_queries: int


@dataclass(frozen=True)
class Frame:
    """One frame of a tracklet as shown: its data URI and its index in the tracklet (from 0)."""

    image: str
    index: int


@dataclass(frozen=True)
class Item:
    """One image (or tracklet) as shown: its data URI and what to print under it. A tracklet
    also has ``frames``, the few frames of its strip (``image`` is the first of them), and
    ``num_frames``, its length."""

    image: str
    name: str
    pid: int
    camid: int
    frames: tuple[Frame, ...] = ()
    num_frames: int | None = None


@dataclass(frozen=True)
class RankedItem:
    """A gallery item in a query's ranked list (rank counts kept items, from 1)."""

    item: Item
    index: int  # position in the gallery
    rank: int
    distance: float
    match: bool


@dataclass(frozen=True)
class QueryRanking:
    """A query and the top of its ranked gallery list, as the protocol ranks it."""

    index: int
    item: Item
    ap: float | None  # None when the protocol skips the query (no true match left)
    first_rank: int | None
    ranked: list[RankedItem]


@dataclass(frozen=True)
class Cell:
    """A feature-map position drawn on an image: row, column and grid size."""

    row: int
    col: int
    rows: int
    cols: int


@dataclass(frozen=True)
class AttentionView:
    """Where one position of the source image looks (paper Fig. 8): its refinement (intra,
    over the source) and its alignment (inter, over the target); None when the matcher's mode
    does not compute that attention."""

    position: int
    cell: Cell
    intra: str | None  # data URI of the map over the source image
    inter: str | None  # data URI of the map over the target image
    intra_peak: float | None
    inter_peak: float | None


@dataclass(frozen=True)
class AttentionDirection:
    """One matching direction of a pair: positions of ``source`` looking at ``target``."""

    source: Item
    target: Item
    source_label: str
    target_label: str
    views: list[AttentionView]


@dataclass(frozen=True)
class FrameAttentionView:
    """Where one time step (frame) of the source clip looks: its refinement weights over the
    source clip's time steps (intra) and its alignment weights over the target clip's (inter);
    each a softmax row that sums to 1, ``None`` when the matcher's mode does not compute it."""

    position: int  # time step of the source clip
    intra: list[float] | None
    inter: list[float] | None


@dataclass(frozen=True)
class FrameAttentionDirection:
    """One matching direction of a tracklet pair: time steps of the source clip looking at the
    target clip. ``*_frames`` are the clips as the model matched them (one frame per time step;
    a short tracklet's clip repeats frames); the matrices are heat maps of all rows (data URIs,
    rows: source time steps)."""

    source: Item
    target: Item
    source_label: str
    target_label: str
    source_frames: list[Frame]
    target_frames: list[Frame]
    intra_matrix: str | None
    inter_matrix: str | None
    views: list[FrameAttentionView]


@dataclass(frozen=True)
class PairAttentionSection:
    """A query-gallery pair, its distance and both directions' attention."""

    title: str
    distance: float
    match: bool
    directions: list[AttentionDirection] | list[FrameAttentionDirection]


@dataclass(frozen=True)
class ReportContent:
    """Everything a report page shows."""

    title: str
    facts: list[tuple[str, str]]  # (name, value) lines under the title
    metrics: list[MetricsRow]
    queries_note: str
    queries: list[QueryRanking]
    pairs: list[PairAttentionSection]
    notes: list[str] = field(default_factory=list)


def render_report(content: ReportContent) -> str:
    """The whole self-contained HTML page."""
    e = html.escape
    video = _has_video(content)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(content.title)}</title>",
        f"<style>{_CSS}{_VIDEO_CSS if video else ''}</style></head><body>",
        f"<h1>{e(content.title)}</h1>",
        '<dl class="facts">',
        *(f"<dt>{e(name)}</dt><dd>{e(value)}</dd>" for name, value in content.facts),
        "</dl>",
        *(f'<p class="note">{e(note)}</p>' for note in content.notes),
        '<section id="metrics"><h2>Metrics</h2>',
        _metrics_table(content.metrics),
        cmc_svg({row.label: row.cmc for row in content.metrics}),
        "</section>",
        '<section id="rankings"><h2>Ranked lists</h2>',
        f'<p class="note">{e(content.queries_note)} Green: same identity (true match); red: '
        "another identity. Ranks count the gallery as the protocol keeps it (same identity and "
        "camera as the query removed).</p>",
        *(_query_row(q) for q in content.queries),
        "</section>",
        '<section id="attention"><h2>Where DuATM looks</h2>',
        _VIDEO_ATTENTION_NOTE if video else _IMAGE_ATTENTION_NOTE,
        *(_pair_section(p) for p in content.pairs),
        "</section>",
        f"<script>{_LOAD_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _has_video(content: ReportContent) -> bool:
    return any(q.item.frames for q in content.queries) or any(
        isinstance(d, FrameAttentionDirection) for p in content.pairs for d in p.directions
    )


_IMAGE_ATTENTION_NOTE = (
    '<p class="note">For a position of one image (white box), where its refinement looks '
    "within its own image (intra-sequence attention) and where its alignment looks in the "
    "other image (inter-sequence attention); deeper red is more weight, each map scaled to "
    "its own largest weight (the peak is printed; weights spread evenly over S positions "
    "would each be 1/S). Feature-map cells are drawn over the image region they were "
    "computed from. Paper Fig. 8.</p>"
)
_VIDEO_ATTENTION_NOTE = (
    '<p class="note">Video sequences are time steps: one element per frame of the clip the '
    "model matched (a tracklet shorter than the clip is read in a loop, so frames repeat). For "
    "a time step of one clip (boxed frame), the bar under each frame of its own clip is the "
    "weight its refinement gives that frame (intra-sequence attention) and the bar under each "
    "frame of the other clip the weight its alignment gives it (inter-sequence attention); "
    "each row of weights sums to 1 and the bars are scaled to the row's largest weight. The "
    "heat maps show every row at once: row i is time step i of the looking clip, column j "
    "time step j of the clip looked at, deeper red is more weight. Paper Fig. 8.</p>"
)


def _metrics_table(rows: list[MetricsRow]) -> str:
    e = html.escape
    max_rank = min(len(r.cmc) for r in rows)
    ranks = [k for k in REPORT_RANKS if k <= max_rank]
    head = "".join(f"<th>R{k}</th>" for k in ranks) + "<th>mAP</th><th>mINP</th><th>queries</th>"
    body = []
    for row in rows:
        cells = [f"{100 * row.cmc[k - 1]:.1f}" for k in ranks]
        cells += [f"{100 * row.mAP:.1f}", f"{100 * row.mINP:.1f}", str(row.num_valid_queries)]
        body.append(
            f"<tr><th>{e(row.label)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        )
    return (
        f'<table class="metrics"><tr><th></th>{head}</tr>{"".join(body)}</table>'
        '<p class="note">Percent; queries: valid queries (with a true match left).</p>'
    )


def _figure(item: Item, caption: str, classes: str = "", extra: str = "") -> str:
    e = html.escape
    return (
        f'<figure class="{classes}"><div class="stack">'
        f'<img class="base" src="{item.image}" alt="{e(item.name)}">{extra}</div>'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _item_figure(item: Item, caption: str, classes: str) -> str:
    """An image as :func:`_figure` draws it, or a tracklet as a strip of its frames."""
    if not item.frames:
        return _figure(item, caption, classes)
    frames = "".join(
        f'<img class="frame" src="{f.image}" alt="frame {f.index}" title="frame {f.index}">'
        for f in item.frames
    )
    return (
        f'<figure class="{classes} tracklet" data-frames="{len(item.frames)}">'
        f'<div class="stack strip">{frames}</div>'
        f"<figcaption>{caption}<br>{item.num_frames} frames</figcaption></figure>"
    )


def _query_row(query: QueryRanking) -> str:
    e = html.escape
    stats = (
        "skipped by the protocol (no true match left)"
        if query.ap is None
        else f"AP {100 * query.ap:.1f}, first true match at rank {query.first_rank}"
    )
    head = _item_figure(
        query.item,
        f"<b>query {query.index}</b><br>{e(query.item.name)}<br>id {query.item.pid}, "
        f"cam {query.item.camid}<br>{e(stats)}",
        "query",
    )
    ranked = "".join(
        _item_figure(
            r.item,
            f"<b>{r.rank}</b> · {r.distance:.4f}<br>id {r.item.pid}, cam {r.item.camid}",
            "ranked " + ("true" if r.match else "false"),
        )
        for r in query.ranked
    )
    return f'<div class="ranking" data-query="{query.index}">{head}{ranked}</div>'


def _marker(cell: Cell) -> str:
    return (
        '<div class="position-marker" style="'
        f"left:{100 * cell.col / cell.cols:.4f}%;top:{100 * cell.row / cell.rows:.4f}%;"
        f'width:{100 / cell.cols:.4f}%;height:{100 / cell.rows:.4f}%"></div>'
    )


def _overlay(kind: str, uri: str) -> str:
    return f'<img class="attention-overlay" data-kind="{kind}" src="{uri}" alt="{kind} attention">'


def _pair_section(pair: PairAttentionSection) -> str:
    e = html.escape
    verdict = "true match" if pair.match else "false match"
    rows = [
        f'<div class="pair"><h3>{e(pair.title)}</h3>'
        f'<p class="note">DuATM distance {pair.distance:.4f} ({verdict}).</p>'
    ]
    for direction in pair.directions:
        if isinstance(direction, FrameAttentionDirection):
            rows.append(_frame_direction(direction))
            continue
        src, tgt = e(direction.source_label), e(direction.target_label)
        rows.append(f'<h4>{src} looking at {tgt}</h4><div class="direction">')
        for view in direction.views:
            where = f"position {view.position} (row {view.cell.row}, column {view.cell.col})"
            figures = [
                _figure(direction.source, f"{where} of {src}", "att", _marker(view.cell)),
                _figure(
                    direction.source,
                    _peak("refinement (intra) within " + src, view.intra_peak),
                    "att",
                    (_overlay("intra", view.intra) if view.intra else "") + _marker(view.cell),
                )
                if view.intra is not None
                else _absent("no refinement in this matcher mode"),
                _figure(
                    direction.target,
                    _peak("alignment (inter) in " + tgt, view.inter_peak),
                    "att",
                    _overlay("inter", view.inter),
                )
                if view.inter is not None
                else _absent("no alignment in this matcher mode"),
            ]
            rows.append(
                f'<div class="attention-row" data-position="{view.position}">'
                + "".join(figures)
                + "</div>"
            )
        rows.append("</div>")
    rows.append("</div>")
    return "".join(rows)


def _frame_direction(direction: FrameAttentionDirection) -> str:
    """One direction of a tracklet pair: the heat maps of all time steps, then for each chosen
    time step both clips' frames with that step's weight under each frame."""
    e = html.escape
    src, tgt = e(direction.source_label), e(direction.target_label)
    steps_a, steps_b = len(direction.source_frames), len(direction.target_frames)
    matrices = [
        _matrix(kind, uri, caption, rows, cols)
        for kind, uri, caption, rows, cols in (
            (
                "intra",
                direction.intra_matrix,
                f"refinement (intra): {src} x {src}",
                steps_a,
                steps_a,
            ),
            (
                "inter",
                direction.inter_matrix,
                f"alignment (inter): {src} x {tgt}",
                steps_a,
                steps_b,
            ),
        )
        if uri is not None
    ]
    parts = [
        f'<h4>{src} looking at {tgt}</h4><div class="frame-direction">',
        f'<div class="matrices">{"".join(matrices)}</div>',
    ]
    for view in direction.views:
        parts.append(
            f'<div class="frame-attention" data-position="{view.position}">'
            f'<p class="note">time step {view.position} of {src} '
            f"(frame {direction.source_frames[view.position].index})</p>"
        )
        for kind, label, frames, weights in (
            ("intra", f"refinement (intra) within {src}", direction.source_frames, view.intra),
            ("inter", f"alignment (inter) in {tgt}", direction.target_frames, view.inter),
        ):
            if weights is None:
                parts.append(f'<p class="note">no {e(kind)} attention in this matcher mode</p>')
                continue
            looking = view.position if kind == "intra" else None
            parts.append(_weighted_strip(kind, label, frames, weights, looking))
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)


def _matrix(kind: str, uri: str, caption: str, rows: int, cols: int) -> str:
    scale = max(4, min(16, 320 // max(rows, cols)))  # pixels per cell, for a readable map
    return (
        f'<figure class="matrix"><img class="attention-matrix" data-kind="{kind}" src="{uri}" '
        f'alt="{kind} attention" style="width:{cols * scale}px;height:{rows * scale}px">'
        f"<figcaption>{caption}<br>rows {rows}, columns {cols} time steps</figcaption></figure>"
    )


def _weighted_strip(
    kind: str, label: str, frames: list[Frame], weights: list[float], looking: int | None
) -> str:
    """A clip's frames, each with a bar (scaled to the row's peak) and its weight under it."""
    peak = max(weights)
    cells = []
    for step, (frame, w) in enumerate(zip(frames, weights, strict=True)):
        width = 100 * w / peak if peak > 0 else 0.0
        cells.append(
            f'<figure class="frame{" looking" if step == looking else ""}" data-step="{step}">'
            f'<img class="frame" src="{frame.image}" alt="frame {frame.index}" '
            f'title="time step {step}, frame {frame.index}">'
            f'<div class="frame-weight" data-kind="{kind}" data-weight="{w:.6f}">'
            f'<span style="width:{width:.1f}%"></span></div>'
            f"<figcaption>{w:.3f}</figcaption></figure>"
        )
    return (
        f'<div class="weighted-strip" data-kind="{kind}"><div class="strip-label">'
        f'{label}</div><div class="frames">{"".join(cells)}</div></div>'
    )


def _peak(text: str, peak: float | None) -> str:
    return html.escape(text) + ("" if peak is None else f"<br>peak weight {peak:.3f}")


def _absent(text: str) -> str:
    return f'<figure class="att absent"><figcaption>{html.escape(text)}</figcaption></figure>'


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px;
color:#222;max-width:1500px}
h1{font-size:1.5em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:4px;
margin-top:1.6em}h3{margin:1.2em 0 .2em}h4{margin:.8em 0 .3em;font-weight:600}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:.9em}
dl.facts dt{color:#666}dl.facts dd{margin:0;font-family:ui-monospace,monospace}
.note{color:#555;font-size:.88em;max-width:70em}
table.metrics{border-collapse:collapse;margin:8px 0}table.metrics td,table.metrics th{
padding:3px 10px;text-align:right;border-bottom:1px solid #ddd}table.metrics th:first-child{
text-align:left}svg.cmc{font-size:11px;fill:#444;margin-top:8px}
.ranking{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin:10px 0}
.direction{display:flex;flex-wrap:wrap;gap:14px}
.attention-row{display:flex;gap:6px;align-items:flex-start;padding:6px;border:1px solid #e4e4e4}
figure{margin:0;font-size:11px;text-align:center;width:84px}
figure.query{margin-right:14px;width:104px}
.stack{position:relative;line-height:0;border:3px solid #bbb}
.stack img{width:100%;display:block}
figure.true .stack{border-color:#1e9e4a}figure.false .stack{border-color:#d0342c}
figure.query .stack{border-color:#1f5fbf}
figure.att{width:112px}figure.absent{width:112px;color:#888;padding-top:40px}
img.attention-overlay{position:absolute;left:0;top:0;width:100%;height:100%;
image-rendering:pixelated}
.position-marker{position:absolute;box-sizing:border-box;border:2px solid #fff;
outline:2px solid #000}
figcaption{line-height:1.3;margin-top:3px}
"""

_VIDEO_CSS = """
figure.tracklet,figure.query.tracklet{width:max-content;max-width:260px}
.stack.strip{display:flex;flex-wrap:wrap;gap:1px;background:#bbb}
.stack.strip img,figure.frame img{width:30px;height:auto}
.frame-direction{display:flex;flex-direction:column;gap:8px}
.matrices{display:flex;gap:18px;align-items:flex-end}
figure.matrix{width:auto}
img.attention-matrix{image-rendering:pixelated;border:1px solid #999;background:#fff}
.frame-attention{border:1px solid #e4e4e4;padding:6px}
.weighted-strip{display:flex;gap:8px;align-items:flex-start;margin:4px 0}
.strip-label{font-size:11px;width:120px;color:#444}
.frames{display:flex;flex-wrap:wrap;gap:3px}
figure.frame{width:34px;border:2px solid transparent}
figure.frame.looking{border-color:#000}
.frame-weight{height:5px;background:#eee;margin-top:2px}
.frame-weight span{display:block;height:100%;background:#d0342c}
"""

_LOAD_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-images-loaded", loaded.length);
  document.body.setAttribute("data-overlays",
    document.querySelectorAll("img.attention-overlay").length);
});
"""
