"""Presenting rank metrics: an aligned text table for logs and a plain dict for JSON.

Why: every script prints and saves the same numbers; one place decides their layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from duatm.metrics.rank import RankMetrics

DEFAULT_RANKS: tuple[int, ...] = (1, 5, 10, 20)


def format_rank_table(metrics: RankMetrics, ranks: Sequence[int] | None = None) -> str:
    """Two-line table (header, values) of CMC at ``ranks``, mAP and mINP, in percent, 1 decimal.

    ``ranks=None`` shows the DEFAULT_RANKS that the CMC curve reaches.
    """
    cells = [(f"R{k}", metrics.cmc[k - 1]) for k in _checked_ranks(metrics, ranks)]
    cells += [("mAP", metrics.mAP), ("mINP", metrics.mINP)]
    values = [f"{100.0 * value:.1f}" for _, value in cells]
    widths = [max(len(name), len(value)) for (name, _), value in zip(cells, values, strict=True)]
    header = "  ".join(name.rjust(w) for (name, _), w in zip(cells, widths, strict=True))
    row = "  ".join(value.rjust(w) for value, w in zip(values, widths, strict=True))
    return f"{header}\n{row}"


def protocol_notes(metrics: RankMetrics) -> list[str]:
    """One line per thing the protocol did that the numbers alone do not show: queries skipped
    (how many, and why) and gallery items removed as a query's own image. Empty when neither."""
    notes = []
    s = metrics.skipped
    if s.total:
        reasons = [
            (s.distractor, "whose identity is a distractor (not one person)"),
            (s.absent, "whose identity is not in the gallery"),
            (
                s.no_match_left,
                "whose every true match is under the query's own camera or is the query image",
            ),
        ]
        listed = "; ".join(f"{count} {why}" for count, why in reasons if count)
        total = s.total + metrics.num_valid_queries
        notes.append(f"skipped {s.total} of {total} queries: {listed}")
    if metrics.own_images_removed:
        notes.append(
            f"removed {metrics.own_images_removed} gallery image(s) that are a query image "
            "itself (the same file, or a byte-identical copy) from that query's ranking"
        )
    return notes


def format_rank_report(metrics: RankMetrics, ranks: Sequence[int] | None = None) -> str:
    """:func:`format_rank_table`, then the :func:`protocol_notes`: what a command prints."""
    return "\n".join([format_rank_table(metrics, ranks), *protocol_notes(metrics)])


def format_rank_rows(rows: Mapping[str, RankMetrics], ranks: Sequence[int] | None = None) -> str:
    """:func:`format_rank_table` for several results, one labelled row each, columns aligned
    (e.g. the matcher's distances and their re-ranking)."""
    if not rows:
        raise ValueError("rows: expected at least one labelled result")
    tables = [format_rank_table(metrics, ranks).splitlines() for metrics in rows.values()]
    label_width = max(len(label) for label in rows)
    cells = [line.split() for line in (tables[0][0], *(table[1] for table in tables))]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    labels = ["", *rows]
    return "\n".join(
        "  ".join(
            [label.ljust(label_width), *(c.rjust(w) for c, w in zip(row, widths, strict=True))]
        )
        for label, row in zip(labels, cells, strict=True)
    )


def rank_metrics_to_dict(
    metrics: RankMetrics, ranks: Sequence[int] | None = None
) -> dict[str, float | int | list[float]]:
    """JSON-ready plain Python values, as fractions in [0, 1] (the table shows percent).

    Keys: ``R<k>`` for each of ``ranks``, ``mAP``, ``mINP``, ``num_valid_queries``,
    ``skipped_distractor`` / ``skipped_absent`` / ``skipped_no_match_left`` (queries skipped,
    by reason), ``own_images_removed`` and ``cmc`` (the whole curve); all but ``cmc`` scalars,
    so the dict minus ``cmc`` is a metrics-log record.
    """
    out: dict[str, float | int | list[float]] = {
        f"R{k}": float(metrics.cmc[k - 1]) for k in _checked_ranks(metrics, ranks)
    }
    out["mAP"] = float(metrics.mAP)
    out["mINP"] = float(metrics.mINP)
    out["num_valid_queries"] = int(metrics.num_valid_queries)
    out.update((f"skipped_{k}", int(v)) for k, v in metrics.skipped._asdict().items())
    out["own_images_removed"] = int(metrics.own_images_removed)
    out["cmc"] = [float(v) for v in metrics.cmc]
    return out


def _checked_ranks(metrics: RankMetrics, ranks: Sequence[int] | None) -> list[int]:
    """The ranks as ints, each within the computed CMC curve."""
    max_rank = len(metrics.cmc)
    if ranks is None:
        return [k for k in DEFAULT_RANKS if k <= max_rank]
    for k in ranks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= max_rank:
            raise ValueError(
                f"ranks: expected integers in [1, {max_rank}] (the CMC curve has max_rank = "
                f"{max_rank} entries), got {k!r}"
            )
    return [int(k) for k in ranks]


def per_query_to_dict(metrics: RankMetrics) -> dict[str, list[float | None] | list[int]]:
    """Each query's AP (None where the query was skipped) and first-match rank (0 where it was
    skipped), as JSON-ready lists; empty when the metrics carry no per-query values."""
    if metrics.query_ap is None or metrics.query_first_rank is None:
        return {}
    return {
        "query_ap": [None if np.isnan(ap) else float(ap) for ap in metrics.query_ap],
        "query_first_rank": [int(rank) for rank in metrics.query_first_rank],
    }
