"""Benchmark duatm.metrics.rank_metrics on a Market-1501-sized random distance matrix.

Why: evaluation runs after every epoch on the full test set; this shows its time and memory
next to a straightforward per-query loop (the field's Python evaluation, written here), and
checks that both give the same numbers on the same matrix.

    .venv/bin/python benchmarks/metrics.py                  # both paths (the loop takes ~1 min)
    .venv/bin/python benchmarks/metrics.py --skip-reference

Memory is the peak of allocations traced by tracemalloc during the call (numpy reports its
array buffers to tracemalloc), so the input matrix, made before tracing starts, is excluded.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from duatm.metrics import RankMetrics, format_rank_table, rank_metrics


def market_like_inputs(
    num_query: int, num_gallery: int, num_ids: int, num_cameras: int, signal: float, seed: int
) -> tuple[np.ndarray, ...]:
    """Random float32 distances and Market-like labels: pids 1..num_ids, ~17.5% pid-0 distractors.

    True matches are moved ``signal`` closer, so the metrics land mid-range rather than near 0.
    """
    rng = np.random.default_rng(seed)
    distmat = rng.random((num_query, num_gallery), dtype=np.float32)
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_pids = rng.integers(1, num_ids + 1, num_gallery)
    g_pids[rng.random(num_gallery) < 0.175] = 0  # Market-1501's gallery holds 2,793 distractors
    q_camids = rng.integers(0, num_cameras, num_query)
    g_camids = rng.integers(0, num_cameras, num_gallery)
    np.subtract(distmat, signal, out=distmat, where=q_pids[:, None] == g_pids[None, :])
    return distmat, q_pids, g_pids, q_camids, g_camids


def reference_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int) -> RankMetrics:
    """One query at a time, as the field's Python evaluation does (whole-matrix argsort first)."""
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = g_pids[indices] == q_pids[:, None]
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(distmat.shape[0]):
        order = indices[i]
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        raw = matches[i][keep]
        if not raw.any():
            continue
        hits = raw.cumsum()
        all_cmc.append(np.minimum(hits[:max_rank], 1))
        precision = hits / np.arange(1.0, raw.size + 1)
        all_ap.append((precision * raw).sum() / hits[-1])
        all_inp.append(hits[-1] / (np.flatnonzero(raw)[-1] + 1.0))
    cmc = np.asarray(all_cmc, dtype=np.float64).mean(axis=0)
    return RankMetrics(cmc, float(np.mean(all_ap)), float(np.mean(all_inp)), len(all_ap))


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Result, wall seconds and traced peak MB of one call."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-query", type=int, default=3368)
    parser.add_argument("--num-gallery", type=int, default=15913)
    parser.add_argument("--num-ids", type=int, default=750)
    parser.add_argument("--num-cameras", type=int, default=6)
    parser.add_argument("--max-rank", type=int, default=50)
    parser.add_argument("--signal", type=float, default=0.1, help="true matches this closer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true", help="skip the per-query loop")
    args = parser.parse_args(argv)

    inputs = market_like_inputs(
        args.num_query, args.num_gallery, args.num_ids, args.num_cameras, args.signal, args.seed
    )
    distmat = inputs[0]
    print(
        f"{distmat.shape[0]} queries x {distmat.shape[1]} gallery, {distmat.dtype} "
        f"({distmat.nbytes / 2**20:.1f} MB), {args.num_ids} ids, {args.num_cameras} cameras, "
        f"seed {args.seed}"
    )
    print("memory: tracemalloc peak during the call, input matrix excluded")
    ours, seconds, peak = measure(lambda: rank_metrics(*inputs, args.max_rank))
    rows = [("duatm.metrics.rank_metrics", seconds, peak)]
    reference = None
    if not args.skip_reference:
        reference, seconds, peak = measure(lambda: reference_loop(*inputs, args.max_rank))
        rows.append(("per-query reference loop", seconds, peak))

    print(f"{'path':<28}{'time (s)':>10}{'peak MB':>10}")
    for name, seconds, peak in rows:
        print(f"{name:<28}{seconds:>10.2f}{peak:>10.1f}")
    print(f"valid queries: {ours.num_valid_queries}")
    print(format_rank_table(ours))
    if reference is None:
        return 0
    diffs = {
        "cmc": float(np.max(np.abs(ours.cmc - reference.cmc))),
        "mAP": abs(ours.mAP - reference.mAP),
        "mINP": abs(ours.mINP - reference.mINP),
    }
    agree = max(diffs.values()) <= 1e-12 and ours.num_valid_queries == reference.num_valid_queries
    print(
        "agreement with the reference: "
        + ", ".join(f"max |{k} diff| = {v:.1e}" for k, v in diffs.items())
        + f" -> {'AGREE' if agree else 'DISAGREE'}"
    )
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
