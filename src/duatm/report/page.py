"""The report's HTML: what it shows (plain dataclasses) and how it is laid out (one function).

Why separate from building: rendering needs no model and no data set, so the layout can be
checked and changed on small hand-made contents, and other producers (video, search results)
can fill the same dataclasses.

The page carries hooks for checks in a browser: every image is an ``<img>`` with a data URI;
attention maps are ``img.attention-overlay`` (``data-kind`` "intra" or "inter") stacked over
their image, the looking position is a ``div.position-marker``; when the page has loaded, a
small script writes ``data-images``, ``data-images-loaded`` and ``data-overlays`` on ``<body>``.
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
class Item:
    """One image as shown: its data URI and what to print under it."""

    image: str
    name: str
    pid: int
    camid: int


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
class PairAttentionSection:
    """A query-gallery pair, its distance and both directions' attention."""

    title: str
    distance: float
    match: bool
    directions: list[AttentionDirection]


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
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(content.title)}</title>",
        f"<style>{_CSS}</style></head><body>",
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
        '<p class="note">For a position of one image (white box), where its refinement looks '
        "within its own image (intra-sequence attention) and where its alignment looks in the "
        "other image (inter-sequence attention); deeper red is more weight, each map scaled to "
        "its own largest weight (the peak is printed; weights spread evenly over S positions "
        "would each be 1/S). Feature-map cells are drawn over the image region they were "
        "computed from. Paper Fig. 8.</p>",
        *(_pair_section(p) for p in content.pairs),
        "</section>",
        f"<script>{_LOAD_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


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


def _query_row(query: QueryRanking) -> str:
    e = html.escape
    stats = (
        "skipped by the protocol (no true match left)"
        if query.ap is None
        else f"AP {100 * query.ap:.1f}, first true match at rank {query.first_rank}"
    )
    head = _figure(
        query.item,
        f"<b>query {query.index}</b><br>{e(query.item.name)}<br>id {query.item.pid}, "
        f"cam {query.item.camid}<br>{e(stats)}",
        "query",
    )
    ranked = "".join(
        _figure(
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
