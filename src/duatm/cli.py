"""The `duatm` command line: one sub-command per job, each defined next to the code it drives."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from duatm import __version__
from duatm.config import ConfigError
from duatm.data.synthped import add_synth_arguments
from duatm.engine.ablation import add_ablate_arguments
from duatm.engine.commands import EXIT_USER_ERROR, add_evaluate_arguments, add_train_arguments
from duatm.engine.demo import add_demo_arguments
from duatm.engine.distributed import launch_context
from duatm.export.command import add_export_arguments
from duatm.report.command import add_report_arguments
from duatm.search.commands import add_index_arguments, add_search_arguments

# Sub-commands that run as several processes under torchrun; the others refuse to.
DISTRIBUTED_COMMANDS = ("train", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duatm",
        description="DuATM person re-identification: train, evaluate, index and search a gallery, report, export to ONNX, generate SynthPed data, run the demo.",
    )
    parser.add_argument("--version", action="version", version=f"duatm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_demo_arguments(
        commands.add_parser(
            "demo",
            help="train DuATM and AvePool on SynthPed and compare (CPU); --video for tracklets",
        )
    )
    add_train_arguments(commands.add_parser("train", help="train a model from a config"))
    add_evaluate_arguments(
        commands.add_parser("evaluate", help="rank metrics of a checkpoint on query/gallery")
    )
    add_ablate_arguments(
        commands.add_parser(
            "ablate",
            help="paper Tables 1-2 in miniature: matcher modes and loss terms over seeds, "
            "with paired bootstrap CIs against AvePool",
        )
    )
    add_index_arguments(
        commands.add_parser("index", help="extract a gallery once and save it as a search index")
    )
    add_search_arguments(
        commands.add_parser("search", help="rank a gallery index for query images")
    )
    add_report_arguments(
        commands.add_parser(
            "report", help="an HTML page: metrics, ranked lists and attention maps of a checkpoint"
        )
    )
    add_export_arguments(
        commands.add_parser("export", help="the extractor and matcher as ONNX graphs, checked")
    )
    add_synth_arguments(
        commands.add_parser(
            "synth",
            help="write SynthPed, the built-in data: images in Market-1501 layout, "
            "or tracklets in MARS layout (--video)",
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``duatm`` command: parse ``argv`` (default: ``sys.argv[1:]``), run the sub-command and
    return its exit status (0 success, 2 bad input, 3 training diverged)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        launched = launch_context()
    except ConfigError as err:
        print(f"duatm {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.command not in DISTRIBUTED_COMMANDS and launched.enabled:
        print(
            f"duatm {args.command}: error: runs as one process; start it without torchrun "
            f"(torchrun runs: {', '.join(DISTRIBUTED_COMMANDS)})",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
