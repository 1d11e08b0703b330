"""Presenting rank metrics: an aligned text table for logs and a plain dict for JSON.

Why: every script prints and saves the same numbers; one place decides their layout.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def rank_metrics_to_dict(
    metrics: RankMetrics, ranks: Sequence[int] | None = None
) -> dict[str, float | int | list[float]]:
    """JSON-ready plain Python values, as fractions in [0, 1] (the table shows percent).

    Keys: ``R<k>`` for each of ``ranks``, ``mAP``, ``mINP``, ``num_valid_queries`` and ``cmc``
    (the whole curve).
    """
    out: dict[str, float | int | list[float]] = {
        f"R{k}": float(metrics.cmc[k - 1]) for k in _checked_ranks(metrics, ranks)
    }
    out["mAP"] = float(metrics.mAP)
    out["mINP"] = float(metrics.mINP)
    out["num_valid_queries"] = int(metrics.num_valid_queries)
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
