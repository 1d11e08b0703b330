"""`duatm index` and `duatm search`: build a gallery index once, then rank it for query images.

Both load the checkpoint through :func:`duatm.load`; expected failures become one line and
exit status 2 through :func:`~duatm.engine.commands.run_guarded`.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

from duatm.api import load
from duatm.atomic import atomic_open, atomic_write_text
from duatm.config import INDEX_DTYPES, SEARCH_BACKENDS, ConfigError
from duatm.data.datasets.base import IMAGE_EXTENSIONS, is_image_name
from duatm.data.records import ImageRecord
from duatm.engine.builders import load_dataset
from duatm.engine.commands import _add_common, _overrides, add_overrides_argument, run_guarded
from duatm.search.index import GalleryIndex, build_index, check_same_model, load_index, save_index
from duatm.search.ranking import SearchResult, search
from duatm.search.shortlist import Shortlister

# torch.save archives (checkpoints, indexes) start with this; results never overwrite one.
_ZIP_MAGIC = b"PK\x03\x04"


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a last.pt / best.pt of a run")
    parser.add_argument(
        "--images",
        metavar="DIR",
        nargs="+",
        help="index every image under these folders (recursively; pid and camid -1), instead "
        "of --data-root, which indexes the gallery split of the checkpoint's dataset",
    )
    parser.add_argument("--out", dest="index_path", required=True, help="index file to write")
    parser.add_argument(
        "--dtype",
        choices=list(INDEX_DTYPES),
        help="storage of the sequences (sets search.index_dtype; float16 halves the file)",
    )
    parser.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing index file at --out"
    )
    _add_common(parser)
    parser.set_defaults(handler=run_index)


def run_index(args: argparse.Namespace) -> int:
    """``duatm index``: extract and save a gallery index."""
    return run_guarded("index", lambda: _index(args))


def _index(args: argparse.Namespace) -> int:
    if args.images and args.data_root:
        raise ConfigError("duatm index takes --images DIR or --data-root ROOT, not both")
    overrides = _overrides(args)
    overrides += [f"search.index_dtype={args.dtype}"] if args.dtype else []
    overrides += ["eval.flip=true"] if args.flip else []
    out = Path(args.index_path)
    _check_index_target(out, args.overwrite)
    start = time.perf_counter()
    model = load(args.checkpoint, device=None, overrides=overrides)
    cfg = model.config
    if args.images:
        records = [
            ImageRecord(str(path), -1, -1) for d in args.images for path in image_files(Path(d))
        ]
        source = ", ".join(args.images)
    else:
        records = load_dataset(cfg).gallery
        source = f"{cfg.data.root} (gallery)"
    index = build_index(
        model,
        records,
        dtype=cfg.search.index_dtype,
        flip=cfg.eval.flip,
        num_workers=cfg.data.num_workers,
        progress=not args.no_progress,
    )
    save_index(index, out)
    _, length, dim = index.prepared.x.shape
    print(
        f"indexed {len(index)} images from {source} with {args.checkpoint} "
        f"({length} x {dim} {index.dtype} sequences{', flip' if index.flip else ''}) in "
        f"{time.perf_counter() - start:.1f} s -> {out} ({out.stat().st_size / 2**20:.1f} MiB)"
    )
    return 0


def _check_index_target(out: Path, overwrite: bool) -> None:
    """An existing file at ``out`` is replaced only when asked to and only if it is an index."""
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace the index")
    if out.is_dir():
        raise FileExistsError(f"--out {out} is a folder; name the index file")
    load_index(out)  # raises, naming the file, when it is not an index (e.g. a checkpoint)


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="a file written by duatm index")
    parser.add_argument(
        "--query", required=True, help="a query image, or a folder of them (recursively)"
    )
    parser.add_argument(
        "--checkpoint", help="the model that built the index (default: the one it names)"
    )
    parser.add_argument("--top", type=int, help="gallery items listed per query (search.top)")
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument(
        "--shortlist",
        type=int,
        metavar="N",
        help="score the N nearest items by pooled vectors exactly (search.shortlist)",
    )
    stage.add_argument("--exact", action="store_true", help="score the whole gallery exactly")
    parser.add_argument(
        "--backend", choices=SEARCH_BACKENDS, help="first-stage search (search.backend)"
    )
    parser.add_argument("--json", help="write the ranked lists as JSON")
    parser.add_argument("--csv", help="write the ranked lists as CSV (query,rank,path,...)")
    parser.add_argument("--device", help='"auto", "cpu", "cuda", "cuda:N" or "mps" (sets device)')
    add_overrides_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_search)


def run_search(args: argparse.Namespace) -> int:
    """``duatm search``: rank an index for query images; print, and write JSON / CSV."""
    return run_guarded("search", lambda: _search(args))


def _search(args: argparse.Namespace) -> int:
    index = load_index(args.index)
    checkpoint = Path(args.checkpoint or index.checkpoint)
    for output in (args.json, args.csv):
        if output:
            _check_output(Path(output), protected=(Path(args.index), checkpoint))
    overrides = list(args.overrides)
    overrides += [f"search.top={args.top}"] if args.top is not None else []
    overrides += [f"search.shortlist={args.shortlist}"] if args.shortlist is not None else []
    overrides += ["search.shortlist=0"] if args.exact else []
    overrides += [f"search.backend={args.backend}"] if args.backend else []
    model = load(checkpoint, device=args.device or "auto", overrides=overrides)
    check_same_model(index, model, args.index)
    queries = image_files(Path(args.query))
    start = time.perf_counter()
    sequences = model.extract(queries, flip=index.flip, progress=not args.no_progress)
    extracted = time.perf_counter()
    s = model.config.search
    exact = s.shortlist == 0 or s.shortlist >= len(index)
    shortlister = None if exact else Shortlister(index.pooled, s.backend)
    result = search(
        model, index, sequences, top=s.top, shortlist=s.shortlist, shortlister=shortlister
    )
    searched = time.perf_counter()
    print(format_results(queries, index, result))
    stage = (
        f"exact DuATM distances to all {len(index)} gallery items"
        if shortlister is None
        else f"shortlist of {min(s.shortlist, len(index))} by pooled vectors "
        f"({shortlister.backend}), then exact DuATM distances"
    )
    print(
        f"{len(queries)} quer{'y' if len(queries) == 1 else 'ies'}: {stage}; "
        f"{(searched - extracted) / len(queries) * 1e3:.1f} ms per query to search, "
        f"{extracted - start:.2f} s to extract"
    )
    payload = {
        "index": str(args.index),
        "checkpoint": str(checkpoint),
        "fingerprint": model.fingerprint,
        "gallery_size": len(index),
        "top": s.top,
        "shortlist": None if shortlister is None else min(s.shortlist, len(index)),
        "backend": None if shortlister is None else shortlister.backend,
        "seconds": {"extract": extracted - start, "search": searched - extracted},
        "queries": [
            {"query": str(query), "results": _ranked(index, result, i)}
            for i, query in enumerate(queries)
        ],
    }
    if args.json:
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
        print(f"results written to {args.json}")
    if args.csv:
        with atomic_open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["query", "rank", "path", "pid", "camid", "distance"])
            for entry in payload["queries"]:
                for row in entry["results"]:
                    writer.writerow([entry["query"], *row.values()])
        print(f"results written to {args.csv}")
    return 0


def image_files(path: Path) -> list[Path]:
    """``path`` itself when it is a file, else every image file under it, in sorted order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no such image or folder: {path}")
    found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name))
    if not found:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {path}")
    return found


def format_results(queries: list[Path], index: GalleryIndex, result: SearchResult) -> str:
    """One Markdown table of ranked gallery items per query."""
    blocks = []
    for i, query in enumerate(queries):
        lines = [
            f"query {i + 1}/{len(queries)}: {query}",
            "| rank | distance | pid | camid | gallery image |",
            "| ---: | ---: | ---: | ---: | --- |",
        ]
        lines += [
            f"| {row['rank']} | {row['distance']:.4f} | {row['pid']} | {row['camid']} | "
            f"{row['path']} |"
            for row in _ranked(index, result, i)
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _ranked(index: GalleryIndex, result: SearchResult, query: int) -> list[dict[str, Any]]:
    records = index.records(result.indices[query])
    return [
        {
            "rank": rank,
            "path": record.path,
            "pid": record.pid,
            "camid": record.camid,
            "distance": float(distance),
        }
        for rank, (record, distance) in enumerate(
            zip(records, result.distances[query].tolist(), strict=True), start=1
        )
    ]


def _check_output(path: Path, protected: tuple[Path, ...]) -> None:
    """Results never replace the index, the checkpoint, or any other torch archive."""
    if any(path.resolve() == p.resolve() for p in protected):
        raise FileExistsError(f"{path} is the index or the checkpoint; write results elsewhere")
    if path.is_dir():
        raise FileExistsError(f"{path} is a folder; name a results file")
    if path.is_file():
        with path.open("rb") as handle:
            if handle.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
                raise FileExistsError(
                    f"{path} holds a checkpoint or index; not writing search results over it"
                )
