"""The `duatm` command line: one sub-command per job, each defined next to the code it drives."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from duatm import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duatm",
        description="DuATM person re-identification: train, evaluate, generate SynthPed data, run the demo.",
    )
    parser.add_argument("--version", action="version", version=f"duatm {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
