"""`duatm demo`: paper Table 2 in miniature on SynthPed, on a CPU, in minutes.

Writes SynthPed (if absent), trains DuATM and the AvePool baseline with the same data, budget and
seeds, evaluates both and prints R1 / R5 / mAP side by side: per seed, and the mean over seeds,
because a small model trained from scratch for minutes varies from seed to seed by more than
the gap being measured. Everything lands in one run folder; running the command again resumes
unfinished runs and reuses finished ones. ``--video`` does the same on video SynthPed tracklets
(MARS layout) with the video model, against temporal average pooling.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from duatm.atomic import atomic_write_text
from duatm.config import DuATMConfig, load_config
from duatm.data.datasets import MARS, Market1501, ReIDDataset
from duatm.data.synthped import write_synthped
from duatm.data.synthped_video import write_video_synthped
from duatm.engine.checkpoint import latest_checkpoint
from duatm.engine.commands import Interrupted, add_overrides_argument, run_guarded
from duatm.engine.evaluator import RESULTS_JSON
from duatm.engine.trainer import Trainer

# (table label, matcher mode): the paper's full model against its AvePool baseline.
DEMO_MODELS = (("DuATM (dual)", "dual"), ("AvePool", "avgpool"))
DEMO_SEEDS = (0, 1, 2)
DEMO_JSON = "demo_results.json"


@dataclass(frozen=True)
class DemoKind:
    """What one demo trains on: its shipped config, how its SynthPed is written and read."""

    config: str
    data_folder: str  # under the demo's run folder
    write: Callable[..., Path]  # (root, num_ids=..., workers=..., verbose=...) -> root
    dataset: Callable[[Path], ReIDDataset[Any]]
    out: Path  # default run folder


DEMOS = {
    "image": DemoKind(
        "synthped",
        "synthped",
        functools.partial(write_synthped, height=128, width=64),
        Market1501,
        Path("runs/demo"),
    ),
    "video": DemoKind(
        "synthped_video",
        "synthped_video",
        functools.partial(write_video_synthped, height=128, width=64),
        MARS,
        Path("runs/demo-video"),
    ),
}


class DemoRow(NamedTuple):
    """One model's results; ``seed`` None marks the mean over seeds (times are summed)."""

    model: str
    mode: str
    seed: int | None
    r1: float
    r5: float
    mAP: float
    train_seconds: float


def run_demo(
    out: Path,
    *,
    overrides: list[str] | None = None,
    seeds: Sequence[int] = DEMO_SEEDS,
    num_ids: int = 100,
    progress: bool = True,
    kind: str = "image",
) -> list[DemoRow]:
    """Train and evaluate every model of DEMO_MODELS with every seed under ``out``
    (``out/<mode>-seed<k>``) on the SynthPed of ``kind`` (``"image"`` or ``"video"``, see
    :data:`DEMOS`); returns the per-seed rows."""
    if not seeds:
        raise ValueError("the demo needs at least one seed")
    demo = DEMOS[kind]
    data_root = out / demo.data_folder
    start = time.perf_counter()
    try:
        demo.write(data_root, num_ids=num_ids, workers=2, verbose=True)
    except FileExistsError as err:
        raise FileExistsError(
            f"{data_root} holds other data than this demo's SynthPed (--ids {num_ids}): "
            f"remove it or choose another --out ({err})"
        ) from err
    print(f"SynthPed ready in {data_root} ({time.perf_counter() - start:.1f} s)")
    dataset = demo.dataset(data_root)
    rows = []
    for seed in seeds:
        for label, mode in DEMO_MODELS:
            cfg = load_config(
                demo.config,
                [
                    f"data.root={data_root}",
                    *(overrides or []),
                    f"seed={seed}",
                    f"model.mode={mode}",
                    f"out_dir={out / f'{mode}-seed{seed}'}",
                ],
            )
            print(f"\n== {label}, seed {seed}: {cfg.schedule.epochs} epochs in {cfg.out_dir} ==")
            rows.append(_train_one(label, cfg, dataset, progress))
    table = format_demo_table(rows)
    payload = {
        "rows": [row._asdict() for row in rows],
        "means": [row._asdict() for row in mean_rows(rows)],
        "table": table,
    }
    atomic_write_text(out / DEMO_JSON, json.dumps(payload, indent=2) + "\n")
    print(f"\n{table}\n(results in {out / DEMO_JSON})")
    return rows


def _train_one(label: str, cfg: DuATMConfig, dataset: ReIDDataset[Any], progress: bool) -> DemoRow:
    run_dir = Path(cfg.out_dir)
    resume = latest_checkpoint(run_dir)
    if resume is not None:
        print(f"resuming from {resume}")
    # A run that never saved a checkpoint (stopped in its first epoch) starts again: the demo
    # owns these folders.
    trainer = Trainer(
        cfg, dataset=dataset, resume_from=resume, overwrite=resume is None, progress=progress
    )
    trainer.fit()
    results = json.loads((run_dir / RESULTS_JSON).read_text())
    return DemoRow(
        label,
        cfg.model.mode,
        cfg.seed,
        results["R1"],
        results["R5"],
        results["mAP"],
        trainer.seconds,
    )


def mean_rows(rows: Sequence[DemoRow]) -> list[DemoRow]:
    """One row per model (in first-seen order): metrics averaged over its seeds, times summed."""
    by_model: dict[tuple[str, str], list[DemoRow]] = {}
    for row in rows:
        by_model.setdefault((row.model, row.mode), []).append(row)
    return [
        DemoRow(
            model,
            mode,
            None,
            *(sum(getattr(r, field) for r in group) / len(group) for field in ("r1", "r5", "mAP")),
            sum(r.train_seconds for r in group),
        )
        for (model, mode), group in by_model.items()
    ]


def format_demo_table(rows: Sequence[DemoRow]) -> str:
    """A Markdown table (metrics in percent) of the per-seed rows, then of the means over seeds
    when there are several, and the verdict on the first two models' means."""
    means = mean_rows(rows)
    several = len(means) < len(rows)
    lines = [
        "| model | seed | R1 | R5 | mAP | train + eval time |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [_table_line(r) for r in rows]
    if several:
        lines += [_table_line(r) for r in means]
    if len(means) == 2:
        lines += ["", verdict(*(means if several else rows))]
        if several:
            lines.append(_seed_count(rows, means[0].model, means[1].model))
    return "\n".join(lines)


def _table_line(r: DemoRow) -> str:
    seed = "mean" if r.seed is None else str(r.seed)
    model = f"**{r.model}**" if r.seed is None else r.model
    return (
        f"| {model} | {seed} | {100 * r.r1:.1f} | {100 * r.r5:.1f} | {100 * r.mAP:.1f} "
        f"| {r.train_seconds / 60:.1f} min |"
    )


def verdict(model: DemoRow, baseline: DemoRow) -> str:
    """One line saying whether ``model`` beat ``baseline`` in R1 and mAP, with the margins."""
    d_r1, d_map = 100 * (model.r1 - baseline.r1), 100 * (model.mAP - baseline.mAP)
    margins = f"R1 {d_r1:+.1f}, mAP {d_map:+.1f} points"
    over = "" if model.seed is not None else " (means over seeds)"
    if d_r1 > 0 and d_map > 0:
        return f"{model.model} is ahead of {baseline.model}{over}: {margins}."
    return f"{model.model} is NOT ahead of {baseline.model} in both R1 and mAP{over}: {margins}."


def _seed_count(rows: Sequence[DemoRow], model: str, baseline: str) -> str:
    """How many seeds put ``model`` ahead of ``baseline`` in R1, in mAP, and in both."""
    ours = {r.seed: r for r in rows if r.model == model}
    theirs = {r.seed: r for r in rows if r.model == baseline}
    seeds = [s for s in ours if s in theirs]
    r1 = sum(ours[s].r1 > theirs[s].r1 for s in seeds)
    mean_ap = sum(ours[s].mAP > theirs[s].mAP for s in seeds)
    both = sum(ours[s].r1 > theirs[s].r1 and ours[s].mAP > theirs[s].mAP for s in seeds)
    return (
        f"Seed by seed, {model} is ahead in R1 with {r1} of {len(seeds)}, in mAP with "
        f"{mean_ap}, in both with {both}."
    )


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train DuATM and its AvePool baseline on SynthPed with the same budget and seeds, and "
        "compare R1 / R5 / mAP (CPU, minutes). --video: the same on video SynthPed tracklets "
        "(MARS layout: misaligned walking, interference frames, variable lengths) with the "
        "frame CNN + bidirectional GRU model, against temporal average pooling."
    )
    parser.add_argument(
        "--video",
        action="store_true",
        help="the video demo: tracklets, the video model, config synthped_video",
    )
    parser.add_argument(
        "--out", type=Path, help="demo run folder (default runs/demo; runs/demo-video with --video)"
    )
    parser.add_argument("--ids", type=int, default=100, help="SynthPed identities")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(DEMO_SEEDS),
        help="training seeds; each model is trained once per seed and the table gives the mean",
    )
    add_overrides_argument(
        parser, help="overrides of the synthped (synthped_video) config for both models"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_demo_command)


def _run_demo_command(args: argparse.Namespace) -> int:
    def body() -> int:
        kind = "video" if args.video else "image"
        try:
            run_demo(
                args.out or DEMOS[kind].out,
                overrides=args.overrides,
                seeds=args.seeds,
                num_ids=args.ids,
                progress=not args.no_progress,
                kind=kind,
            )
        except KeyboardInterrupt as err:
            raise Interrupted("run the same duatm demo command again to resume") from err
        return 0

    return run_guarded("demo", body)
