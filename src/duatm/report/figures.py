"""The pictures of a report, as strings a page can hold: images and attention maps as data URIs,
the CMC curve as inline SVG.

Why strings: the report is one self-contained HTML file (mailed, archived, opened offline), so
nothing it shows may live in another file or come from the network.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping

import numpy as np
from PIL import Image

#: The colour attention is painted in (RGB); its opacity follows the weight.
ATTENTION_RGB = (255, 48, 0)
#: Opacity of the largest weight of a map; the image stays visible under it.
MAX_ALPHA = 0.8
#: Line colours of the CMC curves, in row order.
CURVE_COLOURS = ("#1f5fbf", "#c0392b", "#27864a", "#8e44ad")


def image_data_uri(image: Image.Image, *, quality: int = 90) -> str:
    """A JPEG data URI of an RGB image (photographs compress well and stay sharp at 90)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def attention_data_uri(weights: np.ndarray) -> str:
    """A PNG data URI of one attention map (h, w): one pixel per sequence position, painted in
    ATTENTION_RGB with opacity proportional to the weight (the largest at MAX_ALPHA).

    The page stretches it over the image without smoothing, so each feature-map cell covers the
    image region it was computed from (the usual approximation of a CNN's receptive fields).
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.size == 0:
        raise ValueError(f"weights: expected a non-empty (h, w) map, got shape {weights.shape}")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("weights: attention weights must be finite and non-negative")
    peak = weights.max()
    alpha = weights / peak * MAX_ALPHA if peak > 0 else np.zeros_like(weights)
    rgba = np.empty((*weights.shape, 4), dtype=np.uint8)
    rgba[..., :3] = ATTENTION_RGB
    rgba[..., 3] = np.round(alpha * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def cmc_svg(curves: Mapping[str, np.ndarray], *, width: int = 460, height: int = 280) -> str:
    """Inline SVG of CMC curves (label -> fractions at ranks 1..n), in percent against rank."""
    if not curves:
        raise ValueError("curves: expected at least one CMC curve")
    left, right, top, bottom = 48, 16, 14, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    max_rank = max(len(c) for c in curves.values())
    legend_top = height  # the legend sits under the axis label, one line per curve
    height += 16 * len(curves)

    def x(rank: float) -> float:
        return left + (rank - 1) / max(1, max_rank - 1) * plot_w

    def y(fraction: float) -> float:
        return top + (1 - fraction) * plot_h

    parts = [
        f'<svg class="cmc" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="CMC curve">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#999"/>',
    ]
    for percent in range(0, 101, 20):
        yy = y(percent / 100)
        parts.append(
            f'<line x1="{left}" y1="{yy:.1f}" x2="{left + plot_w}" y2="{yy:.1f}" stroke="#e3e3e3"/>'
            f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{percent}</text>'
        )
    step = 5 if max_rank <= 20 else 10
    for rank in sorted({1, *range(step, max_rank + 1, step)}):
        xx = x(rank)
        parts.append(
            f'<line x1="{xx:.1f}" y1="{top + plot_h}" x2="{xx:.1f}" y2="{top + plot_h + 4}" '
            f'stroke="#999"/><text x="{xx:.1f}" y="{top + plot_h + 16}" '
            f'text-anchor="middle">{rank}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{legend_top - 6}" text-anchor="middle">rank</text>'
        f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2})">matches found (%)</text>'
    )
    for i, (label, curve) in enumerate(curves.items()):
        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
        points = " ".join(f"{x(r + 1):.1f},{y(float(v)):.1f}" for r, v in enumerate(curve))
        parts.append(
            f'<polyline class="cmc-curve" fill="none" stroke="{colour}" stroke-width="2" '
            f'points="{points}"><title>{html.escape(label)}</title></polyline>'
            f'<rect x="{left}" y="{legend_top + 16 * i + 2}" width="14" height="3" '
            f'fill="{colour}"/><text x="{left + 20}" y="{legend_top + 16 * i + 8}" '
            f'fill="{colour}">{html.escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
