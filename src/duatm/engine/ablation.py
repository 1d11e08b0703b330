"""`duatm ablate`: the paper's Tables 1 and 2 in miniature, with seeds, spread and paired CIs.

Why: one training run of a small model says little (seed-to-seed spread is several points of
mAP), and two models' means can differ by luck. Every row is trained with every seed on the
same data and budget; a row is compared with its AvePool baseline by a **paired bootstrap over
queries**: both were evaluated on the same queries, so resampling queries (and averaging the
per-seed differences) gives a confidence interval for the difference that accounts for which
queries happen to be in the test set. It does not account for the choice of seeds: the seed
spread column shows that, and a difference is convincing when both agree.

Rows (``--tables``):

* ``modes`` (paper Table 2): the matcher modes ``dual``, ``intra``, ``inter``, ``avgpool``,
  each with the full loss;
* ``losses`` (paper Table 1): DuATM (dual) and AvePool each with the triplet loss alone,
  + de-correlation, + cross-entropy, and all three.

Numbers are those of the last epoch on the test split (a fixed schedule, as in the paper); the
validation metrics of the same checkpoints are kept in the JSON. Runs land in
``OUT/<row>-seed<k>``; running the command again resumes unfinished runs and reuses finished ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from duatm.atomic import atomic_write_text
from duatm.config import ConfigError, DuATMConfig, load_config
from duatm.data.datasets import ReIDDataset
from duatm.engine.checkpoint import latest_checkpoint
from duatm.engine.commands import Interrupted, add_overrides_argument, run_guarded
from duatm.engine.evaluator import RESULTS_JSON
from duatm.engine.trainer import Trainer

ABLATION_JSON = "ablation.json"
BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class AblationRow:
    """One trained variant: a stable key (its run folder prefix), a label and its overrides."""

    key: str
    label: str
    overrides: tuple[str, ...]
    baseline: str  # key of the AvePool row it is compared with ("" for an AvePool row itself)


_NO_DECORRELATION = "loss.lambda1=0"
_NO_CROSS_ENTROPY = "loss.lambda2=0"

MODE_ROWS = (
    AblationRow("dual", "DuATM (dual)", ("model.mode=dual",), "avgpool"),
    AblationRow("intra", "Intra only", ("model.mode=intra",), "avgpool"),
    AblationRow("inter", "Inter only", ("model.mode=inter",), "avgpool"),
    AblationRow("avgpool", "AvePool", ("model.mode=avgpool",), ""),
)


def _loss_rows(mode: str, label: str, baseline: str) -> tuple[AblationRow, ...]:
    variants = (
        ("triplet", "triplet", (_NO_DECORRELATION, _NO_CROSS_ENTROPY)),
        ("decor", "triplet + decorrelation", (_NO_CROSS_ENTROPY,)),
        ("ce", "triplet + CE", (_NO_DECORRELATION,)),
    )
    rows = tuple(
        AblationRow(
            f"{mode}-{key}",
            f"{label}: {what}",
            (f"model.mode={mode}", *extra),
            baseline and f"{baseline}-{key}",
        )
        for key, what, extra in variants
    )
    return rows


LOSS_ROWS = (
    *_loss_rows("dual", "DuATM", "avgpool"),
    *_loss_rows("avgpool", "AvePool", ""),
)
TABLES = {"modes": MODE_ROWS, "losses": LOSS_ROWS}


@dataclass(frozen=True)
class RunResult:
    """What one (row, seed) run gives the tables: test metrics and per-query values."""

    seed: int
    r1: float
    mAP: float
    query_ap: np.ndarray  # NaN for skipped queries
    query_first_rank: np.ndarray  # 0 for skipped queries
    diagnostics: dict[str, float]
    seconds: float


def rows_for(tables: Sequence[str], only: Sequence[str] = ()) -> list[AblationRow]:
    """The rows of the named tables, each once, in table order (the full-loss dual and AvePool
    rows of the modes table also serve as the "all three" rows of the losses table); with
    ``only``, just the rows with those keys and the AvePool baselines they are compared with."""
    rows: dict[str, AblationRow] = {}
    for name in tables:
        if name not in TABLES:
            raise ValueError(f"unknown ablation table {name!r}; choose from {', '.join(TABLES)}")
        if name == "losses":
            rows.setdefault("dual", MODE_ROWS[0])
            rows.setdefault("avgpool", MODE_ROWS[3])
        for row in TABLES[name]:
            rows.setdefault(row.key, row)
    unknown = sorted(set(only) - rows.keys())
    if unknown:
        raise ConfigError(
            f"--rows: unknown row {', '.join(unknown)} for tables {' '.join(tables)}; "
            f"choose from {', '.join(rows)}"
        )
    keep = {*only, *(rows[key].baseline for key in only)}
    return [row for row in rows.values() if not only or row.key in keep]


def run_ablation(
    config: str | Path,
    out: Path,
    *,
    rows: Sequence[AblationRow],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    dataset: ReIDDataset[Any] | None = None,
    progress: bool = True,
    announce: Callable[[str], None] = print,
) -> dict[str, list[RunResult]]:
    """Train every row with every seed under ``out`` and return each row's per-seed results."""
    if not seeds:
        raise ValueError("an ablation needs at least one seed")
    results: dict[str, list[RunResult]] = {row.key: [] for row in rows}
    for seed in seeds:
        for row in rows:
            cfg = load_config(
                config,
                [
                    *overrides,
                    *row.overrides,
                    f"seed={seed}",
                    f"out_dir={out / f'{row.key}-seed{seed}'}",
                ],
            )
            announce(
                f"\n== {row.label}, seed {seed}: {cfg.schedule.epochs} epochs in {cfg.out_dir} =="
            )
            results[row.key].append(train_or_reuse(cfg, dataset, progress, announce))
    return results


def train_or_reuse(
    cfg: DuATMConfig,
    dataset: ReIDDataset[Any] | None,
    progress: bool,
    announce: Callable[[str], None] = print,
) -> RunResult:
    """Train the run of ``cfg`` to its end (resuming its last checkpoint if it has one) and read
    back its final results."""
    run_dir = Path(cfg.out_dir)
    resume = latest_checkpoint(run_dir)
    if resume is not None:
        announce(f"resuming from {resume}")
    # A run that never saved a checkpoint (stopped in its first epoch) starts again: the
    # ablation owns these folders.
    trainer = Trainer(
        cfg, dataset=dataset, resume_from=resume, overwrite=resume is None, progress=progress
    )
    trainer.fit()
    results = json.loads((run_dir / RESULTS_JSON).read_text())
    return RunResult(
        seed=cfg.seed,
        r1=results["R1"],
        mAP=results["mAP"],
        query_ap=np.array([np.nan if v is None else v for v in results["query_ap"]]),
        query_first_rank=np.asarray(results["query_first_rank"], dtype=np.int64),
        diagnostics=results.get("diagnostics", {}),
        seconds=trainer.seconds,
    )


def paired_bootstrap(
    runs: Sequence[RunResult],
    baseline: Sequence[RunResult],
    metric: str,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean over seeds of (row - baseline) in ``metric`` ("mAP" or "R1"), with a 95% paired
    bootstrap interval over queries: (difference, low, high), as fractions.

    Seeds are paired by value, queries by index; only queries valid in every run count.
    """
    by_seed = {r.seed: r for r in baseline}
    pairs = [(r, by_seed[r.seed]) for r in runs if r.seed in by_seed]
    if not pairs:
        raise ValueError("no seed was run for both the row and its baseline")
    per_query = np.stack([_per_query(a, metric) - _per_query(b, metric) for a, b in pairs])
    valid = ~np.isnan(per_query).any(0)
    differences = per_query[:, valid].mean(0)  # (valid queries,): mean over seeds
    if differences.size == 0:
        raise ValueError("no query is valid in every run")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, differences.size, size=(samples, differences.size))
    boot = differences[draws].mean(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(differences.mean()), float(low), float(high)


def _per_query(run: RunResult, metric: str) -> np.ndarray:
    if metric == "mAP":
        return run.query_ap
    if metric == "R1":
        return np.where(run.query_first_rank > 0, (run.query_first_rank == 1).astype(float), np.nan)
    raise ValueError(f"metric must be 'mAP' or 'R1', got {metric!r}")


def format_ablation(rows: Sequence[AblationRow], results: dict[str, list[RunResult]]) -> str:
    """Markdown table: mean and spread over seeds, the paired bootstrap CI against AvePool, how
    many seeds beat it in both R1 and mAP, and the attention diagnostics."""
    lines = [
        "| row | seeds | R1 | mAP | ΔR1 vs AvePool [95% CI] | ΔmAP vs AvePool [95% CI] "
        "| seeds ahead | inter entropy | element cos |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        runs = results.get(row.key, [])
        if not runs:
            continue
        cells = [
            row.label,
            str(len(runs)),
            _mean_sd([r.r1 for r in runs]),
            _mean_sd([r.mAP for r in runs]),
        ]
        baseline = results.get(row.baseline, []) if row.baseline else []
        if baseline:
            for metric in ("R1", "mAP"):
                diff, low, high = paired_bootstrap(runs, baseline, metric)
                cells.append(f"{100 * diff:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")
            cells.append(_seeds_ahead(runs, baseline))
        else:
            cells += ["(baseline)", "(baseline)", ""]
        cells.append(_mean_of(runs, "inter_entropy"))
        cells.append(_mean_of(runs, "element_cosine"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_sd(values: Sequence[float]) -> str:
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def _mean_of(runs: Sequence[RunResult], name: str) -> str:
    values = [r.diagnostics.get(name, float("nan")) for r in runs]
    mean = statistics.fmean(values)
    return "–" if np.isnan(mean) else f"{mean:.2f}"


def _seeds_ahead(runs: Sequence[RunResult], baseline: Sequence[RunResult]) -> str:
    by_seed = {r.seed: r for r in baseline}
    paired = [(r, by_seed[r.seed]) for r in runs if r.seed in by_seed]
    ahead = sum(r.r1 > b.r1 and r.mAP > b.mAP for r, b in paired)
    return f"{ahead} of {len(paired)}"


def write_ablation_json(
    path: Path, rows: Sequence[AblationRow], results: dict[str, list[RunResult]], table: str
) -> None:
    """The table and every run's numbers (not the per-query arrays, which stay in the runs)."""
    payload = {
        "rows": [
            {
                "key": row.key,
                "label": row.label,
                "overrides": list(row.overrides),
                "baseline": row.baseline,
                "runs": [
                    {
                        "seed": r.seed,
                        "R1": r.r1,
                        "mAP": r.mAP,
                        "diagnostics": r.diagnostics,
                        "seconds": r.seconds,
                    }
                    for r in results.get(row.key, [])
                ],
            }
            for row in rows
        ],
        "table": table,
    }
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def format_runs(rows: Sequence[AblationRow], results: dict[str, list[RunResult]]) -> str:
    """Markdown table of every (row, seed) run: R1, mAP and train + eval time."""
    lines = ["| row | seed | R1 | mAP | train + eval time |", "| --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        for run in results.get(row.key, []):
            lines.append(
                f"| {row.label} | {run.seed} | {100 * run.r1:.1f} | {100 * run.mAP:.1f} "
                f"| {run.seconds / 60:.1f} min |"
            )
    return "\n".join(lines)


def verdict(
    label: str, runs: Sequence[RunResult], baseline_label: str, baseline: Sequence[RunResult]
) -> str:
    """One line: is ``label`` ahead of ``baseline_label`` on the mean, with its paired CIs, and
    on how many seeds."""
    d_r1 = paired_bootstrap(runs, baseline, "R1")
    d_map = paired_bootstrap(runs, baseline, "mAP")
    margins = (
        f"mAP {100 * d_map[0]:+.1f} [95% CI {100 * d_map[1]:+.1f}, {100 * d_map[2]:+.1f}], "
        f"R1 {100 * d_r1[0]:+.1f} [{100 * d_r1[1]:+.1f}, {100 * d_r1[2]:+.1f}] points"
    )
    ahead = d_r1[0] > 0 and d_map[0] > 0
    head = f"{label} is {'ahead of' if ahead else 'NOT ahead of'} {baseline_label}"
    over = " (means over seeds)" if len(runs) > 1 else ""
    return f"{head}{over}: {margins}; ahead in both on {_seeds_ahead(runs, baseline)} seeds."


def add_ablate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``duatm ablate``."""
    parser.add_argument("--config", required=True, help="YAML file or shipped config name")
    parser.add_argument("--data-root", help="dataset folder (sets data.root)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablate"), help="ablation folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument(
        "--tables",
        nargs="+",
        choices=sorted(TABLES),
        default=["modes", "losses"],
        help="modes: paper Table 2 (matcher modes); losses: paper Table 1 (loss terms)",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        default=[],
        metavar="KEY",
        help="train only these rows of the tables (e.g. dual avgpool) and their AvePool baselines",
    )
    add_overrides_argument(parser, help="config overrides applied to every row")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_ablate_command)


def _run_ablate_command(args: argparse.Namespace) -> int:
    def body() -> int:
        overrides = [*args.overrides, *([f"data.root={args.data_root}"] if args.data_root else [])]
        rows = rows_for(args.tables, args.rows)
        load_config(args.config, overrides)  # check the config before any training starts
        try:
            results = run_ablation(
                args.config,
                args.out,
                rows=rows,
                seeds=args.seeds,
                overrides=overrides,
                progress=not args.no_progress,
            )
        except KeyboardInterrupt as err:
            raise Interrupted("run the same duatm ablate command again to resume") from err
        report = "\n\n".join([format_runs(rows, results), format_ablation(rows, results)])
        write_ablation_json(args.out / ABLATION_JSON, rows, results, report)
        print(f"\n{report}\n\n(last-epoch test metrics; results in {args.out / ABLATION_JSON})")
        return 0

    return run_guarded("ablate", body)
