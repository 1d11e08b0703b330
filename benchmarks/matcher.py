"""How close `DualAttentionMatcher.pairwise` runs to the machine's matrix-multiply limit.

Prints, from one run on the same inputs: pairs/s of `pairwise`; pairs/s of the naive path
(expand the pairs and call `forward`, from one pair per call up to large batches); the fp32
matrix-multiply rate of a big square product (the peak) and of the product the kernel issues
per tile; the efficiency pairs/s x 8 S^2 D / peak flop/s (docs/design.md#norm-expansion); and
the peak working memory of `pairwise_prepared` for two tile budgets x two gallery sizes, to show
it is set by the tile budget, not by the gallery. Also the forward + backward time of a training batch's B x B
distances, computed the way training does (the batch against itself) and by the general path.

With ``--mixed-min-length L`` it also times a gallery of mixed lengths (uniform in [L, S], a
zero-padded batch with ``g_lengths``; queries at S), whose efficiency counts the essential work
of the unpadded pairs, 8 Sq Sg D each. ``--estimate Q G`` prints the time of a Q x G test at the
measured rates. ``--video`` is the video case: S=64 frames, a mixed gallery from 8 frames, and
the full MARS test (1,980 x 9,330 tracklets).

Timings interleave the contenders over several rounds and keep each one's best, so that load
from other processes hits them alike.

    python benchmarks/matcher.py --queries 256 --gallery 1024
    python benchmarks/matcher.py --video --queries 256 --gallery 1024
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from duatm.models.matching import (
    DEFAULT_CPU_TILE_BYTES,
    DEFAULT_CUDA_TILE_BYTES,
    DualAttentionMatcher,
    PreparedSequences,
)
from timing import ResidentMemory, device_sync, interleaved_best

MiB = 2**20


def unit(n: int, length: int, dim: int, device: torch.device) -> torch.Tensor:
    return F.normalize(torch.randn(n, length, dim, device=device), dim=-1)


def naive_flops_per_pair(s: int, d: int) -> int:
    """What `forward` does per pair: Eq. 1 on both sequences, four attentions (two refine, two
    align; each two S x S x D products), against the 8 S^2 D that `pairwise` needs."""
    return 2 * (2 * s * d * d) + 4 * (2 * 2 * s * s * d)


def working_memory(
    matcher: DualAttentionMatcher,
    query: PreparedSequences,
    gallery: PreparedSequences,
    budget: int,
    device: torch.device,
    resident: ResidentMemory,
) -> float:
    """Peak bytes a `pairwise_prepared` call holds beyond its inputs and its (Q, G) output."""
    output_bytes = len(query) * len(gallery) * 4

    def call() -> None:
        matcher.pairwise_prepared(query, gallery, max_tile_bytes=budget)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before - output_bytes
    if not resident.available:
        return float("nan")
    return resident.peak_growth(call) - output_bytes


def training_batch_seconds(
    dim: int, length: int, batch: int, device: torch.device, rounds: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Forward + backward of a training batch's B x B distances, best of ``rounds``: the batch
    against itself (``self``: one attention direction per ordered pair gives both) and against
    a copy of itself (``copy``: the general path, both directions for every pair)."""
    matcher = DualAttentionMatcher(dim).to(device).train()
    x = unit(batch, length, dim, device).requires_grad_()
    copy = x.detach().clone().requires_grad_()
    contenders = {
        "self": lambda: matcher.pairwise(x).sum().backward(),
        "copy": lambda: matcher.pairwise(x, copy).sum().backward(),
    }
    return interleaved_best(contenders, rounds, sync)


# The full MARS test: query x gallery tracklets (docs/guide/video.md#mars).
MARS_TEST = (1980, 9330)
VIDEO_LENGTH = 64  # frames of a test clip (paper Sec. 4.1)
VIDEO_MIN_LENGTH = 8


def padded_mixed(
    n: int, length: int, min_length: int, dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` unit sequences with lengths uniform in [min_length, length], zero-padded to
    ``length`` with garbage in the padding, and their lengths."""
    lengths = torch.randint(min_length, length + 1, (n,))
    x = unit(n, length, dim, device)
    padding = torch.arange(length)[None, :] >= lengths[:, None]
    x[padding.to(device)] = 7.0
    return x, lengths.to(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--gallery", type=int, default=1024)
    parser.add_argument(
        "--length", type=int, default=None, help="sequence length S (default 32; 64 with --video)"
    )
    parser.add_argument(
        "--video",
        action="store_true",
        help=f"the video case: S={VIDEO_LENGTH}, a mixed gallery from {VIDEO_MIN_LENGTH} frames, "
        f"and the MARS test time ({MARS_TEST[0]:,} x {MARS_TEST[1]:,})",
    )
    parser.add_argument(
        "--mixed-min-length",
        type=int,
        default=None,
        help="also time a gallery with lengths uniform in [this, S] (padded, with g_lengths)",
    )
    parser.add_argument(
        "--estimate",
        type=int,
        nargs=2,
        metavar=("Q", "G"),
        default=None,
        help="print the time of a Q x G test at the measured rates",
    )
    parser.add_argument("--dim", type=int, default=256, help="element dimension D")
    parser.add_argument(
        "--naive-pairs", type=int, default=2048, help="pairs timed on the naive path"
    )
    parser.add_argument(
        "--naive-chunks",
        type=int,
        nargs="+",
        default=[1, 16, 256],
        help="pairs per forward call on the naive path (1: a loop over pairs)",
    )
    parser.add_argument(
        "--tile-bytes", type=int, default=None, help="tile budget (default: matcher's)"
    )
    parser.add_argument("--square", type=int, default=2048, help="side of the peak-rate matmul")
    parser.add_argument(
        "--batch", type=int, default=40, help="training batch B for the B x B fwd+bwd timing"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="timing rounds; each contender's best"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--autocast-bf16", action="store_true", help="time pairwise under bf16 autocast"
    )
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)

    if args.length is None:
        args.length = VIDEO_LENGTH if args.video else 32
    if args.video:
        args.mixed_min_length = args.mixed_min_length or VIDEO_MIN_LENGTH
        args.estimate = args.estimate or list(MARS_TEST)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    sync = device_sync(device)

    s, d, num_q, num_g = args.length, args.dim, args.queries, args.gallery
    budget = args.tile_bytes or (
        DEFAULT_CUDA_TILE_BYTES if device.type == "cuda" else DEFAULT_CPU_TILE_BYTES
    )
    matcher = DualAttentionMatcher(d).to(device).eval()
    xq, xg = unit(num_q, s, d, device), unit(num_g, s, d, device)
    tile_q, tile_g = matcher.tile_shape(num_q, num_g, s, s, device, torch.float32, False, budget)

    # The GEMM the kernel issues per tile and direction: (tile_g S x D) @ (D x tile_q S).
    kernel_a = torch.randn(tile_g * s, d, device=device)
    kernel_b = torch.randn(tile_q * s, d, device=device)
    kernel_out = torch.empty(tile_g * s, tile_q * s, device=device)
    square_a = torch.randn(args.square, args.square, device=device)
    square_out = torch.empty_like(square_a)

    def fast() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast_bf16):
            return matcher.pairwise(xq, xg, max_tile_bytes=budget)

    pair_index = torch.arange(args.naive_pairs, device=device)
    naive_q, naive_g = pair_index // num_g % num_q, pair_index % num_g

    def naive(chunk: int) -> Callable[[], None]:
        def run() -> None:
            for start in range(0, args.naive_pairs, chunk):
                stop = start + chunk
                matcher(xq[naive_q[start:stop]], xg[naive_g[start:stop]])

        return run

    contenders: dict[str, Callable[[], object]] = {
        "square": lambda: torch.mm(square_a, square_a, out=square_out),
        "kernel": lambda: torch.mm(kernel_a, kernel_b.T, out=kernel_out),
        "pairwise": fast,
        **{f"naive/{c}": naive(c) for c in args.naive_chunks},
    }
    mixed_pairs_flops = 0
    if args.mixed_min_length is not None:
        xm, m_lengths = padded_mixed(num_g, s, args.mixed_min_length, d, device)
        mixed_pairs_flops = 8 * d * s * int(m_lengths.sum())  # queries all at S

        def mixed() -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast_bf16):
                return matcher.pairwise(xq, xm, g_lengths=m_lengths, max_tile_bytes=budget)

        contenders["mixed"] = mixed
    with torch.inference_mode():
        atol = 2e-2 if args.autocast_bf16 else 1e-5
        torch.testing.assert_close(  # same numbers on the pairs both paths compute
            matcher(xq[naive_q[:64]], xg[naive_g[:64]]),
            fast()[naive_q[:64], naive_g[:64]],
            atol=atol,
            rtol=0,
        )
        if args.mixed_min_length is not None:
            # A mixed-length pair is the pair of the unpadded sequences.
            got = mixed()
            for j in range(0, num_g, max(1, num_g // 16)):
                own = xm[j : j + 1, : int(m_lengths[j])]
                torch.testing.assert_close(
                    matcher(xq[:4], own.expand(4, -1, -1)), got[:4, j], atol=atol, rtol=0
                )
        best = interleaved_best(contenders, args.rounds, sync)

    peak = 2 * args.square**3 / best["square"]
    kernel_rate = 2 * tile_g * s * d * tile_q * s / best["kernel"]
    fast_rate = num_q * num_g / best["pairwise"]
    naive_chunk = min(args.naive_chunks, key=lambda c: best[f"naive/{c}"])
    naive_rate = args.naive_pairs / best[f"naive/{naive_chunk}"]
    smallest = min(args.naive_chunks)
    essential = 8 * s * s * d

    print(
        f"device: {device} ({torch.get_num_threads()} threads)  S={s} D={d}  Q={num_q} G={num_g}  "
        f"tile budget {budget / MiB:g} MiB = {tile_q} x {tile_g} items  "
        f"autocast_bf16={args.autocast_bf16}  best of {args.rounds} interleaved rounds"
    )
    rows = [
        (f"fp32 matmul, {args.square}^3 square = peak (GFLOP/s)", f"{peak / 1e9:.1f}"),
        (
            f"fp32 matmul, kernel shape {tile_g * s}x{d}x{tile_q * s} (GFLOP/s)",
            f"{kernel_rate / 1e9:.1f}",
        ),
        ("pairwise pairs/s", f"{fast_rate:,.0f}"),
        ("pairwise GFLOP/s (8 S^2 D per pair)", f"{fast_rate * essential / 1e9:.1f}"),
        ("efficiency vs peak (pairs/s * 8 S^2 D / peak)", f"{fast_rate * essential / peak:.2f}"),
        ("efficiency vs kernel-shape matmul", f"{fast_rate * essential / kernel_rate:.2f}"),
        *(
            (
                f"naive forward pairs/s, {c} pairs per call",
                f"{args.naive_pairs / best[f'naive/{c}']:,.0f}",
            )
            for c in args.naive_chunks
        ),
        (
            f"naive GFLOP/s at {naive_chunk} pairs per call "
            f"({naive_flops_per_pair(s, d) / 1e6:.1f} MFLOP per pair)",
            f"{naive_rate * naive_flops_per_pair(s, d) / 1e9:.1f}",
        ),
        ("speed-up over the fastest naive call", f"{fast_rate / naive_rate:.1f}x"),
        (
            "  (bound at equal GEMM rates: naive flops / 8 S^2 D)",
            f"{naive_flops_per_pair(s, d) / essential:.1f}x",
        ),
        (
            f"speed-up over {smallest} pair(s) per call",
            f"{fast_rate * best[f'naive/{smallest}'] / args.naive_pairs:.1f}x",
        ),
    ]
    if args.mixed_min_length is not None:
        mixed_rate = num_q * num_g / best["mixed"]
        mixed_flops = mixed_pairs_flops * num_q / best["mixed"]
        rows += [
            (
                f"mixed gallery (lengths {args.mixed_min_length}..{s}, mean "
                f"{mixed_pairs_flops / (8 * d * s * num_g):.1f}) pairs/s",
                f"{mixed_rate:,.0f}",
            ),
            ("mixed GFLOP/s (8 Sq Sg D per unpadded pair)", f"{mixed_flops / 1e9:.1f}"),
            ("mixed efficiency vs peak", f"{mixed_flops / peak:.2f}"),
        ]
    if args.estimate is not None:
        est_q, est_g = args.estimate
        rows.append(
            (
                f"estimated {est_q:,} x {est_g:,} test at S={s}, equal lengths (s)",
                f"{est_q * est_g / fast_rate:,.0f}",
            )
        )
    train = training_batch_seconds(d, s, args.batch, device, args.rounds, sync)
    rows += [
        (
            f"training B={args.batch}: B x B fwd+bwd, batch vs itself (ms)",
            f"{train['self'] * 1e3:.1f}",
        ),
        (
            f"training B={args.batch}: B x B fwd+bwd, both directions per pair (ms)",
            f"{train['copy'] * 1e3:.1f}",
        ),
    ]
    if not args.skip_memory:
        resident = ResidentMemory()
        with torch.inference_mode():
            prepared_q = matcher.prepare(xq)
            for tile_budget in (budget, 4 * budget):
                for gallery in (num_g, 4 * num_g):
                    prepared_g = matcher.prepare(unit(gallery, s, d, device))
                    shape = matcher.tile_shape(
                        num_q, gallery, s, s, device, torch.float32, False, tile_budget
                    )
                    nbytes = working_memory(
                        matcher, prepared_q, prepared_g, tile_budget, device, resident
                    )
                    del prepared_g
                    rows.append(
                        (
                            f"working memory, budget {tile_budget / MiB:g} MiB "
                            f"({shape[0]}x{shape[1]}), G={gallery} (MiB)",
                            f"{nbytes / MiB:.1f}",
                        )
                    )
    width = max(len(name) for name, _ in rows) + 2
    print(f"{'measure':<{width}}{'value':>12}")
    for name, value in rows:
        print(f"{name:<{width}}{value:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
