"""Benchmark duatm.metrics.re_ranking: time and memory at Market-1501 size, and side by side with
a dense per-item loop (the reference implementation's layout, written here) at a smaller size.

Why: the reference re-ranking holds several dense (Q + G)^2 matrices (about 7 GB at Market
size); ours keeps only neighbour lists and sparse weights. This prints both, and checks that
both give the same numbers on the same matrices.

    .venv/bin/python benchmarks/rerank.py                           # Market size + 600 / 2,400
    .venv/bin/python benchmarks/rerank.py --skip-reference
    .venv/bin/python benchmarks/rerank.py --num-query 300 --num-gallery 1200 --reference-query 100 --reference-gallery 400

Inputs are Euclidean distances of random points around ``--num-ids`` centres (re-id-like
clusters), float32. Memory is the tracemalloc peak during the call (numpy reports its buffers
to tracemalloc), so the input matrices, made before tracing starts, are not counted.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from duatm.metrics import re_ranking
from metrics import measure


def clustered_distances(
    num_query: int, num_gallery: int, num_ids: int, dim: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q_g, q_q, g_g) float32 Euclidean distances of points scattered around identity centres."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, dim, generator=gen) * 2
    q = centres[torch.randint(num_ids, (num_query,), generator=gen)]
    g = centres[torch.randint(num_ids, (num_gallery,), generator=gen)]
    q = q + torch.randn(q.shape, generator=gen)
    g = g + torch.randn(g.shape, generator=gen)
    return tuple(torch.cdist(a, b).numpy() for a, b in ((q, g), (q, q), (g, g)))  # type: ignore[return-value]


def dense_loop(q_g, q_q, g_g, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    """Re-ranking as the reference lays it out: the whole (N, N) scaled matrix, its full argsort,
    a dense V built item by item, the expanded V, and a Jaccard loop over the queries."""
    num_q = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    scaled = np.square(full).astype(np.float32)
    scaled = (scaled / scaled.max(axis=0)).T
    ranked = np.argsort(scaled, axis=1, kind="stable")
    num = scaled.shape[0]

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = ranked[i, : k + 1]
        return forward[(ranked[forward, : k + 1] == i).any(axis=1)]

    v = np.zeros((num, num), dtype=np.float32)
    for i in range(num):
        core = reciprocal(i, k1)
        members = [core]
        for c in core:
            half = reciprocal(int(c), round(k1 / 2))
            if np.intersect1d(half, core).size > 2 / 3 * half.size:
                members.append(half)
        index = np.unique(np.concatenate(members))
        w = np.exp(-scaled[i, index])
        v[i, index] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[ranked[i, :k2]].mean(axis=0) for i in range(num)])
    out = np.empty((num_q, num - num_q), dtype=np.float32)
    for i in range(num_q):
        shared = np.minimum(v[i], v[num_q:]).sum(axis=1)
        out[i] = (1 - shared / (2 - shared)) * (1 - lambda_value) + scaled[i, num_q:] * lambda_value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-query", type=int, default=3368)
    parser.add_argument("--num-gallery", type=int, default=15913)
    parser.add_argument("--reference-query", type=int, default=600)
    parser.add_argument("--reference-gallery", type=int, default=2400)
    parser.add_argument("--num-ids", type=int, default=750)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args(argv)

    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_reference:
        small = clustered_distances(
            args.reference_query, args.reference_gallery, args.num_ids, args.dim, args.seed
        )
        ours, ours_s, ours_mb = measure(lambda: re_ranking(*small))
        dense, dense_s, dense_mb = measure(lambda: dense_loop(*small, 20, 6, 0.3))
        diff = float(np.abs(ours - dense).max())
        print(f"{args.reference_query} x {args.reference_gallery}: max |ours - dense| = {diff:.2e}")
        print(f"  dense per-item loop : {dense_s:7.2f} s  {dense_mb:8.1f} MB")
        print(f"  duatm re_ranking    : {ours_s:7.2f} s  {ours_mb:8.1f} MB")
    big = clustered_distances(args.num_query, args.num_gallery, args.num_ids, args.dim, args.seed)
    inputs_mb = sum(m.nbytes for m in big) / 2**20
    _, seconds, peak_mb = measure(lambda: re_ranking(*big))
    num = args.num_query + args.num_gallery
    dense_estimate = 5 * num * num * 4 / 2**20
    print(f"{args.num_query} x {args.num_gallery} (inputs {inputs_mb:.0f} MB):")
    print(
        f"  duatm re_ranking    : {seconds:7.2f} s  {peak_mb:8.1f} MB (result {args.num_query * args.num_gallery * 4 / 2**20:.0f} MB)"
    )
    print(f"  dense layout needs at least five (N, N) 4-byte arrays: {dense_estimate:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
