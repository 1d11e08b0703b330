"""`duatm report`: one self-contained HTML page about a checkpoint on its query/gallery split.

Distances come from a fresh evaluation, or from a file that `duatm evaluate --save-distances`
wrote (then only the attention pairs are extracted again).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from duatm.api import load
from duatm.atomic import atomic_write_text
from duatm.config import ConfigError
from duatm.data.records import ImageRecord, TrackletRecord
from duatm.engine.builders import build_test_loader, load_dataset
from duatm.engine.checkpoint import CheckpointError
from duatm.engine.commands import add_overrides_argument, run_guarded
from duatm.engine.distances import load_distances
from duatm.engine.evaluator import Rerank, evaluate_split, evaluation_options
from duatm.report.build import build_report, feature_grid, record_name
from duatm.report.page import render_report


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a last.pt / best.pt of a run")
    parser.add_argument("--out", required=True, help="the HTML file to write")
    parser.add_argument("--data-root", help="dataset folder (sets data.root)")
    parser.add_argument(
        "--distances",
        metavar="FILE",
        help="distances saved by duatm evaluate --save-distances (skips extracting the split)",
    )
    parser.add_argument(
        "--queries",
        nargs="+",
        metavar="QUERY",
        help="queries to show, by index or image file name (default: the worst by AP)",
    )
    parser.add_argument("--worst", type=int, default=5, help="how many worst queries (default 5)")
    parser.add_argument("--top", type=int, default=10, help="gallery items per query (default 10)")
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("QUERY", "GALLERY"),
        help="draw the attention of this pair (index or file name; repeatable); default: the "
        "first --attention-pairs shown queries with their rank-1 item",
    )
    parser.add_argument("--attention-pairs", type=int, default=2, help="default pairs (2)")
    parser.add_argument(
        "--positions",
        nargs="+",
        type=int,
        metavar="I",
        help="sequence positions to look from (row-major feature-map cells; default: the "
        "centre column at head, torso and leg height)",
    )
    parser.add_argument("--device", help='"auto", "cpu", "cuda", "cuda:N" or "mps" (sets device)')
    add_overrides_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    """``duatm report``: write the HTML page; exit status 0 or 2 (bad input)."""
    return run_guarded("report", lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    for name in ("worst", "top", "attention_pairs"):
        if getattr(args, name) < 1:
            raise ConfigError(
                f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}"
            )
    out = Path(args.out)
    if out.is_dir():
        raise FileExistsError(f"--out: {out} is a folder; give the HTML file to write")
    checkpoint = Path(args.checkpoint)
    overrides = [*args.overrides]
    overrides += [f"data.root={args.data_root}"] if args.data_root else []
    overrides += [f"device={args.device}"] if args.device else []
    model = load(checkpoint, device=None, overrides=overrides)
    cfg = model.config
    e = cfg.eval
    reranked_label = f"re-ranked (k1={e.rerank_k1}, k2={e.rerank_k2}, lambda={e.rerank_lambda})"
    if args.distances:
        saved = load_distances(args.distances)
        if saved.fingerprint != model.fingerprint:
            raise CheckpointError(
                f"{args.distances} was computed by another model ({saved.checkpoint}), not by "
                f"{checkpoint}; report on that checkpoint or evaluate this one again"
            )
        query, gallery, distances, reranked = (
            saved.query,
            saved.gallery,
            saved.distances,
            saved.reranked,
        )
        distractor_pids = saved.distractor_pids
        if saved.rerank is not None:
            r = saved.rerank
            reranked_label = f"re-ranked (k1={r['k1']}, k2={r['k2']}, lambda={r['lambda_value']})"
        source = f"{args.distances}"
    else:
        dataset = load_dataset(cfg)
        query_loader = build_test_loader(cfg, dataset.query)
        gallery_loader = build_test_loader(cfg, dataset.gallery)
        evaluation = evaluate_split(
            model.module,
            query_loader,
            gallery_loader,
            model.device,
            **evaluation_options(e, amp=model.amp),
            distractor_pids=dataset.distractor_pids,
            rerank=Rerank.asked_by(e),
            progress=not args.no_progress,
            diagnostics=False,  # the page does not show them
        )
        query = query_loader.dataset.records  # type: ignore[attr-defined]
        gallery = gallery_loader.dataset.records  # type: ignore[attr-defined]
        distances, reranked = evaluation.distances, evaluation.reranked_distances
        distractor_pids = list(dataset.distractor_pids)
        source = f"evaluated now on {cfg.data.root}"
    queries = (
        None if args.queries is None else [_index(q, query, "--queries") for q in args.queries]
    )
    pairs = None
    if args.pair:
        pairs = [
            (_index(q, query, "--pair QUERY"), _index(g, gallery, "--pair GALLERY"))
            for q, g in args.pair
        ]
    m = cfg.model
    if m.kind == "video":
        # Sequence positions are time steps; all-mode clips differ in length, and build_report
        # checks each pair's own clips.
        if cfg.data.test_clip_mode == "clip":
            _check_positions(args.positions, cfg.data.test_clip_len, "time steps of a clip")
        model_fact = f"{m.backbone} + {m.rnn.upper()}, video, mode {m.mode}, D = {m.dim}"
        clips = (
            "every frame of each tracklet"
            if cfg.data.test_clip_mode == "all"
            else f"clips of {cfg.data.test_clip_len} frames"
        )
        input_fact = f"frames {cfg.data.height} x {cfg.data.width}, {clips}"
        items = "tracklets"
    else:
        rows, cols = feature_grid(model)
        _check_positions(
            args.positions, rows * cols, f"the feature map is {rows} x {cols}, read row by row"
        )
        model_fact = f"{m.backbone}, mode {m.mode}, D = {m.dim}"
        input_fact = f"input {cfg.data.height} x {cfg.data.width}"
        items = "items"
    content = build_report(
        model,
        query,
        gallery,
        distances,
        title=f"DuATM report: {checkpoint}",
        facts=[
            ("checkpoint", f"{checkpoint} (epoch {model.epoch})"),
            ("model", f"{model_fact}, {input_fact}"),
            ("data", f"{cfg.data.dataset}: {len(query)} queries, {len(gallery)} gallery {items}"),
            ("distances", source),
        ],
        reranked=reranked,
        reranked_label=reranked_label,
        queries=queries,
        worst=args.worst,
        top=args.top,
        pairs=pairs,
        attention_pairs=args.attention_pairs,
        positions=args.positions,
        keep_same_camera=e.keep_same_camera,
        distractor_pids=distractor_pids,
        max_rank=e.max_rank,
    )
    atomic_write_text(out, render_report(content))
    print(
        f"report written to {out} ({len(content.queries)} queries, {len(content.pairs)} attention pairs)"
    )
    return 0


def _check_positions(positions: list[int] | None, size: int, what: str) -> None:
    for p in positions or []:
        if not 0 <= p < size:
            raise ConfigError(f"--positions: {p} is outside 0..{size - 1} ({what})")


def _index(value: str, records: list[ImageRecord] | list[TrackletRecord], option: str) -> int:
    """An index into ``records`` from an integer, an image file name, or the file name of a
    tracklet's first frame."""
    if value.lstrip("-").isdigit():
        index = int(value)
        if not 0 <= index < len(records):
            raise ConfigError(f"{option}: index {index} is outside 0..{len(records) - 1}")
        return index
    matches = [
        i
        for i, r in enumerate(records)
        if value in (record_name(r), r.path if isinstance(r, ImageRecord) else r.paths[0])
    ]
    if not matches:
        if records and isinstance(records[0], TrackletRecord):
            raise ConfigError(f"{option}: no tracklet whose first frame is {value!r} in this set")
        raise ConfigError(f"{option}: no image named {value!r} in this set")
    return matches[0]
