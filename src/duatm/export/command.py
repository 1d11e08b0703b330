"""`duatm export`: a checkpoint as ONNX graphs, checked against PyTorch before the command ends."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from duatm.api import load
from duatm.config import ConfigError
from duatm.engine.commands import add_overrides_argument, run_guarded
from duatm.export.onnx_graphs import check_onnx, export_onnx, matcher_path_for
from duatm.extras import require

EXIT_MISMATCH = 3


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a last.pt / best.pt of a run")
    parser.add_argument(
        "--out", required=True, help="ONNX file of the extractor (uint8 images -> sequences)"
    )
    parser.add_argument(
        "--matcher-out",
        help="ONNX file of the matcher's pair distance (default: OUT with .matcher.onnx)",
    )
    parser.add_argument(
        "--check-batches",
        nargs="+",
        type=int,
        default=[1, 4],
        metavar="N",
        help="random batch sizes compared with PyTorch by onnxruntime (default: 1 4)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest absolute difference accepted (default 1e-4); above it the exit status is 3",
    )
    add_overrides_argument(parser)
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    """``duatm export``: exit status 0, 2 (bad input, missing packages) or 3 (mismatch)."""
    return run_guarded("export", lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    if not args.check_batches or min(args.check_batches) < 1:
        raise ConfigError(f"--check-batches must be positive integers, got {args.check_batches}")
    for module in ("onnx", "onnxruntime"):  # before any work: one line naming the extra
        require(module, "onnx", "duatm export")
    for name in ("out", "matcher_out"):
        path = getattr(args, name)
        if path is not None and Path(path).is_dir():
            raise FileExistsError(f"--{name.replace('_', '-')}: {path} is a folder; give a file")
    model = load(args.checkpoint, device="cpu", overrides=args.overrides)
    matcher_out = args.matcher_out or matcher_path_for(args.out)
    extractor_path, matcher_path = export_onnx(model, args.out, matcher_out)
    print(f"extractor written to {extractor_path}, matcher to {matcher_path}")
    checks = check_onnx(model, extractor_path, matcher_path, tuple(args.check_batches))
    worst = max(check.max_abs_diff for check in checks)
    for check in checks:
        print(
            f"onnxruntime vs PyTorch, {check.graph}, batch {check.batch}: max |diff| {check.max_abs_diff:.2e}"
        )
    if worst > args.tolerance:
        print(
            f"duatm export: mismatch: max |diff| {worst:.2e} exceeds --tolerance "
            f"{args.tolerance:.0e}",
            file=sys.stderr,
        )
        return EXIT_MISMATCH
    print(f"max |diff| {worst:.2e} within --tolerance {args.tolerance:.0e}")
    return 0
