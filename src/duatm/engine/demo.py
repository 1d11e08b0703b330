"""`duatm demo`: paper Table 2 in miniature on SynthPed, on a CPU, in minutes.

Writes SynthPed (if absent), trains DuATM and the AvePool baseline with the same data, budget and
seed, evaluates both and prints R1 / R5 / mAP side by side. Everything lands in one run folder;
running the command again resumes unfinished runs and reuses finished ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import NamedTuple

from duatm.atomic import atomic_write_text
from duatm.config import DuATMConfig, load_config
from duatm.data.datasets import Market1501
from duatm.data.synthped import write_synthped
from duatm.engine.checkpoint import latest_checkpoint
from duatm.engine.commands import add_overrides_argument, run_guarded
from duatm.engine.evaluator import RESULTS_JSON
from duatm.engine.trainer import Trainer

DEMO_CONFIG = "synthped"
# (table label, matcher mode): the paper's full model against its AvePool baseline.
DEMO_MODELS = (("DuATM (dual)", "dual"), ("AvePool", "avgpool"))
DEMO_JSON = "demo_results.json"


class DemoRow(NamedTuple):
    model: str
    mode: str
    r1: float
    r5: float
    mAP: float
    train_seconds: float


def run_demo(
    out: Path,
    *,
    overrides: list[str] | None = None,
    num_ids: int = 100,
    progress: bool = True,
) -> list[DemoRow]:
    """Train and evaluate every model of DEMO_MODELS under ``out``; returns the table rows."""
    data_root = out / "synthped"
    start = time.perf_counter()
    write_synthped(data_root, num_ids=num_ids, height=128, width=64, workers=2, verbose=True)
    print(f"SynthPed ready in {data_root} ({time.perf_counter() - start:.1f} s)")
    dataset = Market1501(data_root)
    rows = []
    for label, mode in DEMO_MODELS:
        cfg = load_config(
            DEMO_CONFIG,
            [
                f"data.root={data_root}",
                *(overrides or []),
                f"model.mode={mode}",
                f"out_dir={out / mode}",
            ],
        )
        print(f"\n== {label}: training {cfg.schedule.epochs} epochs in {cfg.out_dir} ==")
        rows.append(_train_one(label, cfg, dataset, progress))
    table = format_demo_table(rows)
    payload = {"rows": [row._asdict() for row in rows], "table": table}
    atomic_write_text(out / DEMO_JSON, json.dumps(payload, indent=2) + "\n")
    print(f"\n{table}\n(results in {out / DEMO_JSON})")
    return rows


def _train_one(label: str, cfg: DuATMConfig, dataset: Market1501, progress: bool) -> DemoRow:
    run_dir = Path(cfg.out_dir)
    resume = latest_checkpoint(run_dir)
    if resume is not None:
        print(f"resuming from {resume}")
    trainer = Trainer(cfg, dataset=dataset, resume_from=resume, progress=progress)
    trainer.fit()
    results = json.loads((run_dir / RESULTS_JSON).read_text())
    return DemoRow(
        label, cfg.model.mode, results["R1"], results["R5"], results["mAP"], trainer.seconds
    )


def format_demo_table(rows: list[DemoRow]) -> str:
    """A Markdown table of the rows, metrics in percent."""
    lines = [
        "| model | R1 | R5 | mAP | train + eval time |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.model} | {100 * r.r1:.1f} | {100 * r.r5:.1f} | {100 * r.mAP:.1f} "
        f"| {r.train_seconds / 60:.1f} min |"
        for r in rows
    ]
    if len(rows) == 2:
        lines += ["", verdict(*rows)]
    return "\n".join(lines)


def verdict(model: DemoRow, baseline: DemoRow) -> str:
    """One line saying whether ``model`` beat ``baseline`` in R1 and mAP, with the margins."""
    d_r1, d_map = 100 * (model.r1 - baseline.r1), 100 * (model.mAP - baseline.mAP)
    margins = f"R1 {d_r1:+.1f}, mAP {d_map:+.1f} points"
    if d_r1 > 0 and d_map > 0:
        return f"{model.model} is ahead of {baseline.model}: {margins}."
    return f"{model.model} is NOT ahead of {baseline.model} in both R1 and mAP: {margins}."


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo run folder")
    parser.add_argument("--ids", type=int, default=100, help="SynthPed identities")
    add_overrides_argument(parser, help="overrides of the synthped config for both models")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_demo_command)


def _run_demo_command(args: argparse.Namespace) -> int:
    def body() -> int:
        run_demo(
            args.out, overrides=args.overrides, num_ids=args.ids, progress=not args.no_progress
        )
        return 0

    return run_guarded("demo", body)
