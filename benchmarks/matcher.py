"""How close `DualAttentionMatcher.pairwise` runs to the machine's matrix-multiply limit.

Prints, from one run on the same inputs: pairs/s of `pairwise`, pairs/s of the naive path
(expand the pairs and call `forward`), the fp32 matrix-multiply rate measured in this process,
the efficiency pairs/s x 8 S^2 D / (matmul flop/s) (DESIGN §2), and the working memory of
`pairwise` for two gallery sizes, to show it is set by the tile budget, not the gallery.

    python benchmarks/matcher.py --queries 256 --gallery 1024
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from duatm.models.matching import DualAttentionMatcher


def best_seconds(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops(device: torch.device, sync: Callable[[], None], repeats: int) -> float:
    """fp32 GEMM rate on a shape like the matcher's products ((M x D) @ (D x N))."""
    a = torch.randn(8192, 256, device=device)
    b = torch.randn(256, 2048, device=device)
    seconds = best_seconds(lambda: a @ b, repeats, sync)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / seconds


def unit(n: int, length: int, dim: int, device: torch.device) -> torch.Tensor:
    return F.normalize(torch.randn(n, length, dim, device=device), dim=-1)


def working_memory_bytes(args: argparse.Namespace, gallery: int) -> int:
    """Peak memory of one `pairwise_prepared` call beyond its inputs and its (Q, G) output."""
    device = torch.device(args.device)
    matcher = DualAttentionMatcher(args.dim).to(device).eval()
    with torch.inference_mode():
        query = matcher.prepare(unit(args.queries, args.length, args.dim, device))
        prepared = matcher.prepare(unit(gallery, args.length, args.dim, device))
        output_bytes = args.queries * gallery * 4
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            matcher.pairwise_prepared(query, prepared, max_tile_bytes=args.tile_bytes)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before - output_bytes
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        matcher.pairwise_prepared(query, prepared, max_tile_bytes=args.tile_bytes)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0, after - before - output_bytes)


def _memory_child(args: argparse.Namespace, gallery: int, queue: mp.Queue) -> None:
    torch.manual_seed(0)
    queue.put(working_memory_bytes(args, gallery))


def measure_in_fresh_process(args: argparse.Namespace, gallery: int) -> int:
    """Peak RSS is process-wide and never goes down, so each size runs in its own process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_memory_child, args=(args, gallery, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--gallery", type=int, default=1024)
    parser.add_argument("--length", type=int, default=32, help="sequence length S")
    parser.add_argument("--dim", type=int, default=256, help="element dimension D")
    parser.add_argument("--naive-pairs", type=int, default=2048, help="pairs timed on the naive path")
    parser.add_argument("--tile-bytes", type=int, default=None, help="tile budget (default: matcher's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--autocast-bf16", action="store_true", help="time pairwise under bf16 autocast")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    s, d = args.length, args.dim
    matcher = DualAttentionMatcher(d).to(device).eval()
    xq, xg = unit(args.queries, s, d, device), unit(args.gallery, s, d, device)
    pairs = args.queries * args.gallery

    def fast() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast_bf16):
            return matcher.pairwise(xq, xg, max_tile_bytes=args.tile_bytes)

    naive_q = xq[torch.arange(args.naive_pairs, device=device) % args.queries]
    naive_g = xg[torch.arange(args.naive_pairs, device=device) % args.gallery]

    def naive() -> None:
        for start in range(0, args.naive_pairs, 256):
            matcher(naive_q[start : start + 256], naive_g[start : start + 256])

    with torch.inference_mode():
        flops_before = matmul_flops(device, sync, args.repeats)
        fast_seconds = best_seconds(fast, args.repeats, sync)
        naive_seconds = best_seconds(naive, 1, sync)
        flops_after = matmul_flops(device, sync, args.repeats)
    flops = (flops_before + flops_after) / 2
    fast_rate, naive_rate = pairs / fast_seconds, args.naive_pairs / naive_seconds
    efficiency = fast_rate * 8 * s * s * d / flops

    sizes = (args.gallery, 4 * args.gallery)
    memory = {g: measure_in_fresh_process(args, g) for g in sizes}

    print(f"device: {device} ({torch.get_num_threads()} threads)  S={s} D={d}  Q={args.queries} G={args.gallery}"
          f"  autocast_bf16={args.autocast_bf16}")
    print(f"{'measure':<44}{'value':>16}")
    print(f"{'fp32 matmul rate (GFLOP/s)':<44}{flops / 1e9:>16.1f}")
    print(f"{'pairwise pairs/s':<44}{fast_rate:>16,.0f}")
    print(f"{'naive forward pairs/s':<44}{naive_rate:>16,.0f}")
    print(f"{'speed-up over naive':<44}{fast_rate / naive_rate:>16.1f}x")
    print(f"{'efficiency (pairs/s * 8 S^2 D / flop/s)':<44}{efficiency:>16.2f}")
    for g, nbytes in memory.items():
        print(f"{f'working memory, G={g} (MiB)':<44}{nbytes / 2**20:>16.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
