"""`duatm train` and `duatm evaluate`: arguments, and turning every expected failure into one line.

Why here and not in cli.py: each sub-command is defined next to the code it drives, and the
command line only lists them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from duatm.api import load
from duatm.config import ConfigError, config_from_dict, load_config
from duatm.data.datasets import DatasetError
from duatm.data.transforms import ImageReadError
from duatm.engine.builders import build_test_loader, load_dataset
from duatm.engine.checkpoint import (
    LAST_CHECKPOINT,
    CheckpointError,
    check_run_state,
    load_checkpoint,
)
from duatm.engine.diagnostics import REPORTED_DIAGNOSTICS, format_diagnostics
from duatm.engine.distances import save_distances
from duatm.engine.distributed import (
    SINGLE,
    DistContext,
    is_peer_failure,
    launch_context,
    process_group,
    rank_device,
)
from duatm.engine.evaluator import (
    Rerank,
    ResultsPathError,
    check_results_path,
    evaluate,
    evaluate_split,
    evaluation_options,
    write_results,
)
from duatm.engine.run_folder import RunFolderError
from duatm.engine.seed import pin_cpu_threads
from duatm.engine.trainer import Trainer, TrainingDiverged
from duatm.errors import one_line_message
from duatm.extras import MissingExtraError
from duatm.metrics import NoValidQueryError
from duatm.metrics.report import (
    format_rank_report,
    format_rank_rows,
    protocol_notes,
    rank_metrics_to_dict,
)
from duatm.models.backbones import PretrainedWeightsError

USER_ERRORS = (
    ConfigError,
    CheckpointError,
    DatasetError,
    ImageReadError,
    NoValidQueryError,
    PretrainedWeightsError,
    ResultsPathError,
    RunFolderError,
    MissingExtraError,
    OSError,
)
"""Failures a user can fix from the message alone: printed as one line, no traceback, exit 2.
OSError covers the file system's answers (no such file, permission, read-only, disk full, a
loop of links, ...): each names its file."""
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
# Under torchrun: another process failed, was killed or stopped answering.
EXIT_PEER_FAILED = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process stopped by Ctrl-C


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a command, with what to do next as its message."""


def add_overrides_argument(
    parser: argparse.ArgumentParser,
    help: str = "config overrides, e.g. --set optim.lr=0.001 schedule.epochs=60",
) -> None:
    """``--set KEY=VALUE ...`` (repeatable) collected into ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help=help,
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="dataset folder (sets data.root)")
    parser.add_argument("--device", help='"auto", "cpu", "cuda", "cuda:N" or "mps" (sets device)')
    add_overrides_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = [f"data.root={args.data_root}"] if args.data_root else []
    extra += [f"device={args.device}"] if args.device else []
    extra += [f"out_dir={args.out}"] if getattr(args, "out", None) else []
    return [*args.overrides, *extra]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="YAML file or shipped config name (market1501, dukemtmcreid, synthped); "
        "optional with --resume CHECKPOINT",
    )
    parser.add_argument("--out", help="run folder for checkpoints, logs, results (sets out_dir)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="CHECKPOINT",
        help="continue a run: from CHECKPOINT, or (no value) from last.pt in the run folder",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a run folder that holds a run: delete its run files (config, "
        "checkpoints, metrics, curves, results; nothing else); with --resume CHECKPOINT, let "
        "the continued run replace the folder's last.pt",
    )
    _add_common(parser)
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """``duatm train``: train (or resume) one run; exit status 0, 2 (bad input) or 3 (diverged)."""
    return run_guarded("train", lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    resume: Path | None = None
    if args.resume not in (None, "auto"):
        resume = Path(args.resume)
    if args.config is not None:
        cfg = load_config(args.config, _overrides(args))
    elif resume is not None:
        saved = load_checkpoint(resume)
        check_run_state(saved, str(resume))
        cfg = config_from_dict(saved["config"], str(resume), _overrides(args))
    else:
        raise ConfigError("duatm train needs --config FILE (or --resume CHECKPOINT)")
    if args.resume == "auto":
        resume = Path(cfg.out_dir) / LAST_CHECKPOINT
        if not resume.is_file():
            raise FileNotFoundError(f"--resume: no {LAST_CHECKPOINT} in {cfg.out_dir} to resume")
    with process_group(cfg.device, cfg.distributed.timeout_s) as ctx:
        trainer = Trainer(
            cfg, resume_from=resume, overwrite=args.overwrite, progress=not args.no_progress
        )
        if trainer.epoch >= cfg.schedule.epochs:
            if ctx.is_main:
                print(f"{cfg.out_dir}: already trained for {trainer.epoch} epochs; nothing to do")
            return 0
        try:
            final = trainer.fit()
        except KeyboardInterrupt as err:
            raise Interrupted(_resume_hint(Path(cfg.out_dir))) from err
    if final is not None and ctx.is_main:
        print(
            f"\nfinal evaluation ({cfg.data.dataset}, {cfg.out_dir})\n{format_rank_report(final)}"
        )
    return 0


def _resume_hint(run_dir: Path) -> str:
    """What to run after an interruption: resume from the last checkpoint, if there is one."""
    last = run_dir / LAST_CHECKPOINT
    if last.is_file():
        return f"resume with: duatm train --resume {last}"
    return f"no checkpoint was written in {run_dir} yet; start the run again"


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a last.pt / best.pt of a run")
    parser.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    parser.add_argument(
        "--rerank",
        action="store_true",
        help="also report metrics after k-reciprocal re-ranking (sets eval.rerank; k1, k2 and "
        "lambda are eval.rerank_k1, eval.rerank_k2, eval.rerank_lambda)",
    )
    parser.add_argument(
        "--results",
        help="JSON file to write (default: <checkpoint>.results.json beside it, "
        "<checkpoint>.flip.results.json with --flip)",
    )
    parser.add_argument(
        "--save-distances",
        metavar="FILE",
        help="also save the query x gallery distances (and re-ranked ones) with the items they "
        "rank, for duatm report --distances FILE",
    )
    _add_common(parser)
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """``duatm evaluate``: rank metrics of a checkpoint on its dataset's query/gallery split."""
    return run_guarded("evaluate", lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    checkpoint = Path(args.checkpoint)
    overrides = _overrides(args) + (["eval.flip=true"] if args.flip else [])
    overrides += ["eval.rerank=true"] if args.rerank else []
    if not launch_context().enabled:
        return _evaluate_on(checkpoint, overrides, args, SINGLE, device=None)
    # Under torchrun the process group, and so each rank's device, comes before the model.
    saved = load_checkpoint(checkpoint).get("config", {})
    cfg = config_from_dict(saved, str(checkpoint), overrides)
    with process_group(cfg.device, cfg.distributed.timeout_s) as ctx:
        device = rank_device(cfg.device, ctx)
        return _evaluate_on(checkpoint, overrides, args, ctx, device=device)


def _evaluate_on(
    checkpoint: Path,
    overrides: list[str],
    args: argparse.Namespace,
    ctx: DistContext,
    device: torch.device | None,
) -> int:
    """`duatm evaluate` on this process's share (all of it in one process); rank 0 reports."""
    model = load(checkpoint, device=device, overrides=overrides)
    cfg = model.config
    pin_cpu_threads(cfg.cpu_threads)
    # Flip-augmented results get their own default file instead of replacing the plain ones.
    default_suffix = ".flip.results.json" if cfg.eval.flip else ".results.json"
    results = Path(args.results) if args.results else checkpoint.with_suffix(default_suffix)
    # Refused now, not after an evaluation that may take an hour (on every rank, so that all
    # of them stop).
    check_results_path(results, not_over=[checkpoint])
    e = cfg.eval
    whole_matrix = e.rerank or bool(args.save_distances)
    if whole_matrix and (ctx.enabled or e.stream_to is not None):
        raise ConfigError(
            "--rerank and --save-distances need the whole distance matrices in one process; "
            "run them without torchrun and with eval.stream_to=null"
        )
    if args.save_distances and Path(args.save_distances).is_dir():
        raise FileExistsError(f"--save-distances: {args.save_distances} is a folder; give a file")
    dataset = load_dataset(cfg, verbose=ctx.is_main)
    query_loader = build_test_loader(cfg, dataset.query)
    gallery_loader = build_test_loader(cfg, dataset.gallery)
    loaders = (model.module, query_loader, gallery_loader, model.device)
    common = {
        **evaluation_options(e, amp=model.amp),
        "distractor_pids": dataset.distractor_pids,
        "progress": not args.no_progress,
    }
    rerank = Rerank.asked_by(e)
    split = None
    if whole_matrix:
        split = evaluate_split(*loaders, rerank=rerank, **common)
        metrics, timings = split.metrics, {**split.timings, **split.diagnostics}
    else:
        metrics, timings = evaluate(
            *loaders, dist=ctx, stream_to=e.stream_to, block_mb=e.block_mb, **common
        )
    if not ctx.is_main:
        return 0
    diagnostics = {name: timings.pop(name) for name in REPORTED_DIAGNOSTICS if name in timings}
    extra = {}
    # Printed before writing, so the numbers are there even if the disk is full.
    print(f"{checkpoint} (epoch {model.epoch}) on {cfg.data.root}")
    if rerank is not None and split is not None and split.reranked is not None:
        label = f"re-ranked (k1={rerank.k1}, k2={rerank.k2}, lambda={rerank.lambda_value})"
        print(format_rank_rows({"matcher distances": metrics, label: split.reranked}))
        for note in protocol_notes(metrics):
            print(note)
        extra["rerank"] = {**rank_metrics_to_dict(split.reranked), **rerank._asdict()}
    else:
        print(format_rank_report(metrics))
    if diagnostics:
        print(format_diagnostics(diagnostics))
    write_results(
        results,
        metrics,
        checkpoint=str(checkpoint),
        epoch=model.epoch,
        dataset=cfg.data.dataset,
        data_root=cfg.data.root,
        flip=e.flip,
        seconds=timings,
        diagnostics=diagnostics,
        **extra,
    )
    print(f"results written to {results}")
    if args.save_distances and split is not None:
        saved = save_distances(
            args.save_distances,
            split.distances,
            query_loader.dataset.records,  # type: ignore[attr-defined]
            gallery_loader.dataset.records,  # type: ignore[attr-defined]
            fingerprint=model.fingerprint,
            checkpoint=str(checkpoint),
            reranked=split.reranked_distances,
            rerank=None if rerank is None else rerank._asdict(),
            distractor_pids=dataset.distractor_pids,
        )
        print(f"distances written to {saved}")
    return 0


def run_guarded(command: str, body: Callable[[], int]) -> int:
    """Run a command's body; expected failures become one line on stderr and an exit status.

    Under torchrun each line names its rank; a rank that loses its peers (one failed, was
    killed, or stopped answering for ``distributed.timeout_s``) says so and exits with 4, and a
    divergence, which every rank detects at the same step, is reported by rank 0 alone.
    """
    try:
        launch = launch_context()
    except ConfigError:
        launch = SINGLE
    where = f" ({launch.describe()})" if launch.enabled else ""
    try:
        return body()
    except USER_ERRORS as err:
        print(f"duatm {command}: error{where}: {one_line_message(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingDiverged as err:
        if launch.is_main:
            print(f"duatm {command}: stopped: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt as err:
        hint = f"; {err}" if isinstance(err, Interrupted) else ""
        print(f"duatm {command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if not (launch.enabled and is_peer_failure(err)):
            raise
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(
            f"duatm {command}: error{where}: lost contact with the other processes: one of them "
            "failed (its error is above), was killed, or did not answer within "
            f"distributed.timeout_s ({detail})",
            file=sys.stderr,
        )
        return EXIT_PEER_FAILED
