"""Evaluation that scales: time and peak resident memory per rank, one process against several.

Why: a gallery outgrows one process (MSMT17: 11,659 x 82,161 pairs; a city's cameras: far
more). `duatm.engine.blockwise` shares the gallery and the Q x G distance matrix out over the
ranks, or streams the matrix to disk block by block; this shows what that costs and saves,
next to the default one-process path, and checks that every contender gives the same metrics.

What runs: random unit sequences (no CNN: extraction splits across ranks trivially and is not
what this measures) through an untrained `DualAttentionMatcher` in eval mode, seeded, with
random labels (about 10 gallery items per identity, every query has true matches). The numbers
are therefore meaningless as accuracy; they only have to agree between contenders.

Contenders, each in fresh processes (so that a process's peak RSS is its own):

* ``whole``     one process, the default path: `matcher.pairwise` (the whole Q x G matrix),
                then `rank_metrics`;
* ``blocks@W``  W ranks (gloo, as torchrun starts them), each with its gallery share and its
                share of the matrix in memory;
* ``stream@W``  W ranks, each writing its blocks to ``--stream-to`` and ranking from there.

Memory per rank: the process's peak RSS (its high-water mark, PyTorch's own ~0.8 GiB and the
rank's sequences included) and the evaluation's own growth over the RSS before it
(`timing.ResidentMemory`). Threads per rank default to the cores divided by the ranks, so every
contender uses the same cores. On a loaded machine one process with two threads can be several
times slower than two processes with one thread each (OpenMP threads that wait for a
descheduled sibling), so compare times on a quiet machine.

    python benchmarks/eval_scale.py --queries 2000 --gallery 50000 --seq-len 32 --dim 256 \\
        --contenders whole blocks@1 blocks@2 stream@1 stream@2 --stream-to /tmp/duatm-stream
    # a Q x G float32 matrix of 4.5 GiB, streamed in under 4 GiB (short sequences keep the
    # matcher's time down; the matrix size is what matters for memory):
    python benchmarks/eval_scale.py --queries 20000 --gallery 60000 --seq-len 4 --dim 16 \\
        --contenders stream@1 --stream-to /tmp/duatm-stream
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import socket
import sys
import time
from typing import Any, NamedTuple

GIB = 1 << 30
_CHUNK = 4096  # sequences are generated in seeded chunks, so a rank makes only its share


class Setup(NamedTuple):
    queries: int
    gallery: int
    seq_len: int
    dim: int
    mode: str
    seed: int
    tile_mb: int
    block_mb: int
    stream_to: str | None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--gallery", type=int, default=50000)
    parser.add_argument("--seq-len", type=int, default=32, help="S (paper: 32)")
    parser.add_argument("--dim", type=int, default=256, help="D (paper: 256)")
    parser.add_argument("--mode", default="dual", help="matcher mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile-mb", type=int, default=256, help="eval.tile_mb")
    parser.add_argument("--block-mb", type=int, default=512, help="eval.block_mb")
    parser.add_argument("--stream-to", help="scratch folder of the stream@W contenders")
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=["whole", "blocks@1", "blocks@2"],
        help="whole, blocks@W, stream@W",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores in all")
    args = parser.parse_args(argv)
    setup = Setup(
        args.queries,
        args.gallery,
        args.seq_len,
        args.dim,
        args.mode,
        args.seed,
        args.tile_mb,
        args.block_mb,
        args.stream_to,
    )
    if any(c.startswith("stream@") for c in args.contenders) and not args.stream_to:
        parser.error("stream@W contenders need --stream-to FOLDER")
    matrix = args.queries * args.gallery * 4
    print(
        f"Q = {args.queries:,} queries x G = {args.gallery:,} gallery items, S = {args.seq_len}, "
        f"D = {args.dim}, mode {args.mode}; the Q x G float32 matrix is {matrix / GIB:.2f} GiB; "
        f"{args.threads} core(s) shared by the ranks"
    )
    rows = []
    for contender in args.contenders:
        kind, _, ranks = contender.partition("@")
        world = int(ranks or 1)
        if kind not in ("whole", "blocks", "stream") or (kind == "whole" and world != 1):
            parser.error(f"unknown contender {contender!r}")
        reports = run_contender(setup, kind, world, max(1, args.threads // world))
        rows.append((contender, world, reports))
        print_row(contender, world, reports)
    maps = {f"{r['mAP']:.12f}|{r['R1']:.12f}" for _, _, reports in rows for r in reports}
    print(f"\nsame metrics in every contender and rank: {'yes' if len(maps) == 1 else 'NO'}")
    return 0 if len(maps) == 1 else 1


def print_row(contender: str, world: int, reports: list[dict[str, Any]]) -> None:
    peak = max(r["peak_rss"] for r in reports)
    growth = max(r["growth"] for r in reports)
    seconds = max(r["seconds"] for r in reports)
    print(
        f"{contender:>10}: {seconds:8.1f} s (match {max(r['match_s'] for r in reports):.1f} s, "
        f"rank {max(r['rank_s'] for r in reports):.1f} s); per rank: peak RSS "
        f"{peak / GIB:.2f} GiB, evaluation's growth {growth / GIB:.2f} GiB; "
        f"mAP {reports[0]['mAP']:.6f}"
    )


def run_contender(setup: Setup, kind: str, world: int, threads: int) -> list[dict[str, Any]]:
    """Start ``world`` fresh processes as torchrun would and collect each rank's report."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [
        context.Process(target=rank_main, args=(setup, kind, rank, world, port, threads, queue))
        for rank in range(world)
    ]
    for proc in procs:
        proc.start()
    reports = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"a rank of {kind}@{world} failed (exit code {proc.exitcode})")
    return sorted(reports, key=lambda r: r["rank"])


def rank_main(
    setup: Setup, kind: str, rank: int, world: int, port: int, threads: int, queue: Any
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch

    from duatm.engine.blockwise import blockwise_rank_metrics
    from duatm.engine.distributed import all_gather_cat, process_group
    from duatm.metrics import rank_metrics
    from duatm.models.matching import DualAttentionMatcher
    from timing import ResidentMemory

    torch.set_num_threads(threads)
    torch.manual_seed(setup.seed)
    matcher = DualAttentionMatcher(setup.dim, setup.mode).eval()
    q_pids, q_cams, g_pids, g_cams = labels(setup)
    memory = ResidentMemory()
    if not memory.available:
        raise SystemExit("needs Linux /proc/self/clear_refs to measure memory")
    out: dict[str, Any] = {}
    with process_group("cpu", timeout_s=3600) as ctx, torch.inference_mode():
        if kind == "whole":
            query = sequences(setup, "query", range(setup.queries))
            gallery = sequences(setup, "gallery", range(setup.gallery))

            def evaluate() -> None:
                start = time.perf_counter()
                distances = matcher.pairwise(query, gallery, max_tile_bytes=setup.tile_mb << 20)
                matched = time.perf_counter()
                out["metrics"] = rank_metrics(distances.numpy(), q_pids, g_pids, q_cams, g_cams)
                out["timings"] = {
                    "match_s": matched - start,
                    "rank_s": time.perf_counter() - matched,
                }
                out["seconds"] = time.perf_counter() - start

        else:
            own_query = sequences(setup, "query", ctx.shard(setup.queries))
            share = ctx.shard(setup.gallery)
            gallery = sequences(setup, "gallery", share)

            def evaluate() -> None:
                start = time.perf_counter()
                query = all_gather_cat(own_query, ctx)  # as the evaluator does after extraction
                out["metrics"], out["timings"] = blockwise_rank_metrics(
                    matcher,
                    query,
                    torch.from_numpy(q_pids),
                    torch.from_numpy(q_cams),
                    gallery,
                    torch.from_numpy(g_pids[share.start : share.stop]),
                    torch.from_numpy(g_cams[share.start : share.stop]),
                    ctx,
                    tile_mb=setup.tile_mb,
                    block_bytes=setup.block_mb << 20,
                    stream_to=setup.stream_to if kind == "stream" else None,
                    progress=False,
                )
                out["seconds"] = time.perf_counter() - start

        growth = memory.peak_growth(evaluate)
    queue.put(
        {
            "rank": rank,
            "seconds": out["seconds"],
            **out["timings"],
            "growth": growth,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "mAP": out["metrics"].mAP,
            "R1": float(out["metrics"].cmc[0]),
        }
    )


def labels(setup: Setup) -> tuple[Any, Any, Any, Any]:
    """Identities (about 10 gallery items each; every query's identity is in the gallery) and
    cameras (6), the same in every process."""
    import numpy as np

    rng = np.random.default_rng(setup.seed)
    num_ids = max(2, setup.gallery // 10)
    g_pids = rng.integers(0, num_ids, setup.gallery)
    q_pids = g_pids[rng.integers(0, setup.gallery, setup.queries)]
    return q_pids, rng.integers(0, 6, setup.queries), g_pids, rng.integers(0, 6, setup.gallery)


def sequences(setup: Setup, which: str, items: range) -> Any:
    """Unit sequences (len(items), S, D) of ``items``: generated chunk by chunk from seeds, so
    any share of the set is the same numbers as that part of the whole set."""
    import torch

    parts = []
    offset = 0 if which == "query" else 1 << 20
    for chunk in range(items.start // _CHUNK, -(-items.stop // _CHUNK)):
        generator = torch.Generator().manual_seed(setup.seed * 7919 + offset + chunk)
        block = torch.randn(_CHUNK, setup.seq_len, setup.dim, generator=generator)
        lo = max(items.start - chunk * _CHUNK, 0)
        hi = min(items.stop - chunk * _CHUNK, _CHUNK)
        parts.append(block[lo:hi].clone())
    if not parts:
        return torch.empty(0, setup.seq_len, setup.dim)
    return torch.nn.functional.normalize(torch.cat(parts), dim=-1)


if __name__ == "__main__":
    sys.exit(main())
