"""`duatm demo`: paper Table 2 in miniature on SynthPed, on a CPU, in minutes.

Writes SynthPed (if absent), trains DuATM and the AvePool baseline with the same data, budget and
seeds (`duatm ablate` with those two rows), evaluates both and prints the per-seed runs, the
means with their seed spread, and the paired bootstrap interval of DuATM's lead, because a small
model trained from scratch for minutes varies from seed to seed by several points. Everything
lands in one folder; running the command again resumes unfinished runs and reuses finished ones.
``--video`` does the same on video SynthPed tracklets (MARS layout) with the video model, against
temporal average pooling.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duatm.data.datasets import MARS, Market1501, ReIDDataset
from duatm.data.synthped import write_synthped
from duatm.data.synthped_video import write_video_synthped
from duatm.engine.ablation import (
    MODE_ROWS,
    RunResult,
    format_ablation,
    format_runs,
    run_ablation,
    verdict,
    write_ablation_json,
)
from duatm.engine.commands import Interrupted, add_overrides_argument, run_guarded

#: The paper's full model against its AvePool baseline (rows of `duatm ablate`).
DEMO_ROWS = (MODE_ROWS[0], MODE_ROWS[3])
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


def run_demo(
    out: Path,
    *,
    overrides: Sequence[str] = (),
    seeds: Sequence[int] = DEMO_SEEDS,
    num_ids: int = 100,
    progress: bool = True,
    kind: str = "image",
) -> dict[str, list[RunResult]]:
    """Train and evaluate DuATM and AvePool with every seed under ``out``
    (``out/<mode>-seed<k>``) on the SynthPed of ``kind`` (``"image"`` or ``"video"``, see
    :data:`DEMOS`); returns each model's per-seed results and writes the report."""
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
    results = run_ablation(
        demo.config,
        out,
        rows=DEMO_ROWS,
        seeds=seeds,
        overrides=[f"data.root={data_root}", *overrides],
        dataset=demo.dataset(data_root),
        progress=progress,
    )
    report = demo_report(results)
    write_ablation_json(out / DEMO_JSON, DEMO_ROWS, results, report)
    print(f"\n{report}\n(results in {out / DEMO_JSON})")
    return results


def demo_report(results: dict[str, list[RunResult]]) -> str:
    """Per-seed runs, the summary table and the verdict on DuATM against AvePool."""
    dual, avgpool = DEMO_ROWS
    return "\n\n".join(
        [
            format_runs(DEMO_ROWS, results),
            format_ablation(DEMO_ROWS, results),
            verdict(dual.label, results[dual.key], avgpool.label, results[avgpool.key])
            + "\n(last-epoch test metrics of a fixed schedule)",
        ]
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
