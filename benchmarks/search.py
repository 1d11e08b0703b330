"""Two-stage search (pooled-vector shortlist + exact DuATM) against exact all-pairs search.

For each gallery size N, from one run on the same index:

* query latency, one query at a time as ``duatm search`` runs it: the exact whole-gallery
  search, the first stage alone, and first + second stage for each shortlist size (best of
  interleaved rounds, see ``timing.py``);
* memory: the bytes of the index each method reads per query (the whole index, or the pooled
  vectors and the shortlisted items), and its working memory: the peak resident growth of one
  query once the index pages it reads are mapped (its temporaries);
* recall@10: the fraction of the exact top-10 found inside the shortlist (the two-stage
  top-10 is then exactly the exact one), averaged over ``--queries`` queries.

Two sources of sequences:

* synthetic (default): identities in look-alike groups, each image its identity's sequence
  misaligned by up to one feature-map row, plus noise (see ``synthetic_sequences``), matched by
  a matcher whose filter weights are scaled (``--attention-scale``) so that its attention is as
  peaked as a trained model's;
* a trained model's: ``--pool INDEX``, an index built by ``duatm index`` on many images (the
  gallery of each size is a random subset of it), with ``--query-images DIR``.

It also prints, per source, statistics that say how the sequences differ: how peaked the
attention is, how similar a sequence's elements are, and how well the pooled-vector distance
predicts the DuATM distance (Spearman correlation over the gallery).

    python benchmarks/search.py --sizes 10000 100000
    python benchmarks/search.py --sizes 1000000 --dtype float16 --queries 10
    duatm index --checkpoint runs/bench/dual-seed0/last.pt --out runs/bench/pool.index \\
        --images runs/bench/synthped-big/bounding_box_train runs/bench/synthped-big/bounding_box_test
    python benchmarks/search.py --pool runs/bench/pool.index \\
        --query-images runs/bench/synthped-big/query --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

import duatm
from duatm.atomic import atomic_write_text
from duatm.config import load_config
from duatm.data.records import ImageRecord
from duatm.models.duatm import DuATM
from duatm.search import (
    GalleryIndex,
    Shortlister,
    exact_search,
    index_sequences,
    load_index,
    pooled_vectors,
    rerank,
    save_index,
)
from duatm.search.commands import image_files
from timing import ResidentMemory, interleaved_best

MiB = 2**20
TOP = 10
# Synthetic data: images per identity (Market-1501 has about 20 per test identity), identities
# per look-alike group, and the generator's chunk of items.
IMAGES_PER_ID = 20
GROUP = 4
CHUNK = 8192


def synthetic_model(length: int, dim: int, attention_scale: float, seed: int) -> duatm.TrainedModel:
    """A matcher with random filter weights times ``attention_scale`` (its BatchNorm at its
    initial statistics, the identity); the extractor is never used."""
    cfg = load_config(
        None,
        ["model.backbone=densenet_tiny", "model.pretrained=null", f"model.dim={dim}", "device=cpu"],
    )
    torch.manual_seed(seed)
    module = DuATM(cfg.model.backbone, dim, num_classes=1, drop_last_pool=True)
    with torch.no_grad():
        module.matcher.transform[0].weight.mul_(attention_scale)
    return duatm.TrainedModel(module, cfg, torch.device("cpu"))


def synthetic_sequences(
    pids: torch.Tensor,
    length: int,
    dim: int,
    seed: int,
    *,
    shared: float,
    item_seed: int,
    noise: float = 1.0,
) -> torch.Tensor:
    """Unit sequences (len(pids), S, D): identity k's prototype is its group's (k // GROUP)
    plus an own part, both Gaussian and a function of (seed, id) alone, with one vector common
    to all positions weighted by ``shared`` (trained sequences' elements are alike); each image
    is its prototype shifted along the sequence by -w, 0 or +w positions (one row of an
    S/w x w map, w = 4: a vertical misalignment), plus Gaussian noise; shifts and noise come
    from ``item_seed``, so that other images of the same identities take another one."""
    out = torch.empty(len(pids), length, dim)
    width = 4 if length % 4 == 0 else 1
    items = torch.Generator().manual_seed(item_seed)
    for pid in pids.unique().tolist():
        rows = (pids == pid).nonzero().squeeze(1)
        group = torch.Generator().manual_seed(seed * 1_000_003 + pid // GROUP)
        own = torch.Generator().manual_seed(seed * 1_000_033 + pid + 10**9)
        prototype = torch.randn(length + 1, dim, generator=group) + 0.8 * torch.randn(
            length + 1, dim, generator=own
        )
        prototype = prototype[1:] + shared * prototype[:1]
        shifts = torch.randint(-1, 2, (len(rows),), generator=items) * width
        images = torch.stack([prototype.roll(int(s), 0) for s in shifts])
        out[rows] = images + noise * torch.randn(images.shape, generator=items)
    return F.normalize(out, dim=-1)


def synthetic_gallery(
    model: duatm.TrainedModel,
    size: int,
    length: int,
    dim: int,
    dtype: str,
    seed: int,
    shared: float,
) -> GalleryIndex:
    pids = torch.arange(size) // IMAGES_PER_ID
    records = [ImageRecord(f"synthetic/{i}", int(p), 0) for i, p in enumerate(pids.tolist())]

    def chunks() -> Iterator[torch.Tensor]:
        for start in range(0, size, CHUNK):
            yield synthetic_sequences(
                pids[start : start + CHUNK], length, dim, seed, shared=shared, item_seed=start
            )

    return index_sequences(model, chunks(), records, dtype=dtype)


def synthetic_queries(
    size: int, count: int, length: int, dim: int, seed: int, shared: float
) -> torch.Tensor:
    """New images (other noise, other shifts) of ``count`` random gallery identities."""
    generator = torch.Generator().manual_seed(seed + 1)
    pids = torch.randperm(max(1, size // IMAGES_PER_ID), generator=generator)[:count]
    return synthetic_sequences(pids, length, dim, seed, shared=shared, item_seed=-1 - size)


def sequence_statistics(
    model: duatm.TrainedModel, index: GalleryIndex, queries: torch.Tensor
) -> dict[str, float]:
    """How peaked the attention is, how alike a sequence's elements are, and how well the
    pooled-vector distance ranks the gallery the way DuATM does, on up to 2,000 items."""
    sample = index.slice(0, min(len(index), 2000))
    x = sample.x
    cos = x @ x.transpose(1, 2)
    off = ~torch.eye(x.shape[1], dtype=torch.bool)
    q = queries[: min(len(queries), 10)]
    prepared = model.prepare(q)
    assert prepared.scaled_query is not None
    logits = (prepared.scaled_query[:, None] / math.log2(math.e)) @ x[None, :50].transpose(-1, -2)
    peak = logits.softmax(-1).amax(-1).mean()
    duatm_d = model.distance_prepared(prepared, sample)
    pooled_d = torch.cdist(pooled_vectors(prepared), index.pooled[: len(sample)].float())
    spearman = torch.stack([_spearman(a, b) for a, b in zip(duatm_d, pooled_d, strict=True)]).mean()
    return {
        "attention_peak": float(peak),
        "uniform_peak": 1 / x.shape[1],
        "element_cosine": float(cos[:, off].mean()),
        "spearman_pooled_vs_duatm": float(spearman),
    }


def _spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return (ra * rb).sum() / (ra.norm() * rb.norm())


def measure(
    model: duatm.TrainedModel,
    index_path: Path,
    queries: torch.Tensor,
    shortlists: list[int],
    backend: str,
    rounds: int,
) -> dict[str, object]:
    """Latency, memory and recall of every method on the index saved at ``index_path``."""
    index = load_index(index_path)
    size = len(index)
    shortlists = [n for n in shortlists if n < size]
    shortlister = Shortlister(index.pooled, backend)
    one = model.prepare(queries[:1])
    pooled_one = pooled_vectors(one)

    def two_stage(n: int, idx: GalleryIndex, stage1: Shortlister) -> object:
        return rerank(model, idx, one, stage1.nearest(pooled_one, n), top=TOP)

    contenders = {"exact": lambda: exact_search(model, index, one, top=TOP)}
    contenders["first stage"] = lambda: shortlister.nearest(pooled_one, max(shortlists, default=1))
    for n in shortlists:
        contenders[f"shortlist {n}"] = lambda n=n: two_stage(n, index, shortlister)
    seconds = interleaved_best(contenders, rounds, lambda: None)

    # Recall of the exact top-10 within each shortlist (its prefix: candidates come sorted).
    exact = exact_search(model, index, model.prepare(queries), top=TOP).indices
    prepared = model.prepare(queries)
    candidates = shortlister.nearest(pooled_vectors(prepared), max(shortlists, default=1))
    recall = {
        n: float(
            torch.tensor(
                [
                    len(set(e.tolist()) & set(c[:n].tolist())) / TOP
                    for e, c in zip(exact, candidates, strict=True)
                ]
            ).mean()
        )
        for n in shortlists
    }

    # Working memory: the peak growth of one query once the pages it reads are mapped (the
    # timing rounds touched them), i.e. its temporaries; the index pages are counted apart.
    resident = ResidentMemory()
    memory = {
        name: resident.peak_growth(contenders[name]) if resident.available else None
        for name in contenders
        if name != "first stage"
    }
    item_bytes = index.nbytes() // size
    pooled_bytes = index.pooled.nbytes
    read = {
        "exact": index.nbytes(),
        **{f"shortlist {n}": pooled_bytes + n * item_bytes for n in shortlists},
    }
    return {
        "size": size,
        "seconds": seconds,
        "recall": recall,
        "working_bytes": memory,
        "bytes_read": read,
        "index_bytes": index_path.stat().st_size,
        "backend": shortlister.backend,
        "statistics": sequence_statistics(model, index, queries),
    }


def compare_first_stages(
    model: duatm.TrainedModel, index: GalleryIndex, queries: torch.Tensor, sizes: list[int]
) -> dict[str, dict[int, float]]:
    """Recall@10 within the first n items of four candidate first stages: cosine or Euclidean
    distance of the mean sequence element or of the mean refined element (the one used)."""
    prepared, gallery = model.prepare(queries), index.slice(0, len(index))
    exact = model.distance_prepared(prepared, gallery).topk(TOP, largest=False).indices
    assert prepared.reference is not None and gallery.reference is not None
    means = {
        "sequence": (queries.mean(1), gallery.x.mean(1)),
        "refined": (pooled_vectors(prepared), pooled_vectors(gallery)),
    }
    recall = {}
    for what, (q, g) in means.items():
        scores = {
            "cosine": -(F.normalize(q, dim=-1) @ F.normalize(g, dim=-1).T),
            "euclidean": torch.cdist(q, g),
        }
        for metric, score in scores.items():
            order = score.argsort(dim=1)
            recall[f"{metric} of mean {what} element"] = {
                n: sum(
                    len(set(e.tolist()) & set(o[:n].tolist()))
                    for e, o in zip(exact, order, strict=True)
                )
                / exact.numel()
                for n in sizes
            }
    return recall


def format_table(results: list[dict[str, object]], target_n: int = 100_000) -> str:
    lines = [
        "| gallery | method | ms / query | speed-up | recall@10 | working memory | index bytes read |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        seconds, recall = r["seconds"], r["recall"]
        memory, read = r["working_bytes"], r["bytes_read"]
        assert isinstance(seconds, dict) and isinstance(recall, dict)
        assert isinstance(memory, dict) and isinstance(read, dict)
        exact = seconds["exact"]
        for name, s in seconds.items():
            n = int(name.split()[1]) if name.startswith("shortlist") else None
            mem = memory.get(name)
            lines.append(
                f"| {r['size']:,} | {name} | {s * 1e3:.1f} | "
                f"{'' if name == 'first stage' else f'{exact / s:.1f}x'} | "
                f"{'' if n is None else f'{recall[n]:.3f}'} | "
                f"{'' if mem is None else f'{mem / MiB:.0f} MiB'} | "
                f"{'' if name not in read else f'{read[name] / MiB:.0f} MiB'} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--shortlists", type=int, nargs="+", default=[100, 200, 500, 1000, 2000])
    parser.add_argument(
        "--queries", type=int, default=20, help="queries for recall (and statistics)"
    )
    parser.add_argument("--length", type=int, default=32, help="S of synthetic sequences")
    parser.add_argument("--dim", type=int, default=256, help="D of synthetic sequences")
    parser.add_argument(
        "--attention-scale",
        type=float,
        default=40.0,
        help="synthetic matcher: filter weights times this (attention as peaked as trained)",
    )
    parser.add_argument(
        "--shared",
        type=float,
        default=1.3,
        help="synthetic: weight of the vector common to a sequence's elements",
    )
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--pool", type=Path, help="an index of a trained model's sequences")
    parser.add_argument("--query-images", type=Path, help="query images for --pool")
    parser.add_argument("--checkpoint", type=Path, help="for --pool (default: the one it names)")
    parser.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--workdir", type=Path, help="where index files go (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument(
        "--compare-first-stages",
        action="store_true",
        help="also print the recall of four candidate first stages (at the first size)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pool is not None and args.query_images is None:
        parser.error("--pool needs --query-images")

    if args.pool is not None:
        pool = load_index(args.pool)
        model = duatm.load(args.checkpoint or pool.checkpoint, device="cpu")
        query_paths = image_files(args.query_images)
        picked = torch.randperm(
            len(query_paths), generator=torch.Generator().manual_seed(args.seed)
        )
        queries = model.extract(
            [query_paths[i] for i in picked[: args.queries].tolist()], flip=pool.flip
        )
        _, length, dim = pool.prepared.x.shape
        source = f"trained model {model.checkpoint} on {args.pool} ({len(pool):,} items)"
    else:
        model = synthetic_model(args.length, args.dim, args.attention_scale, args.seed)
        length, dim = args.length, args.dim
        source = f"synthetic (attention scale {args.attention_scale}, shared {args.shared})"
    print(
        f"sequences: {source}; S={length}, D={dim}, {args.dtype} index; {torch.get_num_threads()} threads"
    )

    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        for size in args.sizes:
            start = time.perf_counter()
            if args.pool is not None:
                if size > len(pool):
                    print(f"skipping {size:,}: the pool has {len(pool):,} items", file=sys.stderr)
                    continue
                generator = torch.Generator().manual_seed(args.seed)
                rows = torch.randperm(len(pool), generator=generator)[:size].sort().values
                index = pool.subset(rows)
                if args.dtype != pool.dtype:
                    parser.error(f"--dtype {args.dtype}: the pool is stored in {pool.dtype}")
            else:
                index = synthetic_gallery(
                    model, size, length, dim, args.dtype, args.seed, args.shared
                )
                queries = synthetic_queries(size, args.queries, length, dim, args.seed, args.shared)
            if args.compare_first_stages and not results:
                comparison = compare_first_stages(model, index, queries, args.shortlists)
                print("recall@10 within the first n items, by first stage:")
                for name, by_n in comparison.items():
                    print(f"  {name:38s} " + "  ".join(f"{n}: {r:.3f}" for n, r in by_n.items()))
            path = save_index(index, Path(workdir) / f"gallery-{size}.index")
            del index
            built = time.perf_counter() - start
            result = measure(model, path, queries, args.shortlists, args.backend, args.rounds)
            result["build_seconds"] = built
            results.append(result)
            path.unlink()
            print(format_table([result]))
            print(f"statistics: {json.dumps(result['statistics'])}\n", flush=True)
    print(format_table(results))
    if args.json:
        payload = {
            "source": source,
            "length": length,
            "dim": dim,
            "dtype": args.dtype,
            "results": results,
        }
        atomic_write_text(args.json, json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
